"""The Gradio playground: a prompt in, the cascade streamed out stage by stage.

The UI knows the pipeline only through its public calls: `stream`, `check_prompt`, `settings`,
`num_stages` and `stage_resolutions`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from typing import List, Optional

import gradio as gr
import torch
from PIL import Image, PngImagePlugin

from .pipeline import SCHEDULERS, ImagenPipeline

log = logging.getLogger("imagen_app.ui")

MAX_PROMPT_CHARS = 500
MAX_SEED = 2**31 - 1
PREVIEW_INTERVAL_S = 0.1  # at most ~10 preview frames a second reach the browser
SCHEDULER_CHOICES = list(SCHEDULERS)
EXAMPLES = [  # seen captions, and held-out compositions (see weights/held_out.txt)
    "red heart", "panda", "flag: japan", "woman firefighter: dark skin tone", "grinning face", "green apple",
    "purple heart", "man technologist: medium skin tone",
]
# Small stages (32 px) are scaled up to the output's size, pixelated rather than blurred.
CSS = ".stage-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


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
            except Exception as e:  # missing or corrupt weights: the UI says so
                self.error = f"The model could not be loaded from {source!r}: {type(e).__name__}: {e}"
                log.error(self.error)
        if self.pipe is not None:
            self.pipe.set_progress_bar_config(disable=True)

    def get(self) -> ImagenPipeline:
        if self.pipe is None:
            raise gr.Error(self.error or "no model is loaded")
        return self.pipe


def _number(name: str, value, lo: float, hi: float, integer: bool = False):
    if isinstance(value, bool) or value is None:
        raise gr.Error(f"{name} must be a number")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise gr.Error(f"{name} must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise gr.Error(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    if integer:
        if value != int(value):
            raise gr.Error(f"{name} must be a whole number, got {value:g}")
        return int(value)
    return value


def png_with_metadata(image: Image.Image, settings: dict) -> str:
    """Writes a PNG whose text chunks carry the prompt and the settings; returns its path."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", str(settings.get("prompt", "")))
    info.add_text("parameters", json.dumps(settings))
    info.add_text("Software", "imagen-app")
    fd, path = tempfile.mkstemp(prefix="imagen_", suffix=".png")
    os.close(fd)
    image.save(path, pnginfo=info)
    return path


def grid(images: List[Image.Image]) -> Image.Image:
    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    cols = 2
    rows = (len(images) + 1) // 2
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def understanding_markdown(pipe: ImagenPipeline, prompt: str) -> str:
    rep = pipe.check_prompt(prompt)
    if rep.is_unconditional:
        return "**Empty prompt**: an unconditional sample (the model draws whatever it likes)."
    tokens = " ".join(f"`{t}`" for t in rep.tokens)
    lines = [f"**Tokens the model sees:** {tokens}"]
    if rep.unknown_words:
        lines.append("⚠️ **The model doesn't know** " + ", ".join(f"'{w}'" for w in rep.unknown_words) +
                     ": it was trained on emoji names only (see *What the model knows* below).")
    if rep.truncated_words:
        lines.append("⚠️ **Cut by the length limit:** " + " ".join(rep.truncated_words))
    return "\n\n".join(lines)


def input_defaults(settings: dict) -> dict:
    """The value of each of generate()'s settings that a pipeline's `settings` give: the sliders' initial values,
    and what generate() uses for a setting left out."""
    def per_stage(value, k):
        return value[min(k, len(value) - 1)] if isinstance(value, (list, tuple)) else value

    d = dict(guidance_scale=per_stage(settings["guidance_scale"], 0),
             sr_guidance_scale=per_stage(settings["guidance_scale"], 1),
             dynamic_thresholding_percentile=settings["dynamic_thresholding_percentile"],
             noise_aug_level=settings["noise_aug_level"])
    for k in range(3):
        d[f"steps_stage_{k + 1}"] = per_stage(settings["num_inference_steps"], k)
        d[f"scheduler_stage_{k + 1}"] = per_stage(settings["scheduler"], k)
    return d


