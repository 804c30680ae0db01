"""`python -m imagen_app bench`: per stage, ms per U-Net evaluation and end-to-end seconds, beside
a diffusers UNet2DConditionModel of the same parameter count and resolution, measured in the same run.

The baseline is sized by searching its base width until its parameter count matches the stage's
Efficient U-Net (within a few percent); it gets the same inputs (the low-res image concatenated for
super-resolution stages) and runs through the same pipeline loop, so the end-to-end figures differ
only by the U-Net.
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

from ..threads import current_choice
from ..models.unet import upsample_lowres
from ..pipeline.pipeline import ImagenPipeline
from ..pipeline.precision import unet_autocast


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def baseline_unet(unet, target_params: int):
    """A diffusers UNet2DConditionModel with the stage's levels, attention placement and ~its parameter count."""
    from diffusers import UNet2DConditionModel

    cfg = unet.config
    ratios = [c / cfg.block_out_channels[0] for c in cfg.block_out_channels]
    attn = [c or s for c, s in zip(cfg.cross_attention_levels, cfg.self_attention_levels)]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))

    def build(width: int):
        channels = tuple(max(8, int(round(width * r / 8)) * 8) for r in ratios)
        return UNet2DConditionModel(
            sample_size=cfg.sample_size, in_channels=cfg.in_channels * (2 if cfg.lowres_cond else 1),
            out_channels=cfg.out_channels, down_block_types=down, up_block_types=up, block_out_channels=channels,
            layers_per_block=2, cross_attention_dim=cfg.text_embed_dim, attention_head_dim=cfg.attention_head_dim // 4 or 8,
            norm_num_groups=8)

    lo, hi = 8, 256
    best = None
    while lo <= hi:  # binary search on the base width
        mid = (lo + hi) // 2 // 8 * 8 or 8
        model = build(mid)
        count = n_params(model)
        if best is None or abs(count - target_params) < abs(n_params(best) - target_params):
            best = model
        if count < target_params:
            lo = mid + 8
        else:
            hi = mid - 8
    return best


class BaselineAdapter(nn.Module):
    """Gives a UNet2DConditionModel the ImagenUNet call signature, so the pipeline can run it."""

    def __init__(self, model, like):
        super().__init__()
        self.model = model
        self.config = SimpleNamespace(**dict(like.config))

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def device(self):
        return next(self.model.parameters()).device

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask=None, lowres_image=None,
                noise_aug_level=None, return_dict=True):
        if self.config.lowres_cond:
            sample = torch.cat([sample, upsample_lowres(lowres_image, sample.shape[-1])], dim=1)
        out = self.model(sample, timestep, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask).sample
        return SimpleNamespace(sample=out) if return_dict else (out,)


@torch.no_grad()
def time_unet(unet, batch: int, text_len: int, repeats: int, bf16: bool = False) -> float:
    """Median ms of one forward pass at the stage's resolution (in bf16 autocast where `bf16`, as the pipeline's
    `cpu_bf16` runs it)."""
    cfg = unet.config
    size = cfg.sample_size
    x = torch.randn(batch, cfg.in_channels, size, size)
    emb = torch.randn(batch, text_len, cfg.text_embed_dim)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    extra = dict(lowres_image=torch.randn(batch, 3, size // 4, size // 4), noise_aug_level=torch.zeros(batch)) \
        if cfg.lowres_cond else {}
    times = []
    with unet_autocast(unet, bf16):
        unet(x, 500, emb, mask, **extra)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            unet(x, 500, emb, mask, **extra)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_end_to_end(pipe, prompt: str, repeats: int):
    """Median seconds, per stage and in all, of a default generation (text encoding included)."""
    totals, per_stage = [], []
    for r in range(repeats + 1):
        marks = {}
        t0 = time.perf_counter()
        for ev in pipe.stream(prompt, generator=torch.Generator().manual_seed(r)):
            marks[ev.stage] = time.perf_counter() - t0
        if r:  # the first run warms up
            totals.append(time.perf_counter() - t0)
            stage_ends = [marks[k] for k in sorted(marks)]
            per_stage.append([b - a for a, b in zip([0.0] + stage_ends[:-1], stage_ends)])
    return statistics.median(totals), [statistics.median(s) for s in zip(*per_stage)]


def run_bench(weights: str, prompt: str = "red heart", repeats: int = 5, baseline: bool = True, pipe=None) -> dict:
    pipe = pipe or ImagenPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    stages = pipe.resolve_settings()  # the default settings that time_end_to_end runs
    text_len = pipe.prompt_encoder.encode([prompt])[0].shape[1]
    rows = []
    baselines = {}
    for k, unet in enumerate(pipe.unets):
        batch = 2 if stages[k].guidance_scale != 1.0 else 1  # CFG runs both branches in one call
        row = dict(stage=k + 1, resolution=unet.config.sample_size, batch=batch, params=n_params(unet),
                   ms=time_unet(unet, batch, text_len, repeats, pipe.cpu_bf16))
        if baseline:
            base = baseline_unet(unet, row["params"]).eval()
            baselines[k] = BaselineAdapter(base, unet)
            row.update(baseline_params=n_params(base), baseline_ms=time_unet(baselines[k], batch, text_len, repeats,
                                                                  pipe.cpu_bf16))
        rows.append(row)
    total, stage_s = time_end_to_end(pipe, prompt, repeats)
    threads = current_choice()  # what the CLI chose (threads.py), or the caller's own setting
    result = dict(prompt=prompt, threads=threads.threads, threads_chosen_by=threads.reason, stages=rows,
                  end_to_end_s=total, cpu_bf16=pipe.cpu_bf16)
    for row, s in zip(rows, stage_s):
        row["stage_s"] = s
    if baseline:
        stages = {f"scheduler_{k + 1}": s for k, s in enumerate(pipe.schedulers)}
        stages.update({f"unet_{k + 1}": b for k, b in baselines.items()})
        base_pipe = ImagenPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, **stages)
        base_pipe.settings, base_pipe.cpu_bf16 = pipe.settings, pipe.cpu_bf16
        base_pipe.set_progress_bar_config(disable=True)
        base_total, base_stage_s = time_end_to_end(base_pipe, prompt, max(1, repeats // 2))
        result["baseline_end_to_end_s"] = base_total
        for row, s in zip(rows, base_stage_s):
            row["baseline_stage_s"] = s

    precision = "bf16 autocast" if pipe.cpu_bf16 else "float32"
    print(f"prompt {prompt!r}, {threads.describe()}, {precision}, default settings; medians of {repeats} runs")
    header = f"{'stage':>5} {'px':>4} {'batch':>5} {'params':>8} {'ms/eval':>8} {'stage s':>8}"
    if baseline:
        header += f" | {'UNet2DCond params':>17} {'ms/eval':>8} {'stage s':>8} {'speed-up':>8}"
    print(header)
    for r in rows:
        line = f"{r['stage']:>5} {r['resolution']:>4} {r['batch']:>5} {r['params'] / 1e6:>7.2f}M {r['ms']:>8.1f} {r['stage_s']:>8.2f}"
        if baseline:
            line += (f" | {r['baseline_params'] / 1e6:>16.2f}M {r['baseline_ms']:>8.1f} {r['baseline_stage_s']:>8.2f}"
                     f" {r['baseline_ms'] / r['ms']:>7.2f}x")
        print(line)
    line = f"end to end: {total:.2f} s"
    if baseline:
        line += f"   (with UNet2DConditionModel stages: {result['baseline_end_to_end_s']:.2f} s)"
    print(line)
    return result
