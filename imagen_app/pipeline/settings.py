"""The per-stage settings of a run: the one table of their names, kinds, bounds and help (`SETTINGS`), and how
a caller's values are resolved against it.

Everything else that names these settings is derived from the table or checked against it: `StageSettings`'
fields, the keyword arguments that `ImagenPipeline.stream` / `__call__` / `resolve_settings` forward, the CLI's
flags (cli.py) and the app's per-stage controls and their API names (app/inputs.py, app/ui.py).
"""
from __future__ import annotations

import math
import numbers
import typing
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .schedulers import SCHEDULER_NAMES, scheduler_class


@dataclass(frozen=True)
class Setting:
    """One per-stage setting. A caller gives one value (every stage) or a list (one per stage; None in a list:
    that stage's default); each value must be of `kind` and lie in [low, high] (or be `off`)."""

    name: str  # the keyword argument of the pipeline, and the field of StageSettings
    kind: type  # int, float or str
    help: str  # what it is, in a few words (the CLI's flag help, the app's API description)
    label: str  # how the app's controls call it
    short: str = ""  # the CLI flag (--steps) and the app's API prefix (steps_stage_2); default: the name
    low: Optional[float] = None
    high: Optional[float] = None
    off: Optional[float] = None  # a value outside [low, high] that turns the setting off
    choices: Tuple[str, ...] = ()  # a str setting's names (aliases aside)

    @property
    def flag(self) -> str:
        """The short name: "steps" for num_inference_steps, else the name itself."""
        return self.short or self.name

    def accepted(self, high: Optional[float] = None) -> str:
        """The values accepted, in words ("a whole number from 1 to 1000"); `high`: a narrower upper end (a UI's)."""
        if self.kind is str:
            return "one of " + ", ".join(self.choices)
        high = self.high if high is None else high
        if self.kind is int:
            return f"a whole number from {self.low:g} to {high:g}"
        off = f"{self.off:g} (off) or " if self.off is not None else ""
        return f"{off}{self.low:g} to {high:g}"


SETTINGS: Tuple[Setting, ...] = (
    Setting("num_inference_steps", int, "denoising steps", "Steps", short="steps", low=1, high=1000),
    Setting("guidance_scale", float, "classifier-free guidance weight (Imagen §2.2; 1 = no guidance)", "Guidance scale",
            low=0.0, high=100.0),
    Setting("dynamic_thresholding_percentile", float, "dynamic thresholding percentile (Imagen §2.3)",
            "Dynamic thresholding percentile", low=50.0, high=100.0, off=0),
    Setting("dynamic_thresholding_max", float, "largest s that dynamic thresholding divides by",
            "Dynamic thresholding max", low=1.0, high=100.0),
    Setting("noise_aug_level", float, "noise conditioning augmentation level of the low-resolution input (Imagen §2.5; "
            "super-resolution stages)", "Noise augmentation level", low=0.0, high=1.0),
    Setting("scheduler", str, "sampler (default: the stage's own scheduler)", "Scheduler", choices=SCHEDULER_NAMES),
)
SETTING: Dict[str, Setting] = {s.name: s for s in SETTINGS}  # by name
SETTING_NAMES: Tuple[str, ...] = tuple(SETTING)

# The shipped model's default settings (weights/pipeline_defaults.json; a test keeps the two equal): what loading
# falls back on when a saved pipeline's pipeline_defaults.json is missing or holds a wrong value. They draw
# better than the library's defaults (ImagenPipeline.default_settings: [16, 8, 4] steps, percentile 99.5).
SHIPPED_DEFAULTS: Dict[str, Any] = dict(num_inference_steps=[16, 8, 2], guidance_scale=[4.0, 1.0, 1.0],
                                        dynamic_thresholding_percentile=0, noise_aug_level=0.1, scheduler="dpm++",
                                        dynamic_thresholding_max=1.1, max_prompt_length=None)
DEFAULT_NAMES: Tuple[str, ...] = (*SETTING_NAMES, "max_prompt_length")  # the keys of pipeline_defaults.json


@dataclass(frozen=True)
class StageSettings:
    """The settings of one stage of one run, filled in and checked by `ImagenPipeline.resolve_settings`: one
    field per entry of SETTINGS (in its order; checked at import), after the stage's 1-based number."""

    stage: int
    num_inference_steps: int
    guidance_scale: float
    dynamic_thresholding_percentile: float
    dynamic_thresholding_max: float
    noise_aug_level: float
    scheduler: Optional[str]  # None: the stage's own scheduler


