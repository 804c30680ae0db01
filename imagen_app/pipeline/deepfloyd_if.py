"""DeepFloyd IF as stages of the playground's cascade: IF's folders loaded, and the per-stage denoiser
that runs them in the same step loop as the native stages.

DeepFloyd IF (DeepFloyd / Stability AI, 2023) is the public model built on Imagen's recipe: a frozen
T5-XXL, a 64 px pixel-space base U-Net, a 64 -> 256 super-resolution U-Net conditioned on the noise
level of its input (§2.5), classifier-free guidance and dynamic thresholding. diffusers saves it as
`IFPipeline` (stage I) and `IFSuperResolutionPipeline` (stage II) folders: `tokenizer`, `text_encoder`,
`unet` (a `UNet2DConditionModel`), `scheduler` and, for stage II, `image_noising_scheduler`.

What differs from a native stage, and is handled here:
- prompts: IF's text preprocessing (lower case, stripped; the full caption cleaning needs `bs4` and
  `ftfy`), T5 over exactly 77 tokens (padding included: IF's U-Nets attend to every position, no mask);
  the unconditional branch is the encoded empty prompt.
- guidance: the U-Net predicts epsilon (3 channels) and a learned variance (3 more); classifier-free
  guidance mixes the epsilons only and re-attaches the text branch's variance for the scheduler.
- thresholding: the scheduler's own (`thresholding=True`, ratio 0.95, max 1.5 / 1.0 in IF's configs);
  schedulers without it (Euler) get the same rule applied to x0 here.
- stage II: the low-res image upscaled (bilinear, corners aligned), noised by `image_noising_scheduler`
  at `noise_level` = 1000 * `noise_aug_level`, concatenated to the U-Net's input, and the noise level
  passed as `class_labels`.
Stage III of IF (Stable Diffusion's x4 upscaler, a latent model) is not supported: IF runs 2 stages here.
"""
from __future__ import annotations

import inspect
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .guidance import alpha_bar, classifier_free_guidance, dynamic_threshold, output_from_x0, x0_from_output
from .schedulers import SCHEDULER_EXTRA, scheduler_class
from .settings import StageSettings
from ..hub import hub_offline
from ..models.text_encoder import PromptReport, freeze

MAX_LENGTH = 77  # IF's T5 was trained on 77 tokens (diffusers' IF pipelines pad and cut to 77)
STAGE_CLASSES = {1: ("IFPipeline",), 2: ("IFSuperResolutionPipeline",)}
# IF's own defaults (diffusers' IFPipeline / IFSuperResolutionPipeline __call__ and IF's scheduler configs):
# 100 DDPM steps at guidance 7 for stage I, 50 at guidance 4 and noise_level 250 for stage II.
IF_DEFAULT_SETTINGS = dict(num_inference_steps=[100, 50], guidance_scale=[7.0, 4.0], noise_aug_level=0.25,
                           scheduler="ddpm", max_prompt_length=MAX_LENGTH)
HUB_IDS = {1: "DeepFloyd/IF-I-XL-v1.0 (or IF-I-L-v1.0, IF-I-M-v1.0)", 2: "DeepFloyd/IF-II-L-v1.0 (or IF-II-M-v1.0)"}


class DeepFloydIFNotFound(OSError):
    """An IF stage that is neither a folder on disk nor reachable on the hub."""


# ----- loading ------------------------------------------------------------------------------------------
@dataclass
class IFStage:
    """One loaded IF stage folder."""

    path: str
    pipeline_class: str  # IFPipeline or IFSuperResolutionPipeline
    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    scheduler: object  # the sampling scheduler (DDPM, learned_range variance, thresholding)
    image_noising_scheduler: Optional[object] = None  # stage II: noises the upscaled low-res image
    tokenizer: Optional[object] = None
    text_encoder: Optional[torch.nn.Module] = None


