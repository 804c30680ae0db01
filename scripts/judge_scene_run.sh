#!/bin/bash
# scripts/judge_scene_run.sh RUN TAG [THREADS]
# Judges a scene run's checkpoint as issue 26's tables do: its EMA weights exported (fp16) as a stage, a candidate
# pipeline of weights/ with that stage (a base run: with runs/scenes_text; a super-resolution run, whose config has
# lowres_resolution: as stage 2 beside the shipped text encoder), then GenEval judged at 128 px (stage 2), PER_TASK
# prompts per task and split (default 4; 8 for finer figures), 4 images each; for a super-resolution run also a
# perfect base stage through it (geneval_cascade, 2 images a prompt) and the emoji super-resolution PSNR.
# Writes runs/geneval_TAG.json and its log.
set -euo pipefail
RUN=$1; TAG=$2; THREADS=${3:-1}; PER_TASK=${PER_TASK:-4}
export HF_HUB_OFFLINE=1
python -m imagen_app export-stage "$RUN" "runs/stage_$TAG" --fp16
if python -c "import json,sys; sys.exit(0 if json.load(open('$RUN/config.json')).get('lowres_resolution') else 1)"; then
  bash scripts/make_candidate.sh "runs/cand_$TAG" weights - "runs/stage_$TAG"
  PARTS=geneval,geneval_cascade,super_resolution
else
  bash scripts/make_candidate.sh "runs/cand_$TAG" runs/scenes_text "runs/stage_$TAG"
  PARTS=geneval
fi
python -m imagen_app evaluate --weights "runs/cand_$TAG" --parts "$PARTS" --geneval-stage 2 --geneval-per-task "$PER_TASK" \
  --threads "$THREADS" --out "runs/geneval_$TAG.json" 2>&1 | tee "runs/geneval_$TAG.log" | tail -n 12
