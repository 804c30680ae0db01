"""Training one stage of the cascade (Imagen §2, Appendix F).

    python -m imagen_app train configs/base32.json [--max-minutes 60] [--max-steps N]

- epsilon or v prediction (the U-Net's config), cosine or linear noise schedule;
- the text is dropped (-> the null condition) in `cond_drop_prob` of the samples, for CFG (§2.2);
- super-resolution stages train on random crops, with the low-res image noised to a random
  augmentation level that the U-Net is told (§2.5);
- AdamW with warmup, EMA of the weights, accelerate for device placement and multi-GPU;
- checkpoints are written atomically (temp file + rename) every `checkpoint_every` steps and on
  exit, so a killed run resumes from its last checkpoint; with no checkpoint, a run can start
  from an exported stage (`init_from`);
- `export` writes the EMA weights as a diffusers folder that `ImagenPipeline.from_pretrained` loads.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .guidance import noise_augment
from .pipeline import noise_schedule
from .text_encoder import PromptEncoder, load_text_encoder
from .unet import ImagenUNet, upsample_lowres


@dataclass
class TrainConfig:
    run_dir: str  # checkpoints, sample grids and logs (an ignored folder)
    text_encoder: str  # folder with tokenizer/ and text_encoder/ (or a T5 checkpoint)
    resolution: int  # the stage's output size
    unet: dict = field(default_factory=dict)  # ImagenUNet arguments
    data: str = "emoji"  # "emoji" or a folder of captioned images
    lowres_resolution: Optional[int] = None  # set for super-resolution stages
    crop_size: Optional[int] = None  # SR: train on random crops of this size
    beta_schedule: str = "squaredcos_cap_v2"  # cosine (base, first SR) or "linear"
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop_prob: float = 0.1
    min_snr_gamma: Optional[float] = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    max_aug_level: float = 0.5
    max_steps: int = 100_000
    checkpoint_every: int = 200
    sample_every: int = 1000
    sample_prompts: list = field(default_factory=lambda: ["red heart", "panda", "flag: japan", "woman firefighter: dark skin tone"])
    init_from: Optional[str] = None  # an exported stage folder to start from when there is no checkpoint
    threads: Optional[int] = None
    mixed_precision: str = "no"  # accelerate's "no", "fp16" or "bf16" (bf16 on a recent GPU)
    curriculum: Optional[dict] = None  # CurriculumConfig fields: massed blocks of the weakest emoji (emoji corpus only)
    seed: int = 0

    @classmethod
    def load(cls, path: str, **overrides) -> "TrainConfig":
        with open(path) as f:
            cfg = json.load(f)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**cfg)


class EMA:
    """Exponential moving average of a model's weights, warmed up as in 1 - (1 + n) / (10 + n)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)


def load_images(cfg: TrainConfig):
    from .data import emoji_dataset, image_folder_dataset

    if cfg.data == "emoji":
        return emoji_dataset(cfg.resolution, "train")
    return image_folder_dataset(cfg.data, cfg.resolution)


