"""Training one stage of the cascade (Imagen §2, Appendix F).

    python -m imagen_app train configs/base32.json [--max-minutes 60] [--max-steps N]
    torchrun --nproc_per_node N -m imagen_app train configs/base32.json        # or: accelerate launch --multi_gpu --num_processes N -m ...

- epsilon or v prediction (the U-Net's config), cosine or linear noise schedule;
- the text is dropped (-> the null condition) in `cond_drop_prob` of the samples, for CFG (§2.2);
- super-resolution stages train on random crops, with the low-res image noised to a random
  augmentation level that the U-Net is told (§2.5);
- AdamW with a diffusers learning-rate schedule (warm-up, then constant or cosine), diffusers'
  `EMAModel`, Min-SNR weighting through diffusers' `compute_snr`;
- N processes (torchrun or accelerate launch) train one model, with a global batch of `batch_size x N`
  (distributed.py);
- a checkpoint every `checkpoint_every` steps and on exit, so a killed run resumes from its last one
  (checkpoints.py); with no checkpoint, a run can start from an exported stage (`init_from`);
- one job per run folder (a lock the main process holds), and the workers of a launcher stop with it
  (checkpoints.py, distributed.py);
- `export_stage` (export.py) writes the EMA weights as a diffusers folder that `ImagenPipeline.from_pretrained`
  loads. The config files and their `extends` are config.py's.
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..images import pixels_to_tensor
from ..models.schedules import stage_noise_schedule
from ..models.text_encoder import PromptEncoder, load_text_encoder
from ..models.unet import ImagenUNet, upsample_lowres, with_space_to_depth
from ..pipeline.guidance import noise_augment
from .checkpoints import (CHECKPOINT, checkpoint_path, claim_run_folder, grow_checkpoint, read_checkpoint, resume,
                          save_checkpoint, write_checkpoint)
from .config import TrainConfig
from .curriculum import log_text_use, make_curriculum, plan_next_pass
from .data import caption_vocabulary
from .grounding import AttentionGrabber, grounding_loss, grounding_targets
from .distributed import (StopRequest, describe_processes, make_accelerator, process_rng, record_ranks, share_curriculum,
                          share_loss_and_stop, stop_with_launcher, unwrap)
# cli.py imports export_stage and assemble_pipeline from here
from .export import assemble_pipeline, export_stage, write_sample_grid
from .phrasing import framed_caption

__all__ = ["TrainConfig", "train", "export_stage", "assemble_pipeline"]


def train(cfg: TrainConfig, max_minutes: Optional[float] = None, log=print) -> int:
    """Trains until max_steps or max_minutes (measured by the main process) or a SIGTERM; returns the step reached.
    Resumes from the run's checkpoint (`checkpoint_path`). Under torchrun / accelerate launch, every process
    calls this and they train one model. Raises RunFolderInUse (an OSError) when another job holds the run folder."""
    # under a launcher: SIGTERM when the launcher dies (killed, torchrun and accelerate launch leave their workers)
    stop_with_launcher()
    stop = StopRequest()  # SIGTERM, from now on: checkpoint the step reached and stop
    try:
        accelerator = make_accelerator(cfg)
        log = log if accelerator.is_main_process else (lambda *_: None)
        log(describe_processes(accelerator, cfg))
        # the run folder is this job's alone until it returns (another job's fails here, before anything is written),
        # without the temporary files of a checkpoint write that a kill interrupted
        lock = claim_run_folder(cfg.run_dir, accelerator, log)
        try:
            step = _train(cfg, accelerator, stop, max_minutes, log)
        finally:
            if lock is not None:
                lock.release()
        # Every rank has passed the last collective call: the process group is taken down before the interpreter
        # exits, not by its destructors at exit, where gloo's threads could abort a worker ("terminate called
        # without an active exception", seen once in CI on a run that had finished).
        accelerator.end_training()
        return step
    finally:
        stop.restore()


def _train(cfg: TrainConfig, accelerator, stop: StopRequest, max_minutes: Optional[float], log) -> int:
    """train() in the run folder it holds."""
    from accelerate.utils import tqdm
    from diffusers.optimization import get_scheduler

    # setup: the processes, this one's device and threads, and the run folder with the config in it
    rank, main, n = accelerator.process_index, accelerator.is_main_process, accelerator.num_processes
    device = accelerator.device
    setup_process(cfg, device)
    if main:
        write_run_config(cfg)

    # data: the images and captions, and the frozen text encoder with every caption encoded up front
    tokenizer, text_encoder = load_text_encoder(cfg.text_encoder)
    encoder = PromptEncoder(tokenizer, text_encoder.to(device), cache_size=100_000, vocabulary=caption_vocabulary())
    data = load_images(cfg)
    encoder.warm([c for caps in data.captions for c in caps])
    live = live_scenes(cfg, data)
    grounded = cfg.grounding_loss_weights is not None  # live scenes (checked by TrainConfig) with their masks

    # model: seeded random weights (the same on every rank), or the stage `init_from` when there is no checkpoint
    resume_from = checkpoint_path(cfg.run_dir)  # read by every rank before the main process writes one
    torch.manual_seed(cfg.seed)  # the initial weights, then the training noise
    unet = initial_unet(cfg, text_encoder.config.d_model, use_init_from=resume_from is None, log=log)
    teacher = starting_stage(cfg, device, log)
    held_rows = non_scene_rows(data, device) if teacher is not None else None  # once: indexed by each batch's rows
    rng = process_rng(cfg.seed, rank)
    scheduler = stage_noise_schedule(cfg.beta_schedule, unet.config)

    # optimiser: AdamW (the word-order parameters may have an lr of their own) and a diffusers lr schedule,
    # stepped here once per optimizer step (accelerate's wrapper would step it once per process)
    opt = torch.optim.AdamW(parameter_groups(unet, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)

    # resume: weights, EMA, optimizer, lr schedule and this rank's RNG states from the run's checkpoint
    ckpt = resume(resume_from, unet, opt, lr_scheduler, rng, rank, n, log) if resume_from else None
    step = ckpt["step"] if ckpt else 0
    ema = EMAWeights(unet, cfg.ema_decay, device, ckpt)
    del ckpt
    unet, opt = accelerator.prepare(unet, opt)  # under several processes: DDP
    log(f"{len(data)} training images at {cfg.resolution}px; U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    # curriculum: which emoji the batches draw from (uniform draws without one), measured from the start
    curriculum = make_curriculum(cfg, data, log, main)
    # the curriculum's text-use measure denoises without a low-res image: a base-stage measure
    measure_text_use = curriculum is not None and main and not cfg.lowres_resolution
    if curriculum is not None:
        share_curriculum(accelerator, curriculum)
        if step == 0 and measure_text_use:
            log_text_use(curriculum, ema.model(), scheduler, encoder, data, step, cfg.run_dir, log)

    # loop: until max_steps, the main process's deadline or a SIGTERM (every rank stops after the same step)
    ckpt_path = os.path.join(cfg.run_dir, CHECKPOINT)
    deadline = time.time() + max_minutes * 60 if max_minutes is not None else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, disable=not sys.stderr.isatty())
    t0, first_step, loss_avg = time.time(), step, None
    try:
        while step < cfg.max_steps:
            if curriculum is not None and curriculum.cfg.families and step >= curriculum.end_step:
                # plan the next pass from what the model uses now (no families drilled: only `keep` shares)
                if main:
                    plan_next_pass(curriculum, ema.model(), scheduler, encoder, data, step, log)
                share_curriculum(accelerator, curriculum)
            idx = curriculum.indices(step, cfg.batch_size, rng) if curriculum is not None else \
                [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
            shrink = rows_to_shrink(data, idx, cfg, rng)
            images, captions, lowres, *phrases = make_batch(data, cfg, rng, device, idx, live, shrink,
                                                            grounded=grounded)
            embeds, mask = encoder.encode(captions, device=device)
            grounding = grounding_targets(encoder, captions, phrases[0], unwrap(unet).config.num_null_tokens,
                                          device) if grounded else None
            teacher_rows = None
            if held_rows is not None:  # the rows that are not scenes, less those shrunk (the teacher draws them full size)
                teacher_rows = held_rows[idx] & ~torch.tensor(shrink, dtype=torch.bool, device=device)
            with accelerator.autocast():  # mixed precision for the teacher too (the prepared U-Net has its own)
                loss = diffusion_loss(unet, scheduler, images, embeds, mask, lowres, cfg,
                                      teacher=teacher, teacher_rows=teacher_rows, grounding=grounding)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)  # DDP averages the gradients over the ranks
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            lr = lr_scheduler.get_last_lr()[0]
            lr_scheduler.step()
            ema.step(unwrap(unet))
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
                save_checkpoint(ckpt_path, accelerator, step, unet, ema, opt, lr_scheduler, rng)
            if measure_text_use and step % curriculum.cfg.measure_every == 0:
                log_text_use(curriculum, ema.model(), scheduler, encoder, data, step, cfg.run_dir, log)
            if cfg.sample_every and step % cfg.sample_every == 0 and not cfg.lowres_resolution and main:
                write_sample_grid(ema.model(), scheduler, encoder, cfg, os.path.join(cfg.run_dir, f"samples_{step:07d}.png"))
            if stop_now:
                break
    except BaseException:
        if n == 1:  # e.g. Ctrl-C; with several processes the others may be gone, so no collective call
            save_checkpoint(ckpt_path, accelerator, step, unet, ema, opt, lr_scheduler, rng, collective=False)
        raise
    finally:
        bar.close()

    # checkpoint: the step reached (every rank's RNG states), and the run's speed
    elapsed, done = time.time() - t0, step - first_step
    save_checkpoint(ckpt_path, accelerator, step, unet, ema, opt, lr_scheduler, rng)
    log(f"stopped at step {step}: {speed(done, elapsed, cfg.batch_size * n)}; checkpoint {ckpt_path}")
    # export: `python -m imagen_app export-stage` (export.py) turns the checkpoint's EMA weights into a stage folder
    return step


def speed(steps: int, seconds: float, global_batch: int) -> str:
    seconds = max(seconds, 1e-9)
    return (f"{steps} steps in {seconds / 60:.1f} min, {steps / seconds:.2f} steps/s, "
            f"{steps * global_batch / seconds:.0f} images/s (global batch {global_batch})")


# --- setup -----------------------------------------------------------------------------------------------------

def setup_process(cfg: TrainConfig, device: torch.device) -> None:
    """This process's CPU threads (after the Accelerator, which sets its own count for CPU processes) and matmul
    precision (TF32 matmuls are ample for diffusion training)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


