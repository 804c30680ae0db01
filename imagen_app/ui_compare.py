"""The "Compare" tab: Imagen's Fig. A.10 for the user's prompt, filled in cell by cell.

Columns are guidance weights, rows thresholding (none, static, dynamic) or, for a super-resolution
stage, noise-augmentation levels (§2.5). Every cell has the same seed; the grid image and a table of
each cell's settings update as each cell finishes. It calls only `imagen_app.compare`.
"""
from __future__ import annotations

from typing import List

import gradio as gr

from .compare import labelled_grid, parse_row, run_cells

THRESHOLDING_ROWS = ["0", "static", "99.5"]  # the paper's three rows
NOISE_AUG_ROWS = ["aug=0", "aug=0.1", "aug=0.3", "aug=0.5"]
MAX_CELLS = 24


def parse_grid(guidance_text: str, row_kind: str):
    """The columns and rows the user asked for, or a gr.Error that says what is wrong."""
    try:
        guidances = [float(g) for g in str(guidance_text).replace(" ", "").split(",") if g]
    except ValueError:
        raise gr.Error("Guidance weights: give numbers separated by commas, e.g. 1, 4, 8, 16") from None
    if not guidances or any(not 0 <= g <= 100 for g in guidances):
        raise gr.Error("Guidance weights: give one to eight numbers between 0 and 100")
    rows = [parse_row(r) for r in (NOISE_AUG_ROWS if row_kind == "noise augmentation" else THRESHOLDING_ROWS)]
    if len(guidances) * len(rows) > MAX_CELLS:
        raise gr.Error(f"At most {MAX_CELLS // len(rows)} guidance weights with these rows")
    return guidances, rows


def make_compare(holder):
    def compare(prompt: str, guidance_text: str = "1, 4, 8, 16", row_kind: str = "thresholding", stage: float = 1,
                seed: float = 0):
        """Streams (grid image, per-cell table, status) as each cell finishes."""
        pipe = holder.get()
        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("Prompt: type what to draw")
        guidances, rows = parse_grid(guidance_text, row_kind)
        try:
            stage, seed = int(stage), int(seed)
        except (TypeError, ValueError):
            raise gr.Error("Stage and seed must be whole numbers") from None
        cells: List = []
        total = len(guidances) * len(rows)
        try:
            for cell in run_cells(pipe, prompt, guidances, rows, seed=seed, stage=stage):
                cells.append(cell)
                table = [[rows[c.row].label, c.guidance_scale, c.seed] for c in cells]
                yield labelled_grid(cells, guidances, rows), table, f"Cell {len(cells)}/{total}"
        except ValueError as e:  # bad settings (stage out of range, noise rows on the base stage)
            raise gr.Error(str(e)) from None
        yield labelled_grid(cells, guidances, rows), table, f"Done: {total} cells, seed {seed}."

    return compare


def build_compare_tab(holder, n_stages: int, concurrency_limit: int = 1) -> None:
    """The tab's components and its `compare` API endpoint; call inside a `gr.Tab`."""
    gr.Markdown("Same prompt and seed in every cell: only guidance (columns) and thresholding or noise "
                "augmentation (rows) change. High guidance saturates without thresholding; dynamic "
                "thresholding (Imagen §2.3) keeps it usable.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="red heart", max_lines=1, max_length=500, scale=3)
        run = gr.Button("Compare", variant="primary", scale=1)
    with gr.Row():
        guidance = gr.Textbox(label="Guidance weights (columns)", value="1, 4, 8, 16")
        row_kind = gr.Radio(["thresholding", "noise augmentation"], value="thresholding", label="Rows")
        stage = gr.Dropdown(list(range(1, n_stages + 1)), value=1, label="Stage (noise augmentation: 2 or more)")
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
    status = gr.Markdown("")
    grid = gr.Image(label="Grid", type="pil", format="png", interactive=False)
    table = gr.Dataframe(headers=["row", "guidance", "seed"], label="Cells", interactive=False)
    run.click(make_compare(holder), [prompt, guidance, row_kind, stage, seed], [grid, table, status],
              api_name="compare", concurrency_limit=concurrency_limit, show_progress="minimal")
