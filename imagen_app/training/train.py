"""Training one stage of the cascade (Imagen §2, Appendix F).

    python -m imagen_app train configs/base32.json [--max-minutes 60] [--max-steps N]
    torchrun --nproc_per_node N -m imagen_app train configs/base32.json        # or: accelerate launch --multi_gpu --num_processes N -m ...

- epsilon or v prediction (the U-Net's config), cosine or linear noise schedule;
- the text is dropped (-> the null condition) in `cond_drop_prob` of the samples, for CFG (§2.2);
- super-resolution stages train on random crops, with the low-res image noised to a random
  augmentation level that the U-Net is told (§2.5);
- AdamW with a diffusers learning-rate schedule (warm-up, then constant or cosine), diffusers'
  `EMAModel`, Min-SNR weighting through diffusers' `compute_snr`;
- N processes (torchrun or accelerate launch) train one model: each draws its own batches (a seed
  offset by its rank), accelerate averages the gradients (gloo on CPUs, nccl on GPUs), and the
  global batch is `batch_size x N`. The main process alone logs, samples and writes checkpoints, and
  decides when to stop, so every rank stops at the same step;
- checkpoints are one safetensors file (weights, EMA, optimizer, and in its header a JSON of the step,
  learning-rate schedule and every rank's RNG states), written atomically (temp file + rename) every
  `checkpoint_every` steps and on exit, so a killed run resumes from its last checkpoint; a legacy
  `checkpoint.pt` still resumes; with no checkpoint, a run can start from an exported stage (`init_from`);
- `export_stage` writes the EMA weights as a diffusers folder that `ImagenPipeline.from_pretrained` loads.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..images import pixels_to_tensor
from ..models.schedules import noise_schedule
from ..pipeline.guidance import noise_augment
from ..models.text_encoder import PromptEncoder, load_text_encoder
from ..models.unet import ImagenUNet, upsample_lowres

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # the pickled format written before; read, never written


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
    batch_size: int = 32  # per process: the global batch is batch_size x processes
    lr: float = 1e-3  # not scaled with the number of processes
    lr_schedule: str = "constant_with_warmup"  # a diffusers get_scheduler name: "constant_with_warmup", "cosine", ...
    warmup_steps: int = 200
    weight_decay: float = 0.0
    # lr of the U-Net's word-order parameters, text position embeddings and pixel coordinates (None: `lr`). Added to a
    # trained stage at zero, at the fine-tuning lr (1e-4) positions grew to a norm of 0.01 in 400 steps, while the
    # layer-normed text tokens they add to have ~8.
    text_positions_lr: Optional[float] = None
    ema_decay: float = 0.999
    cond_drop_prob: float = 0.1
    min_snr_gamma: Optional[float] = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    max_aug_level: float = 0.5
    max_steps: int = 100_000  # also the length of a cosine schedule
    checkpoint_every: int = 200
    sample_every: int = 1000
    log_every: int = 20  # a log line every so many steps when there is no progress bar (not a TTY)
    sample_prompts: list = field(default_factory=lambda: ["red heart", "panda", "flag: japan", "woman firefighter: dark skin tone"])
    init_from: Optional[str] = None  # an exported stage folder to start from when there is no checkpoint
    threads: Optional[int] = None  # CPU threads per process
    mixed_precision: str = "no"  # accelerate's "no", "fp16" or "bf16" (bf16 on a recent GPU)
    curriculum: Optional[dict] = None  # CurriculumConfig fields: massed blocks of the weakest emoji (emoji corpus only)
    # Emoji corpus: also train on caption templates and aliases ("an emoji of X", "X emoji", ...). False: the CLDR
    # name only, which a 400-step block learned twice as fast (specificity 0.11 -> 0.37 vs 0.19; README).
    # On an image folder, False keeps each image's first caption (an exported corpus's CLDR name).
    caption_variants: bool = True
    record_ranks: bool = False  # for tests: ranks.jsonl gets every rank's batch indices and weight hash at every step
    seed: int = 0

    @classmethod
    def load(cls, path: str, **overrides) -> "TrainConfig":
        with open(path) as f:
            cfg = json.load(f)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**cfg)


def load_images(cfg: TrainConfig):
    from .data import emoji_dataset, image_folder_dataset

    if cfg.data == "emoji":
        return emoji_dataset(cfg.resolution, "train", templates=cfg.caption_variants)
    return image_folder_dataset(cfg.data, cfg.resolution, all_captions=cfg.caption_variants)


def make_batch(data, cfg: TrainConfig, rng: random.Random, device, idx=None):
    """A batch (uniform draws unless `idx` is given): images (B, 3, S, S) in [-1, 1], their captions, and for SR
    the aligned low-res crops."""
    idx = idx if idx is not None else [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
    images = pixels_to_tensor([data.images[i] for i in idx])
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
    from diffusers.training_utils import compute_snr

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
        snr = compute_snr(scheduler, t)  # alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=cfg.min_snr_gamma) / (snr if epsilon else snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()


def unet_config(unet):
    return getattr(unet, "module", unet).config


# --- processes ---------------------------------------------------------------------------------

def make_accelerator(cfg: TrainConfig):
    """accelerate's Accelerator, set up for the processes that torchrun or `accelerate launch` started.

    Without CUDA, accelerate builds a process group only when told to use the CPU: with cpu=False
    it reads LOCAL_RANK, finds no GPU backend and falls back to DistributedType.NO (one process
    group per rank, no gradient all-reduce). So several processes on a CPU-only machine get cpu=True
    (gloo)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Cross-attention-only levels of ImagenUNet hold a self-attention projection (to_kv) that gets no gradient:
    # DDP must be told, or its second step fails waiting for those gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=several and not torch.cuda.is_available(),
                       kwargs_handlers=[ddp])


