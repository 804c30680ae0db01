"""python scripts/check_captions.py CANDIDATE [REFERENCE]: how many corpus captions encode differently in CANDIDATE's
text encoder than in REFERENCE's (default weights/). A rows-only tune-text candidate should print 0: then every family
figure and UI example is what it was."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repository's imagen_app
from imagen_app.pipeline.pipeline import ImagenPipeline
from imagen_app.training.data import load_emoji

torch.set_num_threads(2)
candidate = ImagenPipeline.from_pretrained(sys.argv[1]).prompt_encoder
reference = ImagenPipeline.from_pretrained(sys.argv[2] if len(sys.argv) > 2 else "weights").prompt_encoder
captions = [e.caption for e in load_emoji()]
differ = 0
for i in range(0, len(captions), 256):
    (a, _), (b, _) = candidate.encode(captions[i:i + 256]), reference.encode(captions[i:i + 256])
    differ += sum(not torch.equal(x, y) for x, y in zip(a, b))
print(f"{len(captions)} captions, {differ} encode differently")
sys.exit(1 if differ else 0)
