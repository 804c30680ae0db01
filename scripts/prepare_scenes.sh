#!/bin/bash
# The scene recipe's inputs, made from the repo alone (needs the emoji packages of requirements.txt):
#   runs/scenes_text   the shipped text encoder with the scene captions' new words (old embeddings unchanged)
#   runs/scenes32      the base stage's training folder: emoji training split, recoloured emoji, 3,000 scenes per task
# Then: python -m imagen_app train configs/experiments/scenes32_cpu.json   (CPU)
# or, on a lent GPU (carry runs/scenes_text, runs/scenes32 and runs/wheels from scripts/device_prepare.sh):
#   M=12 bash scripts/device_train.sh configs/experiments/scenes32_teacher_gpu.json   (or scenes32_gpu.json, no teacher)
set -e
[ -f runs/scenes_text/text_encoder/config.json ] || python -m imagen_app extend-text-encoder runs/scenes_text
[ -f runs/scenes32/metadata.jsonl ] || python -m imagen_app export-dataset runs/scenes32 --resolution 32 --scenes 3000
du -sh runs/scenes_text runs/scenes32