def _not_found_message(path_or_id: str, stage: int, reason: str) -> str:
    name = path_or_id.rstrip("/").split("/")[-1] or "IF"
    return (f"DeepFloyd IF stage {'I' * stage} {path_or_id!r} is not a folder on disk and could not be fetched from the "
            f"hub ({reason}). IF's weights are gated: accept the licence on https://huggingface.co/{path_or_id} "
            f"(a stage {'I' * stage} repo such as {HUB_IDS[stage]}), then, on a machine with network access, "
            f"download it with your token (HF_TOKEN) into a folder, e.g. `hf download {path_or_id} --local-dir "
            f"models/{name} --exclude 'safety_checker/*' '*.bin'`, and pass that folder instead; or run with a hub "
            f"reachable (HF_HUB_OFFLINE unset, HF_TOKEN set).")


def resolve_folder(path_or_id: str, stage: int, with_text_encoder: bool, fp16: bool,
                   local_files_only: Optional[bool] = None) -> str:
    """A local folder for an IF stage: `path_or_id` itself, or the hub snapshot of that repo id (only the
    components used here: no safety checker, watermarker or pickled weights)."""
    path_or_id = str(path_or_id)
    if os.path.isdir(path_or_id):
        return path_or_id
    from huggingface_hub import snapshot_download

    if local_files_only is None:
        local_files_only = hub_offline()
    parts = ["scheduler", "image_noising_scheduler", "unet"] + (["tokenizer", "text_encoder"] if with_text_encoder else [])
    weights = "*fp16*.safetensors*" if fp16 else "*.safetensors*"
    allow = ["model_index.json"] + [f"{p}/{pat}" for p in parts for pat in ("*.json", "*.txt", "*.model", weights)]
    ignore = ["*.bin", "*.msgpack", "*.h5", "*.onnx*"] + ([] if fp16 else ["*fp16*"])
    try:
        return snapshot_download(path_or_id, allow_patterns=allow, ignore_patterns=ignore, local_files_only=local_files_only)
    except Exception as e:  # offline, gated, unknown repo, no network: say what to do
        reason = "HF_HUB_OFFLINE=1" if local_files_only else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise DeepFloydIFNotFound(_not_found_message(path_or_id, stage, reason)) from e


def _variant(folder: str, fp16: bool) -> Optional[str]:
    """"fp16" where the folder has fp16 weight files (IF's hub repos do) and fp16 is asked for."""
    return "fp16" if fp16 and os.path.isdir(folder) and any(".fp16" in f for f in os.listdir(folder)) else None


def load_stage(path_or_id: str, stage: int, torch_dtype: Optional[torch.dtype] = None, with_text_encoder: bool = False,
               text_encoder_dtype: Optional[torch.dtype] = None, local_files_only: Optional[bool] = None) -> IFStage:
    """Loads IF stage `stage` (1 or 2) from a folder saved by diffusers' IF pipelines, or a hub id."""
    import diffusers

    if stage not in STAGE_CLASSES:
        raise NotImplementedError(f"DeepFloyd IF stage {stage} is not supported here: IF runs stages I and II (64 -> 256 px); "
                                  "its stage III is Stable Diffusion's latent x4 upscaler (use diffusers' "
                                  "StableDiffusionUpscalePipeline on the output)")
    fp16 = torch_dtype in (torch.float16, torch.bfloat16)  # IF's fp16 files serve both (cast on load)
    folder = resolve_folder(path_or_id, stage, with_text_encoder, fp16, local_files_only)
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.exists(index_path):
        raise ValueError(f"{path_or_id} is not a saved DeepFloyd IF pipeline: it has no model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    cls_name = index.get("_class_name", "")
    if cls_name == "StableDiffusionUpscalePipeline":
        raise NotImplementedError(f"{path_or_id} is Stable Diffusion's x4 upscaler (IF's stage III), which is not supported "
                                  "here: IF runs stages I and II")
    if cls_name not in STAGE_CLASSES[stage]:
        raise ValueError(f"{path_or_id} is a {cls_name or 'folder without _class_name'}, not an IF stage {'I' * stage} "
                         f"pipeline ({' / '.join(STAGE_CLASSES[stage])})")

    def scheduler(name: str):
        spec = index.get(name)
        if not spec or spec[0] is None or not os.path.isdir(os.path.join(folder, name)):
            return None
        return getattr(diffusers, spec[1]).from_pretrained(os.path.join(folder, name))

    unet_dir = os.path.join(folder, "unet")
    unet = diffusers.UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch_dtype, variant=_variant(unet_dir, fp16))
    unet.eval().requires_grad_(False)
    loaded = IFStage(path=folder, pipeline_class=cls_name, unet=unet, scheduler=scheduler("scheduler"),
                     image_noising_scheduler=scheduler("image_noising_scheduler"))
    if loaded.scheduler is None:
        raise ValueError(f"{path_or_id} has no scheduler/ folder")
    if stage == 2 and loaded.image_noising_scheduler is None:
        raise ValueError(f"{path_or_id} has no image_noising_scheduler/ folder (IF stage II needs it)")
    if with_text_encoder:
        loaded.tokenizer, loaded.text_encoder = load_text_encoder(folder, text_encoder_dtype or torch_dtype)
    return loaded


