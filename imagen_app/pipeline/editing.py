"""Editing a given image with the cascade: image-to-image (SDEdit) and inpainting (RePaint-style).

- Image-to-image (Meng et al. 2021, "SDEdit"): the init image, resized to the stage's resolution, is
  noised to a level `strength` of the way along the sampling schedule and denoised from there; only the
  last `strength` of the steps run. `strength=1` is plain generation: it starts from pure noise and
  never reads the init image.
- Inpainting (Lugmayr et al. 2022, "RePaint", Alg. 1 without resampling): after every denoising step,
  the region to keep (mask black) is replaced by the init image at that stage's resolution noised to the
  level the sample has just reached; after the last step, by the clean init. The model sees a
  consistent noisy image at every step, so the repainted region blends with what it keeps.

The cascade (pipeline.py) asks `EditInputs.stage(...)` for a `StageEdit` per stage; the stage's step
loop calls its `start`, `after_step` and `preview`. Inputs of any size and mode are accepted; bad ones
raise a ValueError that names the problem.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..images import pil_to_tensor

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike]
DEFAULT_STRENGTH = 0.8  # image-to-image, as diffusers' img2img pipelines
DEFAULT_INPAINT_STRENGTH = 1.0  # inpainting: the masked region starts from pure noise


# ----- inputs --------------------------------------------------------------------------------------------
def check_strength(strength) -> float:
    """`strength` as a float in (0, 1], or a ValueError naming it."""
    ok = not isinstance(strength, bool) and isinstance(strength, numbers.Real) and math.isfinite(strength)
    if not ok or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (the fraction of the schedule to re-run), got {strength!r}")
    return float(strength)


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """A (H, W), (H, W, 1|3|4) array (bool, uint8 in 0..255 or float in [0, 1]) -> a PIL image."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or min(arr.shape[:2]) < 1:
        raise ValueError(f"{what} must be an image: an array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} has NaN or infinite values")
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"{what} must be an image, got an array of {arr.dtype}")
    return Image.fromarray(arr)


def _as_pil(x, what: str) -> Image.Image:
    """A PIL image, a path to one, a numpy array or a torch tensor (values in [0, 1], or uint8) -> PIL."""
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (str, os.PathLike)):
        try:
            with Image.open(x) as im:
                im.load()
                return im.copy()
        except FileNotFoundError:
            raise ValueError(f"{what}: no such file {os.fspath(x)!r}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{what}: {os.fspath(x)!r} is not an image file ({e})") from None
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):  # (C, H, W) -> (H, W, C)
            t = t.permute(1, 2, 0)
        x = t.numpy()
    if isinstance(x, np.ndarray):
        return _array_to_pil(x, what)
    raise ValueError(f"{what} must be an image (PIL image, file path, array or tensor), got {type(x).__name__}")


def load_image(x: ImageLike, what: str = "image") -> Image.Image:
    """An init image in any mode as RGB; transparency is composited on white (the emoji's background)."""
    im = _as_pil(x, what)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def mask_gray(x: ImageLike) -> Image.Image:
    """A mask in any accepted form (see `load_mask`) as an "L" image, before thresholding."""
    im = _as_pil(x, "mask_image")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        return alpha if alpha.getextrema()[0] < 255 else rgba.convert("L")
    return im.convert("L")


def load_mask(x: ImageLike) -> Image.Image:
    """A mask as a binary "L" image, 255 = repaint, 0 = keep.

    Accepted: L / 1 / RGB (white = repaint), RGBA (its alpha where it has any transparency, as the layer
    painted in an image editor: painted = repaint; else its RGB), boolean arrays (True = repaint), arrays
    or tensors of values in [0, 1] or 0..255. A pixel is repainted when its value is at least half.
    """
    binary = mask_gray(x).point(lambda v: 255 if v >= 128 else 0)
    if binary.getextrema()[1] == 0:
        raise ValueError("mask_image is all black: there is nothing to repaint (white marks the region to repaint, "
                         "black the region to keep)")
    return binary