def _check_stage_settings_fields() -> None:
    """StageSettings has one field per setting of the table, of its kind (a str one may be None)."""
    hints = typing.get_type_hints(StageSettings)
    names = [f.name for f in fields(StageSettings)]
    if names != ["stage", *SETTING_NAMES]:
        raise TypeError(f"StageSettings' fields {names} are not 'stage' and the settings of SETTINGS {list(SETTING_NAMES)}")
    for s in SETTINGS:
        if hints[s.name] not in (s.kind, Optional[s.kind]):
            raise TypeError(f"StageSettings.{s.name} is {hints[s.name]}, but SETTINGS says {s.kind.__name__}")


_check_stage_settings_fields()


def settings_kwargs(stages: Sequence[StageSettings]) -> Dict[str, Any]:
    """Resolved settings as the keyword arguments of `stream` / `__call__`: {setting: [stage 1's value,
    stage 2's, ...]} and stop_at_stage."""
    return dict({name: [getattr(s, name) for s in stages] for name in SETTING_NAMES}, stop_at_stage=len(stages))


def given_settings(arguments: Mapping[str, Any]) -> Dict[str, Any]:
    """The per-stage settings among a call's arguments (by the table's names), as given."""
    return {name: arguments[name] for name in SETTING_NAMES}


def _setting_value(name: str, value, stage: int):
    """One stage's value of one setting, checked against SETTINGS (a ValueError names the setting)."""
    rule = SETTING[name]
    where = f"{name} for stage {stage}"
    if rule.kind is str:
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{where} must be a scheduler name, got {value!r}")
            try:
                scheduler_class(value)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value}")
    if rule.kind is int and value != int(value):
        raise ValueError(f"{where} must be a whole number, got {value}")
    if value != rule.off and not rule.low <= value <= rule.high:
        off = f"{rule.off} (off) or " if rule.off is not None else ""
        raise ValueError(f"{where} must be {off}between {rule.low:g} and {rule.high:g}, got {value:g}")
    return rule.kind(value)


def _stage_values(name: str, value, default, n: int, num_stages: int) -> list:
    """A setting given as one value, a list, or None, as one value per stage 1..n."""
    if isinstance(default, (list, tuple)):  # a saved default list is fitted to the number of stages
        default = (list(default) + [default[-1]] * n)[:n]
    else:
        default = [default] * n
    if value is None:
        values = default
    elif isinstance(value, (list, tuple)):
        if not n <= len(value) <= num_stages:
            raise ValueError(f"{name} has {len(value)} values but the cascade runs {n} of {num_stages} stages: "
                             "give one value or one per stage")
        values = [d if v is None else v for v, d in zip(value, default)]
    else:
        values = [value] * n
    return [_setting_value(name, v, k) for k, v in enumerate(values, 1)]


def whole_number(name: str, value, low: int, high: int) -> int:
    """A count such as num_images_per_prompt or stop_at_stage: a whole number in [low, high]."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and value == int(value) and low <= value <= high)
    if not ok:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def check_default(name: str, value) -> None:
    """A saved default (a value of pipeline_defaults.json) checked against SETTINGS: one value or a non-empty list
    of one per stage (a scheduler may be None: the stage's own); max_prompt_length is None or a whole number of
    tokens. A ValueError says what is wrong."""
    if name == "max_prompt_length":
        if value is not None:
            whole_number(name, value, 1, 100_000)
        return
    if name not in SETTING:
        raise ValueError(f"{name} is not a setting")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name} must be one value or one per stage, got an empty list")
    for k, v in enumerate(values, 1):
        _setting_value(name, v, k)


def resolve_settings(defaults: Dict[str, Any], num_stages: int, stop_at_stage=None, **given) -> List[StageSettings]:
    """`ImagenPipeline.resolve_settings` for a cascade of `num_stages` stages with these `defaults`."""
    unknown = set(given) - set(SETTING_NAMES)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    n = num_stages if stop_at_stage is None else whole_number("stop_at_stage", stop_at_stage, 1, num_stages)
    columns = {name: _stage_values(name, given.get(name), defaults[name], n, num_stages) for name in SETTING_NAMES}
    return [StageSettings(stage=k + 1, **{name: values[k] for name, values in columns.items()}) for k in range(n)]


def check_resolved(stages: Sequence[StageSettings], num_stages: int) -> List[StageSettings]:
    """Settings a caller resolved before (`resolve_settings`), passed on as `stage_settings=`: StageSettings of
    stages 1, 2, ..., n in order, n at most `num_stages`."""
    ok = (isinstance(stages, (list, tuple)) and 1 <= len(stages) <= num_stages
          and all(isinstance(s, StageSettings) for s in stages) and [s.stage for s in stages] == list(range(1, len(stages) + 1)))
    if not ok:
        raise ValueError(f"stage_settings must be the StageSettings of stages 1 to n (n at most {num_stages}) that "
                         f"resolve_settings returns, got {stages!r:.200}")
    return list(stages)
