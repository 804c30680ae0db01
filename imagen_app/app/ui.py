"""The Gradio playground: a prompt in, the cascade streamed out stage by stage.

The UI knows the pipeline only through its public calls: `resolve_settings` (defaults and checks of
every setting; its ValueError becomes a message), `stream`, `check_prompt`, `num_stages` and
`stage_resolutions`. Its per-stage controls follow the loaded pipeline's stages.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import random
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import gradio as gr
import torch
from PIL import Image, PngImagePlugin

from ..pipeline.attention_maps import overlay
from .cache_sweeper import start_sweeper
from ..examples import EXAMPLES
from ..images import image_grid
from .compare_tab import build_compare_tab
from .edit_tabs import build_edit_tabs
from .stage_pane import StagePane, stage_pane
from .stop import ActiveRuns, session_of, wire_stop
from ..threads import use_available_cores
from .budget import Budget
from .inputs import (MAX_PROMPT_CHARS, MAX_SEED, PREVIEW_INTERVAL_S, STAGE_CONTROLS, api_message, check_budget,
                     input_error, length_notice, refuse_extra_inputs, stage_controls, text_input, user_facing_errors,
                     whole_input)
from ..pipeline.pipeline import ImagenPipeline
from ..pipeline.settings import StageSettings, resolve_settings

log = logging.getLogger("imagen_app.ui")

# Small stages (32 px) are scaled up to the output's size, pixelated rather than blurred.
CSS = ".stage-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"

# The per-stage controls shown above the Advanced section, in their order in each stage's column.
MAIN_CONTROLS = ("num_inference_steps", "guidance_scale")
# The outputs of /generate after its stage panes (one per stage), in their order in every update and result.
GENERATE_OUTPUTS = ("images", "status", "settings", "download", "understood", "seed", "word_maps")
KEEP_DOWNLOADS = 32  # the PNG downloads the app keeps in its own folder (older ones are deleted)


class PipelineHolder:
    """Loads the pipeline once; remembers why it could not be loaded instead of crashing the app."""

    def __init__(self, source):
        self.error: Optional[str] = None
        self.pipe: Optional[ImagenPipeline] = None
        if isinstance(source, ImagenPipeline):
            self.pipe = source
        else:
            try:
                self.pipe = ImagenPipeline.from_pretrained(source)
                self.pipe.to("cuda" if torch.cuda.is_available() else "cpu")
                # This process's CPU threads, as the command line chooses them (threads.py): the cores available
                # less the load. (A pipeline passed in ready-made keeps its caller's setting.)
                log.info("CPU threads: %s", use_available_cores().describe())
            except Exception as e:  # missing or corrupt weights: the UI says so
                self.error = f"The model could not be loaded from {source!r}: {type(e).__name__}: {e}"
                log.error(self.error)
        if self.pipe is not None:
            self.pipe.set_progress_bar_config(disable=True)
            quiet_length_warning(self.pipe)
        self.warnings: List[str] = list(getattr(self.pipe, "load_warnings", None) or [])  # e.g. no pipeline_defaults.json

    def get(self) -> ImagenPipeline:
        if self.pipe is None:
            raise input_error(self.error or "no model is loaded")
        return self.pipe


LENGTH_WARNING = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' key for the warning below


def quiet_length_warning(pipe: ImagenPipeline) -> None:
    """Silences transformers' "Token indices sequence length is longer than the specified maximum sequence length
    ... will result in indexing errors" for the pipeline's tokenizer(s). The pipeline tokenizes a long prompt
    without truncation only to find the words that truncation cuts (check_prompt), which the page then names; the
    model itself is always given the truncated tokens, so the warning is wrong here and only fills the server log.
    (transformers prints it once per tokenizer unless the tokenizer notes it as already given: that note is set.)"""
    tokenizers = {id(t): t for t in (getattr(pipe, "tokenizer", None), getattr(pipe.prompt_encoder, "tokenizer", None))
                  if t is not None}
    for tokenizer in tokenizers.values():
        warned = getattr(tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned[LENGTH_WARNING] = True


def png_with_metadata(image: Image.Image, settings: dict) -> str:
    """Writes a PNG whose text chunks carry the prompt and the settings; returns its path."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", str(settings.get("prompt", "")))
    info.add_text("parameters", json.dumps(settings))
    info.add_text("Software", "imagen-app")
    folder = downloads_folder()
    fd, path = tempfile.mkstemp(prefix="imagen_", suffix=".png", dir=folder)
    os.close(fd)
    image.save(path, pnginfo=info)
    prune_downloads(folder)
    return path


