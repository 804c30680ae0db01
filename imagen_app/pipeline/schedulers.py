"""The samplers a stage can run with: diffusers schedulers by name, built from a stage's saved training schedule."""
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, UniPCMultistepScheduler)

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


def scheduler_class(name: str):
    key = SCHEDULER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key]
