"""The "Compare" tab: Imagen's Fig. A.10 for the user's prompt, filled in cell by cell.

Columns are guidance weights, rows thresholding (none, static, dynamic) or, for a super-resolution
stage, noise-augmentation levels (§2.5). Every cell has the same seed; the grid image and a table of
each cell's settings update as each cell finishes. It calls only `imagen_app.evaluation.compare`; every input of its
`compare` API endpoint is checked by name with inputs.py's checks, as /generate's are.
"""
from __future__ import annotations

from typing import List

import gradio as gr

from ..evaluation.compare import labelled_grid, parse_row, readable_stage, run_cells
from .inputs import (CONTROL, MAX_PROMPT_CHARS, MAX_SEED, choice_input, input_error, text_input, user_facing_errors,
                     whole_input)

THRESHOLDING_ROWS = ["0", "static", "99.5"]  # the paper's three rows
NOISE_AUG_ROWS = ["aug=0", "aug=0.1", "aug=0.3", "aug=0.5"]
ROW_KINDS = ["thresholding", "noise augmentation"]
DEFAULT_GUIDANCE = "1, 4, 8, 16"
MAX_CELLS = 24
GUIDANCE_NAME = "guidance_text (Guidance weights)"  # each input as the API and the UI call it
GUIDANCE = CONTROL["guidance_scale"].setting  # the pipeline's bounds of a guidance weight


def parse_grid(guidance_text, row_kind: str):
    """The columns and rows the user asked for, or an input error that names the input and says what is wrong."""
    text = text_input(DEFAULT_GUIDANCE if guidance_text is None else guidance_text, GUIDANCE_NAME)
    try:
        guidances = [float(g) for g in text.replace(" ", "").split(",") if g]
    except ValueError:
        raise input_error(f"{GUIDANCE_NAME}: give numbers separated by commas, e.g. {DEFAULT_GUIDANCE}; "
                          f"got {text!r:.60}") from None
    if not guidances or any(not GUIDANCE.low <= g <= GUIDANCE.high for g in guidances):
        raise input_error(f"{GUIDANCE_NAME}: give one or more numbers from {GUIDANCE.low:g} to {GUIDANCE.high:g}, "
                          f"got {text!r:.60}")
    rows = [parse_row(r) for r in (NOISE_AUG_ROWS if row_kind == "noise augmentation" else THRESHOLDING_ROWS)]
    if len(guidances) * len(rows) > MAX_CELLS:
        raise input_error(f"{GUIDANCE_NAME}: at most {MAX_CELLS // len(rows)} guidance weights with these rows "
                          f"(row_kind {row_kind!r}), got {len(guidances)}")
    return guidances, rows


def make_compare(holder):
    n_stages = holder.pipe.num_stages if holder.pipe is not None else 3

    def compare(prompt: str, guidance_text: str = DEFAULT_GUIDANCE, row_kind: str = "thresholding", stage: int = 1,
                seed: int = 0):
        """Streams (grid image, per-cell table, status) as each cell finishes."""
        pipe = holder.get()
        # Every input is checked here by the name the API and the UI give it (the event runs with
        # preprocess=False, as /generate does: Gradio neither coerces nor range-checks a value first).
        prompt = text_input(prompt, "prompt")
        if not prompt.strip():
            raise input_error("The prompt is empty: type what to draw")
        row_kind = choice_input(row_kind, "row_kind (Rows)", ROW_KINDS, default="thresholding")
        guidances, rows = parse_grid(guidance_text, row_kind)
        stage = whole_input(stage, "stage (Stage)", 1, n_stages, default=1)
        seed = whole_input(seed, "seed", 0, MAX_SEED, default=0)
        cells: List = []
        total = len(guidances) * len(rows)
        # Each cell at a size that shows the difference: the varied stage's image carried on (default settings) to
        # the first stage of 128 px or more; the base stage's own 32 px image, enlarged, is a blur.
        shown = readable_stage(pipe, stage)
        size = pipe.stage_resolutions[shown - 1]
        corner = f"stage {shown}, {size} px"  # in the grid's top-left corner
        where = corner + (f" (stage {stage} varied)" if shown != stage else "")
        # A ValueError is bad settings (noise rows on the base stage), named by run_cells (inputs.user_facing_errors).
        with user_facing_errors("Compare", lambda e: f"{e} (row_kind {row_kind!r}, stage {stage})"):
            for cell in run_cells(pipe, prompt, guidances, rows, seed=seed, stage=stage, show_stage=shown):
                cells.append(cell)
                table = [[rows[c.row].label, c.guidance_scale, c.seed] for c in cells]
                yield labelled_grid(cells, guidances, rows, corner=corner), table, f"Cell {len(cells)}/{total} ({where})"
        yield labelled_grid(cells, guidances, rows, corner=corner), table, f"Done: {total} cells, seed {seed}."

    return compare


def build_compare_tab(holder, n_stages: int, concurrency_limit: int = 1) -> None:
    """The tab's components and its `compare` API endpoint; call inside a `gr.Tab`."""
    gr.Markdown("Same prompt and seed in every cell: only guidance (columns) and thresholding or noise "
                "augmentation (rows) of the chosen stage change. Each cell shows the cascade's image at 128 px or "
                "more (the stages after the chosen one run with their defaults), where the difference is visible. "
                "High guidance saturates colours without thresholding; dynamic thresholding (Imagen §2.3) keeps "
                "them in range by dividing the whole predicted image by the same factor s, so at high guidance "
                "(8-16) the **pure white background is pulled towards grey too**: it comes out off-white and "
                "speckled (with the shipped model at guidance 16, about 249 instead of 255). The dynamic "
                "thresholding max (1.1) bounds s, and so how grey it gets.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="red heart", max_lines=1, max_length=MAX_PROMPT_CHARS, scale=3)
        run = gr.Button("Compare", variant="primary", scale=1)
    with gr.Row():
        guidance = gr.Textbox(label="Guidance weights (columns)", value=DEFAULT_GUIDANCE)
        row_kind = gr.Radio(ROW_KINDS, value="thresholding", label="Rows")
        # An integer in the API (a dropdown of numbers was typed as the strings '1', '2', '3')
        stage = gr.Slider(1, max(n_stages, 2), value=1, step=1, precision=0, label="Stage (noise augmentation: 2 or more)")
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
    status = gr.Markdown("", label="Status")
    # At the grid's own size (scrolling sideways where the window is narrower), never shrunk to fit the column.
    grid = gr.Image(label="Grid", type="pil", format="png", interactive=False, elem_classes="compare-grid")
    table = gr.Dataframe(headers=["row", "guidance", "seed"], label="Cells", interactive=False)
    run.click(make_compare(holder), [prompt, guidance, row_kind, stage, seed], [grid, table, status],
              api_name="compare", concurrency_limit=concurrency_limit, show_progress="minimal", preprocess=False)
