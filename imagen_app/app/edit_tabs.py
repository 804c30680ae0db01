"""The "Edit" and "Upscale" tabs: the cascade on the user's own image, streamed stage by stage.

- Edit: upload an image, paint the region to repaint on it (`gr.ImageEditor`), prompt, strength.
  Painted: inpainting (the unpainted pixels are kept at every stage); nothing painted: image-to-image
  (SDEdit) of the whole image. API: `api_name="edit"`.
- Upscale: upload an image; it enters the super-resolution stage whose input size is nearest to its own and
  runs to the chosen output size. API: `api_name="upscale"`.

It calls only the pipeline's public `stream` (with `image`, `mask_image`, `strength`, `start_at_stage`)
and editing.py's input helpers; a ValueError from them becomes a gr.Error message.

Every image a request sends (/upscale's image, /edit's background and its mask layers) is read by one function,
`images.read_image`, after Gradio has stored the upload and before any work: a file that is not an image, empty,
cut short, too large (over images.MAX_IMAGE_SIDE pixels a side, checked from its header before decoding: a
"decompression bomb" costs nothing), an SVG or of a format not accepted, and a string or a number where the image
goes, are each refused with a message that names the image (or the mask), says what is wrong and what is accepted,
one line in the log and no traceback. (Gradio's own reading answered these with its generic "The upstream Gradio
app has raised an exception" and a traceback: the image components here pass the upload on unread, RawImage and
RawImageEditor, and `check_api_value` refuses a value that is not a file before Gradio's own validation sees it.)
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import gradio as gr
import torch
from gradio.utils import get_upload_folder
from PIL import Image, ImageChops

from ..pipeline.editing import mask_gray
from ..images import ImageInputError, accepted_images, image_grid, read_image, short_repr
from .budget import Budget
from .stage_pane import StagePane, stage_pane
from .inputs import (CONTROL, MAX_PROMPT_CHARS, MAX_SEED, PREVIEW_INTERVAL_S, api_message, check_budget, input_error,
                     length_notice, text_input, user_facing_errors, whole_input)
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


# How the messages name the images a request sends (the API's input is `image` for both endpoints).
UPSCALE_IMAGE = "The image to upscale (image)"
EDIT_IMAGE = "The image to edit (image)"
MAX_MASK_LAYERS = 16  # the painted layers one /edit request may send (the page's editor sends one)


def mask_name(k: int) -> str:
    """How messages name /edit's k-th mask layer (the painted region to repaint)."""
    return f"The mask (image's layer {k})"


EDITOR_VALUE = "{'background': file, 'layers': [file, ...], 'composite': None}"


def _file_record(value) -> bool:
    """A file as the API sends one: {"path": ..., "meta": {"_type": "gradio.FileData"}, ...} (gradio_client's
    handle_file), or a "data:" URL in "url"."""
    return isinstance(value, dict) and (isinstance(value.get("path"), str)
                                        or (value.get("path") is None and isinstance(value.get("url"), str)
                                            and value["url"].startswith("data:")))


def _uploaded(path: str) -> bool:
    """Whether `path` is in Gradio's upload folder (where an upload, gradio_client's handle_file included, is put)."""
    folder = os.path.realpath(get_upload_folder())
    try:
        return os.path.commonpath([os.path.realpath(path), folder]) == folder
    except ValueError:
        return False


def not_a_file(what: str, value, expected: str = "an image file") -> gr.Error:
    """The message for a value that is not a file where an image goes (a string, a number, a list, ...)."""
    return input_error(f"{what} must be {expected} (from a script, each file as gradio_client's "
                       f"handle_file('picture.png') sends it), got {type(value).__name__} {short_repr(value)}. Accepted "
                       f"images: {accepted_images()}.")


def check_file(what: str, value, needs_meta: bool = False) -> None:
    """An API value where one image file goes: a file record of an upload to this app (or a data: URL); with
    `needs_meta` (the image editor's files, which Gradio validates so) its "meta" as handle_file sends it."""
    if not _file_record(value):
        raise not_a_file(what, value)
    if needs_meta and value.get("meta") != {"_type": "gradio.FileData"}:
        raise input_error(f"{what} must be a file record as gradio_client's handle_file sends it, with "
                          f"\"meta\": {{\"_type\": \"gradio.FileData\"}}, got {short_repr(value)}")
    if value.get("path") is not None and not _uploaded(value["path"]):
        raise input_error(f"{what} must be a file uploaded to this app (gradio_client's handle_file uploads it), "
                          f"not a path on the server: {short_repr(value['path'])}")


def read_input_image(value, what: str, mode: Optional[str] = "RGB") -> Image.Image:
    """images.read_image with its refusal as an input error (the message for the user, one log line)."""
    try:
        return read_image(value, what, mode=mode)
    except ImageInputError as e:
        raise input_error(str(e)) from None


