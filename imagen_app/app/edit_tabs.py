"""The "Edit" and "Upscale" tabs: the cascade on the user's own image, streamed stage by stage.

- Edit: upload an image, paint the region to repaint on it (`gr.ImageEditor`), prompt, strength.
  Painted: inpainting (the unpainted pixels are kept at every stage); nothing painted: image-to-image
  (SDEdit) of the whole image. API: `api_name="edit"`.
- Upscale: upload an image; it enters the super-resolution stage whose input size is nearest to its own and
  runs to the chosen output size. API: `api_name="upscale"`.

It calls only the pipeline's public `stream` (with `image`, `mask_image`, `strength`, `start_at_stage`)
and editing.py's input helpers; a ValueError from them becomes a gr.Error message.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import gradio as gr
import torch
from PIL import Image, ImageChops

from ..pipeline.editing import mask_gray
from ..images import image_grid
from .stage_pane import StagePane, stage_pane
from .inputs import (CONTROL, MAX_PROMPT_CHARS, MAX_SEED, PREVIEW_INTERVAL_S, api_message, input_error, length_notice,
                     text_input, user_facing_errors, whole_input)
from .stop import ActiveRuns, session_of, wire_stop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES_DIR = os.path.join(REPO, "docs", "examples")
# (file stem, prompt, strength): the init image and the mask layer are docs/examples/<stem>.png, <stem>_mask.png
EDIT_EXAMPLES = [("firefighter", "woman firefighter: light skin tone", 1.0),
                 ("red_heart", "blue heart", 1.0)]
UPSCALE_EXAMPLES = [("firefighter_32", "woman firefighter: dark skin tone"), ("red_heart_32", "red heart")]
# The outputs of /edit and /upscale after their stage panes (/edit: one per stage; /upscale: one per stage after
# the first), in their order in every update and result.
EDIT_OUTPUTS = ("image", "status", "settings")


def edit_outputs(values: Sequence, first_pane: int, n_stages: int) -> Dict[str, Any]:
    """An update or result of /edit (first_pane 1) or /upscale (first_pane 2) by name: "stage_<first_pane>" ...
    "stage_<n_stages>" (the stage panes), then EDIT_OUTPUTS."""
    names = [f"stage_{k}" for k in range(first_pane, n_stages + 1)] + list(EDIT_OUTPUTS)
    if len(values) != len(names):
        raise ValueError(f"expected {len(names)} outputs, got {len(values)} values")
    return dict(zip(names, values))


# Inputs whose values reach the function as sent: Gradio's own preprocessing would round a seed of 3.5,
# stringify a list prompt, or refuse a value without naming the input; the functions below check each value
# by name (inputs.text_input, inputs.whole_input, the pipeline's resolver). `is_template` keeps the browser's component.
class RawNumber(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return payload


class RawSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


class RawTextbox(gr.Textbox):
    is_template = True

    def preprocess(self, payload):
        return payload


class RawRadio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return payload

    def api_info(self):
        """An integer where every choice's value is one (gr.Radio types every choice as a string, and gradio_client
        shows any enum as strings); the values accepted are in the endpoint's description."""
        values = [value for _, value in self.choices]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return {"type": "integer"}
        return super().api_info()


def editor_inputs(editor) -> tuple:
    """(init image, mask or None) from a gr.ImageEditor value: the background is the image, the painted
    layers (their alpha, or their brightness where a layer is opaque) are the region to repaint."""
    if not isinstance(editor, dict):
        raise input_error("image: Upload an image to edit.")
    image = editor.get("background") or editor.get("composite")
    if image is None:
        raise input_error("image: Upload an image to edit.")
    mask: Optional[Image.Image] = None
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        try:
            gray = mask_gray(layer)
        except ValueError as e:
            raise input_error(f"image (painted mask): {e}") from None
        gray = gray.resize(image.size, Image.NEAREST) if gray.size != image.size else gray
        mask = gray if mask is None else ImageChops.lighter(mask, gray)
    if mask is not None and mask.getextrema()[1] < 128:  # nothing painted: image-to-image
        mask = None
    return image, mask


