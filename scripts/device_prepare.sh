#!/bin/bash
# Prepares a base-stage run on a lent GPU machine, so that no device minute waits on setup:
# the training corpus as an image folder (the device machine has no SVG renderer) and the wheels of the packages
# its image lacks (it reaches no registry). Then, with the device tool:
#   run  command="M=7.5 bash scripts/device_train.sh configs/experiments/gpu_recoloured.json configs/experiments/gpu_recoloured_more.json"
#        carry=["runs/emoji32_recoloured", "runs/wheels"]
# or, for the corpus alone (configs/base32_gpu.json trains from scratch):
#   run  command="M=20 ARGS='--data runs/emoji32' bash scripts/device_train.sh configs/base32_gpu.json"
#        carry=["runs/emoji32", "runs/wheels"]
set -e
[ -f runs/emoji32/metadata.jsonl ] || python -m imagen_app export-dataset runs/emoji32 --resolution 32 --split train
# the corpus + recoloured emoji ("purple balloon"), for configs/experiments/*recoloured*.json (carry it instead of runs/emoji32)
[ -f runs/emoji32_recoloured/metadata.jsonl ] || python -m imagen_app export-dataset runs/emoji32_recoloured --resolution 32 --split train --recoloured
mkdir -p runs/wheels
python -m pip download -q --no-deps -d runs/wheels "diffusers==$(python -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata
du -sh runs/emoji32 runs/emoji32_recoloured runs/wheels
