"""The guidance x thresholding grid of Imagen's Fig. A.10, for any prompt, and a noise-augmentation row.

    python -m imagen_app compare "red heart" --guidance 1,4,8,16 --thresholding 0,static,99.5 --seed 0 --out grid.png

Columns are guidance weights (§2.2), rows thresholding settings (§2.3): "0" = none, "static" = clip
x0 to [-1, 1] (the paper's middle row), a percentile p = dynamic thresholding at p. Rows "aug=L"
set the noise conditioning augmentation level of a super-resolution stage instead (§2.5). Every
cell uses the same seed, so the setting is the only difference. `grid.json` beside the image lists
each cell's settings.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch


@dataclass(frozen=True)
class Row:
    label: str
    dynamic_thresholding_percentile: Optional[float] = None  # None: the stage's default
    static: bool = False
    noise_aug_level: Optional[float] = None


def parse_row(text: str) -> Row:
    """"0" / "off" -> no thresholding; "static" -> clip to [-1, 1]; "99.5" -> dynamic at 99.5; "aug=0.3"."""
    t = text.strip().lower()
    if t in ("0", "off", "none"):
        return Row("no thresholding", dynamic_thresholding_percentile=0)
    if t == "static":
        return Row("static [-1, 1]", dynamic_thresholding_percentile=100.0, static=True)
    if t.startswith("aug="):
        level = float(t[4:])
        return Row(f"noise aug {level:g}", noise_aug_level=level)
    p = float(t)
    return Row(f"dynamic p={p:g}", dynamic_thresholding_percentile=p)


@dataclass
class Cell:
    row: int
    col: int
    guidance_scale: float
    dynamic_thresholding_percentile: Optional[float]
    static_thresholding: bool
    noise_aug_level: Optional[float]
    seed: int
    stage: int
    image: object = None  # PIL image, filled in when the cell has run
    shown_stage: Optional[int] = None  # the stage whose output `image` is (None: `stage`)


def _at_stage(value, stage: int, n: Optional[int] = None):
    """A per-stage list of stages 1..n (default `stage`) that sets `stage` (1-based) and leaves the other stages at
    their defaults."""
    n = stage if n is None else n
    return None if value is None else [None] * (stage - 1) + [value] + [None] * (n - stage)


def cell_settings(row: Row, guidance: float, stage: int, show: int) -> dict:
    """One cell's per-stage settings for the pipeline: `guidance` and the row's setting at `stage`, the other stages
    up to `show` at their defaults."""
    return dict(guidance_scale=_at_stage(float(guidance), stage, show),
                dynamic_thresholding_percentile=_at_stage(row.dynamic_thresholding_percentile, stage, show),
                dynamic_thresholding_max=_at_stage(1.0, stage, show) if row.static else None,
                noise_aug_level=_at_stage(row.noise_aug_level, stage, show), stop_at_stage=show)


def stream_cells(pipe, prompt: str, guidances: Sequence[float], rows: Sequence[Row], seed: int = 0, stage: int = 1,
                 negative_prompt: Optional[str] = None, show_stage: Optional[int] = None) -> Iterator:
    """Runs the grid cell by cell (rows, then columns) over the pipeline's `stream`: the StageEvent of every denoising
    step, and each Cell with its image when it finishes. The settings vary at `stage`; each cell's image is the output
    of `show_stage` (default `stage`; a later stage runs with its default settings on the varied stage's image, which
    shows the difference at a size one can see). Closing the iterator ends the current cell at its step (the app's
    Stop)."""
    if not 1 <= stage <= pipe.num_stages:
        raise ValueError(f"stage must be between 1 and {pipe.num_stages}, got {stage}")
    show = stage if show_stage is None else show_stage
    if not stage <= show <= pipe.num_stages:
        raise ValueError(f"show_stage must be between stage ({stage}) and {pipe.num_stages}, got {show_stage}")
    if any(r.noise_aug_level is not None for r in rows) and stage == 1:
        raise ValueError("noise augmentation rows need a super-resolution stage: pass stage 2 or more")
    for i, row in enumerate(rows):
        for j, g in enumerate(guidances):
            events = pipe.stream(prompt, negative_prompt=negative_prompt, generator=torch.Generator().manual_seed(seed),
                                 **cell_settings(row, g, stage, show))
            try:
                for event in events:
                    yield (Cell(i, j, float(g), row.dynamic_thresholding_percentile, row.static, row.noise_aug_level,
                                seed, stage, event.output.images[0], shown_stage=show) if event.is_final else event)
            finally:
                events.close()


def run_cells(pipe, prompt: str, guidances: Sequence[float], rows: Sequence[Row], seed: int = 0,
              stage: int = 1, negative_prompt: Optional[str] = None, show_stage: Optional[int] = None) -> Iterator[Cell]:
    """stream_cells' cells alone, each as it finishes."""
    return (item for item in stream_cells(pipe, prompt, guidances, rows, seed, stage, negative_prompt, show_stage)
            if isinstance(item, Cell))


