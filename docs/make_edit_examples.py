"""Writes the Edit and Upscale tabs' example files (docs/examples/) from the shipped weights:
python docs/make_edit_examples.py [weights]"""
import os
import sys

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from imagen_app.pipeline.pipeline import ImagenPipeline  # noqa: E402

OUT = os.path.join(HERE, "examples")
# name: (prompt, the box to repaint in fractions of the image (left, top, right, bottom))
EXAMPLES = {"firefighter": ("woman firefighter: dark skin tone", (0.25, 0.1875, 0.75, 0.6875)),
            "red_heart": ("red heart", (0.0, 0.0, 0.5, 1.0))}


def layer(size: int, box) -> Image.Image:
    """A mask as an image editor's brush layer: transparent, the region to repaint painted (magenta)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    im.paste((255, 0, 255, 200), tuple(round(v * size) for v in box))
    return im


def main(weights: str) -> None:
    os.makedirs(OUT, exist_ok=True)
    pipe = ImagenPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    for name, (prompt, box) in EXAMPLES.items():
        out = pipe(prompt, generator=torch.Generator().manual_seed(0))
        out.images[0].save(os.path.join(OUT, f"{name}.png"))
        out.stage_images[0][0].save(os.path.join(OUT, f"{name}_32.png"))  # for the Upscale tab
        layer(out.images[0].size[0], box).save(os.path.join(OUT, f"{name}_mask.png"))
        print(name, "->", OUT)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), "weights"))