def make_generate(holder: PipelineHolder):
    def generate(prompt: str, negative_prompt: str = "", seed: float = 0, randomize_seed: bool = False,
                 guidance_scale: Optional[float] = None, sr_guidance_scale: Optional[float] = None,
                 steps_stage_1: Optional[float] = None, steps_stage_2: Optional[float] = None,
                 steps_stage_3: Optional[float] = None, scheduler_stage_1: Optional[str] = None,
                 scheduler_stage_2: Optional[str] = None, scheduler_stage_3: Optional[str] = None,
                 dynamic_thresholding_percentile: Optional[float] = None, noise_aug_level: Optional[float] = None,
                 num_images: float = 1, last_stage: Optional[float] = None, progress=gr.Progress()):
        """Generates images for `prompt`, streaming every stage's x0 preview as it denoises.
        A setting left as None takes the loaded pipeline's default (its pipeline_defaults.json), as the UI's sliders do."""
        pipe = holder.get()
        n_stages = pipe.num_stages
        defaults = input_defaults(pipe.settings)

        def given(value, name):
            return defaults[name] if value is None else value

        guidance_scale, sr_guidance_scale = given(guidance_scale, "guidance_scale"), given(sr_guidance_scale, "sr_guidance_scale")
        steps_stage_1, steps_stage_2, steps_stage_3 = (given(v, f"steps_stage_{k + 1}")
                                                       for k, v in enumerate([steps_stage_1, steps_stage_2, steps_stage_3]))
        scheduler_stage_1, scheduler_stage_2, scheduler_stage_3 = (
            given(v, f"scheduler_stage_{k + 1}") for k, v in enumerate([scheduler_stage_1, scheduler_stage_2, scheduler_stage_3]))
        dynamic_thresholding_percentile = given(dynamic_thresholding_percentile, "dynamic_thresholding_percentile")
        noise_aug_level = given(noise_aug_level, "noise_aug_level")
        last_stage = n_stages if last_stage is None else last_stage
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str) or not isinstance(negative_prompt or "", str):
            raise gr.Error("prompt and negative prompt must be text")
        if len(prompt) > MAX_PROMPT_CHARS or len(negative_prompt or "") > MAX_PROMPT_CHARS:
            raise gr.Error(f"The prompt is too long ({max(len(prompt), len(negative_prompt or ''))} characters); "
                           f"the limit is {MAX_PROMPT_CHARS}.")
        seed = random.randint(0, MAX_SEED) if randomize_seed else _number("seed", seed, 0, MAX_SEED, integer=True)
        last = _number("last stage", last_stage, 1, n_stages, integer=True)
        steps = [_number(f"steps for stage {k + 1}", s, 1, 200, integer=True)
                 for k, s in enumerate([steps_stage_1, steps_stage_2, steps_stage_3][:n_stages])]
        scales = [_number("guidance scale", guidance_scale, 0, 30)] + \
                 [_number("super-resolution guidance scale", sr_guidance_scale, 0, 30)] * (n_stages - 1)
        schedulers = [scheduler_stage_1, scheduler_stage_2, scheduler_stage_3][:n_stages]
        for s in schedulers:
            if s not in SCHEDULER_CHOICES:
                raise gr.Error(f"unknown scheduler {s!r}; choose one of: {', '.join(SCHEDULER_CHOICES)}")
        percentile = _number("dynamic thresholding percentile", dynamic_thresholding_percentile, 0, 100)
        if 0 < percentile < 50:
            raise gr.Error("dynamic thresholding percentile must be 0 (off) or between 50 and 100")
        aug = _number("noise augmentation level", noise_aug_level, 0, 1)
        count = _number("number of images", num_images, 1, 4, integer=True)
        if not prompt.strip():
            gr.Info("Empty prompt: drawing an unconditional sample.")
        understood = understanding_markdown(pipe, prompt)
        for w in pipe.check_prompt(prompt).warnings():
            gr.Warning(w)

        stage_outputs: List = [gr.skip()] * n_stages
        total_steps = sum(steps[:last])
        done = 0
        t0 = time.time()
        last_yield = 0.0
        stream = pipe.stream(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                             guidance_scale=scales, dynamic_thresholding_percentile=percentile, noise_aug_level=aug,
                             scheduler=schedulers, num_images_per_prompt=count, stop_at_stage=last,
                             generator=torch.Generator().manual_seed(seed))
        try:
            for ev in stream:
                if ev.is_final:
                    out = ev.output
                    settings = dict(out.settings, seed=seed, negative_prompt=negative_prompt or "")
                    stages = [grid(imgs) for imgs in out.stage_images] + [None] * (n_stages - len(out.stage_images))
                    status = f"Done: {len(out.stage_images)} stage(s) in {time.time() - t0:.1f} s (seed {seed})."
                    yield (*stages, out.images, status, settings, png_with_metadata(out.images[0], settings), understood, seed)
                    return
                done += 1
                progress((done, total_steps), desc=f"stage {ev.stage}/{last}")
                now = time.time()
                stage_end = ev.step == ev.total_steps
                if now - last_yield < PREVIEW_INTERVAL_S and not stage_end and ev.step != 1:
                    continue  # faster than the browser can show: skip this frame
                last_yield = now
                outputs = list(stage_outputs)
                outputs[ev.stage - 1] = grid(ev.previews)
                status = f"Stage {ev.stage}/{last} · step {ev.step}/{ev.total_steps} · {now - t0:.1f} s"
                yield (*outputs, gr.skip(), status, gr.skip(), gr.skip(), understood, seed)
        except ValueError as e:
            raise gr.Error(str(e))
        except gr.Error:
            raise
        except Exception as e:  # never a traceback in the browser, never a dead worker
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {type(e).__name__}: {e}")
        finally:
            stream.close()  # Stop (or a lost client) ends the work at the current step

    return generate


