"""The app's inputs, shared by every tab: the per-stage controls (`STAGE_CONTROLS`, from the pipeline's table of
settings) and the input checks: each input checked once and named in its message (as the API and the UI call
it), expected errors logged as one line without a traceback."""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Tuple

import gradio as gr

from .budget import Budget
from .memory import release_freed_memory
from ..pipeline.settings import SETTING, Setting, whole_number
from ..models.text_encoder import check_text

log = logging.getLogger("imagen_app.ui")

MAX_PROMPT_CHARS = 500
MAX_SEED = 2**31 - 1
PREVIEW_INTERVAL_S = 0.1  # at most ~10 preview frames a second reach the browser


@dataclass(frozen=True)
class StageControl:
    """A per-stage control of the app: one setting of the pipeline's table (settings.SETTINGS: its name, kind,
    label, bounds and help), and what only the app decides: a slider's end where it is narrower than the
    pipeline's bound, the slider's step, and the first stage that has the control."""

    setting: Setting
    slider_high: Optional[float] = None  # None: the setting's own upper bound
    step: Optional[float] = None
    first_stage: int = 1

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def low(self) -> float:
        """The slider's start: the setting's "off" value where it has one (0 = no thresholding), else its lower bound."""
        return self.setting.low if self.setting.off is None else self.setting.off

    @property
    def high(self) -> float:
        return self.setting.high if self.slider_high is None else self.slider_high

    def api_name(self, stage: int) -> str:
        """The input's name in the API, e.g. "steps_stage_2"."""
        return f"{self.setting.flag}_stage_{stage}"

    def label(self, stage_name: str) -> str:
        """The control's label, e.g. "Steps, stage 2 (32 px)"; "(0 = off)" for a setting that an "off" value disables."""
        off = f" ({self.setting.off:g} = off)" if self.setting.off is not None else ""
        return f"{self.setting.label}, {stage_name}{off}"

    def describe(self, stage: int) -> str:
        """The input's description for API and MCP clients."""
        return f"{self.api_name(stage)}: stage {stage}'s {self.setting.help}: {self.setting.accepted(self.slider_high)}."

    def component(self, slider_class=gr.Slider, **kwargs):
        """The control: a slider (of `slider_class`) over its range, or a gr.Dropdown of a str setting's choices."""
        if self.setting.kind is str:
            return gr.Dropdown(list(self.setting.choices), **kwargs)
        # precision 0: a whole-number setting (steps) is an integer in the API (gr.Slider's api_info), not a float
        precision = 0 if self.setting.kind is int else None
        return slider_class(self.low, self.high, step=self.step, precision=precision, **kwargs)


# The per-stage inputs of /generate, in the order of the API (and of the UI's inputs): each stage's guidance
# scale, then each stage's steps, ... The sliders stop at 200 steps and guidance 30; a script may send up to
# the pipeline's bounds.
STAGE_CONTROLS = (
    StageControl(SETTING["guidance_scale"], slider_high=30, step=0.5),
    StageControl(SETTING["num_inference_steps"], slider_high=200, step=1),
    StageControl(SETTING["scheduler"]),
    StageControl(SETTING["dynamic_thresholding_percentile"], step=0.5),
    StageControl(SETTING["noise_aug_level"], step=0.05, first_stage=2),  # for super-resolution stages
)
CONTROL = {c.name: c for c in STAGE_CONTROLS}


def stage_controls(budget: Optional[Budget] = None) -> Tuple[StageControl, ...]:
    """STAGE_CONTROLS with the steps sliders (and the API's description of steps) ending at the request budget's
    max_steps (budget.py; the default budget's is the sliders' own 200)."""
    if budget is None:
        return STAGE_CONTROLS
    return tuple(replace(c, slider_high=budget.max_steps) if c.name == "num_inference_steps" else c
                 for c in STAGE_CONTROLS)


def steps_name(stage: int) -> str:
    """A stage's steps as the API and the UI name them: "steps_stage_2 (Steps, stage 2)"."""
    control = CONTROL["num_inference_steps"]
    return f"{control.api_name(stage)} ({control.setting.label}, stage {stage})"


def check_budget(budget: Budget, stages, given_steps=None) -> None:
    """A run within the request budget (budget.py), before any work: `given_steps` ({stage: steps as sent}) first,
    then the resolved `stages` (StageSettings: the steps a request left out are the pipeline's defaults). Over it:
    an input error that names the input, the limit and how to raise it."""
    for stage, steps in (given_steps or {}).items():
        message = budget.steps_refusal(steps_name(stage), steps)
        if message:
            raise input_error(message)
    message = budget.stages_refusal(stages or [], steps_name)
    if message:
        raise input_error(message)


# The page's note under text boxes that cut at MAX_PROMPT_CHARS (the browser's maxlength drops the rest of a paste
# without a word): run in the browser on every input, no request to the server.
LENGTH_NOTICE = (f"⚠️ This box holds at most {MAX_PROMPT_CHARS} characters: the text was cut there, and anything "
                 "typed or pasted beyond it was dropped.")