class RawImage(gr.Image):
    """A gr.Image whose upload reaches the function unread (the stored file's record, a dict with its "path"): the
    function reads it with read_input_image. `is_template` keeps the browser's component."""

    is_template = True
    api_name_of_image = UPSCALE_IMAGE

    def preprocess(self, payload):
        return None if payload is None else payload.model_dump()

    def check_api_value(self, value) -> None:
        """Called before Gradio's own validation (inputs.refuse_extra_inputs): anything but a file record or None
        (a string, a number, a list, a dict without a path) is refused by name."""
        if value is not None:
            check_file(self.api_name_of_image, value)


class RawImageEditor(gr.ImageEditor):
    """A gr.ImageEditor whose background, layers and composite reach the function unread (file records, or the
    bytes the browser's editor stored for them); the function reads each with read_input_image."""

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        source = payload
        if payload.id is not None:  # the browser's editor stored its images as bytes (Gradio's blob storage)
            source = self.blob_storage.pop(payload.id, None) or payload

        def unread(file):
            return None if file is None else file if isinstance(file, (bytes, bytearray)) else file.model_dump()

        layers = [unread(layer) for layer in (source.layers or []) if layer is not None]
        return {"background": unread(source.background), "layers": layers, "composite": unread(source.composite)}

    def check_api_value(self, value) -> None:
        """Before Gradio's own validation: a dict of background, layers and composite, each a file record or None."""
        if value is None:
            return
        expected = f"an image editor's value, {EDITOR_VALUE}"
        if _file_record(value):
            raise input_error(f"{EDIT_IMAGE} must be {expected}, got a single file: put it in 'background' (and the "
                              "painted region, if any, in 'layers')")
        if not isinstance(value, dict):
            raise not_a_file(EDIT_IMAGE, value, expected)
        if set(value) - {"background", "layers", "composite", "id"}:  # a key the editor's value has not
            raise not_a_file(EDIT_IMAGE, value, expected)
        for key in ("background", "composite"):
            if value.get(key) is not None:
                check_file(f"{EDIT_IMAGE[:-1]}'s {key})", value[key], needs_meta=True)
        layers = value.get("layers")
        if layers is None:
            return
        if not isinstance(layers, list):
            raise input_error(f"{EDIT_IMAGE}: its layers must be a list of image files (the painted region), got "
                              f"{type(layers).__name__}")
        if len(layers) > MAX_MASK_LAYERS:
            raise input_error(f"{EDIT_IMAGE}: at most {MAX_MASK_LAYERS} layers (the painted region), got {len(layers)}")
        for k, layer in enumerate(layers, 1):
            check_file(mask_name(k), layer, needs_meta=True)


def editor_inputs(editor) -> tuple:
    """(init image, mask or None) from a gr.ImageEditor value: the background is the image, the painted
    layers (their alpha, or their brightness where a layer is opaque) are the region to repaint. Each image is read
    by read_input_image (PIL images, arrays, paths, file records, bytes), a bad one refused by name; an image
    given alone (not an editor's dict) is the background."""
    if editor is None:
        raise input_error("image: Upload an image to edit.")
    if not isinstance(editor, dict) or not {"background", "layers", "composite"} & set(editor):
        editor = {"background": editor}
    source = editor.get("background")
    what = EDIT_IMAGE
    if source is None:
        source, what = editor.get("composite"), f"{EDIT_IMAGE[:-1]}'s composite)"
    if source is None:
        raise input_error("image: Upload an image to edit.")
    image = read_input_image(source, what)
    layers = [layer for layer in (editor.get("layers") or []) if layer is not None]
    if len(layers) > MAX_MASK_LAYERS:
        raise input_error(f"{EDIT_IMAGE}: at most {MAX_MASK_LAYERS} layers (the painted region), got {len(layers)}")
    mask: Optional[Image.Image] = None
    for k, layer in enumerate(layers, 1):
        layer = read_input_image(layer, mask_name(k), mode="RGBA")
        try:
            gray = mask_gray(layer)
        except ValueError as e:
            raise input_error(f"{mask_name(k)}: {e}") from None
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


