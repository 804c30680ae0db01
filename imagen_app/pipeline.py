"""The Imagen cascade as a diffusers pipeline: text -> T5 embeddings -> stage 1 -> stage 2 -> ... -> image.

`ImagenPipeline.stream(...)` is a generator that yields a `StageEvent` after every denoising step of
every stage (with the predicted-x0 preview), then one final event; `__call__` drains it. Closing
the generator (a `break`, or the UI's Stop) stops the work at the next step.
"""
from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffusers import (DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler)
from diffusers.utils import BaseOutput

from .guidance import classifier_free_guidance, dynamic_threshold, noise_augment
from .text_encoder import PromptEncoder, PromptReport, freeze
from .unet import ImagenUNet, upsample_lowres

MAX_STAGES = 6

# Scheduler names accepted by `scheduler=` (case-insensitive), and their diffusers classes.
SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}
SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpm-solver++": "dpm++", "dpmsolver": "dpm++", "euler_a": "euler-ancestral",
                     "euler a": "euler-ancestral", "euler_ancestral": "euler-ancestral"}
SCHEDULER_EXTRA = {DPMSolverMultistepScheduler: {"algorithm_type": "dpmsolver++"}}


def noise_schedule(beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon") -> DDPMScheduler:
    """The training noise schedule of a stage, saved with it; samplers are built from its config.

    v-prediction stages space their sampling steps "trailing" (Lin et al. 2023, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", Table 2): the first step is at t = T - 1, where the
    input really is pure noise. diffusers' default "leading" spacing starts at t = T - T/n (888 of 1000
    at 8 steps), so a few-step sampler treats pure noise as a partly clean image and leaves grain in
    the output (measured on the shipped 32->128 stage: SSIM 0.65 -> 0.89 at 8 steps). Epsilon stages
    keep "leading": at t = T - 1 of the cosine schedule x0 = (x - sigma eps) / alpha with alpha = 5e-5,
    which float32 cannot resolve (Euler samplers even return NaN).
    """
    spacing = "trailing" if prediction_type == "v_prediction" else "leading"
    return DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing)


def scheduler_class(name: str):
    key = SCHEDULER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key]


@dataclass
class StageEvent:
    """One step of one stage (1-based), or the final event (`is_final`) carrying the output."""

    stage: int
    step: int
    total_steps: int
    previews: List[Image.Image]
    is_final: bool = False
    output: Optional["ImagenPipelineOutput"] = None

    @property
    def preview(self) -> Image.Image:
        return self.previews[0]


@dataclass
class ImagenPipelineOutput(BaseOutput):
    images: List[Image.Image]  # the last stage run
    stage_images: List[List[Image.Image]]  # the images of every stage run, stage 1 first
    prompt_reports: List[PromptReport] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)


