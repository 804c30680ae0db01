"""The guidance x thresholding grid: one seed, one setting changed per cell, written with its JSON."""
import json

import numpy as np
import pytest
import torch

from imagen_app.evaluation.compare import parse_row, run_cells, write_comparison
from imagen_app.training.tiny import tiny_pipeline


def test_rows_parse_to_settings():
    assert parse_row("0").dynamic_thresholding_percentile == 0
    static = parse_row("static")
    assert static.static and static.label.startswith("static")
    assert parse_row("99.5").dynamic_thresholding_percentile == 99.5
    assert parse_row("aug=0.3").noise_aug_level == 0.3
    with pytest.raises(ValueError):
        parse_row("strong")


def test_each_cell_equals_a_plain_call_with_its_settings(tmp_path):
    pipe = tiny_pipeline()
    rows = [parse_row("0"), parse_row("static"), parse_row("95")]
    cells = write_comparison(pipe, "red heart", [1.0, 8.0], rows, str(tmp_path / "grid.png"), seed=3, stage=1)
    assert [(c.row, c.col) for c in cells] == [(i, j) for i in range(3) for j in range(2)]
    record = json.loads((tmp_path / "grid.json").read_text())
    assert [c["guidance_scale"] for c in record["cells"]] == [1.0, 8.0] * 3
    assert [c["static_thresholding"] for c in record["cells"]] == [False] * 2 + [True] * 2 + [False] * 2
    assert {c["seed"] for c in record["cells"]} == {3}
    assert (tmp_path / "grid.png").exists()
    # the cell "guidance 8, dynamic 95" is exactly that call, alone
    alone = pipe("red heart", guidance_scale=[8.0], dynamic_thresholding_percentile=[95.0], stop_at_stage=1,
                 generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(alone), np.asarray(cells[5].image))
    # and the settings matter: high guidance without thresholding differs from the static-clipped cell
    assert not np.array_equal(np.asarray(cells[1].image), np.asarray(cells[3].image))


def test_noise_aug_rows_need_a_super_resolution_stage():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="super-resolution"):
        list(run_cells(pipe, "panda", [1.0], [parse_row("aug=0.3")], stage=1))
    cells = list(run_cells(pipe, "panda", [1.0], [parse_row("aug=0"), parse_row("aug=0.5")], stage=2))
    assert cells[0].image.size == (32, 32)
    assert not np.array_equal(np.asarray(cells[0].image), np.asarray(cells[1].image))


def test_compare_endpoint_fills_the_grid_cell_by_cell(client):
    from PIL import Image

    job = client.submit("red heart", "1, 8", "thresholding", 1, 2, api_name="/compare")
    updates = list(job)
    grid_path, table, status = job.result()  # compare()'s outputs: (grid image, per-cell table, status)
    assert status.startswith("Done: 6 cells")
    seed = table["headers"].index("seed")  # the table's columns by name
    assert len(table["data"]) == 6 and {row[seed] for row in table["data"]} == {2}
    assert len(updates) >= 6  # one update per cell, then the final one
    grid = Image.open(grid_path)
    assert grid.size == (120 + 2 * 128, 22 + 3 * 128)
    with pytest.raises(Exception, match="Guidance weights"):
        client.predict("red heart", "one, two", "thresholding", 1, 0, api_name="/compare")