def make_edit(holder, active_runs: Optional[ActiveRuns] = None, budget: Optional[Budget] = None):
    active_runs = active_runs or ActiveRuns()
    budget = budget or Budget()

    def edit(image: dict, prompt: str, strength: float = 0.8, seed: int = 0,
             guidance_scale_stage_1: Optional[float] = None, last_stage: Optional[int] = None,
             request: gr.Request = None):
        """Edits `image` (an ImageEditor value: background = the image, painted layers = the region to
        repaint) towards `prompt`, streaming every stage. Nothing painted: image-to-image at `strength`.
        `guidance_scale_stage_1`: the base stage's guidance, named as /generate names it."""
        with active_runs.track(session_of(request)):  # ends when the generator is closed, Stop included (stop.py)
            pipe = holder.get()
            prompt, seed = _prompt(prompt), _seed(seed)
            if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                         or not 0 < strength <= 1):
                raise input_error(f"strength must be a number in (0, 1], got {strength!r:.60}")
            guidance = None if guidance_scale_stage_1 is None else [guidance_scale_stage_1] + [None] * (pipe.num_stages - 1)
            stages = _resolve(pipe, guidance_scale=guidance, stop_at_stage=last_stage)
            check_budget(budget, stages)
            init, mask = editor_inputs(image)  # read after the cheap checks, before any work
            what = "Inpainting" if mask is not None else "Image-to-image"
            events = pipe.stream(prompt, image=init, mask_image=mask, strength=strength, stage_settings=stages,
                                 generator=torch.Generator().manual_seed(seed))
            yield from stream_panes(events, pipe.num_stages, 1, what)

    return edit


def make_upscale(holder, active_runs: Optional[ActiveRuns] = None, budget: Optional[Budget] = None):
    active_runs = active_runs or ActiveRuns()
    budget = budget or Budget()
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
                raise input_error("Upload an image to upscale.")
            prompt, seed = _prompt(prompt), _seed(seed)
            if pipe.num_stages < 2:
                raise input_error("This model has no super-resolution stage.")
            sizes = pipe.stage_resolutions
            outputs = ", ".join(map(str, sizes[1:]))
            if target_size is not None and (isinstance(target_size, bool) or target_size not in sizes[1:]):
                raise input_error(f"target_size (Output size) must be one of {outputs} (pixels), got {target_size!r:.60}")
            image = read_input_image(image, UPSCALE_IMAGE)
            start, stop = pipe.upscale_stages(max(image.size), target_size)
            aug = noise_aug_level  # one level for every super-resolution stage, checked by the resolver
            bad_aug = (f"{setting.name} ({setting.label}) must be a number from {setting.low:g} to {setting.high:g}, "
                       f"got {aug!r:.60}")
            stages = _resolve(pipe, api_message if aug is None else lambda e: bad_aug, noise_aug_level=aug,
                              stop_at_stage=stop)
            check_budget(budget, stages[start - 1:])  # the stages that run
            events = pipe.stream(prompt, image=image, start_at_stage=start, stage_settings=stages,
                                 generator=torch.Generator().manual_seed(seed))
            what = (f"Upscaling your {image.size[0]}×{image.size[1]} px image from {sizes[start - 2]} px to "
                    f"{sizes[stop - 1]} px")
            yield from stream_panes(events, pipe.num_stages, 2, what)

    return upscale


def _example(stem: str) -> dict:
    return {"background": os.path.join(EXAMPLES_DIR, f"{stem}.png"),
            "layers": [os.path.join(EXAMPLES_DIR, f"{stem}_mask.png")], "composite": None}


def build_edit_tabs(holder, concurrency_limit: int = 1, budget: Optional[Budget] = None) -> None:
    """Adds the "Edit" and "Upscale" tabs and their `edit` / `upscale` API endpoints (call inside gr.Blocks). Each
    tab's Stop ends on "Stopped." as Generate's does: each tab tracks its own runs (stop.py). `budget`: the request
    budget (budget.py)."""
    budget = budget or Budget()
    pipe = holder.pipe
    edit_runs, upscale_runs = ActiveRuns(), ActiveRuns()
    n_stages = pipe.num_stages if pipe is not None else 3
    resolutions = pipe.stage_resolutions if pipe is not None else [None] * n_stages

    def pane(k: int) -> gr.Image:
        return stage_pane(k, resolutions[k])

    with gr.Tab("Edit"):
        gr.Markdown("Upload an image and **paint the region to repaint** (the brush); the rest is kept at every "
                    "stage. Paint nothing to redraw the whole image from a noised copy of it (image-to-image): "
                    "strength 1 ignores the image, small strengths stay close to it. Accepted: "
                    f"{accepted_images()}.")
        with gr.Row():
            editor = RawImageEditor(label="Image (paint the region to repaint)", type="pil", image_mode="RGBA",
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
        event = gr.on([run.click, prompt.submit], make_edit(holder, edit_runs, budget),
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
                    " A prompt that says what it shows helps, as the stages are text-conditioned. Accepted: "
                    f"{accepted_images()}.")
        with gr.Row():
            small = RawImage(label="Image to upscale", type="pil", image_mode="RGB", format="png", height=256,
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
        up_event = up_run.click(make_upscale(holder, upscale_runs, budget), [small, up_prompt, up_seed, aug, target],
                                [*up_panes, up_result, up_status, up_settings], api_name="upscale",
                                concurrency_limit=concurrency_limit)
        wire_stop(up_stop, up_event, up_status, upscale_runs, triggers=[up_run.click])