def downloads_folder() -> str:
    """The app's own folder for PNG downloads (Gradio copies each into its cache, which `delete_cache` purges)."""
    folder = os.path.join(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir(), f"imagen_app_downloads_{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    return folder


def prune_downloads(folder: str, keep: int = KEEP_DOWNLOADS) -> None:
    """Deletes all but the newest `keep` PNGs in the downloads folder."""
    paths = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png")),
                   key=lambda f: os.path.getmtime(f) if os.path.exists(f) else 0)
    for old in paths[:-keep] if keep > 0 else paths:
        try:
            os.remove(old)
        except OSError:
            pass


def understanding_markdown(pipe: ImagenPipeline, prompt: str) -> str:
    rep = pipe.check_prompt(prompt)
    if rep.is_unconditional:
        return "**Empty prompt**: an unconditional sample (the model draws whatever it likes)."
    tokens = " ".join(f"`{t}`" for t in rep.tokens)
    lines = [f"**Tokens the model sees:** {tokens}"]
    if rep.prompt != " ".join(prompt.lower().split()):  # the shared normalisation changed more than case and spacing
        lines.insert(0, f"**Read as:** {rep.prompt!r} (the prompt as the model reads it: an emoji's name in the form it "
                        "was trained on, else the prompt without a leading article; case, punctuation, a flag's or skin "
                        "tone's wording and aliases are brought to the name's)")
    if rep.unknown_words:
        lines.append("⚠️ **The model doesn't know** " + ", ".join(f"'{w}'" for w in rep.unknown_words) +
                     ": it knows the emoji names and the words people use for them (see *What the model knows* below).")
    if rep.truncated_words:
        lines.append("⚠️ **Cut by the length limit:** " + " ".join(rep.truncated_words))
    if len(prompt) >= MAX_PROMPT_CHARS:
        lines.append(f"⚠️ **The prompt fills the box's limit of {MAX_PROMPT_CHARS} characters:** text typed or "
                     "pasted beyond it was cut by the box.")
    return "\n\n".join(lines)


def stage_controls_defaults(pipe: Optional[ImagenPipeline]) -> List[StageSettings]:
    """The initial value of every per-stage control: the pipeline's own defaults (`resolve_settings()` with
    nothing given), so that the sliders and a generation with settings left out agree."""
    return pipe.resolve_settings() if pipe is not None else resolve_settings(ImagenPipeline.default_settings, 3)