def to_pil(x: torch.Tensor) -> List[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def pil_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


class ImagenPipeline(DiffusionPipeline):
    """Imagen: frozen T5 text encoder + a cascade of Efficient U-Nets, each with its own scheduler.

    Components: `tokenizer`, `text_encoder` (transformers T5EncoderModel), and per stage k = 1, 2, ...
    `unet_k` (ImagenUNet) and `scheduler_k` (any diffusers scheduler).
    """

    _optional_components = [f"{kind}_{k}" for k in range(2, MAX_STAGES + 1) for kind in ("unet", "scheduler")]
    # Defaults of the per-stage settings when the caller gives none; the shipped model's
    # `pipeline_defaults.json` (see `from_pretrained`) overrides them.
    default_settings = dict(num_inference_steps=[16, 8, 4], guidance_scale=[4.0, 2.0, 1.0],
                            dynamic_thresholding_percentile=99.5, noise_aug_level=0.1, scheduler="dpm++",
                            dynamic_thresholding_max=1.5, max_prompt_length=None)

    def __init__(self, tokenizer, text_encoder, **stages):
        super().__init__()
        n = 0
        while stages.get(f"unet_{n + 1}") is not None:
            n += 1
        if n == 0:
            raise ValueError("an ImagenPipeline needs at least unet_1 and scheduler_1")
        modules = {f"{kind}_{k}": stages.get(f"{kind}_{k}") for k in range(1, MAX_STAGES + 1) for kind in ("unet", "scheduler")}
        for k in range(1, n + 1):
            if modules[f"scheduler_{k}"] is None:
                raise ValueError(f"unet_{k} has no scheduler_{k}")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, **modules)
        self.num_stages = n
        self.settings = {k: (list(v) if isinstance(v, list) else v) for k, v in self.default_settings.items()}
        self._encoder: Optional[PromptEncoder] = None
        self._lock = threading.Lock()

    @classmethod
    def _get_signature_keys(cls, obj):
        # Stages are keyword components (unet_k, scheduler_k), so diffusers' save/load must be told them.
        modules = ["tokenizer", "text_encoder"] + [f"{kind}_{k}" for k in range(1, MAX_STAGES + 1) for kind in ("unet", "scheduler")]
        return sorted(modules), []

    # ----- components -------------------------------------------------------------------------
    @property
    def unets(self) -> List[ImagenUNet]:
        return [getattr(self, f"unet_{k}") for k in range(1, self.num_stages + 1)]

    @property
    def schedulers(self) -> list:
        return [getattr(self, f"scheduler_{k}") for k in range(1, self.num_stages + 1)]

    @property
    def prompt_encoder(self) -> PromptEncoder:
        if self._encoder is None or self._encoder.text_encoder is not self.text_encoder:
            self._encoder = PromptEncoder(self.tokenizer, self.text_encoder, max_length=self.settings.get("max_prompt_length"))
        return self._encoder

    def check_prompt(self, prompt: str) -> PromptReport:
        """What the model will see of `prompt`: tokens, unknown words, words cut by truncation."""
        return self.prompt_encoder.report(prompt)

    @property
    def stage_resolutions(self) -> List[int]:
        return [u.config.sample_size for u in self.unets]

    # ----- argument handling ------------------------------------------------------------------
    def _per_stage(self, name: str, value, n: int, kind=float) -> list:
        if value is None:  # the pipeline's default: fitted to the number of stages
            value = self.settings[name]
            if isinstance(value, (list, tuple)):
                value = (list(value) + [value[-1]] * n)[:n]
        if isinstance(value, (str, int, float)) or value is None:
            values = [value] * n
        else:
            values = list(value)
            if len(values) < n or len(values) > self.num_stages:
                raise ValueError(f"{name} has {len(values)} values but the cascade runs {n} of "
                                 f"{self.num_stages} stages: give one value or one per stage")
            values = values[:n]
        out = []
        for k, v in enumerate(values, 1):
            if kind is str:
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"{name} for stage {k} must be a scheduler name, got {v!r}")
                out.append(v)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} for stage {k} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name} for stage {k} must be a finite number, got {v}")
            if kind is int and v != int(v):
                raise ValueError(f"{name} for stage {k} must be a whole number, got {v}")
            out.append(kind(v))
        return out

    def _check_settings(self, steps, scales, percentiles, aug_levels, schedulers):
        for k, s in enumerate(steps, 1):
            if s < 1 or s > 1000:
                raise ValueError(f"num_inference_steps for stage {k} must be between 1 and 1000, got {s}")
        for k, w in enumerate(scales, 1):
            if w < 0 or w > 100:
                raise ValueError(f"guidance_scale for stage {k} must be between 0 and 100, got {w}")
        for k, p in enumerate(percentiles, 1):
            if p != 0 and not 50 <= p <= 100:
                raise ValueError(f"dynamic_thresholding_percentile for stage {k} must be 0 (off) or in [50, 100], got {p}")
        for k, a in enumerate(aug_levels, 1):
            if not 0 <= a <= 1:
                raise ValueError(f"noise_aug_level for stage {k} must be in [0, 1], got {a}")
        for s in schedulers:
            if s is not None:
                scheduler_class(s)

    # ----- sampling ---------------------------------------------------------------------------
    def _make_scheduler(self, stage: int, name: Optional[str], percentile: float):
        """A fresh scheduler for one run (so concurrent or cancelled runs share no state)."""
        base = self.schedulers[stage]
        cls = scheduler_class(name) if name else type(base)
        # Private keys (e.g. `_use_default_values`) would make from_config drop the overrides below.
        config = {k: v for k, v in base.config.items() if not k.startswith("_")}
        config.update(SCHEDULER_EXTRA.get(cls, {}))
        config["prediction_type"] = self.unets[stage].config.prediction_type
        # The scheduler thresholds x0 itself where it can; not for residual stages, whose x0 is a
        # residual: there the rule is applied to the image (residual + upsampled low-res) in _run_stage.
        if "thresholding" in inspect.signature(cls.__init__).parameters:
            own = percentile > 0 and not getattr(self.unets[stage].config, "residual", False)
            config.update(thresholding=own, dynamic_thresholding_ratio=(percentile or 99.5) / 100,
                          sample_max_value=float(self.settings["dynamic_thresholding_max"]), clip_sample=False)
        return cls.from_config(config)

    @torch.no_grad()
    def stream(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_inference_steps=None,
        guidance_scale=None,
        dynamic_thresholding_percentile=None,
        noise_aug_level=None,
        scheduler=None,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        stop_at_stage: Optional[int] = None,
        image: Optional[Union[Image.Image, List[Image.Image], torch.Tensor]] = None,
        start_at_stage: int = 1,
    ) -> Iterator[StageEvent]:
        """Runs the cascade, yielding a StageEvent after every denoising step and a final one.

        `image` with `start_at_stage=k` (k >= 2) skips stages 1..k-1 and super-resolves `image`
        (PIL images, or a (B, 3, H, W) tensor in [-1, 1], at stage k-1's resolution) from stage k on.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != len(prompts) or not all(isinstance(p, str) for p in negatives):
                raise ValueError(f"negative_prompt must be a string or a list of {len(prompts)} strings")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or not 1 <= num_images_per_prompt <= 16:
            raise ValueError(f"num_images_per_prompt must be an integer from 1 to 16, got {num_images_per_prompt!r}")
        n = self.num_stages if stop_at_stage is None else stop_at_stage
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_stages:
            raise ValueError(f"stop_at_stage must be an integer from 1 to {self.num_stages}, got {stop_at_stage!r}")
        if isinstance(start_at_stage, bool) or not isinstance(start_at_stage, int) or not 1 <= start_at_stage <= n:
            raise ValueError(f"start_at_stage must be an integer from 1 to {n}, got {start_at_stage!r}")
        if (image is None) != (start_at_stage == 1):
            raise ValueError("give `image` exactly when start_at_stage > 1 (the image to super-resolve)")
        steps = self._per_stage("num_inference_steps", num_inference_steps, n, int)
        scales = self._per_stage("guidance_scale", guidance_scale, n)
        percentiles = self._per_stage("dynamic_thresholding_percentile", dynamic_thresholding_percentile, n)
        aug_levels = self._per_stage("noise_aug_level", noise_aug_level, n)
        scheduler_names = self._per_stage("scheduler", scheduler, n, str)
        self._check_settings(steps, scales, percentiles, aug_levels, scheduler_names)

        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images")
        with self._lock:  # the embedding cache is shared between threads
            embeds, mask = self.prompt_encoder.encode(negatives + prompts, device=device)
            reports = [self.prompt_encoder.report(p) for p in prompts]
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)  # (2 * len(prompts) * k, L, D)
        mask = mask.repeat_interleave(num_images_per_prompt, dim=0)
        uncond, cond = (embeds[:batch], mask[:batch]), (embeds[batch:], mask[batch:])

        settings = dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=scales,
                        dynamic_thresholding_percentile=percentiles, noise_aug_level=aug_levels,
                        scheduler=[s or type(self.schedulers[k]).__name__ for k, s in enumerate(scheduler_names)],
                        num_images_per_prompt=num_images_per_prompt, stop_at_stage=n)
        stage_images: List[List[Image.Image]] = []
        if image is not None:  # (B, 3, H, W) in [-1, 1], standing for stage start_at_stage - 1's output
            image = image if isinstance(image, torch.Tensor) else pil_to_tensor([image] if isinstance(image, Image.Image) else image)
            expected = self.unets[start_at_stage - 2].config.sample_size
            if image.shape[0] != batch or image.shape[-1] != expected or image.shape[-2] != expected:
                raise ValueError(f"image must be {batch} image(s) of {expected}x{expected} px for start_at_stage={start_at_stage}, "
                                 f"got {tuple(image.shape)}")
            image = image.to(device=device, dtype=self.unets[start_at_stage - 1].dtype)
        for k in range(start_at_stage - 1, n):
            image = yield from self._run_stage(k, image, uncond, cond, steps[k], scales[k], percentiles[k], aug_levels[k],
                                               scheduler_names[k], generator, batch, device)
            stage_images.append(to_pil(image))
        output = ImagenPipelineOutput(images=stage_images[-1], stage_images=stage_images, prompt_reports=reports,
                                      settings=settings)
        yield StageEvent(stage=n, step=steps[-1], total_steps=steps[-1], previews=stage_images[-1], is_final=True,
                         output=output)

    def _run_stage(self, k, lowres, uncond, cond, steps, scale, percentile, aug_level, scheduler_name, generator, batch, device):
        unet = self.unets[k]
        sched = self._make_scheduler(k, scheduler_name, percentile)
        sched.set_timesteps(steps, device=device)
        own_thresholding = bool(sched.config.get("thresholding", False))
        size = unet.config.sample_size
        dtype = unet.dtype
        shape = (batch, unet.config.in_channels, size, size)
        x = _randn(shape, generator, device, dtype) * sched.init_noise_sigma
        use_cfg = scale != 1.0
        embeds = torch.cat([uncond[0], cond[0]]) if use_cfg else cond[0]
        mask = torch.cat([uncond[1], cond[1]]) if use_cfg else cond[1]
        extra = {}
        base = 0  # what the stage's sample is added to: the upsampled low-res image for residual stages
        if unet.config.lowres_cond:
            if lowres is None:
                raise ValueError(f"stage {k + 1} is a super-resolution stage and needs a previous stage")
            lowres = lowres.to(dtype)
            if getattr(unet.config, "residual", False):
                base = upsample_lowres(lowres, size)
            # Noise conditioning augmentation (§2.5): the same fixed level at sampling time.
            noisy = noise_augment(lowres, aug_level, noise=_randn(lowres.shape, generator, device, dtype))
            levels = torch.full((noisy.shape[0],), aug_level, device=device)
            extra = dict(lowres_image=torch.cat([noisy, noisy]) if use_cfg else noisy,
                         noise_aug_level=torch.cat([levels, levels]) if use_cfg else levels)
        step_kwargs = {"generator": generator} if "generator" in _step_params(sched) and not isinstance(generator, list) else {}
        for i, t in enumerate(sched.timesteps):
            model_input = sched.scale_model_input(x, t)
            unet_input = torch.cat([model_input, model_input]) if use_cfg else model_input
            out = unet(unet_input, t, embeds.to(dtype), mask, return_dict=False, **extra)[0]
            if use_cfg:
                out = classifier_free_guidance(*out.chunk(2), scale)  # one batched call, both branches
            x0 = _x0_from_output(sched, out, model_input, t, unet.config.prediction_type)
            if percentile > 0:
                x0_t = dynamic_threshold(base + x0, percentile, float(self.settings["dynamic_thresholding_max"])) - base
                if not own_thresholding:
                    # The scheduler has no thresholding: apply the rule to x0 and hand it the model
                    # output that this thresholded x0 implies.
                    out = _output_from_x0(sched, x0_t, model_input, t, unet.config.prediction_type)
                x0 = x0_t
            result = sched.step(out, t, x, return_dict=True, **step_kwargs)
            x = result.prev_sample
            preview = getattr(result, "pred_original_sample", None)
            preview = x0 if preview is None else preview
            yield StageEvent(stage=k + 1, step=i + 1, total_steps=steps, previews=to_pil(base + preview))
        return (base + x).clamp(-1, 1)

    def __call__(self, prompt, *args, **kwargs) -> ImagenPipelineOutput:
        """Generates images; the same arguments as `stream`."""
        bar = None
        for event in self.stream(prompt, *args, **kwargs):
            if event.is_final:
                if bar is not None:
                    bar.close()
                return event.output
            if event.step == 1:
                if bar is not None:
                    bar.close()
                bar = self.progress_bar(total=event.total_steps)
                bar.set_description(f"stage {event.stage}")
            bar.update(1)
        raise RuntimeError("the cascade ended without a final event")

    # ----- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, local_files_only=None, **kwargs):
        """Loads a saved pipeline folder (or, where a hub is reachable, a hub repo id) by its
        `model_index.json`; `pipeline_defaults.json` beside it sets the default settings.
        Components given as keyword arguments replace the saved ones."""
        import importlib
        import json
        import os

        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            if local_files_only is None:
                local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
            path = snapshot_download(path, local_files_only=local_files_only)
        index_path = os.path.join(path, "model_index.json")
        if not os.path.exists(index_path):
            raise ValueError(f"{path} is not a saved ImagenPipeline: it has no model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        components = {}
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
                continue
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            library, class_name = spec
            component_cls = getattr(importlib.import_module(library), class_name)
            load_kwargs = {}
            if torch_dtype is not None and hasattr(component_cls, "dtype"):
                load_kwargs["torch_dtype" if library != "transformers" else "dtype"] = torch_dtype
            component = component_cls.from_pretrained(os.path.join(path, name), **load_kwargs)
            if torch_dtype is None and isinstance(component, ImagenUNet) and component.dtype == torch.float16:
                component = component.float()  # weights ship in fp16; CPUs compute in fp32 (pipe.to() may change it)
            if isinstance(component, torch.nn.Module):
                _own_aligned_memory(component)
            components[name] = component
        components.update(kwargs)
        if hasattr(components.get("text_encoder"), "requires_grad_"):
            components["text_encoder"] = freeze(components["text_encoder"])
        pipe = cls(**components)
        defaults = os.path.join(path, "pipeline_defaults.json")
        if os.path.exists(defaults):
            with open(defaults) as f:
                pipe.settings.update(json.load(f))
        return pipe

    def save_pretrained(self, save_directory, **kwargs):
        import json
        import os

        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        with open(os.path.join(save_directory, "pipeline_defaults.json"), "w") as f:
            json.dump(self.settings, f, indent=2)


@torch.no_grad()
def _own_aligned_memory(module: torch.nn.Module) -> None:
    """Copies weights that safetensors mapped at unaligned file offsets into fresh (aligned) tensors.
    CPU kernels take other code paths for unaligned weights, which round differently: sampling from
    pure noise amplifies that, so a reloaded pipeline would not reproduce the saved one's images."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def _step_params(sched):
    return inspect.signature(sched.step).parameters


