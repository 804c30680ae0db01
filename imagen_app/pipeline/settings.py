"""The per-stage settings of a run: their names, kinds and bounds, and how a caller's values are resolved."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .schedulers import scheduler_class

# ----- settings ----------------------------------------------------------------------------------------
# The per-stage settings: what each one is, and the range a value must lie in. A caller gives one value
# (every stage) or a list (one per stage; None in a list: that stage's default).
SETTINGS = {
    "num_inference_steps": dict(kind=int, low=1, high=1000),
    "guidance_scale": dict(kind=float, low=0.0, high=100.0),
    "dynamic_thresholding_percentile": dict(kind=float, low=50.0, high=100.0, off=0),
    "dynamic_thresholding_max": dict(kind=float, low=1.0, high=100.0),
    "noise_aug_level": dict(kind=float, low=0.0, high=1.0),
    "scheduler": dict(kind=str),
}


@dataclass(frozen=True)
class StageSettings:
    """The settings of one stage of one run, filled in and checked by `ImagenPipeline.resolve_settings`."""

    stage: int  # 1-based
    num_inference_steps: int
    guidance_scale: float  # classifier-free guidance weight w (§2.2); 1 = no guidance
    dynamic_thresholding_percentile: float  # p of §2.3; 0 = off
    dynamic_thresholding_max: float  # the largest s that dynamic thresholding divides by
    noise_aug_level: float  # noise conditioning augmentation level (§2.5), super-resolution stages
    scheduler: Optional[str]  # a SCHEDULERS name, or None for the stage's own scheduler


def settings_kwargs(stages: Sequence[StageSettings]) -> Dict[str, Any]:
    """Resolved settings as the keyword arguments of `stream` / `__call__`: {setting: [stage 1's value,
    stage 2's, ...]} and stop_at_stage."""
    return dict({name: [getattr(s, name) for s in stages] for name in SETTINGS}, stop_at_stage=len(stages))


def _setting_value(name: str, value, stage: int):
    """One stage's value of one setting, checked against SETTINGS (a ValueError names the setting)."""
    rule = SETTINGS[name]
    where = f"{name} for stage {stage}"
    if rule["kind"] is str:
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
    if rule["kind"] is int and value != int(value):
        raise ValueError(f"{where} must be a whole number, got {value}")
    if value != rule.get("off", None) and not rule["low"] <= value <= rule["high"]:
        off = f"{rule['off']} (off) or " if "off" in rule else ""
        raise ValueError(f"{where} must be {off}between {rule['low']:g} and {rule['high']:g}, got {value:g}")
    return rule["kind"](value)


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


def resolve_settings(defaults: Dict[str, Any], num_stages: int, stop_at_stage=None, **given) -> List[StageSettings]:
    """`ImagenPipeline.resolve_settings` for a cascade of `num_stages` stages with these `defaults`."""
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    n = num_stages if stop_at_stage is None else whole_number("stop_at_stage", stop_at_stage, 1, num_stages)
    columns = {name: _stage_values(name, given.get(name), defaults[name], n, num_stages) for name in SETTINGS}
    return [StageSettings(stage=k + 1, **{name: values[k] for name, values in columns.items()}) for k in range(n)]