def readable_stage(pipe, stage: int, min_px: int = 128) -> int:
    """The first stage from `stage` on whose images are at least `min_px` (else the last stage): where the cells
    of a grid that varies `stage` are big enough to see the difference (the base stage's 32 px are not)."""
    sizes = pipe.stage_resolutions
    return next((k for k in range(stage, len(sizes) + 1) if sizes[k - 1] >= min_px), len(sizes))


def labelled_grid(cells: Sequence[Cell], guidances: Sequence[float], rows: Sequence[Row], cell_px: Optional[int] = None,
                  corner: str = ""):
    """The cells' images in a grid, guidance weights above the columns and the row settings at the left; each cell
    `cell_px` wide (default: the cells' own size, at least 128: small images are enlarged, pixelated); `corner`:
    a note in the top-left corner (e.g. which stage the cells show)."""
    from PIL import Image, ImageDraw

    if cell_px is None:
        cell_px = max([128] + [c.image.width for c in cells if c.image is not None])
    left, top = 120, 22
    sheet = Image.new("RGB", (left + cell_px * len(guidances), top + cell_px * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, g in enumerate(guidances):
        draw.text((left + j * cell_px + 4, 4), f"guidance {g:g}", fill=(0, 0, 0))
    if corner:
        draw.text((4, 4), corner, fill=(90, 90, 90))
    for i, row in enumerate(rows):
        draw.text((4, top + i * cell_px + cell_px // 2 - 6), row.label, fill=(0, 0, 0))
    for c in cells:
        if c.image is not None:
            resample = Image.NEAREST if c.image.width < cell_px else Image.LANCZOS
            sheet.paste(c.image.convert("RGB").resize((cell_px, cell_px), resample), (left + c.col * cell_px, top + c.row * cell_px))
    return sheet


def cell_record(c: Cell) -> Dict:
    record = {k: v for k, v in asdict(c).items() if k != "image"}
    if c.static_thresholding:  # no percentile: x0 clipped to [-1, 1]
        record["dynamic_thresholding_percentile"] = 0
    return record


def write_comparison(pipe, prompt: str, guidances: Sequence[float], rows: Sequence[Row], out: str, seed: int = 0,
                     stage: int = 1, on_cell: Optional[Callable[[Cell], None]] = None,
                     show_stage: Optional[int] = None) -> List[Cell]:
    """Runs the grid and writes `out` (PNG) and the same name with .json: one entry per cell."""
    cells = []
    for cell in run_cells(pipe, prompt, guidances, rows, seed, stage, show_stage=show_stage):
        cells.append(cell)
        if on_cell:
            on_cell(cell)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    labelled_grid(cells, guidances, rows).save(out)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(dict(prompt=prompt, seed=seed, stage=stage, shown_stage=show_stage or stage,
                       cells=[cell_record(c) for c in cells]), f, indent=2)
    return cells