def write_run_config(cfg: TrainConfig) -> None:
    """The run folder, with the config in it (what `export_stage` builds the U-Net from)."""
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)


# --- data ------------------------------------------------------------------------------------------------------

def load_images(cfg: TrainConfig):
    from .data import emoji_dataset, image_folder_dataset

    if cfg.data == "emoji":
        return emoji_dataset(cfg.resolution, "train", templates=cfg.caption_variants)
    return image_folder_dataset(cfg.data, cfg.resolution, all_captions=cfg.caption_variants)


def live_scenes(cfg: TrainConfig, data):
    """The scenes.LiveScenes that composes the scene rows of `data` afresh, or None (`live_scenes` off)."""
    if not cfg.live_scenes:
        if cfg.scene_size_ranges:
            raise ValueError("scene_size_ranges needs live_scenes: true (stored scenes keep the sizes they were made at)")
        return None
    from .scenes import FAMILY_PREFIX, LiveScenes, load_scene_world

    if not any(f.startswith(FAMILY_PREFIX) for f in data.families or ()):
        raise ValueError(f"live_scenes: {cfg.data} has no scene rows (families {FAMILY_PREFIX!r}...)")
    world = load_scene_world()
    if cfg.scene_objects:
        world = world.restricted(cfg.scene_objects)
    return LiveScenes(world, cfg.resolution, all_captions=cfg.caption_variants,
                      size_ranges=cfg.scene_size_ranges)