def _randn(shape, generator, device, dtype):
    if isinstance(generator, list):
        return torch.cat([_randn((1, *shape[1:]), g, device, dtype) for g in generator])
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)


def _alpha_bar(scheduler, t) -> torch.Tensor:
    """alpha_bar at a (possibly fractional) timestep, interpolated from the training schedule."""
    ac = scheduler.alphas_cumprod.float()
    t = float(t)
    lo = int(math.floor(t))
    hi = min(lo + 1, len(ac) - 1)
    frac = t - lo
    return (ac[lo] * (1 - frac) + ac[hi] * frac).to(torch.float32)


def _x0_from_output(scheduler, model_output, model_input, t, prediction_type):
    """Predicted x0 from the model output, in the DDPM parametrisation of the (scaled) model input."""
    ab = _alpha_bar(scheduler, t).to(model_input.dtype)
    if prediction_type == "v_prediction":
        return ab.sqrt() * model_input - (1 - ab).sqrt() * model_output
    return (model_input - (1 - ab).sqrt() * model_output) / ab.sqrt()


def _output_from_x0(scheduler, x0, model_input, t, prediction_type):
    ab = _alpha_bar(scheduler, t).to(model_input.dtype)
    eps = (model_input - ab.sqrt() * x0) / (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return eps
