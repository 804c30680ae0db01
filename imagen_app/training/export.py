"""From a training run to what the app loads: a run's EMA weights as a stage folder (`export_stage`), stage
folders assembled into an ImagenPipeline (`assemble_pipeline`), and the sample grids a run writes on the way.

    python -m imagen_app export-stage runs/base32 runs/export/base32 --fp16
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Optional

import torch

from ..models.schedules import stage_noise_schedule
from ..models.text_encoder import load_text_encoder
from ..models.unet import ImagenUNet
from .checkpoints import CHECKPOINT, LEGACY_CHECKPOINT, checkpoint_path, read_checkpoint
from .config import TrainConfig


def text_embed_dim(text_encoder_dir: str) -> int:
    """The width (d_model) of the text encoder in `text_encoder_dir`: a folder with text_encoder/, or a T5 folder."""
    nested = os.path.join(text_encoder_dir, "text_encoder")
    folder = nested if os.path.isdir(nested) else text_encoder_dir
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)["d_model"]


def export_stage(run_dir: str, out_dir: str, fp16: bool = False) -> None:
    """Writes the EMA weights of a run's checkpoint (either format) as an ImagenUNet folder (safetensors;
    `fp16`: stored in float16, as the shipped stages are, half the size)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = TrainConfig(**json.load(f))
    path = checkpoint_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"no {CHECKPOINT} (or {LEGACY_CHECKPOINT}) in {run_dir}")
    ckpt = read_checkpoint(path)
    unet = ImagenUNet(**cfg.unet_arguments(text_embed_dim(cfg.text_encoder)))
    unet.load_state_dict(ckpt["ema"])
    (unet.half() if fp16 else unet).save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(dict(steps=ckpt["step"], config=asdict(cfg), schedule=cfg.beta_schedule), f, indent=2)


def stage_schedule(stage_dir: str):
    """The noise schedule an exported stage samples on: its training schedule (training.json), shifted if the stage
    is folded. scripts/make_candidate.sh saves it beside a stage it puts in a pipeline folder."""
    with open(os.path.join(stage_dir, "training.json")) as f:
        schedule = json.load(f)["schedule"]
    return stage_noise_schedule(schedule, ImagenUNet.load_config(stage_dir))


def assemble_pipeline(text_encoder_dir: str, stage_dirs, out_dir: str, settings: Optional[dict] = None,
                      fp16: bool = True):
    """Builds the cascade from the shipped text encoder and exported stages, and saves it to `out_dir`
    (safetensors; U-Net weights in fp16 to halve the download, upcast on load where there is no GPU)."""
    from ..pipeline.pipeline import ImagenPipeline

    tokenizer, text_encoder = load_text_encoder(text_encoder_dir)
    stages = {}
    for k, stage_dir in enumerate(stage_dirs, 1):
        unet = ImagenUNet.from_pretrained(stage_dir)
        stages[f"unet_{k}"] = unet.half() if fp16 else unet
        stages[f"scheduler_{k}"] = stage_schedule(stage_dir)
    pipe = ImagenPipeline(tokenizer=tokenizer, text_encoder=text_encoder, **stages)
    if settings:
        pipe.settings.update(settings)
    pipe.save_pretrained(out_dir)
    return pipe


@torch.no_grad()
def write_sample_grid(unet, scheduler, encoder, cfg: TrainConfig, path: str, steps: int = 20, scale: float = 3.0):
    """Samples the base stage for the sample prompts (one row) with DPM-Solver++ and CFG."""
    from diffusers import DPMSolverMultistepScheduler
    from PIL import Image

    from ..images import image_grid
    from ..pipeline.pipeline import ImagenPipeline

    sched = DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++")
    pipe = ImagenPipeline(tokenizer=encoder.tokenizer, text_encoder=encoder.text_encoder, unet_1=unet, scheduler_1=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(cfg.sample_prompts, num_inference_steps=steps, guidance_scale=scale, scheduler="dpm++",
                  generator=torch.Generator().manual_seed(0)).images
    grid = image_grid(images, cols=len(images))  # one row
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)
