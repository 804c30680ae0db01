"""Issue 30, item 2: one request could hold the only worker for many minutes (the API took 1000 steps a stage; 1000
on three stages was at step 739 of stage 1 after 60 s). Every request now has a documented, configurable budget
(imagen_app/app/budget.py: steps per stage, images, Compare cells), and a request beyond it is refused at once,
naming the input and the limit; at the budget it is accepted. Cancelling /compare took 4.7 s (it ended only between
cells); it is now as quick as /generate's cancel, under a second."""
import os
import time

import pytest

from conftest import REPO, free_port, generate_named

gradio_client = pytest.importorskip("gradio_client")


def refused_fast(client, **call) -> str:
    t0 = time.time()
    with pytest.raises(Exception) as err:
        client.predict(**call)
    assert time.time() - t0 < 2, f"refused after {time.time() - t0:.1f} s"
    return str(err.value)


def launched(demo):
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def small_budget_url():
    """The app on a tiny cascade (3 steps a stage by default) with a small budget: 5 steps, 2 images, 3 cells."""
    from imagen_app.app.budget import Budget
    from imagen_app.app.ui import build_app
    from imagen_app.training.tiny import tiny_pipeline

    demo = build_app(tiny_pipeline(), budget=Budget(max_steps=5, max_images=2, max_compare_cells=3))
    yield launched(demo)
    demo.close()


# ----- the budget, its configuration ----------------------------------------------------------------------------
def test_the_default_budget_covers_what_the_page_offers():
    """The page's sliders never offer what the default budget refuses: 200 steps, 4 images, 24 cells."""
    from imagen_app.app.budget import Budget
    from imagen_app.app.compare_tab import MAX_CELLS
    from imagen_app.app.inputs import CONTROL

    budget = Budget()
    assert budget.max_steps >= CONTROL["num_inference_steps"].high == 200
    assert budget.max_images >= 4 and budget.max_compare_cells >= MAX_CELLS == 24
    assert budget.max_steps < 1000  # below the pipeline's own bound, which let one request run for minutes