def _seed(seed) -> int:
    return whole_input(seed, "seed", 0, MAX_SEED, default=0)


def _prompt(prompt) -> str:
    return text_input(prompt, "prompt")


def _resolve(pipe, message=api_message, **settings):
    """The pipeline's resolver on the given settings (its ValueError as an input error with `message(e)`, which
    names the inputs), once per run: the stream runs the settings it returns as they are."""
    try:
        return pipe.resolve_settings(**settings)
    except ValueError as e:
        raise input_error(message(e)) from None


def stream_panes(events, n_stages: int, first_pane: int, what: str):
    """Turns the pipeline's events into UI updates: (the panes of stages first_pane..n, final image, status,
    settings). Previews are throttled; every stage's first and last step are shown."""
    n_panes = n_stages - first_pane + 1
    panes: List = [None] * n_panes  # this run's latest preview per pane; never gr.skip() (see ui._generate)
    t0, last_yield, start = time.time(), 0.0, None
    with user_facing_errors(what, api_message):  # messages for the user (inputs.py), the memory released
        try:
            for ev in events:
                start = ev.stage if start is None else start  # the first stage run
                if ev.is_final:
                    out = ev.output
                    previews, panes = panes, [None] * n_panes
                    for i, imgs in enumerate(out.stage_images):
                        k = start - first_pane + i
                        panes[k] = StagePane.final(previews[k], image_grid(imgs))
                    status = f"Done: {what}, {len(out.stage_images)} stage(s) in {time.time() - t0:.1f} s."
                    yield (*panes, out.images[0], status, out.settings)
                    return
                now = time.time()
                if now - last_yield < PREVIEW_INTERVAL_S and ev.step not in (1, ev.total_steps):
                    continue
                last_yield = now
                panes[ev.stage - first_pane] = image_grid(ev.previews)
                status = f"{what}: stage {ev.stage}/{n_stages} · step {ev.step}/{ev.total_steps} · {now - t0:.1f} s"
                yield (*panes, None, status, None)
        finally:
            events.close()  # Stop, or a lost client, ends the work at the current step


def make_edit(holder, active_runs: Optional[ActiveRuns] = None):
    active_runs = active_runs or ActiveRuns()

    def edit(image: dict, prompt: str, strength: float = 0.8, seed: int = 0, guidance_scale: Optional[float] = None,
             last_stage: Optional[int] = None, request: gr.Request = None):
        """Edits `image` (an ImageEditor value: background = the image, painted layers = the region to
        repaint) towards `prompt`, streaming every stage. Nothing painted: image-to-image at `strength`."""
        with active_runs.track(session_of(request)):  # ends when the generator is closed, Stop included (stop.py)
            pipe = holder.get()
            init, mask = editor_inputs(image)
            prompt, seed = _prompt(prompt), _seed(seed)
            if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                         or not 0 < strength <= 1):
                raise input_error(f"strength must be a number in (0, 1], got {strength!r:.60}")
            guidance = None if guidance_scale is None else [guidance_scale] + [None] * (pipe.num_stages - 1)
            stages = _resolve(pipe, guidance_scale=guidance, stop_at_stage=last_stage)
            what = "Inpainting" if mask is not None else "Image-to-image"
            events = pipe.stream(prompt, image=init, mask_image=mask, strength=strength, stage_settings=stages,
                                 generator=torch.Generator().manual_seed(seed))
            yield from stream_panes(events, pipe.num_stages, 1, what)

    return edit