def process_rng(seed: int, rank: int) -> random.Random:
    """The data RNG of a process; ranks > 0 also re-seed torch (noise, timesteps, text dropping), so every
    rank draws its own batches. Rank 0 keeps the single-process streams: one process trains as before."""
    if rank:
        torch.manual_seed(seed + rank)
    return random.Random(seed + rank)


def share_loss_and_stop(accelerator, loss: torch.Tensor, stop: bool) -> tuple:
    """The loss averaged over the ranks, and whether to stop (the main process's decision, or any rank's SIGTERM),
    in one all-reduce so that every rank leaves the loop after the same step."""
    both = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    both = accelerator.reduce(both, reduction="sum")
    return both[0].item() / accelerator.num_processes, both[1].item() > 0


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class StopRequest:
    """Set by SIGTERM (in the main thread; restored on exit)."""

    def __init__(self):
        import threading

        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._request)

    def _request(self, *_):
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# --- checkpoints -------------------------------------------------------------------------------

def checkpoint_path(run_dir: str) -> Optional[str]:
    """The checkpoint to resume from: checkpoint.safetensors, or a legacy checkpoint.pt (the newer if both exist)."""
    paths = [os.path.join(run_dir, name) for name in (CHECKPOINT, LEGACY_CHECKPOINT)]
    paths = [p for p in paths if os.path.exists(p)]
    return max(paths, key=os.path.getmtime) if paths else None