def load_text_encoder(folder: str, torch_dtype: Optional[torch.dtype] = None):
    """(tokenizer, frozen T5EncoderModel) from an IF stage I folder's `tokenizer/` and `text_encoder/`."""
    from transformers import AutoTokenizer, T5EncoderModel

    tok_dir, enc_dir = os.path.join(folder, "tokenizer"), os.path.join(folder, "text_encoder")
    if not (os.path.isdir(tok_dir) and os.path.isdir(enc_dir)):
        raise ValueError(f"{folder} has no tokenizer/ and text_encoder/: the stage I folder must hold IF's T5")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (ImportError, ValueError, OSError) as e:
        raise type(e)(f"could not load IF's tokenizer from {tok_dir} ({e}); IF's T5 tokenizer is a SentencePiece "
                      "model: `pip install sentencepiece protobuf`") from e
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    variant = _variant(enc_dir, torch_dtype in (torch.float16, torch.bfloat16))
    if variant:
        kwargs["variant"] = variant
    return tokenizer, freeze(T5EncoderModel.from_pretrained(enc_dir, **kwargs))


def load_cascade(stage_1: str, stage_2: Optional[str] = None, stage_3: Optional[str] = None,
                 torch_dtype: Optional[torch.dtype] = None, text_encoder_dtype: Optional[torch.dtype] = None,
                 local_files_only: Optional[bool] = None) -> List[IFStage]:
    """The IF stages named, stage I first; the T5 is loaded once, from stage I (stage II folders' copies,
    where they have one, are not loaded)."""
    if stage_3 is not None:
        load_stage(stage_3, 3)  # raises: stage III (the SD x4 upscaler) is not supported
    stages = [load_stage(stage_1, 1, torch_dtype, with_text_encoder=True, text_encoder_dtype=text_encoder_dtype,
                         local_files_only=local_files_only)]
    if stage_2 is not None:
        stages.append(load_stage(stage_2, 2, torch_dtype, local_files_only=local_files_only))
    return stages


def is_if_unet(unet) -> bool:
    """Whether a stage's U-Net is an IF one (diffusers' UNet2DConditionModel with a text-embedding addition)."""
    return type(unet).__name__ == "UNet2DConditionModel"


def sample_channels(unet, stage_index: int) -> int:
    """Channels of the image a stage denoises: stage II's U-Net input also holds the upscaled low-res image."""
    return unet.config.in_channels if stage_index == 0 else unet.config.in_channels // 2