def load_app_script():
    """The repo's app.py (what `python app.py` and Spaces run) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_script_under_test", os.path.join(REPO, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_budget_is_configured_by_flags_or_environment(monkeypatch, capsys):
    import argparse

    from imagen_app.app.budget import Budget, add_budget_flags, budget_from_args

    assert Budget.from_env({}) == Budget()
    assert Budget.from_env({"IMAGEN_MAX_STEPS": "50", "IMAGEN_MAX_IMAGES": "2"}) == Budget(50, 2, 24)
    assert Budget.from_env({"IMAGEN_MAX_STEPS": "50"}, max_steps=20) == Budget(20, 4, 24)  # a flag wins
    for bad in ({"IMAGEN_MAX_STEPS": "lots"}, {"IMAGEN_MAX_IMAGES": "0"}, {"IMAGEN_MAX_COMPARE_CELLS": "1000"}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            Budget.from_env(bad)
    monkeypatch.setenv("IMAGEN_MAX_COMPARE_CELLS", "12")
    parser = argparse.ArgumentParser()
    add_budget_flags(parser)
    args = parser.parse_args(["--max-steps", "64", "--max-images", "1"])
    assert budget_from_args(args) == Budget(max_steps=64, max_images=1, max_compare_cells=12)
    with pytest.raises(SystemExit) as exit_:
        load_app_script().main(["--max-steps", "0"])  # refused before the model loads
    assert exit_.value.code == 2
    assert "max_steps (--max-steps, IMAGEN_MAX_STEPS) must be a whole number from 1 to 1000" in capsys.readouterr().err


def test_app_py_starts_the_app_with_its_budget(monkeypatch, tiny_pipe):
    import gradio as gr

    from imagen_app.app.budget import Budget

    app = load_app_script()
    built, launched_with = [], []
    monkeypatch.setattr(app, "build_app", lambda source, **kw: built.append(kw) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched_with.append(kw))
    monkeypatch.delenv("IMAGEN_MAX_COMPARE_CELLS", raising=False)
    app.main(["--port", "7999", "--max-steps", "30", "--max-compare-cells", "6"])
    assert built[0]["budget"] == Budget(max_steps=30, max_images=4, max_compare_cells=6)
    assert launched_with[0]["server_port"] == 7999


# ----- refused at once, by name, through the API ----------------------------------------------------------------
def test_the_issues_request_is_refused_at_once(client):
    """1000 steps on three stages (the API's own bound) ran for minutes; now it is refused before any work."""
    message = refused_fast(client, prompt="red heart", steps_stage_1=1000, steps_stage_2=1000, steps_stage_3=1000,
                           api_name="/generate")
    assert message.startswith("steps_stage_1 (Steps, stage 1) asks for 1000 steps: this app's budget is at most "
                              "200 steps per stage"), message
    assert "--max-steps" in message and "IMAGEN_MAX_STEPS" in message and "upstream Gradio app" not in message
    message = refused_fast(client, prompt="red heart", steps_stage_3=201, api_name="/generate")
    assert message.startswith("steps_stage_3 (Steps, stage 3) asks for 201 steps") and "at most 200" in message
    message = refused_fast(client, prompt="red heart", num_images=16, api_name="/generate")
    assert message.startswith("num_images (Number of images) asks for 16 images") and "at most 4" in message
    message = refused_fast(client, prompt="red heart", guidance_text=", ".join(["1"] * 9), api_name="/compare")
    assert "guidance_text" in message and "27 cells" in message and "at most 24 cells" in message, message


def test_over_the_budget_is_refused_and_at_it_accepted(small_budget_url):
    client = gradio_client.Client(small_budget_url, verbose=False)
    for k in (1, 2, 3):
        message = refused_fast(client, prompt="red heart", **{f"steps_stage_{k}": 6}, api_name="/generate")
        assert message.startswith(f"steps_stage_{k} (Steps, stage {k}) asks for 6 steps") and "at most 5" in message
    message = refused_fast(client, prompt="red heart", num_images=3, api_name="/generate")
    assert "num_images" in message and "at most 2 images" in message
    message = refused_fast(client, prompt="red heart", guidance_text="1, 4", api_name="/compare")
    assert "6 cells" in message and "at most 3 cells" in message and "at most 1 guidance weights" in message

    at_budget = generate_named(client.predict("red heart", steps_stage_1=5, steps_stage_2=1, steps_stage_3=1,
                                              num_images=2, api_name="/generate"))
    assert at_budget["settings"]["num_inference_steps"] == [5, 1, 1] and len(at_budget["images"]) == 2
    grid, table, status = client.predict("red heart", "4", "thresholding", 1, 0, api_name="/compare")
    assert status == "Done: 3 cells, seed 0." and len(table["data"]) == 3


def test_the_page_and_the_api_description_follow_the_budget(small_budget_url):
    client = gradio_client.Client(small_budget_url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    described = {p["parameter_name"]: p["type"] for p in api}
    assert described["steps_stage_1"] == {"type": "integer", "description": "numeric value between 1 and 5"}
    assert described["num_images"] == {"type": "integer", "description": "numeric value between 1 and 2"}
    config = client.config
    sliders = {c["props"].get("label"): c["props"] for c in config["components"] if c.get("type") == "slider"}
    steps = [props for label, props in sliders.items() if label and label.startswith("Steps, stage")]
    assert steps and all(props["maximum"] == 5 for props in steps)
    assert sliders["Number of images"]["maximum"] == 2


def test_edit_and_upscale_check_the_steps_they_run(tiny_pipe):
    """/edit and /upscale run the pipeline's default steps: a budget below them is named, before any work."""
    import gradio as gr
    from PIL import Image

    from imagen_app.app.budget import Budget
    from imagen_app.app.edit_tabs import make_edit, make_upscale
    from imagen_app.app.ui import PipelineHolder

    holder, image = PipelineHolder(tiny_pipe), Image.new("RGB", (8, 8), "red")
    tight = Budget(max_steps=2)  # the tiny cascade's default is 3 steps a stage
    for run, stage in [(lambda: list(make_edit(holder, budget=tight)({"background": image}, "red heart")), 1),
                       (lambda: list(make_upscale(holder, budget=tight)(image, "red heart")), 2)]:
        t0 = time.time()
        with pytest.raises(gr.Error) as err:
            run()
        assert time.time() - t0 < 2
        assert err.value.message.startswith(f"steps_stage_{stage} (Steps, stage {stage}) is 3 (the model's default): "
                                            "this app's budget is at most 2 steps per stage"), err.value.message
    *_, final = make_upscale(holder, budget=Budget(max_steps=3))(image, "red heart")  # at the budget
    assert final[-3].size == (128, 128)


# ----- cancelling /compare is as quick as cancelling /generate --------------------------------------------------
@pytest.fixture(scope="module")
def slow_url():
    """The app on a tiny cascade whose cells are slow: 300 steps at stage 1 (about 5 s a cell on the 2-core CPU
    beside a training)."""
    from imagen_app.app.budget import Budget
    from imagen_app.app.ui import build_app
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.settings.update(num_inference_steps=[300, 3, 1])
    demo = build_app(pipe, budget=Budget(max_steps=1000))
    yield launched(demo)
    demo.close()


def cancel_latency(client, *args, api_name: str) -> float:
    """Starts a call, waits for its first update, lets it run half a second more, and times the client's cancel: it
    returns once the server has closed the run (Gradio closes a streaming run between two of its updates: /compare
    sent one per cell, so its cancel waited for the cell to end)."""
    job = client.submit(*args, api_name=api_name)
    deadline = time.time() + 60
    while time.time() < deadline and not job.outputs():
        time.sleep(0.05)
    assert job.outputs(), "no update came"
    time.sleep(0.5)
    assert not job.done()
    t0 = time.time()
    job.cancel()
    return time.time() - t0


def test_cancelling_compare_is_as_quick_as_cancelling_generate(slow_url):
    client = gradio_client.Client(slow_url, verbose=False)
    generate_s = cancel_latency(client, "red heart", api_name="/generate")
    compare_s = cancel_latency(client, "red heart", "1, 4", "thresholding", 1, 0, api_name="/compare")
    assert generate_s < 1 and compare_s < 1, (generate_s, compare_s)
    t0 = time.time()  # and the worker is free at once: a quick call is served (one worker)
    result = generate_named(client.predict("red heart", steps_stage_1=1, steps_stage_2=1, steps_stage_3=1,
                                           api_name="/generate"))
    assert result["status"].startswith("Done") and time.time() - t0 < 10


def test_compare_streams_the_same_cells_as_whole_runs(tiny_pipe):
    """The grid's cells run step by step over the pipeline's stream (evaluation.compare.stream_cells, which the tab and
    the CLI share): the same images as whole pipeline calls with each cell's settings."""
    import numpy as np
    import torch

    from imagen_app.evaluation.compare import Cell, cell_settings, parse_row, stream_cells

    rows = [parse_row("0"), parse_row("static")]
    cells = [c for c in stream_cells(tiny_pipe, "red heart", [1.0, 4.0], rows, 3, 1, show_stage=2) if isinstance(c, Cell)]
    assert len(cells) == 4
    for got in cells:
        want = tiny_pipe("red heart", generator=torch.Generator().manual_seed(3),
                         **cell_settings(rows[got.row], [1.0, 4.0][got.col], 1, 2)).images[0]
        assert got.guidance_scale == [1.0, 4.0][got.col] and got.static_thresholding == rows[got.row].static
        assert np.array_equal(np.asarray(got.image), np.asarray(want))


def test_compare_has_a_stop_button(tiny_pipe):
    """The Compare tab has a Stop, as the other tabs have: it cancels the grid's run."""
    from imagen_app.app.ui import build_app

    demo = build_app(tiny_pipe)
    fns = demo.fns
    compare_id = next(i for i, f in fns.items() if f.api_name == "compare")
    assert any(f.cancels == [compare_id] for f in fns.values())