def build_app(source, concurrency_limit: int = 1, max_queue: int = 16) -> gr.Blocks:
    """The playground for a pipeline (or a weights folder to load it from)."""
    holder = PipelineHolder(source)
    pipe = holder.pipe
    n_stages = pipe.num_stages if pipe is not None else 3
    resolutions = pipe.stage_resolutions if pipe is not None else [None] * n_stages
    defaults = input_defaults(pipe.settings if pipe is not None else ImagenPipeline.default_settings)

    generate = make_generate(holder)
    try:  # ZeroGPU on Hugging Face Spaces: hold a GPU only while generating
        import spaces  # type: ignore

        generate = spaces.GPU(generate)
    except ImportError:
        pass

    with gr.Blocks(title="imagen-app: Imagen playground") as demo:
        gr.Markdown("# Imagen playground\nA frozen T5 text encoder conditions a base diffusion U-Net; super-resolution "
                    "U-Nets enlarge its image 4x at a time. Watch every stage denoise live.")
        if holder.error:
            gr.Markdown(f"⚠️ **{holder.error}**\n\nStart the app with `--weights` pointing to a saved pipeline folder.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", placeholder="an emoji name, e.g. 'red heart'", max_lines=2)
                negative = gr.Textbox(value="", label="Negative prompt", placeholder="optional", max_lines=1)
            with gr.Column(scale=1):
                run = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            randomize = gr.Checkbox(label="Randomize seed", value=False)
            guidance = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5, label="Guidance scale (base)")
            sr_guidance = gr.Slider(0, 30, value=defaults["sr_guidance_scale"], step=0.5,
                                    label="Guidance scale (super-resolution)")
        with gr.Row():
            steps = [gr.Slider(1, 200, value=defaults[f"steps_stage_{k + 1}"], step=1,
                               label=f"Steps, stage {k + 1}" + (f" ({resolutions[k]} px)" if resolutions[k] else ""))
                     for k in range(3)]
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                schedulers = [gr.Dropdown(SCHEDULER_CHOICES, value=defaults[f"scheduler_stage_{k + 1}"], label=f"Scheduler, stage {k + 1}")
                              for k in range(3)]
            with gr.Row():
                percentile = gr.Slider(0, 100, value=defaults["dynamic_thresholding_percentile"], step=0.5,
                                       label="Dynamic thresholding percentile (0 = off)")
                aug = gr.Slider(0, 1, value=defaults["noise_aug_level"], step=0.05, label="Noise augmentation level")
                count = gr.Slider(1, 4, value=1, step=1, label="Number of images")
                last_stage = gr.Slider(1, n_stages, value=n_stages, step=1, label="Last stage to run")
        status = gr.Markdown("Ready.")
        with gr.Row():
            stage_images = [gr.Image(label=f"Stage {k + 1}" + (f": {resolutions[k]} px" if resolutions[k] else ""),
                                     type="pil", format="png", height=256, interactive=False,
                                     elem_classes="stage-image") for k in range(n_stages)]
        understood = gr.Markdown()
        with gr.Row():
            gallery = gr.Gallery(label="Final images", columns=4, height=280)
            with gr.Column():
                settings = gr.JSON(label="Settings used (reproduce with the same seed)")
                download = gr.File(label="PNG with prompt and settings in its metadata")
        gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (one click)")
        with gr.Accordion("What the model knows", open=False):
            gr.Markdown(known_captions_markdown(pipe))

        inputs = [prompt, negative, seed, randomize, guidance, sr_guidance, *steps, *schedulers, percentile, aug, count,
                  last_stage]
        outputs = [*stage_images, gallery, status, settings, download, understood, seed]
        event = gr.on([run.click, prompt.submit], generate, inputs, outputs, api_name="generate",
                      concurrency_limit=concurrency_limit)
        stop.click(lambda: "Stopped.", None, status, cancels=[event], queue=False, api_name=False)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    return demo


def known_captions_markdown(pipe: Optional[ImagenPipeline]) -> str:
    if pipe is None:
        return "No model loaded."
    vocab = sorted(w for w in pipe.tokenizer.get_vocab() if not w.startswith("<"))
    text = (f"The shipped model was trained on the names of emoji (OpenMoji, CC BY-SA 4.0), e.g. 'red heart', "
            f"'flag: japan', 'woman firefighter: dark skin tone'. Its vocabulary has {len(vocab)} words; other words "
            "are unknown to it. The full caption list is `weights/captions.txt`; compositions held out of training "
            "are in `weights/held_out.txt`.\n\n")
    return text + "<details><summary>All known words</summary>\n\n" + ", ".join(vocab) + "\n\n</details>"