def default_settings(stages: Sequence[IFStage]) -> Dict[str, object]:
    """IF's defaults per stage; dynamic thresholding as each stage's scheduler is configured."""
    n = len(stages)
    settings = {k: (v[:n] if isinstance(v, list) else v) for k, v in IF_DEFAULT_SETTINGS.items()}
    settings["dynamic_thresholding_percentile"] = [
        100.0 * s.scheduler.config.get("dynamic_thresholding_ratio", 0.995) if s.scheduler.config.get("thresholding") else 0.0
        for s in stages]
    settings["dynamic_thresholding_max"] = [float(s.scheduler.config.get("sample_max_value", 1.0)) for s in stages]
    return settings


# ----- prompts ------------------------------------------------------------------------------------------
def _clean_caption_available() -> bool:
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return is_bs4_available() and is_ftfy_available()


def preprocess_prompt(text: str, clean_caption: bool = True) -> str:
    """IF's prompt preprocessing: with `bs4` and `ftfy` installed, diffusers' IF caption cleaning (URLs, HTML,
    odd punctuation...; what IFPipeline does by default); otherwise, as IFPipeline then does too, lower case
    and stripped."""
    if clean_caption and _clean_caption_available():
        from diffusers import IFPipeline

        for _ in range(2):  # IFPipeline cleans twice
            text = IFPipeline._clean_caption(IFPipeline, text)
        return text
    return text.lower().strip()


class IFPromptEncoder:
    """Prompts -> IF's T5 embeddings (B, 77, D): the same interface as text_encoder.PromptEncoder, with IF's
    rules (preprocessing, exactly 77 positions, the empty prompt encoded like any other) and an LRU cache."""

    def __init__(self, tokenizer, text_encoder, max_length: int = MAX_LENGTH, cache_size: int = 64):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()

    @property
    def embed_dim(self) -> int:
        return self.text_encoder.config.d_model

    def canonical(self, prompt: str) -> str:
        """The text IF's T5 is given for `prompt`."""
        return preprocess_prompt(prompt)

    @torch.no_grad()
    def _encode_batch(self, texts: Sequence[str]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        tok = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        device = self.text_encoder.device
        hidden = self.text_encoder(tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))[0]
        return [(h.cpu(), m.bool()) for h, m in zip(hidden, tok.attention_mask)]

    def encode(self, prompts: Sequence[str], device=None, dtype=torch.float32):
        """prompts -> embeds (B, 77, D) and mask (B, 77) bool (True = a real token; IF's U-Nets ignore it)."""
        texts = [preprocess_prompt(p) for p in prompts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            self._cache.update(zip(todo, self._encode_batch(todo)))
        out = [self._cache[t] for t in texts]
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > max(self.cache_size, len(set(texts))):
            self._cache.popitem(last=False)
        embeds = torch.stack([e for e, _ in out]).to(device=device, dtype=dtype)
        mask = torch.stack([m for _, m in out]).to(device)
        return embeds, mask

    def report(self, prompt: str) -> PromptReport:
        """The prompt as IF sees it: its tokens (up to 77), words with unknown pieces, words the limit cuts."""
        text = preprocess_prompt(prompt)
        rep = PromptReport(prompt=text)
        if not text:
            return rep
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        kept = self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_length).input_ids
        rep.tokens = self.tokenizer.convert_ids_to_tokens(kept)
        unk = self.tokenizer.unk_token_id
        if unk is not None:
            rep.unknown_words = list(dict.fromkeys(  # each word once
                w for w in text.split() if unk in self.tokenizer(w, add_special_tokens=False).input_ids))
        if len(ids) > len(kept):
            rep.truncated_words = self.tokenizer.decode(ids[len(kept) - 1:], skip_special_tokens=True).split()
        return rep


