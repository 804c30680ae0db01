#!/bin/bash
# scripts/make_candidate.sh OUT TEXT [UNET_1] [UNET_2]
# A candidate pipeline to evaluate before shipping: weights/ (linked, not copied) with TEXT's tokenizer/ and
# text_encoder/ (a tune-text export or an extend-text-encoder folder; "weights" keeps the shipped one) and, if
# given, UNET_1 as the base stage and UNET_2 as the first super-resolution stage (export-stage folders; "-" keeps
# the shipped stage). Then: python -m imagen_app evaluate --weights OUT --parts ...
set -euo pipefail
OUT=$1; TEXT=$2; UNET_1=${3:--}; UNET_2=${4:--}
rm -rf "$OUT"; mkdir -p "$OUT"
for f in weights/*; do ln -s "$(realpath "$f")" "$OUT/"; done
rm "$OUT/tokenizer" "$OUT/text_encoder"
cp -r "$TEXT/tokenizer" "$TEXT/text_encoder" "$OUT/"
for k in 1 2; do
  STAGE=UNET_$k; STAGE=${!STAGE}
  if [ "$STAGE" != - ]; then  # the stage, and the schedule it samples on (shifted for a folded stage)
    rm "$OUT/unet_$k" "$OUT/scheduler_$k"; cp -r "$STAGE" "$OUT/unet_$k"
    python -c "import sys; from imagen_app.training.export import stage_schedule; stage_schedule(sys.argv[1]).save_pretrained(sys.argv[2])" "$STAGE" "$OUT/scheduler_$k"
  fi
done
echo "$OUT: weights/ with $TEXT, base stage $UNET_1, stage 2 $UNET_2 (-: shipped)"
