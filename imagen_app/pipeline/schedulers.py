"""The samplers a stage can run with: diffusers schedulers by name, built from a stage's saved training schedule.

The names are known without importing diffusers (and torch), so that the table of settings (settings.py) and the
CLI's flags built from it load in milliseconds; the classes (`SCHEDULERS`, `scheduler_class`) are imported on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

# Scheduler names accepted by `scheduler=` (case-insensitive), and the names of their diffusers classes.
SCHEDULER_CLASS_NAMES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}
SCHEDULER_NAMES = tuple(SCHEDULER_CLASS_NAMES)
SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpm-solver++": "dpm++", "dpmsolver": "dpm++", "euler_a": "euler-ancestral",
                     "euler a": "euler-ancestral", "euler_ancestral": "euler-ancestral"}
# Config overrides of a scheduler, by its name.
EXTRA_CONFIG = {"dpm++": {"algorithm_type": "dpmsolver++"}}


def _import_classes() -> Dict[str, type]:
    if "SCHEDULERS" not in globals():  # once: afterwards the module's own attributes answer
        diffusers = importlib.import_module("diffusers")
        classes = {name: getattr(diffusers, cls) for name, cls in SCHEDULER_CLASS_NAMES.items()}
        globals().update(SCHEDULERS=classes, SCHEDULER_EXTRA={classes[name]: extra for name, extra in EXTRA_CONFIG.items()})
    return globals()["SCHEDULERS"]


def __getattr__(attribute: str) -> Any:
    """SCHEDULERS ({name: diffusers class}) and SCHEDULER_EXTRA ({class: config overrides}), made on first use."""
    if attribute in ("SCHEDULERS", "SCHEDULER_EXTRA"):
        _import_classes()
        return globals()[attribute]
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def scheduler_class(name: str):
    key = SCHEDULER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SCHEDULER_CLASS_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULER_NAMES)}")
    return _import_classes()[key]