def make_batch(data, cfg: TrainConfig, rng: random.Random, device, idx=None):
    """A batch (uniform draws unless `idx` is given): images (B, 3, S, S) in [-1, 1], their captions, and for SR
    the aligned low-res crops."""
    idx = idx if idx is not None else [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
    images = torch.from_numpy(np.stack([data.images[i] for i in idx])).permute(0, 3, 1, 2).float() / 127.5 - 1
    captions = [data.sample_caption(i, rng) for i in idx]
    lowres = None
    if cfg.lowres_resolution:
        factor = cfg.resolution // cfg.lowres_resolution
        lowres = F.interpolate(images, size=cfg.lowres_resolution, mode="area")
        if cfg.crop_size and cfg.crop_size < cfg.resolution:
            c = cfg.crop_size
            crops_hi, crops_lo = [], []
            for b in range(images.shape[0]):  # crop corners on the low-res grid keep both crops aligned
                y, x = (rng.randrange((cfg.resolution - c) // factor + 1) * factor for _ in range(2))
                crops_hi.append(images[b, :, y:y + c, x:x + c])
                crops_lo.append(lowres[b, :, y // factor:(y + c) // factor, x // factor:(x + c) // factor])
            images, lowres = torch.stack(crops_hi), torch.stack(crops_lo)
        lowres = lowres.to(device)
    return images.to(device), captions, lowres


def diffusion_loss(unet, scheduler, images, embeds, mask, lowres, cfg: TrainConfig, generator=None):
    """MSE between the U-Net's prediction and the epsilon (or v) target at a random timestep."""
    b = images.shape[0]
    device = images.device
    if lowres is not None and unet_config(unet).residual:  # the diffusion runs on what bicubic upsampling misses
        images = images - upsample_lowres(lowres, images.shape[-1])
    noise = torch.randn_like(images)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
    noisy = scheduler.add_noise(images, noise, t)
    # Classifier-free guidance: drop the text (-> all-masked, the null condition) for some samples.
    keep = (torch.rand(b, device=device) >= cfg.cond_drop_prob)
    mask = mask & keep[:, None]
    embeds = embeds * mask[..., None]
    extra = {}
    if lowres is not None:
        aug = torch.rand(b, device=device) * cfg.max_aug_level
        extra = dict(lowres_image=noise_augment(lowres, aug, noise=torch.randn_like(lowres)), noise_aug_level=aug)
    pred = unet(noisy, t, embeds, mask, **extra).sample
    epsilon = unet_config(unet).prediction_type == "epsilon"
    target = noise if epsilon else scheduler.get_velocity(images, noise, t)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if cfg.min_snr_gamma:
        # Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"): as an
        # x0 loss, weight min(SNR, gamma), so that the nearly clean timesteps (fine detail) stop
        # dominating the gradient; the layout and colours decided at high noise learn faster.
        alpha_bar = scheduler.alphas_cumprod.to(device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=cfg.min_snr_gamma) / (snr if epsilon else snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()


def unet_config(unet):
    return getattr(unet, "module", unet).config


def train(cfg: TrainConfig, max_minutes: Optional[float] = None, log=print) -> int:
    """Trains until max_steps or max_minutes; returns the step reached. Resumes from run_dir/checkpoint.pt."""
    from accelerate import Accelerator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls are ample for diffusion training
    tokenizer, text_encoder = load_text_encoder(cfg.text_encoder)
    text_encoder.to(device)
    encoder = PromptEncoder(tokenizer, text_encoder, cache_size=100_000)

    unet_kwargs = dict(cfg.unet, sample_size=cfg.resolution, text_embed_dim=text_encoder.config.d_model,
                       lowres_cond=cfg.lowres_resolution is not None)
    ckpt_path = os.path.join(cfg.run_dir, "checkpoint.pt")
    torch.manual_seed(cfg.seed)  # the initial weights, then the training noise, follow from the seed
    if cfg.init_from and not os.path.exists(ckpt_path):
        # The config may switch the prediction type (epsilon -> v) or make the stage residual: the features carry over and
        # the output layer re-learns its target.
        overrides = {k: cfg.unet[k] for k in ("prediction_type", "residual") if k in cfg.unet}
        unet = ImagenUNet.from_pretrained(cfg.init_from, **overrides).float()  # shipped weights are fp16
        log(f"starting from the exported stage {cfg.init_from} ({unet.config.prediction_type})")
    else:
        unet = ImagenUNet(**unet_kwargs)
    scheduler = noise_schedule(cfg.beta_schedule, unet.config.prediction_type)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(unet, cfg.ema_decay)
    step = 0
    rng = random.Random(cfg.seed)
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.model.load_state_dict(state["ema"])
        ema.updates = state["ema_updates"]
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {ckpt_path} at step {step}")
    unet, opt = accelerator.prepare(unet, opt)
    ema.model.to(device)
    data = load_images(cfg)
    encoder.warm([c for caps in data.captions for c in caps])
    log(f"{len(data)} training images at {cfg.resolution}px; U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    curriculum = make_curriculum(cfg, data, log)
    if curriculum is not None and step == 0:
        log_text_use(curriculum, ema.model, scheduler, encoder, data, step, cfg.run_dir, log)

    def save_checkpoint():
        state = dict(unet=accelerator.unwrap_model(unet).state_dict(), ema=ema.model.state_dict(), ema_updates=ema.updates,
                     opt=opt.state_dict(), step=step, python_rng=rng.getstate(), torch_rng=torch.get_rng_state())
        tmp = ckpt_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)  # atomic: a kill mid-write leaves the previous checkpoint intact

    stop = {"now": False}

    def request_stop(*_):
        stop["now"] = True

    old_handler = signal.signal(signal.SIGTERM, request_stop) if threading_main() else None
    t0 = time.time()
    loss_avg = None
    try:
        while step < cfg.max_steps and not stop["now"]:
            if max_minutes is not None and time.time() - t0 > max_minutes * 60:
                break
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = None
            if curriculum is not None:
                if step >= curriculum.end_step:  # plan the next pass from what the model uses now
                    plan_next_pass(curriculum, ema.model, scheduler, encoder, data, step, log)
                idx = curriculum.indices(step, cfg.batch_size, rng)
            images, captions, lowres = make_batch(data, cfg, rng, device, idx)
            embeds, mask = encoder.encode(captions, device=device)
            loss = diffusion_loss(unet, scheduler, images, embeds, mask, lowres, cfg)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.update(accelerator.unwrap_model(unet))
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if step % 20 == 0 or step == 1:
                elapsed = time.time() - t0
                log(f"step {step} loss {loss_avg:.4f} lr {lr:.2e} {elapsed / 60:.1f} min")
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if curriculum is not None and step % curriculum.cfg.measure_every == 0:
                log_text_use(curriculum, ema.model, scheduler, encoder, data, step, cfg.run_dir, log)
            if cfg.sample_every and step % cfg.sample_every == 0 and not cfg.lowres_resolution:
                write_sample_grid(ema.model, scheduler, encoder, cfg, os.path.join(cfg.run_dir, f"samples_{step:07d}.png"))
    finally:
        save_checkpoint()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    log(f"stopped at step {step}; checkpoint {ckpt_path}")
    return step


def make_curriculum(cfg: TrainConfig, data, log):
    """The block curriculum of `cfg.curriculum` (None without one; it needs the emoji corpus's families)."""
    from .curriculum import BlockCurriculum, CurriculumConfig

    if not cfg.curriculum:
        return None
    if data.families is None:
        log("curriculum ignored: it needs the emoji corpus (families of emoji)")
        return None
    return BlockCurriculum(CurriculumConfig(**cfg.curriculum), data.families, os.path.join(cfg.run_dir, "curriculum.json"))


def _measure(unet, scheduler, encoder, data, idx):
    from .curriculum import text_use, wrong_captions_within_family

    captions = [data.captions[i][0] for i in idx]  # the plain CLDR name
    wrong = wrong_captions_within_family(captions, [data.families[i] for i in idx])
    images = torch.from_numpy(np.stack([data.images[i] for i in idx])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return text_use(unet, scheduler, encoder, images, captions, wrong)


def plan_next_pass(curriculum, unet, scheduler, encoder, data, step: int, log) -> None:
    """Measures every drilled emoji (weakest first, the ones that hold leave) and plans the next pass at `step`."""
    t0 = time.time()
    idx = [i for i, f in enumerate(data.families) if f in curriculum.cfg.families]
    specificity = np.full(len(data), np.inf)
    specificity[idx] = _measure(unet, scheduler, encoder, data, idx)["specificity"]
    n = curriculum.plan_pass(step, specificity)
    log(f"curriculum: pass {len(curriculum.passes)} from step {step} drills {n} emoji "
        f"until step {curriculum.end_step} (planned in {time.time() - t0:.0f} s)")


def log_text_use(curriculum, unet, scheduler, encoder, data, step: int, run_dir: str, log) -> None:
    """The quick by-family measure of how much the right caption helps, logged and appended to text_use.jsonl."""
    from .curriculum import family_sample, summarize_by_family

    idx = family_sample(data.families, curriculum.cfg.measure_per_family)
    summary = summarize_by_family(_measure(unet, scheduler, encoder, data, idx), [data.families[i] for i in idx])
    log(f"text use at step {step}: " + "; ".join(f"{f} gain {v['gain']:.2f} specificity {v['specificity']:.2f}"
                                                  for f, v in summary.items()))
    with open(os.path.join(run_dir, "text_use.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=step, families=summary)) + "\n")


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@torch.no_grad()
def write_sample_grid(unet, scheduler, encoder, cfg: TrainConfig, path: str, steps: int = 20, scale: float = 3.0):
    """Samples the base stage for the sample prompts (one row) with DPM-Solver++ and CFG."""
    from diffusers import DPMSolverMultistepScheduler
    from PIL import Image

    from .pipeline import ImagenPipeline, to_pil

    sched = DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++")
    pipe = ImagenPipeline(tokenizer=encoder.tokenizer, text_encoder=encoder.text_encoder, unet_1=unet, scheduler_1=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(cfg.sample_prompts, num_inference_steps=steps, guidance_scale=scale, scheduler="dpm++",
                  generator=torch.Generator().manual_seed(0)).images
    grid = Image.new("RGB", (cfg.resolution * len(images), cfg.resolution), "white")
    for i, im in enumerate(images):
        grid.paste(im, (i * cfg.resolution, 0))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def export_stage(run_dir: str, out_dir: str) -> None:
    """Writes the EMA weights of a run's checkpoint as an ImagenUNet folder (safetensors)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = TrainConfig(**json.load(f))
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
    tokenizer_dir = cfg.text_encoder
    d_model = json.load(open(os.path.join(tokenizer_dir, "text_encoder", "config.json")))["d_model"] \
        if os.path.isdir(os.path.join(tokenizer_dir, "text_encoder")) else json.load(open(os.path.join(tokenizer_dir, "config.json")))["d_model"]
    unet = ImagenUNet(**dict(cfg.unet, sample_size=cfg.resolution, text_embed_dim=d_model,
                             lowres_cond=cfg.lowres_resolution is not None))
    unet.load_state_dict(state["ema"])
    unet.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(dict(steps=state["step"], config=asdict(cfg), schedule=cfg.beta_schedule), f, indent=2)


def assemble_pipeline(text_encoder_dir: str, stage_dirs, out_dir: str, settings: Optional[dict] = None,
                      fp16: bool = True):
    """Builds the cascade from the shipped text encoder and exported stages, and saves it to `out_dir`
    (safetensors; U-Net weights in fp16 to halve the download, upcast on load where there is no GPU)."""
    from .pipeline import ImagenPipeline

    tokenizer, text_encoder = load_text_encoder(text_encoder_dir)
    stages = {}
    for k, stage_dir in enumerate(stage_dirs, 1):
        unet = ImagenUNet.from_pretrained(stage_dir)
        with open(os.path.join(stage_dir, "training.json")) as f:
            schedule = json.load(f)["schedule"]
        stages[f"unet_{k}"] = unet.half() if fp16 else unet
        stages[f"scheduler_{k}"] = noise_schedule(schedule, unet.config.prediction_type)
    pipe = ImagenPipeline(tokenizer=tokenizer, text_encoder=text_encoder, **stages)
    if settings:
        pipe.settings.update(settings)
    pipe.save_pretrained(out_dir)
    return pipe
