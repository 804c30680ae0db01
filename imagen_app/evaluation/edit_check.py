"""The README's editing figures on a saved model: how much of the unmasked region an edit keeps."""
from typing import Tuple

import numpy as np
import torch
from PIL import Image

from ..pipeline.editing import region_differences
from ..pipeline.pipeline import ImagenPipeline


def edit_check(weights: str, prompt: str = "red heart", edit_prompt: str = "blue heart",
               box: Tuple[float, float, float, float] = (0.0, 0.0, 0.5, 1.0), seed: int = 0) -> dict:
    """The README's editing figures on a saved model: `prompt` generated (seed `seed`, default settings),
    the `box` (fractions of the image: left, top, right, bottom) masked and repainted from `edit_prompt`
    (same seed); the kept and repainted regions' mean abs difference from the init at every stage, and
    the mean colour of the repainted region before and after."""
    pipe = ImagenPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    init = pipe(prompt, generator=torch.Generator().manual_seed(seed)).images[0]
    w, h = init.size
    region = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, region)
    out = pipe(edit_prompt, image=init, mask_image=mask, generator=torch.Generator().manual_seed(seed))

    def mean_rgb(im):
        return [round(float(v), 1) for v in np.asarray(im.convert("RGB").crop(region), dtype=np.float32).reshape(-1, 3).mean(0)]

    stages = [dict(stage=k, **region_differences(images, init, mask)) for k, images in enumerate(out.stage_images, 1)]
    return dict(prompt=prompt, edit_prompt=edit_prompt, seed=seed, box=list(box), stages=stages,
                repainted_mean_rgb_before=mean_rgb(init), repainted_mean_rgb_after=mean_rgb(out.images[0]))