def image_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB images of any size -> (B, 3, size, size) in [-1, 1] (bicubic, antialiased when shrinking;
    a non-square image is stretched to the square)."""
    return pil_to_tensor([im.resize((size, size), Image.BICUBIC) for im in images])


def mask_tensor(masks: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Binary masks of any size -> (B, 1, size, size) of 0. (keep) / 1. (repaint): a pixel of the stage
    is repainted when at least half of the area it covers in the given mask is."""
    arr = np.stack([np.asarray(m.resize((size, size), Image.BOX), dtype=np.float32) for m in masks])
    return (torch.from_numpy(arr)[:, None] >= 127.5).float()


def lowres_tensor(image, size: int, batch: int) -> torch.Tensor:
    """The image to super-resolve (`start_at_stage > 1`), any size and mode, one for the batch or one per
    image -> (batch, 3, size, size) in [-1, 1] at the resolution of the stage before."""
    return image_tensor(_per_image(image, batch, "image", load_image), size)


# ----- SDEdit ---------------------------------------------------------------------------------------------
def sdedit_timesteps(scheduler, strength: float) -> Tuple[torch.Tensor, int]:
    """The timesteps a scheduler (after `set_timesteps`) runs for `strength`: the last `strength` of its
    schedule, at least one step (SDEdit's t0 = strength * T, on the sampler's grid); and the index of the
    first one in `scheduler.timesteps`."""
    order = getattr(scheduler, "order", 1)
    n = len(scheduler.timesteps) // order
    run = min(n, max(1, int(n * strength)))
    start = (n - run) * order
    return scheduler.timesteps[start:], start


