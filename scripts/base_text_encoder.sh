#!/bin/bash
# scripts/base_text_encoder.sh OUT: the pipeline folder that tune-text starts from: weights/ (linked) with the
# tokenizer and text encoder as they were before any new words were taught (git history: the commit before
# 2d98db2). Then: python -m imagen_app tune-text --weights OUT
set -euo pipefail
OUT=${1:-runs/base_text}
BEFORE=2d98db2^
rm -rf "$OUT"; mkdir -p "$OUT"
for f in weights/*; do ln -s "$(realpath "$f")" "$OUT/"; done
for d in tokenizer text_encoder; do
  rm "$OUT/$d"; mkdir -p "$OUT/$d"
  for f in $(git ls-tree --name-only "$BEFORE" "weights/$d/"); do git show "$BEFORE:$f" > "$OUT/$d/$(basename "$f")"; done
done
echo "$OUT: weights/ with the text encoder before any new words"
