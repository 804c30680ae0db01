"""A training run's settings (`TrainConfig`) and the JSON files they come from.

A config file holds TrainConfig's fields, or extends another file and gives only the keys that differ:

    {"extends": "../base32_finetune.json", "run_dir": "runs/cpu_recoloured_round4", "lr": 5e-05}

`extends` is a path relative to the file that names it, and the file it names may extend another. Objects (the
`unet` and `curriculum` sections) merge key by key; anything else, lists and null included, replaces the
inherited value.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional


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
    # Extra loss weight on the pixels with ink (and one pixel around them) in the clean image: a pixel's squared error
    # counts 1 + ink_loss_weight times. In a scene most pixels are white paper, so the plain mean lets the paper
    # dominate the gradient and the objects (a tenth of the pixels) are learned last (train.ink_weight).
    ink_loss_weight: float = 0.0
    # Anti-forgetting for a fine-tune on new rows (scenes): on every row that is not a scene, the target moves this
    # far (0 to 1) from the data's target to the prediction of the stage the run started from (`init_from`, frozen),
    # on the same noisy image, step and text. Data replay alone shows each of ~3,900 captions once in a few hundred
    # steps with a high-variance target (one noise draw); the starting stage's prediction is the low-variance target
    # of what it already draws, so what it knew is held at every step instead of re-learned (train.teacher_targets).
    teacher_target_weight: float = 0.0
    # The grounding loss (training/grounding.py, TokenCompose): with live_scenes, each object's words in a scene's
    # caption are taught to attend to where the object is, at the text attention layers whose maps are at least
    # grounding_min_side on a side; (token term weight, pixel term weight), e.g. [0.01, 0.001]. None: off.
    grounding_loss_weights: Optional[list] = None
    grounding_min_side: int = 8
    # The chance that a row's pooled text vector (added to the time embedding) is left out of the U-Net being trained
    # (not of the teacher): the shipped base stage reads an emoji's identity mostly from that one vector (zeroed, "a
    # cat" and "pizza" become other things), which cannot say "a cat here, a pizza there"; without it the identity
    # must come through the text attention layers, where each object's words act at its own place. On the rows the
    # teacher holds, the student without the vector learns to draw what the teacher draws with it.
    pooled_text_drop_prob: float = 0.0
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
    # The share of (non-flag, non-skin-tone) captions drawn in a frame people type ("draw a pizza", "pizza emoji":
    # training/phrasing.framed_caption), so that the stage draws a name the same with words around it. A stage trained
    # on the bare names alone read any word around a name as part of it ("a photo of a pizza" -> a flamingo).
    typed_form_share: float = 0.0
    # An image folder with scene rows (training/scenes.py): compose every scene row afresh at each draw (a new seen
    # combination, size and place of the row's task) instead of showing the stored image (scenes.LiveScenes).
    live_scenes: bool = False
    # With live_scenes: object sizes (smallest, largest fraction of the side) by task in place of scenes.SIZE_RANGE,
    # e.g. {"colours": [0.8, 1.0]}: a coloured object as large as a single emoji, the scale the stage draws it at.
    scene_size_ranges: Optional[dict] = None
    # With live_scenes: compose the scenes of this many of the objects only (scenes.SceneWorld.restricted; 0: all):
    # a small world, to tell in CPU hours whether a recipe learns compositions at all. Evaluate it with
    # `evaluate --parts geneval --geneval-objects N`.
    scene_objects: int = 0
    # The rows that are not scenes shrunk to (smallest, largest) fraction of the side at a random place on white,
    # e.g. [0.4, 0.6]: a 64 px base stage from the 32 px one sees each emoji at the scale it draws it.
    other_rows_scale: Optional[list] = None
    # The share of those rows shrunk (each row by chance); the rest stay as they are, and only they take the teacher's
    # targets (`teacher_target_weight`: the starting stage draws each emoji at full size, not shrunk).
    other_rows_scale_share: float = 1.0
    record_ranks: bool = False  # for tests: ranks.jsonl gets every rank's batch indices and weight hash at every step
    seed: int = 0

    def __post_init__(self):
        scale = self.other_rows_scale  # checked once here, not at every batch
        if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"other_rows_scale: (smallest, largest) fractions of the side in (0, 1], not {list(scale)}")
        if not 0 < self.other_rows_scale_share <= 1:
            raise ValueError(f"other_rows_scale_share must be in (0, 1], not {self.other_rows_scale_share}")
        if not 0 <= self.pooled_text_drop_prob <= 1:
            raise ValueError(f"pooled_text_drop_prob must be in [0, 1], not {self.pooled_text_drop_prob}")
        if self.scene_objects < 0:
            raise ValueError(f"scene_objects: a number of objects (0: all), not {self.scene_objects}")
        if self.scene_objects and not self.live_scenes:
            raise ValueError("scene_objects needs live_scenes: true (stored scenes keep the objects they were made of)")
        weights = self.grounding_loss_weights
        if weights is not None:
            if not (len(weights) == 2 and all(w >= 0 for w in weights)):
                raise ValueError(f"grounding_loss_weights: (token term, pixel term) weights >= 0, not {list(weights)}")
            if not self.live_scenes:
                raise ValueError("grounding_loss_weights needs live_scenes: true (where each object is drawn is known "
                                 "only for the scenes composed during the run)")

    def unet_arguments(self, text_embed_dim: int) -> dict:
        """The ImagenUNet arguments of the stage this config trains (a folded stage runs on this run's schedule)."""
        arguments = dict(self.unet, sample_size=self.resolution, text_embed_dim=text_embed_dim,
                         lowres_cond=self.lowres_resolution is not None)
        if self.unet.get("space_to_depth", 1) > 1:
            arguments["space_to_depth_schedule"] = self.beta_schedule
        return arguments

    @classmethod
    def load(cls, path: str, **overrides) -> "TrainConfig":
        """The config of a file (its `extends` resolved), with the `overrides` that are not None on top."""
        cfg = read_config(path)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**cfg)


def read_config(path: str, _seen: tuple = ()) -> dict:
    """The keys of a config file with its `extends` chain resolved (the file's own keys win)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ValueError("config files extend each other in a circle: " + " -> ".join(_seen + (path,)))
    with open(path) as f:
        cfg = json.load(f)
    parent = cfg.pop("extends", None)
    if parent is None:
        return cfg
    return merge(read_config(os.path.join(os.path.dirname(path), parent), _seen + (path,)), cfg)


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` on top: dicts merge recursively, other values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