def generate_parameters(n_stages: int) -> List[inspect.Parameter]:
    """generate()'s parameters, in the order of the UI's inputs and of the API: the prompt first; every
    setting after it defaults to None, which is the loaded pipeline's default."""
    def param(name, annotation, default=None):
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)

    return [inspect.Parameter("prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
            param("negative_prompt", Optional[str], ""), param("seed", Optional[int], 0),
            param("randomize_seed", Optional[bool], False),
            *[param(c.api_name(k), Optional[c.setting.kind]) for c in STAGE_CONTROLS
              for k in range(c.first_stage, n_stages + 1)],
            param("num_images", Optional[int], 1), param("last_stage", Optional[int]),
            param("progress", gr.Progress, gr.Progress()),
            param("request", gr.Request, None)]  # filled by Gradio (not an API input): which browser session asks


def generate_outputs(values: Sequence, n_stages: int) -> Dict[str, Any]:
    """An update or result of /generate (a client's too) by name: "stage_1" ... "stage_<n_stages>" (the stage
    panes), then GENERATE_OUTPUTS."""
    names = [f"stage_{k}" for k in range(1, n_stages + 1)] + list(GENERATE_OUTPUTS)
    if len(values) != len(names):
        raise ValueError(f"/generate has {len(names)} outputs with {n_stages} stage(s), got {len(values)} values")
    return dict(zip(names, values))


def generate_docstring(n_stages: int, budget: Optional[Budget] = None) -> str:
    """generate()'s docstring: what an API or MCP client sees of the tool (Gradio reads its "Args:" lines as the
    description of each parameter); the steps and images as the request budget allows them."""
    budget = budget or Budget()
    lines = [
        "Draws images for a text prompt with the loaded Imagen cascade (a base diffusion model, then super-resolution "
        f"stages; {n_stages} stage(s)), streaming every stage's x0 preview as it denoises.",
        "The shipped model knows emoji names only, e.g. 'red heart', 'panda', 'flag: japan'. Every setting left out "
        "(or None) is the loaded pipeline's default (its pipeline_defaults.json), as the UI's controls are.",
        "",
        "Args:",
        f"    prompt: the text to draw, at most {MAX_PROMPT_CHARS} characters; empty draws an unconditional sample.",
        f"    negative_prompt: text to steer away from (classifier-free guidance), at most {MAX_PROMPT_CHARS} characters.",
        f"    seed: the random seed, a whole number from 0 to {MAX_SEED}; the same seed and settings give the same image.",
        "    randomize_seed: true to ignore seed and draw a random one (it is returned with the result).",
    ]
    lines += [f"    {c.describe(k)}" for c in stage_controls(budget) for k in range(c.first_stage, n_stages + 1)]
    lines += [f"    num_images: how many images to draw, 1 to {budget.max_images}.",
              f"    last_stage: the last stage to run, 1 to {n_stages} (a smaller image, sooner).",
              "",
              "Returns:",
              "    every stage's image, the final images, a status line, the settings used (JSON), a PNG with the prompt "
              "and settings in its metadata, the tokens the model understood, the seed used, and per-word attention maps."]
    return "\n".join(lines)


def make_generate(holder: PipelineHolder, active_runs: Optional[ActiveRuns] = None, budget: Optional[Budget] = None):
    """The app's generate(prompt, negative_prompt, seed, randomize_seed, <per-stage settings>, num_images,
    last_stage), a generator of output updates; its per-stage parameters follow the loaded pipeline. `budget`: the
    request budget (budget.py; default Budget())."""
    n_stages = holder.pipe.num_stages if holder.pipe is not None else 3
    signature = inspect.Signature(generate_parameters(n_stages))
    budget = budget or Budget()

    def generate(*args, **kwargs):
        """Generates images for `prompt`, streaming every stage's x0 preview as it denoises.
        A setting left as None takes the loaded pipeline's default (its pipeline_defaults.json), as the UI's controls do."""
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        request = arguments.pop("request", None)
        with active_runs.track(session_of(request)):  # ends when the generator is closed, Stop included
            yield from _generate(holder, n_stages, budget, **arguments)

    active_runs = active_runs or ActiveRuns()
    generate.__signature__ = signature
    generate.__annotations__ = {"request": gr.Request}  # how Gradio tells which parameter takes the request
    generate.__doc__ = generate_docstring(n_stages, budget)  # the tool description an API or MCP client sees
    return generate


def _generate(holder: PipelineHolder, n_stages: int, budget: Budget, prompt, negative_prompt, seed, randomize_seed,
              num_images, last_stage, progress, **per_stage):
    pipe = holder.get()
    # {setting: one value per stage (None: that stage's default; stages without the control too)}
    given = {c.name: [None] * (c.first_stage - 1) + [per_stage.get(c.api_name(k)) for k in range(c.first_stage, n_stages + 1)]
             for c in STAGE_CONTROLS}

    # Every input is checked here, once, by the name the API and the UI give it (the event runs with
    # preprocess=False: Gradio neither rounds, coerces nor range-checks a value before this sees it).
    prompt = text_input(prompt, "prompt")
    negative_prompt = text_input(negative_prompt, "negative prompt (negative_prompt)")
    seed = whole_input(seed, "seed", 0, MAX_SEED, default=0)
    if randomize_seed is not None and not isinstance(randomize_seed, bool):
        raise input_error(f"randomize_seed (Randomize seed) must be true or false, got {randomize_seed!r:.60}")
    images_over = budget.images_refusal("num_images (Number of images)", num_images)
    if images_over:  # the request budget (budget.py), before any work
        raise input_error(images_over)
    num_images = whole_input(num_images, "num_images (Number of images)", 1, budget.max_images, default=1)
    seed = random.randint(0, MAX_SEED) if randomize_seed else seed
    steps_given = dict(enumerate(given["num_inference_steps"], 1))
    check_budget(budget, None, steps_given)  # steps as sent: over the budget is named before the pipeline's bounds
    try:  # resolved once, here; the stream runs these settings as they are
        stages = pipe.resolve_settings(stop_at_stage=last_stage, **given)
    except ValueError as e:
        raise input_error(api_message(e)) from None
    check_budget(budget, stages)  # and the steps left out: the pipeline's defaults
    if not prompt.strip():
        gr.Info("Empty prompt: drawing an unconditional sample.")
    understood = understanding_markdown(pipe, prompt)
    for w in pipe.check_prompt(prompt).warnings():
        gr.Warning(w)

    last = len(stages)
    # Every update gives every output a value, never gr.skip(): Gradio 6.31 turns a skipped output into a new
    # per-session copy of its component and keeps one more such copy (with its config and value) in the session
    # for each skip followed by a value: 8 more components a generation, for the session's lifetime, and the
    # files written for them never deleted (tests/test_soak.py). A stage pane shows this run's latest preview of
    # its stage (None before the stage starts); the results are None until the end.
    stage_outputs: List = [None] * n_stages
    total_steps = sum(s.num_inference_steps for s in stages)
    done = 0
    t0 = time.time()
    last_yield = 0.0
    stream = pipe.stream(prompt, negative_prompt=negative_prompt or None, num_images_per_prompt=num_images,
                         generator=torch.Generator().manual_seed(seed), return_attention=True, stage_settings=stages)
    # A ValueError is a message naming the input, any other error a short message (inputs.user_facing_errors).
    with user_facing_errors("Generation", api_message):
        try:
            for ev in stream:
                if ev.is_final:
                    out = ev.output
                    settings = dict(out.settings, seed=seed, negative_prompt=negative_prompt or "")
                    stages_shown = ([StagePane.final(preview, image_grid(imgs))
                                     for preview, imgs in zip(stage_outputs, out.stage_images)]
                                    + [None] * (n_stages - len(out.stage_images)))
                    status = f"Done: {len(out.stage_images)} stage(s) in {time.time() - t0:.1f} s (seed {seed})."
                    yield (*stages_shown, out.images, status, settings, png_with_metadata(out.images[0], settings), understood,
                           seed, word_map_gallery(out))
                    return
                done += 1
                progress((done, total_steps), desc=f"stage {ev.stage}/{last}")
                now = time.time()
                stage_end = ev.step == ev.total_steps
                if now - last_yield < PREVIEW_INTERVAL_S and not stage_end and ev.step != 1:
                    continue  # faster than the browser can show: skip this frame (and never make its preview)
                last_yield = now
                stage_outputs[ev.stage - 1] = image_grid(ev.previews)
                status = f"Stage {ev.stage}/{last} · step {ev.step}/{ev.total_steps} · {now - t0:.1f} s"
                yield (*stage_outputs, None, status, None, None, understood, seed, None)
        finally:
            stream.close()  # Stop (or a lost client) ends the work at the current step; then the memory is released


def build_app(source, concurrency_limit: int = 1, max_queue: int = 16, cache_minutes: float = 60,
              budget: Optional[Budget] = None) -> gr.Blocks:
    """The playground for a pipeline (or a weights folder to load it from); its per-stage controls
    follow the pipeline's stages (1-6) and resolutions. Every file Gradio or the app writes for a request
    (preview frames, results, PNG downloads) is deleted about `cache_minutes` after it was written, while the app
    runs: by Gradio's `delete_cache`, and whatever it does not track (the downloads folder's PNGs, a file recorded
    on a per-session copy of a component) two sweeps later by a cache_sweeper.py thread on the components' cache
    folder and the downloads folder (files there before the build are never touched). `budget`: the most one
    request may ask (budget.py; default: Budget.from_env(), the defaults or IMAGEN_MAX_STEPS, IMAGEN_MAX_IMAGES,
    IMAGEN_MAX_COMPARE_CELLS), every endpoint refusing a request beyond it at once."""
    budget = budget if budget is not None else Budget.from_env()
    log.info("request budget: %s", budget.describe())
    controls_of_app = {c.name: c for c in stage_controls(budget)}
    holder = PipelineHolder(source)
    pipe = holder.pipe
    defaults = stage_controls_defaults(pipe)
    n_stages = len(defaults)
    resolutions = pipe.stage_resolutions if pipe is not None else [None] * n_stages

    def stage_name(k: int) -> str:
        return f"stage {k + 1}" + (f" ({resolutions[k]} px)" if resolutions[k] else "")

    active_runs = ActiveRuns()
    generate = make_generate(holder, active_runs, budget)
    try:  # ZeroGPU on Hugging Face Spaces: hold a GPU only while generating
        import spaces  # type: ignore

        generate = spaces.GPU(duration=int(os.environ.get("IMAGEN_GPU_DURATION", "60")))(generate)  # IF needs more
    except ImportError:
        pass

    age_s = max(1, int(cache_minutes * 60))
    every_s = max(1, min(age_s // 2, 600))
    with gr.Blocks(title="imagen-app: Imagen playground", delete_cache=(every_s, age_s)) as demo:
        gr.Markdown("# Imagen playground\nA frozen T5 text encoder conditions a base diffusion U-Net; super-resolution "
                    "U-Nets enlarge its image 4x at a time. Watch every stage denoise live.")
        if holder.error:  # the fault at the top of the page; Generate is disabled and the API answers with it
            gr.Markdown(f"⚠️ **{holder.error}**\n\nStart the app with `--weights` pointing to a saved pipeline folder.")
        for warning in holder.warnings:
            gr.Markdown(f"⚠️ {warning}")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", placeholder="an emoji name, e.g. 'red heart'", max_lines=2,
                                    max_length=MAX_PROMPT_CHARS)
                negative = gr.Textbox(value="", label="Negative prompt", placeholder="optional", max_lines=1,
                                      max_length=MAX_PROMPT_CHARS)
                length_notice([prompt, negative])  # says so when a box cuts the text at its limit
            with gr.Column(scale=1):
                run = gr.Button("Generate", variant="primary", interactive=holder.error is None)
                stop = gr.Button("Stop", variant="stop")
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            randomize = gr.Checkbox(label="Randomize seed", value=False)
        controls = {c.name: [] for c in STAGE_CONTROLS}  # {setting: its control of each stage that has one}

        def add_control(name: str, k: int, d: StageSettings) -> None:  # stage k + 1's, set to its default d
            control = controls_of_app[name]
            if k + 1 >= control.first_stage:
                controls[name].append(control.component(value=getattr(d, name), label=control.label(stage_name(k))))

        with gr.Row():
            for k, d in enumerate(defaults):
                with gr.Column(min_width=160):
                    for name in MAIN_CONTROLS:
                        add_control(name, k, d)
        with gr.Accordion("Advanced", open=False):
            for k, d in enumerate(defaults):
                with gr.Row():
                    for name in controls:
                        if name not in MAIN_CONTROLS:
                            add_control(name, k, d)
            with gr.Row():
                count = gr.Slider(1, max(budget.max_images, 2), value=1, step=1, precision=0, label="Number of images",
                                  visible=budget.max_images > 1)  # a budget of one image: nothing to choose
                last_stage = (gr.Slider(1, n_stages, value=n_stages, step=1, precision=0, label="Last stage to run")
                              if n_stages > 1 else gr.Number(value=1, precision=0, visible=False, label="Last stage to run"))
            gr.Markdown(f"This app's request budget: {budget.describe()} (a request beyond it is refused at once).")
        status = gr.Markdown("Ready.", label="Status")
        with gr.Row():
            stage_images = [stage_pane(k, resolutions[k]) for k in range(n_stages)]
        understood = gr.Markdown(label="What the model understood")
        with gr.Accordion("Where each word went", open=False):
            gr.Markdown("Each word's cross-attention over the first image, per stage that has cross-attention "
                        "(averaged over heads, layers and steps; red = most).")
            # As tall as its rows (one row of 6 a line): a fixed height needed a scroll from the second row on.
            word_maps = gr.Gallery(label="Where each word went", columns=6, height="auto", object_fit="contain")
        with gr.Row():
            gallery = gr.Gallery(label="Final images", columns=4, height="auto", object_fit="contain")  # never cropped
            with gr.Column():
                settings = gr.JSON(label="Settings used (reproduce with the same seed)")
                download = gr.File(label="PNG with prompt and settings in its metadata")
        gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (one click)")
        with gr.Accordion("What the model knows", open=False):
            gr.Markdown(known_captions_markdown(pipe))

        # The same order as generate_parameters(), and as GENERATE_OUTPUTS after the panes.
        inputs = [prompt, negative, seed, randomize, *[c for per_stage in controls.values() for c in per_stage], count,
                  last_stage]
        outputs = [*stage_images, gallery, status, settings, download, understood, seed, word_maps]
        # preprocess=False: generate() gets each value as sent and checks it by name (Gradio's own coercion
        # would round seed 3.5, stringify a list prompt and refuse None without saying which input). Progress
        # shows on the status line only: the stage panes and the seed box are never blanked by its overlay.
        event = gr.on([run.click, prompt.submit], generate, inputs, outputs, api_name="generate",
                      concurrency_limit=concurrency_limit, preprocess=False, show_progress="minimal",
                      show_progress_on=[status])
        # "Stopped." now, and again once the cancelled run has ended: that second answer is queued, so it comes
        # over the session's stream after every update the run sent (stop.py).
        wire_stop(stop, event, status, active_runs, triggers=[run.click, prompt.submit])
        build_edit_tabs(holder, concurrency_limit, budget)  # the Edit and Upscale tabs (edit_tabs.py)
        with gr.Tab("Compare"):  # Imagen Fig. A.10: guidance x thresholding, same seed (compare_tab.py)
            build_compare_tab(holder, n_stages, concurrency_limit, budget)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    refuse_extra_inputs(demo)  # Gradio would drop them silently
    # After the examples are cached. Two periods later than Gradio's own sweep, which by then has deleted the files
    # it tracks: a file deleted under it would stay in its list of temp files for good (6.31 drops only its own).
    start_sweeper(demo, [downloads_folder()], every_s=every_s, age_s=age_s + 2 * every_s)
    return demo


def word_map_gallery(out) -> List:
    """(overlay, "stage k · word") for every word of every stage with cross-attention, first image only."""
    items = []
    for k, (maps, images) in enumerate(zip(out.attention_maps or [], out.stage_images), 1):
        for word, heatmap in maps.items():
            items.append((overlay(images[0], heatmap), f"stage {k} · {word}"))
    return items


def known_captions_markdown(pipe: Optional[ImagenPipeline]) -> str:
    if pipe is None:
        return "No model loaded."
    vocab = sorted(w for w in pipe.tokenizer.get_vocab() if not w.startswith("<"))
    text = (f"The shipped model was trained on the names of emoji (OpenMoji, CC BY-SA 4.0), e.g. 'red heart', "
            f"'flag: japan', 'woman firefighter: dark skin tone', and taught the words people use for them (the "
            f"keywords, synonyms and plurals of `weights/keywords.txt`: 'kitten', 'bike', 'the Japanese flag'). Its "
            f"vocabulary has {len(vocab)} words; other words are unknown to it. The full caption list is "
            "`weights/captions.txt`; compositions held out of training are in `weights/held_out.txt`.\n\n")
    return text + "<details><summary>All known words</summary>\n\n" + ", ".join(vocab) + "\n\n</details>"
