"""The sampling-time rules of Imagen, and the per-stage denoiser that applies them at each step.

`StageDenoiser` turns one stage's U-Net into "x_t -> (model output, predicted x0)" for any diffusers
scheduler: classifier-free guidance (§2.2), dynamic thresholding (§2.3) and the conversions between
x0 and the U-Net's parametrisation (epsilon or v), so that the cascade's step loop only steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import torch


def dynamic_threshold(x0: torch.Tensor, percentile: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen §2.3): s = the `percentile`-th percentile of |x0| per sample,
    clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s, so it lies in [-1, 1]."""
    flat = x0.float().abs().reshape(x0.shape[0], -1)
    s = torch.quantile(flat, percentile / 100.0, dim=1).clamp(min=1.0, max=max_value)
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return (torch.maximum(torch.minimum(x0.float(), s), -s) / s).to(x0.dtype)


def noise_augment(image: torch.Tensor, level: float | torch.Tensor, generator: Optional[torch.Generator] = None,
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Noise conditioning augmentation (Imagen §2.5) of a low-res image in [-1, 1]:
    sqrt(a) * image + sqrt(1 - a) * noise with a = cos^2(level * pi / 2), level in [0, 1]
    (0: the clean image, 1: pure noise). The U-Net is told `level`."""
    level = torch.as_tensor(level, dtype=torch.float32, device=image.device).reshape(-1, *([1] * (image.dim() - 1)))
    if noise is None:
        noise = torch.randn(image.shape, generator=generator, device=generator.device if generator else "cpu",
                            dtype=torch.float32).to(image.device)
    angle = level * (math.pi / 2)
    return (torch.cos(angle) * image.float() + torch.sin(angle) * noise).to(image.dtype)


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps = eps_uncond + w (eps_cond - eps_uncond) (Ho & Salimans 2022; Imagen §2.2)."""
    return uncond + scale * (cond - uncond)


# ----- x0 <-> model output, in the DDPM parametrisation x_t = sqrt(ab) x0 + sqrt(1 - ab) eps ------------
def alpha_bar(scheduler, t) -> torch.Tensor:
    """alpha_bar at a (possibly fractional) timestep, interpolated from the training schedule."""
    ac = scheduler.alphas_cumprod.float()
    t = float(t)
    lo = int(math.floor(t))
    hi = min(lo + 1, len(ac) - 1)
    frac = t - lo
    return (ac[lo] * (1 - frac) + ac[hi] * frac).to(torch.float32)


def x0_from_output(ab: torch.Tensor, model_output: torch.Tensor, x_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Predicted x0 from an epsilon or v prediction (Salimans & Ho 2022 for v)."""
    if prediction_type == "v_prediction":
        return ab.sqrt() * x_t - (1 - ab).sqrt() * model_output
    return (x_t - (1 - ab).sqrt() * model_output) / ab.sqrt()


def output_from_x0(ab: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The epsilon or v prediction that a given x0 implies at x_t (the inverse of x0_from_output)."""
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return eps


@dataclass
class StageDenoiser:
    """One stage's denoiser: x_t -> (the model output to hand the scheduler, predicted x0 as an image).

    `embeds`/`mask` hold the unconditional half first when `guidance_scale != 1` (one batched U-Net call
    for both branches); `unet_kwargs` carries the super-resolution inputs (already doubled likewise);
    `base` is what a residual stage's sample is added to (the upsampled low-res image), else 0.
    """

    unet: torch.nn.Module
    scheduler: object
    embeds: torch.Tensor  # (B or 2B, L, D)
    mask: torch.Tensor  # (B or 2B, L)
    guidance_scale: float
    thresholding_percentile: float = 0.0  # 0: off
    thresholding_max: float = 1.0
    base: Union[torch.Tensor, float] = 0.0
    unet_kwargs: dict = field(default_factory=dict)

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale != 1.0  # w = 1 is the conditional branch alone

    def model_output(self, model_input: torch.Tensor, t) -> torch.Tensor:
        """The U-Net's prediction with classifier-free guidance (Imagen §2.2)."""
        unet_input = torch.cat([model_input, model_input]) if self.use_cfg else model_input
        # in the sample's dtype: under bf16 autocast (precision.py) guidance and x0 stay float32
        out = self.unet(unet_input, t, self.embeds, self.mask, return_dict=False, **self.unet_kwargs)[0]
        out = out.to(model_input.dtype)
        if self.use_cfg:
            out = classifier_free_guidance(*out.chunk(2), self.guidance_scale)
        return out

    def __call__(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """(model output, x0 image): with dynamic thresholding (Imagen §2.3) the output is the one that the
        thresholded x0 implies, so every scheduler steps towards the thresholded image."""
        prediction_type = self.unet.config.prediction_type
        model_input = self.scheduler.scale_model_input(x, t)  # x_t in the DDPM parametrisation
        out = self.model_output(model_input, t)
        ab = alpha_bar(self.scheduler, t).to(model_input.dtype)
        x0 = x0_from_output(ab, out, model_input, prediction_type)
        if self.thresholding_percentile > 0:
            # The rule is about the image, so a residual stage thresholds residual + upsampled low-res.
            image = dynamic_threshold(self.base + x0, self.thresholding_percentile, self.thresholding_max)
            out = output_from_x0(ab, image - self.base, model_input, prediction_type)
            return out, image
        return out, self.base + x0