LENGTH_NOTICE_JS = ("(...texts) => texts.some(t => (t || '').length >= %d) ? %s : ''"
                    % (MAX_PROMPT_CHARS, json.dumps(LENGTH_NOTICE)))


def length_notice(boxes) -> gr.Markdown:
    """A note under `boxes` (text boxes with max_length=MAX_PROMPT_CHARS) that appears while one of them is full,
    so that a paste cut at the limit does not go unnoticed. Call inside gr.Blocks, after the boxes."""
    note = gr.Markdown("", label="Length limit", elem_classes="length-notice")
    for box in boxes:
        box.change(None, list(boxes), note, js=LENGTH_NOTICE_JS, queue=False, api_name=False, show_progress="hidden")
    return note


def input_error(message: str) -> gr.Error:
    """An expected input error: the message for the user, one line in the server log, no traceback."""
    log.warning("input error: %s", message)
    return gr.Error(message, print_exception=False)


def api_message(error: ValueError) -> str:
    """A resolver's message with the inputs named as the API and the UI call them: "num_inference_steps for
    stage 2" -> "steps_stage_2 (Steps, stage 2)", "stop_at_stage" -> "last_stage (Last stage to run)"."""
    def name(m):
        control = CONTROL[m[1]]
        return f"{control.api_name(m[2])} ({control.setting.label}, stage {m[2]})"

    text = re.sub(r"\b(" + "|".join(CONTROL) + r") for stage (\d+)", name, str(error))
    return text.replace("stop_at_stage", "last_stage (Last stage to run)")


@contextmanager
def user_facing_errors(what: str, value_error: Callable[[ValueError], str] = api_message) -> Iterator[None]:
    """A run's errors as the user sees them, the same on every tab. Around the part of a run that calls the
    pipeline (a generator's `yield`s included):
    - a gr.Error passes as it is (it is a ValueError too: it is let through first);
    - a ValueError is a bad input: an input error with `value_error(e)` as its message (that names the input);
    - any other error is unexpected: its traceback once in the log, and a short "<what> failed: Type: message"
      for the user (never a traceback in the browser, never a dead worker);
    - GeneratorExit (Stop, or a lost client, closing the run's generator) is a BaseException, not an Exception:
      it passes untouched;
    and in every case the memory the run freed is given back to the operating system (memory.py)."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as e:
        raise input_error(value_error(e)) from None
    except Exception as e:
        log.exception("%s failed", what)
        raise gr.Error(f"{what} failed: {type(e).__name__}: {e}", print_exception=False) from None
    finally:
        release_freed_memory()  # else the server's RSS creeps up with every run


def refuse_extra_inputs(demo: gr.Blocks) -> None:
    """Makes each API endpoint of `demo` refuse more values than it has inputs, by name. Gradio 6.31 checks only
    too few (Blocks.validate_inputs) and drops the rest before the function runs, so a script that passes an
    argument too many would get a result computed without it and never know. Also gives each input component
    that has a `check_api_value(value)` (the Edit and Upscale tabs' image components) the value as sent, before
    Gradio's own validation of it, which answers a string or a number where a file goes with its generic error."""
    check_too_few = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        check_too_few(block_fn, inputs)
        if block_fn.api_name and len(inputs) > len(block_fn.inputs):
            extra = ", ".join(repr(v) for v in inputs[len(block_fn.inputs):])
            raise input_error(f"/{block_fn.api_name} takes {len(block_fn.inputs)} inputs but got {len(inputs)}: "
                              f"remove the extra value(s) at the end ({extra[:200]})")
        for block, value in zip(block_fn.inputs, inputs):
            check = getattr(block, "check_api_value", None)
            if check is not None:
                check(value)

    demo.validate_inputs = validate_inputs


def text_input(value, name: str) -> str:
    """A prompt-like input: None is empty; anything but a string, over MAX_PROMPT_CHARS, or not valid Unicode text
    (check_text) is refused by name."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise input_error(f"The {name} must be text (a string), got {type(value).__name__} {value!r:.60}")
    if len(value) > MAX_PROMPT_CHARS:
        raise input_error(f"The {name} is too long ({len(value)} characters); the limit is {MAX_PROMPT_CHARS}.")
    try:
        return check_text(value, name)  # a lone surrogate (raw JSON can send one): refused now, not after the run
    except ValueError as e:
        raise input_error(str(e)) from None


def whole_input(value, name: str, low: int, high: int, default: int) -> int:
    """A whole-number input (seed, number of images, last stage); None is `default`; 3.5 or "3" are refused."""
    try:
        return default if value is None else whole_number(name, value, low, high)
    except ValueError as e:
        raise input_error(str(e)) from None


def choice_input(value, name: str, choices, default):
    """One of `choices` (a radio or dropdown sent as its value); None is `default`; anything else is refused."""
    if value is None:
        return default
    if isinstance(value, str) and value in choices:
        return value
    raise input_error(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r:.60}")
