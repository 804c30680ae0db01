"""The sampling-time rules of Imagen that do not depend on the scheduler."""
from __future__ import annotations

import math
from typing import Optional

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
