"""Per-stage adapters: what the cascade's step loop needs of one stage, whatever model family runs it.

An adapter supplies a stage's fresh scheduler for a run, the channels of the image it denoises, and its
denoiser (x_t -> (model output, predicted x0)); the loop in pipeline.py only draws noise, steps and yields.
`NativeStage` runs this package's ImagenUNet stages; deepfloyd_if.DeepFloydIFStage runs DeepFloyd IF's.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Tuple

import torch

from ..models.text_encoder import PromptEncoder
from ..models.unet import upsample_lowres
from .guidance import StageDenoiser, noise_augment
from .schedulers import SCHEDULER_EXTRA, scheduler_class
from .settings import StageSettings

Embeddings = Tuple[torch.Tensor, torch.Tensor]  # (embeds (B, L, D), mask (B, L)) of one guidance branch
NoiseFn = Callable[[tuple], torch.Tensor]  # shape -> Gaussian noise from the run's generator(s), in the U-Net's dtype


def native_scheduler(base, prediction_type: str, name: Optional[str] = None):
    """A fresh scheduler on `base`'s noise schedule (so concurrent or cancelled runs share no state), sampled by
    `name` (default: `base`'s own class), for a U-Net that predicts `prediction_type`."""
    cls = scheduler_class(name) if name else type(base)
    # Private keys (e.g. `_use_default_values`) would make from_config drop the overrides below.
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config.update(SCHEDULER_EXTRA.get(cls, {}))
    config["prediction_type"] = prediction_type
    if "thresholding" in inspect.signature(cls.__init__).parameters:
        # Dynamic thresholding happens in StageDenoiser, for every scheduler alike; the schedulers'
        # own copies would threshold a residual stage's residual, or (DDIM) step with an epsilon
        # that the thresholded x0 does not imply.
        config.update(thresholding=False, clip_sample=False)
    return cls.from_config(config)


class NativeStage:
    """A stage of this package's ImagenUNet: guidance, thresholding and noise conditioning augmentation in
    StageDenoiser (guidance.py), for every diffusers scheduler alike."""

    def __init__(self, pipe, index: int):
        self.index = index  # 0-based
        self.unet = pipe.unets[index]
        self.base_scheduler = pipe.schedulers[index]

    @staticmethod
    def accepts(unet) -> bool:
        return True  # the default: any stage no other family claims

    @staticmethod
    def prompt_encoder(pipe) -> PromptEncoder:
        """The prompt encoder of a cascade whose first stage is a native one."""
        return PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_length=pipe.settings.get("max_prompt_length"),
                             vocabulary=pipe.vocabulary)

    @property
    def sample_channels(self) -> int:
        return self.unet.config.in_channels

    def scheduler(self, s: StageSettings):
        return native_scheduler(self.base_scheduler, self.unet.config.prediction_type, s.scheduler)

    def attention_rows(self, s: StageSettings, batch: int) -> slice:
        """The batch rows of the first image's conditional branch in a U-Net call: [uncond; cond] when guiding."""
        return slice(batch, batch + 1) if s.guidance_scale != 1.0 else slice(0, 1)

    def denoiser(self, s: StageSettings, sched, lowres: Optional[torch.Tensor], uncond: Embeddings, cond: Embeddings,
                 noise: NoiseFn, device) -> StageDenoiser:
        """The StageDenoiser of stage `s`: text condition, guidance, thresholding and, for super-resolution,
        the low-res image with noise conditioning augmentation (§2.5)."""
        unet = self.unet
        dtype = unet.dtype
        use_cfg = s.guidance_scale != 1.0
        embeds = torch.cat([uncond[0], cond[0]]) if use_cfg else cond[0]  # (2B or B, L, D)
        mask = torch.cat([uncond[1], cond[1]]) if use_cfg else cond[1]
        unet_kwargs, base = {}, 0
        if unet.config.lowres_cond:
            if lowres is None:
                raise ValueError(f"stage {s.stage} is a super-resolution stage and needs a previous stage")
            lowres = lowres.to(dtype)
            if getattr(unet.config, "residual", False):
                base = upsample_lowres(lowres, unet.config.sample_size)
            # Noise conditioning augmentation (§2.5): the same fixed level at sampling time.
            noisy = noise_augment(lowres, s.noise_aug_level, noise=noise(lowres.shape))
            levels = torch.full((noisy.shape[0],), s.noise_aug_level, device=device)
            unet_kwargs = dict(lowres_image=torch.cat([noisy, noisy]) if use_cfg else noisy,
                               noise_aug_level=torch.cat([levels, levels]) if use_cfg else levels)
        return StageDenoiser(unet=unet, scheduler=sched, embeds=embeds.to(dtype), mask=mask,
                             guidance_scale=s.guidance_scale, thresholding_percentile=s.dynamic_thresholding_percentile,
                             thresholding_max=s.dynamic_thresholding_max, base=base, unet_kwargs=unet_kwargs)