def make_upscale(holder, active_runs: Optional[ActiveRuns] = None):
    active_runs = active_runs or ActiveRuns()
    setting = CONTROL["noise_aug_level"].setting

    def upscale(image, prompt: str = "", seed: int = 0, noise_aug_level: Optional[float] = None,
                target_size: Optional[int] = None, request: gr.Request = None):
        """Super-resolves `image` to `target_size` px (a super-resolution stage's output size; default the last
        stage's), streaming each stage. The image enters the stage whose input size is nearest to its own
        (ImagenPipeline.upscale_stages): with the shipped model an image of 64 px or more goes straight into the
        128 -> 512 px stage (resized to 128 px), a smaller one through both super-resolution stages."""
        with active_runs.track(session_of(request)):  # ends when the generator is closed, Stop included (stop.py)
            pipe = holder.get()
            if image is None:
                raise gr.Error("Upload an image to upscale.")
            prompt, seed = _prompt(prompt), _seed(seed)
            if pipe.num_stages < 2:
                raise input_error("This model has no super-resolution stage.")
            sizes = pipe.stage_resolutions
            outputs = ", ".join(map(str, sizes[1:]))
            if target_size is not None and (isinstance(target_size, bool) or target_size not in sizes[1:]):
                raise input_error(f"target_size (Output size) must be one of {outputs} (pixels), got {target_size!r:.60}")
            start, stop = pipe.upscale_stages(max(image.size), target_size)
            aug = noise_aug_level  # one level for every super-resolution stage, checked by the resolver
            bad_aug = (f"{setting.name} ({setting.label}) must be a number from {setting.low:g} to {setting.high:g}, "
                       f"got {aug!r:.60}")
            stages = _resolve(pipe, api_message if aug is None else lambda e: bad_aug, noise_aug_level=aug,
                              stop_at_stage=stop)
            events = pipe.stream(prompt, image=image, start_at_stage=start, stage_settings=stages,
                                 generator=torch.Generator().manual_seed(seed))
            what = (f"Upscaling your {image.size[0]}×{image.size[1]} px image from {sizes[start - 2]} px to "
                    f"{sizes[stop - 1]} px")
            yield from stream_panes(events, pipe.num_stages, 2, what)

    return upscale


def _example(stem: str) -> dict:
    return {"background": os.path.join(EXAMPLES_DIR, f"{stem}.png"),
            "layers": [os.path.join(EXAMPLES_DIR, f"{stem}_mask.png")], "composite": None}


