"""A request's budget: the most work one request may ask of the app's worker, so that no request holds the queue's
only worker for minutes. The pipeline accepts up to 1000 steps a stage; the app accepts at most `max_steps` steps a
stage (every endpoint: a stage's steps sent to /generate, and the pipeline's default steps that /edit, /upscale and
/compare run), `max_images` images a request (/generate's num_images) and `max_compare_cells` cells a grid
(/compare). A request beyond it is refused at once, before any work, with a message that names the input as the
API calls it, the limit, and how the app's operator raises it.

Configured by `build_app(..., budget=Budget(...))`, the command line (`python app.py --max-steps 200
--max-images 4 --max-compare-cells 24`) or the environment (IMAGEN_MAX_STEPS, IMAGEN_MAX_IMAGES,
IMAGEN_MAX_COMPARE_CELLS; read by `Budget.from_env`, so `python app.py` takes them too). The defaults are the
page's own limits: its steps sliders end at 200, its number of images at 4, and the Compare tab at 24 cells.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence

from ..pipeline.settings import SETTING

STEPS = SETTING["num_inference_steps"]
IMAGES_HIGH = 16  # the pipeline's own bound on the images of one prompt (num_images_per_prompt)


@dataclass(frozen=True)
class Budget:
    """The most one request may ask (see the module's docstring)."""

    max_steps: int = 200  # denoising steps per stage
    max_images: int = 4  # images per /generate request
    max_compare_cells: int = 24  # cells of one /compare grid

    # (field, command-line flag, environment variable, the largest value allowed, what it limits)
    KNOBS = (("max_steps", "--max-steps", "IMAGEN_MAX_STEPS", int(STEPS.high), "denoising steps per stage"),
             ("max_images", "--max-images", "IMAGEN_MAX_IMAGES", IMAGES_HIGH, "images per /generate request"),
             ("max_compare_cells", "--max-compare-cells", "IMAGEN_MAX_COMPARE_CELLS", 100, "cells of a /compare grid"))

    def __post_init__(self):
        for name, flag, env, high, _ in self.KNOBS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"{name} ({flag}, {env}) must be a whole number from 1 to {high}, got {value!r}")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **given) -> "Budget":
        """The budget from IMAGEN_MAX_STEPS, IMAGEN_MAX_IMAGES, IMAGEN_MAX_COMPARE_CELLS where they are set (a value
        in `given` that is not None wins), else the defaults. A value that is not a whole number is a ValueError."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, flag, env, high, _ in cls.KNOBS:
            value = given.get(name)
            if value is None and environ.get(env, "").strip():
                try:
                    value = int(environ[env])
                except ValueError:
                    raise ValueError(f"{env} must be a whole number from 1 to {high}, got {environ[env]!r}") from None
            if value is not None:
                values[name] = value
        return cls(**values)

    def describe(self) -> str:
        """The budget in words, for the page and the log."""
        return (f"at most {self.max_steps} steps per stage, {self.max_images} images per request and "
                f"{self.max_compare_cells} Compare cells")

    def raise_with(self, name: str) -> str:
        """How the operator raises one limit: "--max-steps / IMAGEN_MAX_STEPS"."""
        flag, env = next((flag, env) for field, flag, env, _, _ in self.KNOBS if field == name)
        return f"the app's operator can raise it with {flag} (python app.py) or {env}"

    # ----- the checks: None where the request is within the budget, else the message --------------------------
    def steps_refusal(self, name: str, steps, default: bool = False) -> Optional[str]:
        """`steps` (a stage's steps as sent, or the pipeline's default where `default`) against max_steps; `name`:
        the input as the API calls it. Only a whole number above the budget is refused here (any other bad value
        is the resolver's to name)."""
        if isinstance(steps, bool) or not isinstance(steps, numbers.Real) or not math.isfinite(steps):
            return None
        if steps <= self.max_steps:
            return None
        what = f"{name} is {steps:g} (the model's default)" if default else f"{name} asks for {steps:g} steps"
        return (f"{what}: this app's budget is at most {self.max_steps} steps per stage, so that one request cannot "
                f"hold the worker for minutes. Ask for {self.max_steps} or fewer ({self.raise_with('max_steps')}).")

    def stages_refusal(self, stages: Sequence, name_of, defaults: bool = True) -> Optional[str]:
        """Resolved stages (StageSettings) against max_steps; `name_of(stage number)` names a stage's steps."""
        for s in stages:
            message = self.steps_refusal(name_of(s.stage), s.num_inference_steps, default=defaults)
            if message:
                return message
        return None

    def images_refusal(self, name: str, count) -> Optional[str]:
        if isinstance(count, bool) or not isinstance(count, numbers.Real) or not math.isfinite(count):
            return None
        if count <= self.max_images or count != int(count):
            return None
        return (f"{name} asks for {count:g} images: this app's budget is at most {self.max_images} images per "
                f"request. Ask for {self.max_images} or fewer ({self.raise_with('max_images')}).")

    def cells_refusal(self, name: str, columns: int, rows: int) -> Optional[str]:
        if columns * rows <= self.max_compare_cells:
            return None
        most = max(self.max_compare_cells // rows, 0)
        return (f"{name}: {columns} guidance weights x {rows} rows is {columns * rows} cells; this app's budget is at "
                f"most {self.max_compare_cells} cells per grid, so at most {most} guidance weights with these rows "
                f"({self.raise_with('max_compare_cells')}).")


def add_budget_flags(parser) -> None:
    """The budget's command-line flags (argparse); `budget_from_args` reads them (the environment fills the rest)."""
    group = parser.add_argument_group("request budget (each request is refused at once beyond it)")
    for name, flag, env, high, what in Budget.KNOBS:
        default = next(f.default for f in fields(Budget) if f.name == name)
        group.add_argument(flag, type=int, default=None, metavar="N",
                           help=f"the most {what} (1-{high}; default {default}, or env {env})")


def budget_from_args(args) -> Budget:
    return Budget.from_env(**{name: getattr(args, name, None) for name, *_ in Budget.KNOBS})
