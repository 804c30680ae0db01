#!/bin/bash
# scripts/base_text_encoder.sh OUT: the pipeline folder that tune-text starts from: weights/ (linked) with the
# tokenizer and text encoder as they were before any new words were taught (git history: the commit before
# 2d98db2). Then: python -m imagen_app tune-text --weights OUT
set -euo pipefail
OUT=${1:-runs/base_text}
BEFORE=2d98db2^
TEXT=$(mktemp -d)
trap 'rm -rf "$TEXT"' EXIT
for d in tokenizer text_encoder; do
  mkdir -p "$TEXT/$d"
  for f in $(git ls-tree --name-only "$BEFORE" "weights/$d/"); do git show "$BEFORE:$f" > "$TEXT/$d/$(basename "$f")"; done
done
bash "$(dirname "$0")/make_candidate.sh" "$OUT" "$TEXT"
