"""The Imagen cascade as a diffusers pipeline: text -> T5 embeddings -> stage 1 -> stage 2 -> ... -> image.

`ImagenPipeline.resolve_settings(...)` fills a caller's settings from the pipeline's defaults and checks
them (settings.py holds the table of the per-stage settings); `stream(...)` is a generator that yields a
`StageEvent` after every denoising step of every stage (with the predicted x0), then one final event;
`__call__` drains it. Each stage's step loop asks the stage's adapter (stages.py: native stages;
deepfloyd_if.py: DeepFloyd IF's) for its scheduler and its denoiser, and steps. Closing the generator
(a `break`, or the UI's Stop) stops the work at the next step. Loading: loading.py.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import deepfloyd_if, loading
from .attention_maps import CrossAttentionRecorder, StageWordMaps
from .deepfloyd_if import DeepFloydIFStage
from .editing import EditInputs, StageEdit, lowres_tensor
from ..images import to_pil
from ..models.caption_vocabulary import CaptionVocabulary
from ..models.text_encoder import PromptEncoder, PromptReport, check_text
from ..models.unet import ImagenUNet
from ..models.schedules import check_stage_schedule
from .precision import default_cpu_bf16, unet_autocast
from .settings import StageSettings, check_resolved, given_settings, resolve_settings, settings_kwargs, whole_number
from .stages import NativeStage, native_scheduler

MAX_STAGES = 6
# The families a stage can be of, each a stages.py adapter: the first whose `accepts(unet)` is true runs the stage.
STAGE_KINDS = (DeepFloydIFStage, NativeStage)


def stage_kind(unet) -> type:
    """The adapter class (STAGE_KINDS) of a stage with this U-Net."""
    return next(kind for kind in STAGE_KINDS if kind.accepts(unet))


@dataclass
class StageEvent:
    """One step of one stage (1-based), or the final event (`is_final`) carrying the output.

    `x0` is the stage's predicted image, (B, 3, H, W) in [-1, 1]; `previews` / `preview` turn it into
    PIL images only when a consumer asks for them."""

    stage: int
    step: int
    total_steps: int
    x0: torch.Tensor
    is_final: bool = False
    output: Optional["ImagenPipelineOutput"] = None
    attention_maps: Optional[Dict[str, np.ndarray]] = None  # with return_attention: this stage's word maps so far
    _previews: Optional[List[Image.Image]] = field(default=None, repr=False)

    @property
    def previews(self) -> List[Image.Image]:
        if self._previews is None:
            self._previews = to_pil(self.x0)
        return self._previews

    @property
    def preview(self) -> Image.Image:
        return self.previews[0]


@dataclass
class ImagenPipelineOutput(BaseOutput):
    images: List[Image.Image]  # the last stage run
    stage_images: List[List[Image.Image]]  # the images of every stage run, stage 1 first
    prompt_reports: List[PromptReport] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    # With return_attention: per stage run, {word of the (first) prompt: (H, W) cross-attention map}; {} for a stage
    # without cross-attention (attention_maps.py).
    attention_maps: Optional[List[Dict[str, np.ndarray]]] = None


class ImagenPipeline(DiffusionPipeline):
    """Imagen: frozen T5 text encoder + a cascade of Efficient U-Nets, each with its own scheduler.

    Components: `tokenizer`, `text_encoder` (transformers T5EncoderModel), and per stage k = 1, 2, ...
    `unet_k` (ImagenUNet) and `scheduler_k` (any diffusers scheduler).
    """

    _optional_components = [f"{kind}_{k}" for k in range(2, MAX_STAGES + 1) for kind in ("unet", "scheduler")]
    model_cpu_offload_seq = "->".join(["text_encoder"] + [f"unet_{k}" for k in range(1, MAX_STAGES + 1)])  # enable_model_cpu_offload
    # A new pipeline's default settings. `pipe.settings` is the one source callers read; it is saved with
    # the pipeline as `pipeline_defaults.json` and loaded back by `from_pretrained`.
    default_settings = dict(num_inference_steps=[16, 8, 4], guidance_scale=[4.0, 2.0, 1.0],
                            dynamic_thresholding_percentile=99.5, noise_aug_level=0.1, scheduler="dpm++",
                            dynamic_thresholding_max=1.1, max_prompt_length=None)

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
            check_stage_schedule(f"unet_{k}", modules[f"unet_{k}"].config, modules[f"scheduler_{k}"])
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, **modules)
        self.num_stages = n
        self.settings = {k: (list(v) if isinstance(v, list) else v) for k, v in self.default_settings.items()}
        self._encoder: Optional[PromptEncoder] = None
        # The names the model was trained on (captions.txt / held_out.txt beside the weights): typed forms of them
        # are encoded as the name itself ("japan" -> "flag: japan"; caption_vocabulary.py). None: normalisation only.
        self.vocabulary: Optional[CaptionVocabulary] = None
        self._lock = threading.Lock()
        # U-Net calls in bf16 autocast on a CPU with bf16 instructions (about 2x faster; precision.py)
        self.cpu_bf16: bool = default_cpu_bf16()

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

    def stage(self, index: int):
        """The adapter (stages.py) that runs stage `index` (0-based): its scheduler, sample and denoiser."""
        return stage_kind(self.unets[index])(self, index)

    @property
    def prompt_encoder(self) -> PromptEncoder:
        if (self._encoder is None or self._encoder.text_encoder is not self.text_encoder
                or getattr(self._encoder, "vocabulary", None) is not self.vocabulary):
            self._encoder = stage_kind(self.unet_1).prompt_encoder(self)  # the family's prompt rules
        return self._encoder

    @property
    def is_deepfloyd_if(self) -> bool:
        """Whether the stages are DeepFloyd IF's (`from_deepfloyd_if`)."""
        return DeepFloydIFStage.accepts(self.unet_1)

    def check_prompt(self, prompt: str) -> PromptReport:
        """What the model will see of `prompt`: tokens, unknown words, words cut by truncation."""
        return self.prompt_encoder.report(prompt)

    @property
    def stage_resolutions(self) -> List[int]:
        return [u.config.sample_size for u in self.unets]

    def upscale_stages(self, image_size: int, target_size: Optional[int] = None) -> Tuple[int, int]:
        """(start_at_stage, stop_at_stage) that super-resolve an image of `image_size` px (its longer side) to
        `target_size` px: a super-resolution stage's output resolution (default: the last stage's). The image
        enters the stage whose input size (the resolution of the stage before it) is nearest to its own, on a
        log scale (a tie goes to the larger input, keeping more of the image), but no later than the target's
        stage: with 32 -> 128 -> 512 px stages, a 40 px image starts at stage 2 (resized to 32 px) and a 128 px
        or larger one goes straight into stage 3 (resized to 128 px), as DeepFloyd IF's stage II takes a 64 px
        image. Raises a ValueError for a cascade without super-resolution stages or a target it cannot make."""
        sizes = self.stage_resolutions
        if len(sizes) < 2:
            raise ValueError("this pipeline has no super-resolution stage")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, float)) or not image_size >= 1:
            raise ValueError(f"image_size must be a size in pixels, got {image_size!r}")
        if target_size is None:
            stop = len(sizes)
        elif not isinstance(target_size, bool) and target_size in sizes[1:]:
            stop = sizes.index(target_size, 1) + 1
        else:
            raise ValueError(f"target_size must be one of {', '.join(map(str, sizes[1:]))} (the super-resolution "
                             f"stages' output sizes), got {target_size!r}")
        distance = {k: abs(math.log(image_size / sizes[k - 2])) for k in range(2, stop + 1)}
        start = min(distance, key=lambda k: (round(distance[k], 9), -k))
        return start, stop

    # ----- settings ---------------------------------------------------------------------------
    def resolve_settings(self, num_inference_steps=None, guidance_scale=None, dynamic_thresholding_percentile=None,
                         noise_aug_level=None, scheduler=None, dynamic_thresholding_max=None,
                         stop_at_stage=None) -> List[StageSettings]:
        """The settings of a run of stages 1..stop_at_stage (default: all), one StageSettings per stage.

        Each setting (settings.SETTINGS) is one value (every stage), a list (one per stage; None in it: that
        stage's default), or None: `self.settings`, the pipeline's defaults (saved with it as
        pipeline_defaults.json). Raises a ValueError that names the setting when a value is wrong.
        """
        return resolve_settings(self.settings, self.num_stages, stop_at_stage=stop_at_stage, **given_settings(locals()))

    def _settings_of_run(self, arguments: Dict[str, Any]) -> List[StageSettings]:
        """A run's settings, resolved once: `stage_settings` as the caller resolved them, else the per-stage
        settings and stop_at_stage among `arguments` (stream's) resolved here."""
        given = given_settings(arguments)
        if arguments["stage_settings"] is None:
            return self.resolve_settings(stop_at_stage=arguments["stop_at_stage"], **given)
        named = sorted(name for name, value in dict(given, stop_at_stage=arguments["stop_at_stage"]).items()
                       if value is not None)
        if named:
            raise ValueError(f"stage_settings are resolved settings: give {', '.join(named)} to resolve_settings, "
                             "not beside them")
        return check_resolved(arguments["stage_settings"], self.num_stages)

    # ----- sampling ---------------------------------------------------------------------------
    def make_scheduler(self, stage: int, name: Optional[str] = None):
        """A fresh scheduler for native stage `stage` (0-based) of one run (so concurrent or cancelled runs share
        no state): the stage's noise schedule, sampled by `name` (default: the stage's own class)."""
        return native_scheduler(self.schedulers[stage], self.unets[stage].config.prediction_type, name)

    @torch.no_grad()
    def stream(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_inference_steps: Optional[Union[int, List[int]]] = None,
        guidance_scale: Optional[Union[float, List[float]]] = None,
        dynamic_thresholding_percentile: Optional[Union[float, List[float]]] = None,
        noise_aug_level: Optional[Union[float, List[float]]] = None,
        scheduler: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        stop_at_stage: Optional[int] = None,
        image: Optional[Union[Image.Image, List[Image.Image], torch.Tensor]] = None,
        start_at_stage: int = 1,
        dynamic_thresholding_max: Optional[Union[float, List[float]]] = None,
        mask_image=None,
        strength: Optional[float] = None,
        return_attention: bool = False,
        stage_settings: Optional[Sequence[StageSettings]] = None,
    ) -> Iterator[StageEvent]:
        """Runs the cascade, yielding a StageEvent after every denoising step and a final one.

        Settings left as None take `self.settings` (see `resolve_settings`). Or `stage_settings`: the
        StageSettings that `resolve_settings` returned, used as they are (then no per-stage setting and no
        stop_at_stage may be given beside them). `image` with `start_at_stage=k` (k >= 2) skips stages
        1..k-1 and super-resolves `image` (PIL images, or a (B, 3, H, W) tensor in [-1, 1], at stage k-1's
        resolution) from stage k on. A list of generators gives each image its own random numbers (initial
        noise, noise augmentation and the step noise of ancestral samplers), so image i of a batch is the
        one `generator[i]` makes alone.

        Editing (editing.py), with `start_at_stage=1`: `image` (any size and mode) alone is image-to-image
        (SDEdit): stage 1 starts from it noised to `strength` (default 0.8) of its schedule, and the
        super-resolution stages follow as usual. With `mask_image` (white = repaint, black = keep) it is
        inpainting: at every step of every stage the kept region is the init image at that stage's
        resolution, noised to the current level (RePaint); `strength` (default 1) applies to stage 1.
        """
        arguments = dict(locals())
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != len(prompts) or not all(isinstance(p, str) for p in negatives):
                raise ValueError(f"negative_prompt must be a string or a list of {len(prompts)} strings")
        for name, texts in (("prompt", prompts), ("negative prompt", negatives)):  # before any work
            for i, text in enumerate(texts):
                check_text(text, name if len(texts) == 1 else f"{name} {i + 1}")
        num_images_per_prompt = whole_number("num_images_per_prompt", num_images_per_prompt, 1, 16)
        stages = self._settings_of_run(arguments)
        n = len(stages)
        if isinstance(start_at_stage, bool) or not isinstance(start_at_stage, int) or not 1 <= start_at_stage <= n:
            raise ValueError(f"start_at_stage must be an integer from 1 to {n}, got {start_at_stage!r}")
        if image is None and start_at_stage > 1:
            raise ValueError(f"start_at_stage={start_at_stage} needs `image`, the image to super-resolve")
        if (mask_image is not None or strength is not None) and (image is None or start_at_stage > 1):
            raise ValueError("mask_image and strength edit `image` from stage 1: give `image` with start_at_stage=1")

        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images")
        edit = None
        if image is not None and start_at_stage == 1:  # image-to-image or inpainting, checked before any work
            edit, image = EditInputs.prepare(image, mask_image, strength, batch), None
        with self._lock:  # the embedding cache is shared between threads
            embeds, mask = self.prompt_encoder.encode(negatives + prompts, device=device)
            reports = [self.prompt_encoder.report(p) for p in prompts]
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)  # (2 * len(prompts) * k, L, D)
        mask = mask.repeat_interleave(num_images_per_prompt, dim=0)
        uncond, cond = (embeds[:batch], mask[:batch]), (embeds[batch:], mask[batch:])

        # The settings of the stages that run: with start_at_stage > 1, each per-stage list holds stages
        # start_at_stage..stop_at_stage only (the skipped stages' settings were never used).
        ran = stages[start_at_stage - 1:]
        settings = dict(prompt=prompt, negative_prompt=negative_prompt, **settings_kwargs(ran),
                        num_images_per_prompt=num_images_per_prompt)
        settings["stop_at_stage"] = n
        if start_at_stage > 1:
            settings["start_at_stage"] = start_at_stage
        settings["scheduler"] = [s.scheduler or type(self.schedulers[s.stage - 1]).__name__ for s in ran]
        if edit is not None:
            settings.update(edit=edit.mode, strength=edit.strength)
        if image is not None:  # (B, 3, H, W) in [-1, 1], standing for stage start_at_stage - 1's output
            expected = self.unets[start_at_stage - 2].config.sample_size
            image = image if isinstance(image, torch.Tensor) else lowres_tensor(image, expected, batch)  # resized
            if image.shape[0] != batch or image.shape[-1] != expected or image.shape[-2] != expected:
                raise ValueError(f"image must be {batch} image(s) of {expected}x{expected} px for start_at_stage={start_at_stage}, "
                                 f"got {tuple(image.shape)}")
            image = image.to(device=device, dtype=self.unets[start_at_stage - 1].dtype)
        stage_images: List[List[Image.Image]] = []
        attention_maps: List[Dict[str, np.ndarray]] = []
        for s in stages[start_at_stage - 1:]:
            stage = self.stage(s.stage - 1)
            unet = stage.unet
            stage_edit = edit and edit.stage(unet.config.sample_size, first=s.stage == start_at_stage,
                                             device=device, dtype=unet.dtype)
            words = self._attention_words(s, stage, prompts[0], batch) if return_attention else None
            image = yield from self._run_stage(s, stage, image, uncond, cond, generator, batch, device, edit=stage_edit,
                                               attention=words)
            stage_images.append(to_pil(image))
            if words is not None:
                attention_maps.append(words.maps())
        output = ImagenPipelineOutput(images=stage_images[-1], stage_images=stage_images, prompt_reports=reports,
                                      settings=settings, attention_maps=attention_maps if return_attention else None)
        yield StageEvent(stage=n, step=stages[-1].num_inference_steps, total_steps=stages[-1].num_inference_steps,
                         x0=image, is_final=True, output=output, _previews=stage_images[-1])

    def _attention_words(self, s: StageSettings, stage, prompt: str, batch: int) -> "StageWordMaps":
        """Records stage `s`'s cross-attention for the first image (the conditional half of a guidance batch)."""
        unet = stage.unet
        recorder = CrossAttentionRecorder(unet, unet.config.sample_size, rows=stage.attention_rows(s, batch))
        encoder = self.prompt_encoder
        return StageWordMaps(recorder, encoder.tokenizer, encoder.canonical(prompt), getattr(unet.config, "num_null_tokens", 0),
                             encoder.max_length)

    def _run_stage(self, s: StageSettings, stage, lowres, uncond, cond, generator, batch, device,
                   edit: Optional[StageEdit] = None, attention: Optional["StageWordMaps"] = None) -> Iterator[StageEvent]:
        """One stage's denoising loop (a generator of StageEvents), with the stage's adapter `stage` (stages.py);
        returns the stage's image in [-1, 1]. `edit` (editing.py) starts it part-way from an init image and/or
        keeps the unmasked region."""
        unet = stage.unet
        sched = stage.scheduler(s)
        sched.set_timesteps(s.num_inference_steps, device=device)
        size, dtype = unet.config.sample_size, unet.dtype
        noise = _randn((batch, stage.sample_channels, size, size), generator, device, dtype)
        x = noise * sched.init_noise_sigma
        denoise = stage.denoiser(s, sched, lowres, uncond, cond, lambda shape: _randn(shape, generator, device, dtype),
                                 device)
        timesteps = sched.timesteps
        if edit is not None:
            timesteps, x = edit.start(sched, noise, denoise.base)
        # Ancestral samplers (DDPM, Euler ancestral) draw noise at every step: from the caller's generator(s).
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        precision = unet_autocast(unet, self.cpu_bf16)  # chosen once a stage, entered at every step
        for i, t in enumerate(timesteps):
            with attention.recorder if attention is not None else contextlib.nullcontext(), precision:
                model_output, x0 = denoise(x, t)
            result = sched.step(model_output, t, x, return_dict=True, **step_kwargs)
            x = result.prev_sample
            own_x0 = getattr(result, "pred_original_sample", None)  # the scheduler's x0, where it returns one
            preview = x0 if own_x0 is None else denoise.base + own_x0
            if edit is not None:
                x = edit.after_step(sched, x, noise, timesteps, i)
                preview = edit.preview(preview)
            yield StageEvent(stage=s.stage, step=i + 1, total_steps=len(timesteps), x0=preview,
                             attention_maps=attention.maps() if attention is not None else None)
        return (denoise.base + x).clamp(-1, 1)

    def __call__(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_inference_steps: Optional[Union[int, List[int]]] = None,
        guidance_scale: Optional[Union[float, List[float]]] = None,
        dynamic_thresholding_percentile: Optional[Union[float, List[float]]] = None,
        noise_aug_level: Optional[Union[float, List[float]]] = None,
        scheduler: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        stop_at_stage: Optional[int] = None,
        image: Optional[Union[Image.Image, List[Image.Image], torch.Tensor]] = None,
        start_at_stage: int = 1,
        dynamic_thresholding_max: Optional[Union[float, List[float]]] = None,
        mask_image=None,
        strength: Optional[float] = None,
        return_attention: bool = False,
        stage_settings: Optional[Sequence[StageSettings]] = None,
    ) -> ImagenPipelineOutput:
        """Generates images: runs `stream` with the same arguments to its end, with a progress bar per stage."""
        arguments = dict(locals())
        del arguments["self"]
        bar = None
        for event in self.stream(**arguments):
            if bar is not None and (event.is_final or event.step == 1):  # a stage ended
                bar.close()
                bar = None
            if event.is_final:
                return event.output
            if bar is None:
                bar = self.progress_bar(total=event.total_steps)
                bar.set_description(f"stage {event.stage}")
            bar.update(1)
        raise RuntimeError("the cascade ended without a final event")

    # ----- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_deepfloyd_if(cls, stage_1, stage_2=None, stage_3=None, torch_dtype=None, **kwargs) -> "ImagenPipeline":
        """DeepFloyd IF's stage I (and II) as this cascade: folders saved by diffusers' IFPipeline /
        IFSuperResolutionPipeline, or hub ids where a hub is reachable; IF's defaults per stage. Stage III
        (the SD x4 upscaler) is not supported. Keyword arguments: text_encoder_dtype, local_files_only."""
        return deepfloyd_if.build_pipeline(cls, stage_1, stage_2, stage_3, torch_dtype=torch_dtype, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, local_files_only=None, **kwargs):
        """Loads a saved pipeline folder (or, where a hub is reachable, a hub repo id) by its
        `model_index.json`; `pipeline_defaults.json` beside it sets the default settings (loading.py).
        Components given as keyword arguments replace the saved ones. DeepFloyd IF sources (an IF stage I
        folder or hub id, a JSON file or dict naming stage_1 / stage_2) go to `from_deepfloyd_if`, in fp16
        where CUDA is available."""
        spec = deepfloyd_if.cascade_spec(pretrained_model_name_or_path)
        if spec is not None:
            spec["torch_dtype"] = torch_dtype or spec.get("torch_dtype") or (torch.float16 if torch.cuda.is_available() else None)
            return cls.from_deepfloyd_if(**spec, local_files_only=local_files_only)
        path = loading.local_folder(pretrained_model_name_or_path, local_files_only)
        pipe = cls(**loading.load_components(path, torch_dtype, **kwargs))
        pipe.vocabulary = CaptionVocabulary.from_folder(path)
        pipe.load_warnings = loading.load_defaults(path, pipe.settings)
        return pipe

    def save_pretrained(self, save_directory, **kwargs):
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        loading.write_defaults(save_directory, self.settings)
        if self.vocabulary is not None:
            self.vocabulary.save(save_directory)


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Gaussian noise drawn in float32 on the generator's device (one generator per image for a list)."""
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32).to(dtype)