# ----- sampling -----------------------------------------------------------------------------------------
def make_scheduler(base, name: Optional[str], thresholding_percentile: float, thresholding_max: float):
    """A fresh scheduler for one run of an IF stage: the stage's saved schedule, sampled by `name` (default
    its own class, DDPM), with dynamic thresholding set as asked in the scheduler's own `thresholding`
    where the class has it (IF's defaults reproduce IF's saved config)."""
    cls = scheduler_class(name) if name else type(base)
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config.update(SCHEDULER_EXTRA.get(cls, {}))
    if "thresholding" in inspect.signature(cls.__init__).parameters:
        config["thresholding"] = thresholding_percentile > 0
        if thresholding_percentile > 0:
            config.update(dynamic_thresholding_ratio=thresholding_percentile / 100.0, sample_max_value=thresholding_max)
    return cls.from_config(config)


def upscale_and_noise(lowres: torch.Tensor, size: int, noising_scheduler, noise_aug_level: float,
                      noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stage II's condition: the low-res image (B, 3, h, w) upscaled to (B, 3, size, size) (bilinear, corners
    aligned, as IF) and noised by `noising_scheduler` at noise_level = round(1000 * noise_aug_level) (of its
    num_train_timesteps, at most the last one). Returns (noised image, noise levels (B,))."""
    upscaled = F.interpolate(lowres, (size, size), mode="bilinear", align_corners=True)
    steps = noising_scheduler.config.num_train_timesteps
    level = min(int(round(noise_aug_level * steps)), steps - 1)
    levels = torch.full((upscaled.shape[0],), level, device=upscaled.device, dtype=torch.long)
    return noising_scheduler.add_noise(upscaled, noise.to(upscaled.dtype), levels), levels


@dataclass
class IFStageDenoiser:
    """One IF stage's denoiser: x_t -> (the model output to hand the scheduler, predicted x0 as an image).

    Classifier-free guidance on epsilon (the first 3 output channels) with the text branch's learned
    variance re-attached where the scheduler uses it (`variance_type` learned / learned_range); dynamic
    thresholding is the scheduler's own where it has it, else applied to x0 here. Stage II concatenates
    the noised upscaled low-res image to the input and passes its noise level as `class_labels`.
    """

    unet: torch.nn.Module
    scheduler: object
    embeds: torch.Tensor  # (B or 2B, 77, D), the unconditional half first when guiding
    guidance_scale: float
    thresholding_percentile: float = 0.0
    thresholding_max: float = 1.0
    upscaled: Optional[torch.Tensor] = None  # stage II: (B, 3, H, W), noised
    noise_level: Optional[torch.Tensor] = None  # stage II: (B,)
    base: float = 0.0  # what the sample is added to (IF stages are not residual)
    _own_thresholding: bool = field(init=False, default=False)
    _learned_variance: bool = field(init=False, default=False)

    def __post_init__(self):
        params = inspect.signature(type(self.scheduler).__init__).parameters
        self._own_thresholding = "thresholding" in params
        # Only schedulers that take a variance_type use the learned variance (a config copied from DDPM into
        # another class keeps the key even where the class ignores it).
        self._learned_variance = ("variance_type" in params
                                  and self.scheduler.config.get("variance_type") in ("learned", "learned_range"))

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale > 1.0  # IF's rule: guidance only above 1

    def __call__(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        model_input = self.scheduler.scale_model_input(x, t)  # (B, 3, H, W)
        unet_input = model_input if self.upscaled is None else torch.cat([model_input, self.upscaled], dim=1)
        labels = self.noise_level
        if self.use_cfg:
            unet_input = torch.cat([unet_input, unet_input])
            labels = None if labels is None else torch.cat([labels, labels])
        out = self.unet(unet_input, t, encoder_hidden_states=self.embeds, class_labels=labels,
                        return_dict=False)[0].to(model_input.dtype)  # float32 under bf16 autocast (precision.py)
        c = x.shape[1]
        eps, variance = out[:, :c], out[:, c:]  # (B or 2B, 3, H, W) each
        if self.use_cfg:
            eps = classifier_free_guidance(*eps.chunk(2), self.guidance_scale)
            variance = variance.chunk(2)[1]
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        ab = alpha_bar(self.scheduler, t).to(model_input.device, model_input.dtype)
        x0 = x0_from_output(ab, eps, model_input, prediction_type)
        if self.thresholding_percentile > 0:
            x0 = dynamic_threshold(x0, self.thresholding_percentile, self.thresholding_max)
            if not self._own_thresholding:  # step towards the thresholded image
                eps = output_from_x0(ab, x0, model_input, prediction_type)
        if variance.shape[1] and self._learned_variance:
            eps = torch.cat([eps, variance], dim=1)
        return eps, x0


def stage_denoiser(s, stage_index: int, unet, sched, lowres, uncond, cond, noise_fn, device,
                   noising_scheduler=None) -> IFStageDenoiser:
    """The IFStageDenoiser of one stage of one run. `s` is the stage's StageSettings, `uncond` / `cond` the
    (embeds, mask) pairs of the two branches, `noise_fn(shape)` draws Gaussian noise from the run's
    generator(s) (stage II's noise augmentation)."""
    dtype = unet.dtype
    embeds = torch.cat([uncond[0], cond[0]]) if s.guidance_scale > 1.0 else cond[0]
    upscaled = levels = None
    if stage_index > 0:
        if lowres is None:
            raise ValueError(f"stage {s.stage} is IF's super-resolution stage and needs a previous stage's image")
        if noising_scheduler is None:
            raise ValueError(f"stage {s.stage} has no image_noising_scheduler")
        size = unet.config.sample_size
        lowres = lowres.to(device=device, dtype=dtype)
        upscaled, levels = upscale_and_noise(lowres, size, noising_scheduler, s.noise_aug_level,
                                             noise_fn((lowres.shape[0], lowres.shape[1], size, size)))
    return IFStageDenoiser(unet=unet, scheduler=sched, embeds=embeds.to(device=device, dtype=dtype),
                           guidance_scale=s.guidance_scale, thresholding_percentile=s.dynamic_thresholding_percentile,
                           thresholding_max=s.dynamic_thresholding_max, upscaled=upscaled, noise_level=levels)


class DeepFloydIFStage:
    """An IF stage in the cascade's step loop (the stages.py adapter of IF): its scheduler thresholds where it
    can (`make_scheduler`), stage II denoises 3 of its U-Net's 6 input channels, and IFStageDenoiser applies
    IF's guidance and stage II's condition."""

    def __init__(self, pipe, index: int):
        self.index = index  # 0-based
        self.unet = pipe.unets[index]
        self.base_scheduler = pipe.schedulers[index]
        self.noising_scheduler = noising_scheduler_of(pipe, index)

    accepts = staticmethod(is_if_unet)

    @staticmethod
    def prompt_encoder(pipe) -> IFPromptEncoder:
        """IF's prompt rules: its preprocessing, 77 tokens."""
        return IFPromptEncoder(pipe.tokenizer, pipe.text_encoder)

    @property
    def sample_channels(self) -> int:
        return sample_channels(self.unet, self.index)

    def scheduler(self, s: StageSettings):
        return make_scheduler(self.base_scheduler, s.scheduler, s.dynamic_thresholding_percentile,
                              s.dynamic_thresholding_max)

    def attention_rows(self, s: StageSettings, batch: int) -> slice:
        return slice(0, 1)  # IF's U-Nets have no TextAttention layers: nothing is recorded

    def denoiser(self, s: StageSettings, sched, lowres, uncond, cond, noise, device) -> IFStageDenoiser:
        return stage_denoiser(s, self.index, self.unet, sched, lowres, uncond, cond, noise, device,
                              self.noising_scheduler)


# ----- the cascade --------------------------------------------------------------------------------------
def build_pipeline(pipeline_cls, stage_1: str, stage_2: Optional[str] = None, stage_3: Optional[str] = None,
                   torch_dtype: Optional[torch.dtype] = None, text_encoder_dtype: Optional[torch.dtype] = None,
                   local_files_only: Optional[bool] = None):
    """`ImagenPipeline.from_deepfloyd_if`: IF's stages as a cascade of `pipeline_cls`, with IF's defaults."""
    stages = load_cascade(stage_1, stage_2, stage_3, torch_dtype, text_encoder_dtype, local_files_only)
    components = {}
    for k, st in enumerate(stages, 1):
        components[f"unet_{k}"], components[f"scheduler_{k}"] = st.unet, st.scheduler
    pipe = pipeline_cls(tokenizer=stages[0].tokenizer, text_encoder=stages[0].text_encoder, **components)
    pipe.settings.update(default_settings(stages))
    pipe.image_noising_schedulers = [st.image_noising_scheduler for st in stages]
    return pipe


def noising_scheduler_of(pipe, stage_index: int):
    """Stage `stage_index`'s (0-based) image_noising_scheduler; for a pipeline saved and reloaded without it,
    a DDPM scheduler on the stage's own training schedule (IF-II's two schedules are the same cosine one)."""
    from diffusers import DDPMScheduler

    saved = getattr(pipe, "image_noising_schedulers", None) or []
    if stage_index < len(saved) and saved[stage_index] is not None:
        return saved[stage_index]
    config = {k: v for k, v in pipe.schedulers[stage_index].config.items() if not k.startswith("_")}
    config.update(variance_type="fixed_small", thresholding=False)
    return DDPMScheduler.from_config(config)


def cascade_spec(source) -> Optional[Dict[str, object]]:
    """The IF stages that a `--weights` value names, or None for anything else: a dict
    {"stage_1": ..., "stage_2": ...}, a JSON file holding one, an IF stage I folder (model_index.json of an
    IFPipeline), or a DeepFloyd stage I hub id ("DeepFloyd/IF-I-XL-v1.0")."""
    if isinstance(source, dict):
        spec = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        path = str(source)
        if os.path.isfile(path) and path.endswith(".json"):
            with open(path) as f:
                spec = json.load(f)
            if not isinstance(spec, dict) or "stage_1" not in spec:
                return None
        elif os.path.isdir(path):
            index = os.path.join(path, "model_index.json")
            if not os.path.exists(index):
                return None
            with open(index) as f:
                if json.load(f).get("_class_name") not in STAGE_CLASSES[1]:
                    return None
            spec = {"stage_1": path}
        elif path.startswith("DeepFloyd/IF-I-"):
            spec = {"stage_1": path}
        else:
            return None
    else:
        return None
    unknown = set(spec) - {"stage_1", "stage_2", "stage_3", "torch_dtype"}
    if unknown or "stage_1" not in spec:
        raise ValueError(f"a DeepFloyd IF spec names stage_1, optionally stage_2 and torch_dtype; got {sorted(spec)}")
    if isinstance(spec.get("torch_dtype"), str):
        spec["torch_dtype"] = getattr(torch, spec["torch_dtype"])
    return spec


def place(pipe, device, cpu_offload: bool = False, text_encoder_on_cpu: bool = False):
    """Puts an IF cascade on `device`. `cpu_offload` (CUDA only): diffusers' model offload, each model on the
    GPU only while it runs (the T5, then stage I, then stage II). `text_encoder_on_cpu`: the T5 stays on the
    CPU (in bfloat16 where it was loaded in fp16, which CPUs run poorly) and only the U-Nets use the GPU."""
    device = torch.device(device)
    if cpu_offload and device.type == "cuda" and not text_encoder_on_cpu:
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    pipe.to(device)
    if text_encoder_on_cpu:
        pipe.text_encoder.to("cpu")
        if pipe.text_encoder.dtype == torch.float16:
            pipe.text_encoder.to(torch.bfloat16)
    return pipe