def build_edit_tabs(holder, concurrency_limit: int = 1) -> None:
    """Adds the "Edit" and "Upscale" tabs and their `edit` / `upscale` API endpoints (call inside gr.Blocks). Each
    tab's Stop ends on "Stopped." as Generate's does: each tab tracks its own runs (stop.py)."""
    pipe = holder.pipe
    edit_runs, upscale_runs = ActiveRuns(), ActiveRuns()
    n_stages = pipe.num_stages if pipe is not None else 3
    resolutions = pipe.stage_resolutions if pipe is not None else [None] * n_stages

    def pane(k: int) -> gr.Image:
        return stage_pane(k, resolutions[k])

    with gr.Tab("Edit"):
        gr.Markdown("Upload an image and **paint the region to repaint** (the brush); the rest is kept at every "
                    "stage. Paint nothing to redraw the whole image from a noised copy of it (image-to-image): "
                    "strength 1 ignores the image, small strengths stay close to it.")
        with gr.Row():
            editor = gr.ImageEditor(label="Image (paint the region to repaint)", type="pil", image_mode="RGBA",
                                    format="png", sources=("upload", "clipboard"), height=420, layers=False,
                                    brush=gr.Brush(colors=[("#ff00ff", 0.8)], color_mode="fixed", default_size=48),
                                    transforms=())
            with gr.Column():
                prompt = RawTextbox(label="Prompt", placeholder="what the painted region should become", max_lines=2,
                                    max_length=MAX_PROMPT_CHARS)
                length_notice([prompt])
                strength = RawSlider(0.05, 1.0, value=1.0, step=0.05, label="Strength (1: repaint from pure noise)")
                with gr.Row():
                    seed = RawNumber(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                    guidance = CONTROL["guidance_scale"].component(
                        RawSlider, value=(pipe.resolve_settings()[0].guidance_scale if pipe else 4.0),
                        label=CONTROL["guidance_scale"].label("stage 1"))
                last = RawSlider(1, max(n_stages, 2), value=n_stages, step=1, precision=0, label="Last stage to run",
                                 visible=n_stages > 1)
                with gr.Row():
                    run = gr.Button("Edit", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", label="Status")
        with gr.Row():
            panes = [pane(k) for k in range(n_stages)]
        result = gr.Image(label="Edited image", type="pil", format="png", interactive=False)
        settings = gr.JSON(label="Settings used")
        examples = [[_example(stem), p, s] for stem, p, s in EDIT_EXAMPLES
                    if os.path.exists(os.path.join(EXAMPLES_DIR, f"{stem}.png"))]
        if examples:
            gr.Examples(examples, inputs=[editor, prompt, strength], label="Examples (the mask is painted)")
        event = gr.on([run.click, prompt.submit], make_edit(holder, edit_runs),
                      [editor, prompt, strength, seed, guidance, last], [*panes, result, status, settings],
                      api_name="edit", concurrency_limit=concurrency_limit)
        wire_stop(stop, event, status, edit_runs, triggers=[run.click, prompt.submit])

    if n_stages < 2:  # a model without super-resolution stages has nothing to upscale with
        return
    with gr.Tab("Upscale"):
        sizes = [r for r in resolutions if r]
        if len(sizes) == n_stages and n_stages > 2:  # nearer the last stage's input than the one before, on a log scale
            midway = round(math.sqrt(sizes[-3] * sizes[-2]))
            route = (f" An image of {midway} px or more goes straight into the last stage ({sizes[-2]} → {sizes[-1]} "
                     f"px); a {sizes[0]} px one runs through every super-resolution stage.")
        else:
            route = ""
        gr.Markdown("Upload an image: it enters the super-resolution stage whose input size is nearest to its own "
                    "(resized to that size, so a larger image keeps its detail), and the stages enlarge it 4x at a "
                    "time up to the output size you choose." + route +
                    " A prompt that says what it shows helps, as the stages are text-conditioned.")
        with gr.Row():
            small = gr.Image(label="Image to upscale", type="pil", image_mode="RGB", format="png", height=256,
                             sources=("upload", "clipboard"))
            with gr.Column():
                up_prompt = RawTextbox(label="Prompt (optional)", max_lines=2, max_length=MAX_PROMPT_CHARS)
                length_notice([up_prompt])
                with gr.Row():
                    up_seed = RawNumber(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                    aug = CONTROL["noise_aug_level"].component(
                        RawSlider, value=(pipe.resolve_settings()[1].noise_aug_level if pipe and n_stages > 1 else 0.1),
                        label=CONTROL["noise_aug_level"].setting.label)
                target = RawRadio([(f"{r} px", r) for r in resolutions[1:] if r] or [("the last stage's", None)],
                                  value=resolutions[-1], label="Output size")
                with gr.Row():
                    up_run = gr.Button("Upscale", variant="primary")
                    up_stop = gr.Button("Stop", variant="stop")
        up_status = gr.Markdown("", label="Status")
        with gr.Row():
            up_panes = [pane(k) for k in range(1, n_stages)]
        up_result = gr.Image(label="Upscaled image", type="pil", format="png", interactive=False)
        up_settings = gr.JSON(label="Settings used")
        examples = [[os.path.join(EXAMPLES_DIR, f"{stem}.png"), p] for stem, p in UPSCALE_EXAMPLES
                    if os.path.exists(os.path.join(EXAMPLES_DIR, f"{stem}.png"))]
        if examples:
            gr.Examples(examples, inputs=[small, up_prompt], label="Examples (32 px stage-1 images)")
        up_event = up_run.click(make_upscale(holder, upscale_runs), [small, up_prompt, up_seed, aug, target],
                                [*up_panes, up_result, up_status, up_settings], api_name="upscale",
                                concurrency_limit=concurrency_limit)
        wire_stop(up_stop, up_event, up_status, upscale_runs, triggers=[up_run.click])
