"""Image helpers shared by the pipeline, the UI, training and evaluation: tensors <-> PIL, and grids."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image


def to_pil(x: torch.Tensor) -> List[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def pixels_to_tensor(pixels) -> torch.Tensor:
    """(N, H, W, 3) uint8 pixels (an array, or a sequence of (H, W, 3) arrays) -> (N, 3, H, W) float32 in [-1, 1].
    Always a copy, so read-only memory maps are fine."""
    arr = np.stack([np.asarray(p, dtype=np.float32) for p in pixels]) if isinstance(pixels, (list, tuple)) \
        else np.array(pixels, dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def pil_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (all one size) -> (B, 3, H, W) float32 in [-1, 1]."""
    return pixels_to_tensor([np.asarray(im.convert("RGB")) for im in images])


def image_grid(images: Sequence[Image.Image], cols: Optional[int] = None, fill: str = "white") -> Image.Image:
    """The images in rows of `cols` (default: 2, or 1 for a single image); empty cells are `fill`.
    One image comes back as it is."""
    images = list(images)
    if len(images) == 1:
        return images[0]
    cols = cols or 2
    rows = (len(images) + cols - 1) // cols
    blank = Image.new("RGB", images[0].size, fill)
    return make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)