def add_noise_at(scheduler, clean: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """`clean` noised to the level of timestep `t` in the scheduler's own parametrisation (x0 + sigma eps
    for Euler samplers, sqrt(ab) x0 + sqrt(1 - ab) eps for the others)."""
    t = torch.as_tensor(t, device=clean.device).reshape(1).repeat(clean.shape[0])
    return scheduler.add_noise(clean, noise.to(clean.dtype), t)


# ----- one stage of an edit -------------------------------------------------------------------------------
@dataclass
class StageEdit:
    """What one stage's step loop does differently for an edit.

    `init` is the init image at the stage's resolution, (B, 3, H, W) in [-1, 1]; `mask` (B, 1, H, W),
    1 = repaint, or None (image-to-image: no replacement); `strength` the fraction of the schedule run.
    `base` is what the stage's sample is added to (a residual stage's upsampled low-res image, else 0),
    so the sample's clean target is `init - base`.
    """

    init: torch.Tensor
    mask: Optional[torch.Tensor]
    strength: float = 1.0
    base: Union[torch.Tensor, float] = 0.0

    def start(self, scheduler, noise: torch.Tensor, base=0.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """(timesteps to run, first sample) for a scheduler after `set_timesteps`; `noise` (B, C, H, W) is
        the stage's initial Gaussian noise, reused for every replacement (as diffusers' inpainting does).
        strength = 1 starts from `noise` alone, exactly as plain generation does."""
        self.base = base
        timesteps, begin = sdedit_timesteps(scheduler, self.strength)
        if hasattr(scheduler, "set_begin_index"):  # samplers that count their steps (Euler, DPM++, UniPC)
            scheduler.set_begin_index(begin)
        if self.strength >= 1.0:
            return timesteps, noise * scheduler.init_noise_sigma
        # Image-to-image: the whole image noised; with a mask the same, so the repainted region starts
        # from the init image too (strength < 1 with a mask: a gentler repaint).
        return timesteps, add_noise_at(scheduler, self.target, noise, timesteps[0])

    @property
    def target(self) -> torch.Tensor:
        """The init image in the sample's space (a residual stage diffuses image - base)."""
        return (self.init - self.base).to(self.init.dtype)

    def after_step(self, scheduler, x: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, i: int) -> torch.Tensor:
        """RePaint replacement after step i: the kept region := the init noised to the next timestep's
        level (the clean init after the last step); the masked region is the sampler's."""
        if self.mask is None:
            return x
        known = self.target if i + 1 >= len(timesteps) else add_noise_at(scheduler, self.target, noise, timesteps[i + 1])
        mask = self.mask.to(x.dtype)
        return mask * x + (1 - mask) * known.to(x.dtype)

    def preview(self, x0: torch.Tensor) -> torch.Tensor:
        """The predicted image shown while it runs: the kept region is already known."""
        if self.mask is None:
            return x0
        mask = self.mask.to(x0.dtype)
        return mask * x0 + (1 - mask) * self.init.to(x0.dtype)


@dataclass
class EditInputs:
    """An edit's inputs, checked once per run: init images (one per image of the batch), masks (or None),
    strength. `stage(...)` gives each stage its StageEdit at its resolution."""

    images: List[Image.Image]
    masks: Optional[List[Image.Image]]
    strength: float

    @classmethod
    def prepare(cls, image, mask_image=None, strength=None, batch: int = 1) -> "EditInputs":
        """Checks and loads an edit's inputs: `image` and `mask_image` one each (used for every image of
        the batch) or a list of `batch`; `strength` None: 0.8 without a mask, 1.0 with one."""
        strength = (DEFAULT_STRENGTH if mask_image is None else DEFAULT_INPAINT_STRENGTH) if strength is None else strength
        strength = check_strength(strength)
        images = _per_image(image, batch, "image", load_image)
        masks = None if mask_image is None else _per_image(mask_image, batch, "mask_image", load_mask)
        return cls(images=images, masks=masks, strength=strength)

    @property
    def mode(self) -> str:
        return "inpaint" if self.masks is not None else "img2img"

    def stage(self, size: int, first: bool, device=None, dtype=torch.float32) -> Optional[StageEdit]:
        """The StageEdit of a stage of `size` px: the first stage run gets the strength; later
        (super-resolution) stages keep the unmasked region, or, without a mask, run as usual (None)."""
        if not first and self.masks is None:
            return None
        init = image_tensor(self.images, size).to(device=device, dtype=dtype)
        mask = None if self.masks is None else mask_tensor(self.masks, size).to(device=device, dtype=dtype)
        return StageEdit(init=init, mask=mask, strength=self.strength if first else 1.0)


def _per_image(x, batch: int, what: str, load) -> list:
    """One input for every image of the batch, or a list (or batched tensor) of `batch` inputs."""
    if isinstance(x, torch.Tensor) and what == "image" and x.dim() in (3, 4):
        # (B, 3, H, W) or (3, H, W) in [-1, 1], as the pipeline's tensors
        x = [(t.float().clamp(-1, 1) + 1) / 2 for t in (x if x.dim() == 4 else x[None])]
    elif isinstance(x, torch.Tensor) and x.dim() == 4:  # masks (B, 1, H, W) in [0, 1]
        x = list(x)
    if isinstance(x, (list, tuple)):
        if len(x) == 1:
            x = list(x) * batch
        if len(x) != batch:
            raise ValueError(f"{what} has {len(x)} images for a batch of {batch}: give one, or one per image")
        return [load(v, what) if load is load_image else load(v) for v in x]
    one = load(x, what) if load is load_image else load(x)
    return [one] * batch


# ----- the check on a real model ------------------------------------------------------------------------
def region_differences(images: Sequence[Image.Image], init: Image.Image, mask: Image.Image) -> dict:
    """Mean |output - init| (in [0, 1] units) over the kept and the repainted pixels, at the output's size."""
    size = images[0].size[0]
    diff = (image_tensor(images, size) - image_tensor([init], size)).abs() / 2  # (B, 3, H, W), [0, 1] units
    m = mask_tensor([mask], size)
    kept = (diff * (1 - m)).sum() / (3 * (1 - m).sum() * len(images))
    repainted = (diff * m).sum() / (3 * m.sum() * len(images))
    return dict(size=size, kept_mean_abs=round(kept.item(), 5), kept_max_abs=round((diff * (1 - m)).max().item(), 5),
                repainted_mean_abs=round(repainted.item(), 5))