def write_checkpoint(path: str, ckpt: dict) -> None:
    """Writes `ckpt` (as `read_checkpoint` returns it) as one safetensors file: the tensors, and in the header
    a JSON of the rest. Atomic: a kill mid-write leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    tensors = {f"unet.{k}": v for k, v in ckpt["unet"].items()}
    tensors.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    for i, state in ckpt["opt"]["state"].items():
        tensors.update({f"opt.{i}.{k}": v for k, v in state.items()})
    rng = []
    for r, states in enumerate(ckpt["rng"]):
        tensors[f"rng.{r}.torch"] = states["torch"]
        if states.get("cuda") is not None:
            tensors[f"rng.{r}.cuda"] = states["cuda"]
        rng.append(dict(python=states["python"]))
    meta = dict(format=1, step=ckpt["step"], ema_updates=ckpt["ema_updates"], lr_scheduler=ckpt["lr_scheduler"],
                opt_param_groups=ckpt["opt"]["param_groups"], rng=rng)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"imagen_app": json.dumps(meta)})
    os.replace(tmp, path)


def read_checkpoint(path: str) -> dict:
    """step, unet and ema state dicts, ema_updates, opt (optimizer state dict), lr_scheduler (None from a legacy
    file) and rng (one {python, torch, cuda} per rank that wrote it), from either checkpoint format."""
    if path.endswith(".pt"):
        return _read_legacy_checkpoint(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["imagen_app"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def group(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt_state = {}
    for key, v in group("opt.").items():
        i, name = key.split(".", 1)
        opt_state.setdefault(int(i), {})[name] = v
    rng = [dict(python=r["python"], torch=tensors[f"rng.{k}.torch"], cuda=tensors.get(f"rng.{k}.cuda"))
           for k, r in enumerate(meta["rng"])]
    return dict(step=meta["step"], unet=group("unet."), ema=group("ema."), ema_updates=meta["ema_updates"],
                opt=dict(state=opt_state, param_groups=meta["opt_param_groups"]), lr_scheduler=meta["lr_scheduler"],
                rng=rng)


def read_checkpoint_step(path: str) -> int:
    """The step of a checkpoint, reading only the header of the new format."""
    if path.endswith(".pt"):
        return _read_legacy_checkpoint(path)["step"]
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["imagen_app"])["step"]


def _read_legacy_checkpoint(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers and tuples: no code runs
    return dict(step=state["step"], unet=state["unet"], ema=state["ema"], ema_updates=state["ema_updates"],
                opt=state["opt"], lr_scheduler=None,
                rng=[dict(python=state["python_rng"], torch=state["torch_rng"], cuda=None)])


def rng_state(rng: random.Random) -> dict:
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return dict(python=rng.getstate(), torch=torch.get_rng_state(), cuda=cuda)


def set_rng_state(rng: random.Random, states: dict) -> None:
    version, internal, gauss = states["python"]  # JSON turned the tuples into lists
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def restore_lr_schedule(lr_scheduler, opt, saved: Optional[dict], step: int) -> None:
    """Loads the schedule's state; a legacy checkpoint has none, so the schedule is placed at `step`."""
    if saved is None:
        saved = lr_scheduler.state_dict()
        lrs = [base * f(step) for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
        saved.update(last_epoch=step, _step_count=step + 1, _last_lr=lrs)
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr
    lr_scheduler.load_state_dict(saved)


# --- the training loop -------------------------------------------------------------------------

def train(cfg: TrainConfig, max_minutes: Optional[float] = None, log=print) -> int:
    """Trains until max_steps or max_minutes (measured by the main process); returns the step reached.
    Resumes from the run's checkpoint (`checkpoint_path`). Under torchrun / accelerate launch, every process
    calls this and they train one model."""
    from accelerate.utils import tqdm
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    accelerator = make_accelerator(cfg)
    rank, main = accelerator.process_index, accelerator.is_main_process
    log = log if main else (lambda *_: None)
    n = accelerator.num_processes
    log(f"{n} process{'es' if n > 1 else ''} ({accelerator.distributed_type.value}) on {accelerator.device}, "
        f"float32 weights, mixed precision {cfg.mixed_precision}: batch {cfg.batch_size} per process, "
        f"global batch {cfg.batch_size * n}; lr {cfg.lr:g} ({cfg.lr_schedule}, {cfg.warmup_steps} warm-up steps)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # after the Accelerator, which sets its own count for CPU processes
    os.makedirs(cfg.run_dir, exist_ok=True)
    if main:
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls are ample for diffusion training
    tokenizer, text_encoder = load_text_encoder(cfg.text_encoder)
    text_encoder.to(device)
    encoder = PromptEncoder(tokenizer, text_encoder, cache_size=100_000)

    resume_from = checkpoint_path(cfg.run_dir)  # read by every rank before the main process writes one
    torch.manual_seed(cfg.seed)  # the initial weights (the same on every rank), then the training noise
    unet = initial_unet(cfg, text_encoder.config.d_model, use_init_from=resume_from is None, log=log)
    rng = process_rng(cfg.seed, rank)
    scheduler = noise_schedule(cfg.beta_schedule, unet.config.prediction_type)
    opt = torch.optim.AdamW(parameter_groups(unet, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Stepped here once per optimizer step (accelerate's wrapper would step it once per process).
    lr_scheduler = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)  # holds the EMA weights when they are used
    step, ema_updates = 0, 0
    if resume_from:
        ckpt = read_checkpoint(resume_from)
        step, ema_updates = restore(ckpt, unet, ema_unet, opt, lr_scheduler, rng, rank)
        log(f"resumed from {resume_from} at step {step}")
        if len(ckpt["rng"]) != accelerator.num_processes:
            log(f"the checkpoint holds the RNG states of {len(ckpt['rng'])} process(es), this run has "
                f"{accelerator.num_processes}: ranks without a saved state draw from their fresh seed")
        del ckpt
    unet, opt = accelerator.prepare(unet, opt)
    ema_unet.to(device)
    # diffusers' EMA: decay min(ema_decay, (1 + n) / (10 + n)) at its n-th update after the first, which copies.
    ema = EMAModel(ema_unet.parameters(), decay=cfg.ema_decay, foreach=True)
    ema.optimization_step = ema_updates

    def ema_model():
        ema.copy_to(ema_unet.parameters())
        return ema_unet

    data = load_images(cfg)
    encoder.warm([c for caps in data.captions for c in caps])
    log(f"{len(data)} training images at {cfg.resolution}px; U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    curriculum = make_curriculum(cfg, data, log, main)
    if curriculum is not None:
        share_curriculum(accelerator, curriculum)
        if step == 0 and main:
            log_text_use(curriculum, ema_model(), scheduler, encoder, data, step, cfg.run_dir, log)

    ckpt_path = os.path.join(cfg.run_dir, CHECKPOINT)

    def save_checkpoint(collective=True):
        """Every rank's RNG states are gathered (a collective call); the main process writes the file."""
        from accelerate.utils import gather_object

        states = gather_object([rng_state(rng)]) if collective else [rng_state(rng)]
        if main:
            write_checkpoint(ckpt_path, dict(
                step=step, unet=accelerator.unwrap_model(unet).state_dict(), ema=ema_model().state_dict(),
                ema_updates=ema.optimization_step, opt=opt.state_dict(), lr_scheduler=lr_scheduler.state_dict(),
                rng=states))

    stop = StopRequest()
    deadline = time.time() + max_minutes * 60 if max_minutes is not None else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, disable=not sys.stderr.isatty())
    t0, first_step = time.time(), step
    loss_avg = None
    try:
        while step < cfg.max_steps:
            if curriculum is not None and curriculum.cfg.families and step >= curriculum.end_step:
                # plan the next pass from what the model uses now (no families drilled: only `keep` shares)
                if main:
                    plan_next_pass(curriculum, ema_model(), scheduler, encoder, data, step, log)
                share_curriculum(accelerator, curriculum)
            idx = curriculum.indices(step, cfg.batch_size, rng) if curriculum is not None else \
                [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
            images, captions, lowres = make_batch(data, cfg, rng, device, idx)
            embeds, mask = encoder.encode(captions, device=device)
            loss = diffusion_loss(unet, scheduler, images, embeds, mask, lowres, cfg)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)  # DDP averages the gradients over the ranks
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            lr = lr_scheduler.get_last_lr()[0]
            lr_scheduler.step()
            ema.step(accelerator.unwrap_model(unet).parameters())
            step += 1
            out_of_time = main and deadline is not None and time.time() > deadline
            mean_loss, stop_now = share_loss_and_stop(accelerator, loss, stop.requested or out_of_time)
            loss_avg = mean_loss if loss_avg is None else 0.98 * loss_avg + 0.02 * mean_loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", refresh=False)
            if cfg.record_ranks:
                record_ranks(accelerator, cfg.run_dir, step, idx, unet)
            if step == 1 or step % (cfg.checkpoint_every if not bar.disable else cfg.log_every) == 0:
                log(f"step {step} loss {loss_avg:.4f} lr {lr:.2e} {(time.time() - t0) / 60:.1f} min")
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if curriculum is not None and step % curriculum.cfg.measure_every == 0 and main:
                log_text_use(curriculum, ema_model(), scheduler, encoder, data, step, cfg.run_dir, log)
            if cfg.sample_every and step % cfg.sample_every == 0 and not cfg.lowres_resolution and main:
                write_sample_grid(ema_model(), scheduler, encoder, cfg, os.path.join(cfg.run_dir, f"samples_{step:07d}.png"))
            if stop_now:
                break
    except BaseException:
        if n == 1:  # e.g. Ctrl-C; with several processes the others may be gone, so no collective call
            save_checkpoint(collective=False)
        raise
    finally:
        bar.close()
        stop.restore()
    elapsed = time.time() - t0
    save_checkpoint()
    done = step - first_step
    log(f"stopped at step {step}: {done} steps in {elapsed / 60:.1f} min, {done / max(elapsed, 1e-9):.2f} steps/s, "
        f"{done * cfg.batch_size * n / max(elapsed, 1e-9):.0f} images/s (global batch {cfg.batch_size * n}); "
        f"checkpoint {ckpt_path}")
    return step


def initial_unet(cfg: TrainConfig, text_dim: int, use_init_from: bool, log) -> ImagenUNet:
    """A fresh U-Net (from the seeded RNG), or the exported stage `init_from` when there is no checkpoint yet.

    The config may switch the prediction type (epsilon -> v), make the stage residual, or add text position
    embeddings (zero or scaled sinusoids at the start): the features carry over and the new parts are learned."""
    if cfg.init_from and use_init_from:
        overrides = {k: cfg.unet[k] for k in ("prediction_type", "residual", "text_position_embeddings",
                                              "text_position_init_scale", "pixel_coordinates") if k in cfg.unet}
        # low_cpu_mem_usage=False: parameters the stage did not have (positions, coordinates) get their own initial
        # values instead of staying on the meta device.
        unet = ImagenUNet.from_pretrained(cfg.init_from, low_cpu_mem_usage=False, **overrides).float()  # fp16 on disk
        log(f"starting from the exported stage {cfg.init_from} ({unet.config.prediction_type})")
        return unet
    return ImagenUNet(**dict(cfg.unet, sample_size=cfg.resolution, text_embed_dim=text_dim,
                             lowres_cond=cfg.lowres_resolution is not None))


def is_word_order_parameter(name: str) -> bool:
    """The parameters that let the U-Net see word order and bind it to places: the text position embeddings and
    the attention layers' pixel-coordinate weights."""
    return name == "text_positions" or name.endswith(".coordinates.weight")


def parameter_groups(unet, cfg: TrainConfig) -> List[dict]:
    """The optimizer's groups: everything at `lr`, and with `text_positions_lr` the word-order parameters (text
    position embeddings, pixel coordinates) in a group of their own at that lr, without weight decay (the schedule
    scales both alike)."""
    named = list(unet.named_parameters())
    order = [p for name, p in named if is_word_order_parameter(name)]
    if cfg.text_positions_lr is None or not order:
        return [dict(params=[p for _, p in named])]
    rest = [p for name, p in named if not is_word_order_parameter(name)]
    return [dict(params=rest), dict(params=order, lr=cfg.text_positions_lr, weight_decay=0.0)]


def restore(ckpt: dict, unet, ema_unet, opt, lr_scheduler, rng: random.Random, rank: int) -> tuple:
    """Loads a checkpoint (either format) into this rank's objects; returns (step, EMA updates)."""
    unet.load_state_dict(ckpt["unet"])
    ema_unet.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    restore_lr_schedule(lr_scheduler, opt, ckpt["lr_scheduler"], ckpt["step"])
    if rank < len(ckpt["rng"]):  # a rank the checkpoint did not know keeps its fresh, offset seed
        set_rng_state(rng, ckpt["rng"][rank])
    return ckpt["step"], ckpt["ema_updates"]


def record_ranks(accelerator, run_dir: str, step: int, idx: List[int], unet) -> None:
    """Appends every rank's batch indices and weight hash at `step` to ranks.jsonl (main process)."""
    from accelerate.utils import gather_object

    rows = gather_object([dict(rank=accelerator.process_index, indices=list(idx),
                               weights=weights_hash(accelerator.unwrap_model(unet)))])
    if accelerator.is_main_process:
        with open(os.path.join(run_dir, "ranks.jsonl"), "a") as f:
            f.write(json.dumps(dict(step=step, ranks=rows)) + "\n")


def make_curriculum(cfg: TrainConfig, data, log, main: bool = True):
    """The block curriculum of `cfg.curriculum` (None without one; it needs the emoji corpus's families).
    Only the main process's copy saves the plan (curriculum.json); `share_curriculum` sends it to the others."""
    from .curriculum import BlockCurriculum, CurriculumConfig

    if not cfg.curriculum:
        return None
    if data.families is None:
        log("curriculum ignored: it needs the emoji corpus (families of emoji)")
        return None
    path = os.path.join(cfg.run_dir, "curriculum.json")
    return BlockCurriculum(CurriculumConfig(**cfg.curriculum), data.families, path if main else None,
                           captions=[caps[0] for caps in data.captions])


def share_curriculum(accelerator, curriculum) -> None:
    """Every rank takes the main process's plan (its passes), so that all draw from the same blocks."""
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes > 1:
        curriculum.passes = broadcast_object_list([curriculum.passes], from_process=0)[0]


def _images(data, idx) -> torch.Tensor:
    return pixels_to_tensor([data.images[i] for i in idx])


def _measure(unet, scheduler, encoder, data, idx):
    from .curriculum import text_use, wrong_captions_within_family

    captions = [data.captions[i][0] for i in idx]  # the plain CLDR name
    wrong = wrong_captions_within_family(captions, [data.families[i] for i in idx])
    return text_use(unet, scheduler, encoder, _images(data, idx), captions, wrong)


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
    from .curriculum import family_sample, summarize_by_family, two_tone_sample, word_order_use

    idx = family_sample(data.families, curriculum.cfg.measure_per_family)
    summary = summarize_by_family(_measure(unet, scheduler, encoder, data, idx), [data.families[i] for i in idx])
    two_tones = two_tone_sample([c[0] for c in data.captions], curriculum.cfg.measure_per_family)
    if two_tones:
        summary["two-tone order"] = word_order_use(unet, scheduler, encoder, _images(data, two_tones),
                                                   [data.captions[i][0] for i in two_tones])
    log(f"text use at step {step}: " + "; ".join(f"{f} gain {v['gain']:.2f} specificity {v['specificity']:.2f}"
                                                  for f, v in summary.items()))
    with open(os.path.join(run_dir, "text_use.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=step, families=summary)) + "\n")


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


def export_stage(run_dir: str, out_dir: str, fp16: bool = False) -> None:
    """Writes the EMA weights of a run's checkpoint (either format) as an ImagenUNet folder (safetensors;
    `fp16`: stored in float16, as the shipped stages are, half the size)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = TrainConfig(**json.load(f))
    path = checkpoint_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"no {CHECKPOINT} (or {LEGACY_CHECKPOINT}) in {run_dir}")
    ckpt = read_checkpoint(path)
    tokenizer_dir = cfg.text_encoder
    d_model = json.load(open(os.path.join(tokenizer_dir, "text_encoder", "config.json")))["d_model"] \
        if os.path.isdir(os.path.join(tokenizer_dir, "text_encoder")) else json.load(open(os.path.join(tokenizer_dir, "config.json")))["d_model"]
    unet = ImagenUNet(**dict(cfg.unet, sample_size=cfg.resolution, text_embed_dim=d_model,
                             lowres_cond=cfg.lowres_resolution is not None))
    unet.load_state_dict(ckpt["ema"])
    (unet.half() if fp16 else unet).save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(dict(steps=ckpt["step"], config=asdict(cfg), schedule=cfg.beta_schedule), f, indent=2)


def assemble_pipeline(text_encoder_dir: str, stage_dirs, out_dir: str, settings: Optional[dict] = None,
                      fp16: bool = True):
    """Builds the cascade from the shipped text encoder and exported stages, and saves it to `out_dir`
    (safetensors; U-Net weights in fp16 to halve the download, upcast on load where there is no GPU)."""
    from ..pipeline.pipeline import ImagenPipeline

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