def make_batch(data, cfg: TrainConfig, rng: random.Random, device, idx=None, live=None, shrink=None,
               grounded: bool = False):
    """A batch (uniform draws unless `idx` is given): images (B, 3, S, S) in [-1, 1], their captions, and for SR
    the aligned low-res crops. `live` (a scenes.LiveScenes) composes the scene rows afresh; the rows `shrink` marks
    (by default `rows_to_shrink`'s) are shrunk onto white (`other_rows_scale`). With `grounded` (and `live`), a
    fourth item: each row's scenes.grounding_phrases ([] for a row that is not a scene)."""
    from .scenes import shrink_onto_white

    idx = idx if idx is not None else [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
    phrases = [[] for _ in idx]
    if live is not None and grounded:
        pixels, captions, phrases = map(list, zip(*(live.item(data, i, rng, grounded=True) for i in idx)))
    elif live is not None:
        pixels, captions = map(list, zip(*(live.item(data, i, rng) for i in idx)))
    else:
        pixels = [data.images[i] for i in idx]
        captions = [data.sample_caption(i, rng) for i in idx]
    if cfg.other_rows_scale:
        shrink = shrink if shrink is not None else rows_to_shrink(data, idx, cfg, rng)
        pixels = [shrink_onto_white(p, rng.uniform(*cfg.other_rows_scale), rng) if small else p
                  for p, small in zip(pixels, shrink)]
    images = pixels_to_tensor(pixels)
    if cfg.typed_form_share:
        captions = [framed_caption(c, rng, cfg.typed_form_share) for c in captions]
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
    return (images.to(device), captions, lowres, phrases) if grounded else (images.to(device), captions, lowres)


def rows_to_shrink(data, idx, cfg: TrainConfig, rng: random.Random) -> List[bool]:
    """Which rows of a batch `other_rows_scale` shrinks to a fraction of the side at a random place on white
    (scenes.shrink_onto_white): the rows that are not scenes, each with chance `other_rows_scale_share`."""
    from .scenes import scene_task

    if not cfg.other_rows_scale:
        return [False] * len(idx)
    share = cfg.other_rows_scale_share  # (at 1, no draw: the RNG stream of the runs before the share existed)
    return [scene_task(data, i) is None and (share >= 1 or rng.random() < share) for i in idx]


# --- model -----------------------------------------------------------------------------------------------------

def initial_unet(cfg: TrainConfig, text_dim: int, use_init_from: bool, log) -> ImagenUNet:
    """A fresh U-Net (from the seeded RNG), or the exported stage `init_from` when there is no checkpoint yet.

    The config may switch the prediction type (epsilon -> v), make the stage residual, or add text position
    embeddings (zero or scaled sinusoids at the start): the features carry over and the new parts are learned."""
    if cfg.init_from and use_init_from:
        overrides = {k: cfg.unet[k] for k in ("prediction_type", "residual", "text_position_embeddings",
                                              "text_position_init_scale", "pixel_coordinates", "local_text_pool")
                     if k in cfg.unet}
        # A stage may also continue at another resolution (a 32 px base stage trained on at 64 px): its layers are
        # convolutions and attention over the feature map, so only the recorded sample size changes.
        # A folded stage (`space_to_depth`) starts as the unfolded one at 1/fold the side, folded.
        fold = cfg.unet.get("space_to_depth", 1)
        overrides["sample_size"] = cfg.resolution // fold
        # low_cpu_mem_usage=False: parameters the stage did not have (positions, coordinates) get their own initial
        # values instead of staying on the meta device.
        unet = ImagenUNet.from_pretrained(cfg.init_from, low_cpu_mem_usage=False, **overrides).float()  # fp16 on disk
        if fold > 1 and unet.config.space_to_depth == 1:
            unet = with_space_to_depth(unet, fold, cfg.beta_schedule, cfg.unet.get("space_to_depth_detail_std"))
        log(f"starting from the exported stage {cfg.init_from} ({unet.config.prediction_type}"
            f"{f', folded {fold} x {fold}' if fold > 1 else ''})")
        return unet
    return ImagenUNet(**cfg.unet_arguments(text_dim))


def branch_run(from_run: str, cfg: TrainConfig, log=print) -> str:
    """Starts `cfg`'s run from the checkpoint of the run `from_run`, with the modules `cfg` adds to its U-Net (e.g.
    `local_text_pool`) at their initial values (checkpoints.grow_checkpoint): the weights, EMA, optimizer state,
    step, lr schedule and RNG states carry over, so `train(cfg)` goes on where that run stopped. Returns the path of
    the checkpoint written (cfg.run_dir must not hold one)."""
    if checkpoint_path(cfg.run_dir):
        raise FileExistsError(f"{cfg.run_dir} already holds a checkpoint")
    source = checkpoint_path(from_run)
    if source is None:
        raise FileNotFoundError(f"no checkpoint in {from_run}")
    ckpt = read_checkpoint(source)
    torch.manual_seed(cfg.seed)  # the new modules' initial values
    unet = initial_unet(cfg, ckpt["unet"]["null_tokens"].shape[1], use_init_from=True, log=log)
    names = {id(p): name for name, p in unet.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in parameter_groups(unet, cfg)]
    grown = grow_checkpoint(ckpt, unet, groups)
    os.makedirs(cfg.run_dir, exist_ok=True)
    path = os.path.join(cfg.run_dir, CHECKPOINT)
    write_checkpoint(path, grown)
    added = sum(p.numel() for name, p in unet.named_parameters() if name not in ckpt["unet"])
    log(f"{path}: {from_run} at step {ckpt['step']}, with {added} new parameters")
    return path


def starting_stage(cfg: TrainConfig, device, log) -> Optional[ImagenUNet]:
    """The frozen `init_from` stage whose predictions are the targets of the non-scene rows (`teacher_target_weight`),
    or None. Loaded from `init_from` on a resumed run too: the targets stay those of the stage the run began from."""
    if not cfg.teacher_target_weight:
        return None
    if not cfg.init_from:
        raise ValueError("teacher_target_weight needs init_from: the stage whose predictions the non-scene rows keep")
    if not 0 < cfg.teacher_target_weight <= 1:
        raise ValueError(f"teacher_target_weight must be in (0, 1], not {cfg.teacher_target_weight}")
    teacher = initial_unet(cfg, 0, use_init_from=True, log=lambda *_: None).to(device).eval().requires_grad_(False)
    log(f"non-scene rows: targets {cfg.teacher_target_weight:g} of the way to {cfg.init_from}'s own predictions")
    return teacher


def non_scene_rows(data, device) -> torch.Tensor:
    """(len(data),) bool: the rows that are not scenes (every row of a folder without families)."""
    from .scenes import scene_task

    return torch.tensor([scene_task(data, i) is None for i in range(len(data))], device=device)


def ink_weight(images: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weights (b, 1, h, w) for images in [-1, 1] on white: 1 on paper, 1 + `extra` on ink and on the
    pixel around it (the outline's antialiasing and the object's edge, where a drawn object begins). Ink is any channel
    darker than white by more than about 10%, ramped over the next 30% so that pale tints count in part."""
    darkness = (1 - images.float().amin(dim=1, keepdim=True)) / 2  # 0 on white paper, 1 on black
    ink = ((darkness - 0.1) / 0.3).clamp(0, 1)
    ink = F.max_pool2d(ink, kernel_size=3, stride=1, padding=1)
    return 1 + extra * ink


def diffusion_loss(unet, scheduler, images, embeds, mask, lowres, cfg: TrainConfig, generator=None,
                   teacher=None, teacher_rows: Optional[torch.Tensor] = None, grounding=None):
    """MSE between the U-Net's prediction and the epsilon (or v) target at a random timestep; on `teacher_rows`, the
    target moved `cfg.teacher_target_weight` of the way to the frozen `teacher`'s prediction. With `grounding` (a
    grounding.GroundingTargets), plus `cfg.grounding_loss_weights` times the grounding loss's two terms."""
    from diffusers.training_utils import compute_snr

    b = images.shape[0]
    device = images.device
    config = unwrap(unet).config
    pixel_weight = ink_weight(images, cfg.ink_loss_weight) if cfg.ink_loss_weight else None
    if lowres is not None and config.residual:  # the diffusion runs on what bicubic upsampling misses
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
    student_extra = dict(extra)
    if cfg.pooled_text_drop_prob:  # (no draw when off: the RNG stream of the runs before it)
        student_extra["pooled_text_keep"] = (torch.rand(b, device=device) >= cfg.pooled_text_drop_prob).float()
    grabber = AttentionGrabber(unet, cfg.grounding_min_side) if grounding is not None else nullcontext()
    with grabber:
        pred = unet(noisy, t, embeds, mask, **student_extra).sample
    epsilon = config.prediction_type == "epsilon"
    target = noise if epsilon else scheduler.get_velocity(images, noise, t)
    if teacher is not None and teacher_rows is not None and bool(teacher_rows.any()):
        target = teacher_targets(teacher, target, teacher_rows, cfg.teacher_target_weight,
                                 noisy, t, embeds, mask, extra)
    squared = (pred.float() - target.float()).pow(2)
    if pixel_weight is not None:
        squared = squared * pixel_weight
    per_sample = squared.flatten(1).mean(dim=1)
    if cfg.min_snr_gamma:
        # Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"): as an
        # x0 loss, weight min(SNR, gamma), so that the nearly clean timesteps (fine detail) stop
        # dominating the gradient; the layout and colours decided at high noise learn faster.
        snr = compute_snr(scheduler, t)  # alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=cfg.min_snr_gamma) / (snr if epsilon else snr + 1)
        per_sample = per_sample * weight
    loss = per_sample.mean()
    if grounding is not None:
        if not grabber.taken:
            raise ValueError(f"grounding_loss_weights: this U-Net has no text attention layer without self-attention "
                             f"at {cfg.grounding_min_side} x {cfg.grounding_min_side} or more (grounding_min_side)")
        token_term, pixel_term = grounding_loss(grabber.taken, grounding, rows=keep)
        token_weight, pixel_term_weight = cfg.grounding_loss_weights
        loss = loss + token_weight * token_term + pixel_term_weight * pixel_term
    return loss


@torch.no_grad()
def teacher_targets(teacher, target, rows, weight: float, noisy, t, embeds, mask, extra) -> torch.Tensor:
    """`target` with its `rows` moved `weight` of the way to the teacher's prediction for the same inputs (the
    teacher runs on those rows alone)."""
    sub = {k: v[rows] for k, v in extra.items()}
    taught = teacher(noisy[rows], t[rows], embeds[rows], mask[rows], **sub).sample.float()
    target = target.float().clone()
    target[rows] = (1 - weight) * target[rows] + weight * taught
    return target


# --- optimiser -------------------------------------------------------------------------------------------------

def is_word_order_parameter(name: str) -> bool:
    """The parameters that let the U-Net see word order and bind it to places: the text position embeddings, the
    attention layers' pixel-coordinate weights and the local text pools' queries (which word each pixel pools; they
    start at zero, and at a late run's decayed lr they would take thousands of steps to move)."""
    return name == "text_positions" or name.endswith(".coordinates.weight") or name.endswith(".text_pool.to_q.weight")


def parameter_groups(unet, cfg: TrainConfig) -> List[dict]:
    """The optimizer's groups: everything at `lr`, and with `text_positions_lr` the word-order parameters (text
    position embeddings, pixel coordinates, local pool queries) in a group of their own at that lr, without weight
    decay (the schedule scales both alike)."""
    named = list(unet.named_parameters())
    order = [p for name, p in named if is_word_order_parameter(name)]
    if cfg.text_positions_lr is None or not order:
        return [dict(params=[p for _, p in named])]
    rest = [p for name, p in named if not is_word_order_parameter(name)]
    return [dict(params=rest), dict(params=order, lr=cfg.text_positions_lr, weight_decay=0.0)]


class EMAWeights:
    """diffusers' EMAModel of the U-Net, kept in a copy of it (on `device`) that `model()` fills when the EMA
    weights are used (measures, samples, checkpoints). Decay min(ema_decay, (1 + n) / (10 + n)) at its n-th update
    after the first, which copies. `ckpt`: a checkpoint whose EMA weights and update count to continue from."""

    def __init__(self, unet: ImagenUNet, decay: float, device, ckpt: Optional[dict] = None):
        from diffusers.training_utils import EMAModel

        self.unet = copy.deepcopy(unet).eval().requires_grad_(False)
        if ckpt:
            self.unet.load_state_dict(ckpt["ema"])
        self.unet.to(device)
        self.ema = EMAModel(self.unet.parameters(), decay=decay, foreach=True)
        self.ema.optimization_step = ckpt["ema_updates"] if ckpt else 0

    @property
    def updates(self) -> int:
        return self.ema.optimization_step

    def step(self, unet: torch.nn.Module) -> None:
        self.ema.step(unet.parameters())

    def model(self) -> ImagenUNet:
        self.ema.copy_to(self.unet.parameters())
        return self.unet
