#!/bin/bash
# scripts/make_candidate.sh OUT TEXT [UNET_1]
# A candidate pipeline to evaluate before shipping: weights/ (linked, not copied) with TEXT's tokenizer/ and
# text_encoder/ (a tune-text export or an extend-text-encoder folder) and, if given, UNET_1 as the base stage
# (an export-stage folder). Then: python -m imagen_app evaluate --weights OUT --parts ...
set -euo pipefail
OUT=$1; TEXT=$2; UNET_1=${3:-}
rm -rf "$OUT"; mkdir -p "$OUT"
for f in weights/*; do ln -s "$(realpath "$f")" "$OUT/"; done
rm "$OUT/tokenizer" "$OUT/text_encoder"
cp -r "$TEXT/tokenizer" "$TEXT/text_encoder" "$OUT/"
if [ -n "$UNET_1" ]; then rm "$OUT/unet_1"; cp -r "$UNET_1" "$OUT/unet_1"; fi
echo "$OUT: weights/ with $TEXT${UNET_1:+ and $UNET_1}"
