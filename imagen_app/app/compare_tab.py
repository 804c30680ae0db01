"""The "Compare" tab: Imagen's Fig. A.10 for the user's prompt, filled in cell by cell.

Columns are guidance weights, rows thresholding (none, static, dynamic) or, for a super-resolution
stage, noise-augmentation levels (§2.5). Every cell has the same seed; the grid image and a table of
each cell's settings update as each cell finishes. Every input of its `compare` API endpoint is checked by name with
inputs.py's checks, as /generate's are, and the grid's size (cells) and the steps its cells run against the request
budget (budget.py) before any work.

The cells run through `imagen_app.evaluation.compare.stream_cells` (as the CLI's grid does), one denoising step at a
time, with a status update at least every STATUS_INTERVAL_S: Gradio
cancels a streaming event (the Stop button, a client's cancel) only between two updates, so a cancel ends the grid
within a step, not at the end of a whole cell (which took 4.7 s; /generate's cancel is as quick).
"""
from __future__ import annotations

import time
from typing import List, Optional

import gradio as gr

from ..evaluation.compare import Cell, labelled_grid, parse_row, readable_stage, stream_cells
from .budget import Budget
from .inputs import (CONTROL, MAX_PROMPT_CHARS, MAX_SEED, check_budget, choice_input, input_error, text_input,
                     user_facing_errors, whole_input)
from .stop import ActiveRuns, session_of, wire_stop

THRESHOLDING_ROWS = ["0", "static", "99.5"]  # the paper's three rows
NOISE_AUG_ROWS = ["aug=0", "aug=0.1", "aug=0.3", "aug=0.5"]
ROW_KINDS = ["thresholding", "noise augmentation"]
DEFAULT_GUIDANCE = "1, 4, 8, 16"
MAX_CELLS = Budget().max_compare_cells  # the default budget's cells per grid (budget.py)
STATUS_INTERVAL_S = 0.25  # between a cell's status updates: how soon a cancel lands (and each update re-sends the grid)
GUIDANCE_NAME = "guidance_text (Guidance weights)"  # each input as the API and the UI call it
GUIDANCE = CONTROL["guidance_scale"].setting  # the pipeline's bounds of a guidance weight


def parse_grid(guidance_text, row_kind: str, budget: Optional[Budget] = None):
    """The columns and rows the user asked for, or an input error that names the input and says what is wrong
    (more cells than the request budget allows included)."""
    budget = budget or Budget()
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
    over = budget.cells_refusal(f"{GUIDANCE_NAME} (row_kind {row_kind!r})", len(guidances), len(rows))
    if over:
        raise input_error(over)
    return guidances, rows


def make_compare(holder, budget: Optional[Budget] = None, active_runs: Optional[ActiveRuns] = None):
    n_stages = holder.pipe.num_stages if holder.pipe is not None else 3
    budget = budget or Budget()
    active_runs = active_runs or ActiveRuns()

    def compare(prompt: str, guidance_text: str = DEFAULT_GUIDANCE, row_kind: str = "thresholding", stage: int = 1,
                seed: int = 0, request: gr.Request = None):
        """Streams (grid image, per-cell table, status) as each cell finishes, and the status during a cell."""
        with active_runs.track(session_of(request)):  # ends when the generator is closed, Stop included (stop.py)
            yield from _compare(holder, n_stages, budget, prompt, guidance_text, row_kind, stage, seed)

    return compare


def _compare(holder, n_stages: int, budget: Budget, prompt, guidance_text, row_kind, stage, seed):
    pipe = holder.get()
    # Every input is checked here by the name the API and the UI give it (the event runs with
    # preprocess=False, as /generate does: Gradio neither coerces nor range-checks a value first).
    prompt = text_input(prompt, "prompt")
    if not prompt.strip():
        raise input_error("The prompt is empty: type what to draw")
    row_kind = choice_input(row_kind, "row_kind (Rows)", ROW_KINDS, default="thresholding")
    guidances, rows = parse_grid(guidance_text, row_kind, budget)
    stage = whole_input(stage, "stage (Stage)", 1, n_stages, default=1)
    seed = whole_input(seed, "seed", 0, MAX_SEED, default=0)
    cells: List = []
    total = len(guidances) * len(rows)
    # Each cell at a size that shows the difference: the varied stage's image carried on (default settings) to
    # the first stage of 128 px or more; the base stage's own 32 px image, enlarged, is a blur.
    shown = readable_stage(pipe, stage)
    check_budget(budget, pipe.resolve_settings(stop_at_stage=shown))  # the steps every cell runs: the defaults
    size = pipe.stage_resolutions[shown - 1]
    corner = f"stage {shown}, {size} px"  # in the grid's top-left corner
    where = corner + (f" (stage {stage} varied)" if shown != stage else "")
    grid, table = labelled_grid(cells, guidances, rows, corner=corner), []
    last_update = time.monotonic()
    # A ValueError is bad settings (noise rows on the base stage: stream_cells says so before any work), named with
    # the rows and stage (inputs.user_facing_errors).
    with user_facing_errors("Compare", lambda e: f"{e} (row_kind {row_kind!r}, stage {stage})"):
        events = stream_cells(pipe, prompt, guidances, rows, seed, stage, show_stage=shown)
        try:
            for item in events:
                now = time.monotonic()
                if isinstance(item, Cell):
                    cells.append(item)
                    table = [[rows[c.row].label, c.guidance_scale, c.seed] for c in cells]
                    grid = labelled_grid(cells, guidances, rows, corner=corner)
                    last_update = now
                    yield grid, table, f"Cell {len(cells)}/{total} ({where})"
                elif now - last_update >= STATUS_INTERVAL_S:  # a cancel lands here, within the cell
                    last_update = now
                    yield grid, table, (f"Cell {len(cells) + 1}/{total} ({where}): stage {item.stage} · "
                                        f"step {item.step}/{item.total_steps}")
        finally:
            events.close()  # Stop, or a client's cancel, ends the work at the current step
    yield grid, table, f"Done: {total} cells, seed {seed}."


def build_compare_tab(holder, n_stages: int, concurrency_limit: int = 1, budget: Optional[Budget] = None) -> None:
    """The tab's components, its `compare` API endpoint and its Stop button; call inside a `gr.Tab`. `budget`: the
    request budget (budget.py)."""
    budget = budget or Budget()
    compare_runs = ActiveRuns()
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
        stop = gr.Button("Stop", variant="stop", scale=1)
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
    event = run.click(make_compare(holder, budget, compare_runs), [prompt, guidance, row_kind, stage, seed],
                      [grid, table, status], api_name="compare", concurrency_limit=concurrency_limit,
                      show_progress="minimal", preprocess=False)
    wire_stop(stop, event, status, compare_runs, triggers=[run.click])
