"""Tiny randomly-initialised cascades, for tests and for trying the code without trained weights."""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import T5EncoderModel

from ..models.text_encoder import freeze
from ..models.unet import ImagenUNet
from ..models.schedules import noise_schedule
from ..pipeline.pipeline import ImagenPipeline
from .text_pretrain import small_t5_config, train_caption_tokenizer

TINY_CAPTIONS = ["red heart", "blue heart", "green circle", "woman firefighter: dark skin tone",
                 "man firefighter", "flag: japan", "panda", "grinning face"]


def tiny_unet(size: int, lowres: bool, text_dim: int, prediction_type: str = "epsilon") -> ImagenUNet:
    return ImagenUNet(sample_size=size, block_out_channels=(8, 16), layers_per_block=(1, 1),
                      cross_attention_levels=(False, True), self_attention_levels=(False, True),
                      text_embed_dim=text_dim, attention_head_dim=8, norm_num_groups=4, lowres_cond=lowres,
                      prediction_type=prediction_type)


def tiny_pipeline(resolutions: Sequence[int] = (8, 32, 128), seed: int = 0, max_length: int = 16,
                  prediction_type: str = "epsilon") -> ImagenPipeline:
    """A random cascade with each stage 4x the previous one; the U-Nets' last layers are re-initialised
    so that outputs depend on the inputs (diffusion U-Nets start with zero output layers)."""
    torch.manual_seed(seed)
    tokenizer = train_caption_tokenizer(TINY_CAPTIONS, max_length=max_length)
    text_encoder = freeze(T5EncoderModel(small_t5_config(len(tokenizer), d_model=16, layers=1, heads=2)))
    stages = {}
    for k, size in enumerate(resolutions, 1):
        unet = tiny_unet(size, lowres=k > 1, text_dim=16, prediction_type=prediction_type)
        for module in unet.modules():  # zero-initialised output layers would make every output 0
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.abs().sum() == 0:
                torch.nn.init.normal_(module.weight, std=0.05)
        stages[f"unet_{k}"] = unet.eval()
        stages[f"scheduler_{k}"] = noise_schedule(prediction_type=prediction_type)
    pipe = ImagenPipeline(tokenizer=tokenizer, text_encoder=text_encoder, **stages)
    pipe.settings.update(num_inference_steps=3, guidance_scale=[3.0, 2.0, 1.0])
    pipe.set_progress_bar_config(disable=True)
    return pipe
