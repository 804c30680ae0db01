""""The second hour": what a new user still tripped on (the browser's side: test_browser_rough_edges.py).

1. Upscale starts from the user's image at the stage whose input size is nearest, to a chosen output size, and its
   settings list only the stages that ran. 2. The command line and the app choose their CPU threads with one helper
   (cores available, load), which `bench` shows. 3. Every API output has a name, every count is an integer.
4. Stop with nothing running says so. 5. A prompt at the box's limit is named; transformers' "Token indices sequence
   length" warning stays out of the server log. 6. Compare shows cells at a size that shows the difference.
"""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import generate_named


def noop_progress(*args, **kwargs):
    pass


@pytest.fixture()
def keep_threads():
    """Restores PyTorch's thread count (the helper under test sets it for the whole process)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def busy_two_cores(monkeypatch):
    """A 2-core machine with a load average of 5 and no thread count set in the environment."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("IMAGEN_THREADS", raising=False)
    try:
        from imagen_app import threads
    except ImportError:  # before the helper existed: nothing chose the threads
        return
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", "/nonexistent/cpu.max")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """The tiny cascade saved as a weights folder (what the CLI and the app load)."""
    from imagen_app.training.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "weights"
    tiny_pipeline().save_pretrained(folder)
    return str(folder)


def detailed(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# ----- 1. Upscale ----------------------------------------------------------------------------------------------
def test_upscale_stages_start_where_the_image_size_is_nearest(tiny_pipe):
    """The tiny cascade is 8 -> 32 -> 128 px: stage 2 takes 8 px, stage 3 takes 32 px."""
    stages = tiny_pipe.upscale_stages
    assert stages(8) == (2, 3) and stages(10) == (2, 3) and stages(15) == (2, 3)
    assert stages(16) == (3, 3)  # halfway (log scale): the larger input, keeping more of the image
    assert stages(32) == (3, 3) and stages(40) == (3, 3) and stages(160) == (3, 3)
    assert stages(160, target_size=32) == (2, 2)  # the output size chosen: no later than its stage
    assert stages(10, target_size=128) == (2, 3)
    with pytest.raises(ValueError, match="target_size"):
        stages(10, target_size=64)


def spy_stream(monkeypatch, pipe):
    calls = []
    original = pipe.stream

    def stream(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe, "stream", stream)
    return calls


def test_upscale_tab_sends_a_large_image_straight_to_the_last_stage(tiny_pipe, monkeypatch):
    """A 40 px image (the tiny cascade's stage 3 takes 32 px) is not shrunk to the base's 8 px and re-drawn: it goes
    into stage 3 resized to 32 px; the settings list stage 3's only."""
    from imagen_app.app.edit_tabs import edit_outputs, make_upscale
    from imagen_app.app.ui import PipelineHolder

    calls = spy_stream(monkeypatch, tiny_pipe)
    upscale = make_upscale(PipelineHolder(tiny_pipe))
    *_, final = upscale(detailed(40), "red heart", 0)
    result = edit_outputs(final, 2, 3)
    assert calls[-1]["start_at_stage"] == 3 and calls[-1]["image"].size == (40, 40)
    assert result["stage_2"] is None and result["stage_3"].size == (128, 128) and result["image"].size == (128, 128)
    settings = result["settings"]
    assert settings["start_at_stage"] == 3 and settings["stop_at_stage"] == 3
    for name in ("num_inference_steps", "guidance_scale", "dynamic_thresholding_percentile", "noise_aug_level",
                 "scheduler"):
        assert len(settings[name]) == 1, (name, settings[name])  # stage 3's only: stages 1 and 2 did not run
    assert result["status"].startswith("Done") and "32 px" in result["status"]


def test_upscale_tab_output_size_is_a_choice(tiny_pipe, monkeypatch):
    from imagen_app.app.edit_tabs import edit_outputs, make_upscale
    from imagen_app.app.ui import PipelineHolder

    calls = spy_stream(monkeypatch, tiny_pipe)
    upscale = make_upscale(PipelineHolder(tiny_pipe))
    *_, final = upscale(detailed(160), "red heart", 0, None, 32)  # to 32 px: only stage 2 can make that
    result = edit_outputs(final, 2, 3)
    assert calls[-1]["start_at_stage"] == 2 and result["image"].size == (32, 32) and result["stage_3"] is None
    assert result["settings"]["num_inference_steps"] == [3] and result["settings"]["start_at_stage"] == 2
    *_, small = upscale(detailed(10), "red heart", 0)  # a small image still runs every super-resolution stage
    assert calls[-1]["start_at_stage"] == 2 and edit_outputs(small, 2, 3)["image"].size == (128, 128)
    with pytest.raises(Exception, match="target_size"):
        list(upscale(detailed(10), "red heart", 0, None, 64))


def test_pipeline_settings_list_only_the_stages_that_ran(tiny_pipe):
    out = tiny_pipe("red heart", image=detailed(32), start_at_stage=3, num_inference_steps=[5, 4, 2],
                    generator=torch.Generator().manual_seed(0))
    assert out.settings["num_inference_steps"] == [2] and out.settings["guidance_scale"] == [1.0]
    assert len(out.settings["scheduler"]) == 1
    assert out.settings["start_at_stage"] == 3 and out.settings["stop_at_stage"] == 3
    full = tiny_pipe("red heart", num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert full.settings["num_inference_steps"] == [1, 1, 1] and "start_at_stage" not in full.settings


def test_cli_upscale_starts_where_the_image_size_is_nearest(tiny_weights, tmp_path, keep_threads):
    from imagen_app.cli import main

    detailed(40).save(tmp_path / "in.png")
    out = tmp_path / "big.png"
    assert main(["upscale", str(tmp_path / "in.png"), "--weights", tiny_weights, "--out", str(out), "--steps", "1",
                 "--threads", "2"]) == 0
    settings = json.loads((tmp_path / "big.json").read_text())
    assert Image.open(out).size == (128, 128) and settings["start_at_stage"] == 3
    assert settings["num_inference_steps"] == [1]
    assert main(["upscale", str(tmp_path / "in.png"), "--weights", tiny_weights, "--out", str(out), "--steps", "1",
                 "--size", "32", "--threads", "2"]) == 0
    assert Image.open(out).size == (32, 32)


# ----- 2. CPU threads ------------------------------------------------------------------------------------------
def test_threads_follow_the_cores_available_and_the_load(monkeypatch, tmp_path):
    from imagen_app import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("IMAGEN_THREADS", raising=False)
    assert threads.choose_threads(cores=2, load=4.5).threads == 1  # the busy 2-core machine: not 2
    assert threads.choose_threads(cores=2, load=0.2).threads == 2
    assert threads.choose_threads(cores=8, load=6.4).threads == 2
    assert threads.choose_threads(cores=8, load=0.0).threads == 8
    assert threads.choose_threads(requested=3, cores=2, load=9).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = threads.choose_threads(cores=8, load=0.0)
    assert choice.threads == 1 and "OMP_NUM_THREADS" in choice.reason
    # The cores this process may use: its affinity, capped by a cgroup quota.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", str(quota))
    assert threads.available_cores() == 2
    quota.write_text("max 100000\n")
    assert threads.available_cores() == 4


def test_cli_generate_chooses_its_threads(tiny_weights, tmp_path, busy_two_cores, keep_threads):
    from imagen_app.cli import main

    torch.set_num_threads(2)
    assert main(["generate", "red heart", "--weights", tiny_weights, "--steps", "1", "--out",
                 str(tmp_path / "out.png")]) == 0
    assert torch.get_num_threads() == 1  # 2 cores, load 5: one thread, not PyTorch's default of one per core


def test_the_app_chooses_its_threads_with_the_same_helper(tiny_weights, busy_two_cores, keep_threads):
    from imagen_app.app.ui import PipelineHolder

    torch.set_num_threads(2)
    holder = PipelineHolder(tiny_weights)
    assert holder.pipe is not None and torch.get_num_threads() == 1


def test_bench_shows_the_thread_choice(tiny_weights, busy_two_cores, keep_threads, capsys):
    from imagen_app.cli import main

    assert main(["bench", "--weights", tiny_weights, "--repeats", "1", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "1 thread (2 cores available, load average 5.0)" in out, out


# ----- 3. The API's names and types ------------------------------------------------------------------------------
def test_every_api_output_has_a_name_and_counts_are_integers(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    unnamed = [(endpoint, r["label"]) for endpoint, info in api.items() for r in info["returns"]
               if re.fullmatch(r"value_\d+", r["label"] or "") or not r["label"]]
    assert not unnamed, unnamed
    types = {(endpoint, p["parameter_name"]): p["python_type"]["type"] for endpoint, info in api.items()
             for p in info["parameters"]}
    whole = [("/generate", "seed"), ("/generate", "num_images"), ("/generate", "last_stage"),
             *[("/generate", f"steps_stage_{k}") for k in (1, 2, 3)], ("/edit", "seed"), ("/edit", "last_stage"),
             ("/upscale", "seed"), ("/compare", "stage"), ("/compare", "seed")]
    wrong = {key: types.get(key) for key in whole if types.get(key) != "int"}
    assert not wrong, wrong
    assert types[("/upscale", "target_size")] == "int"


def test_a_client_can_pass_the_integers_it_is_told(client):
    result = generate_named(client.predict("red heart", steps_stage_1=2, steps_stage_2=1, steps_stage_3=1,
                                           num_images=1, last_stage=2, api_name="/generate"))
    assert result["settings"]["num_inference_steps"] == [2, 1] and result["stage_3"] is None


# ----- 4. Stop with nothing running --------------------------------------------------------------------------------
class Req:  # what session_of reads of a gr.Request
    def __init__(self, session):
        self.session_hash = session


def generate_stop(demo):
    """(Stop's first answer, its queued follow-up, the note that the page asked for a run) of the Generate tab."""
    fns = demo.fns
    run_id = next(i for i, f in fns.items() if f.api_name == "generate")
    cancel = next(f for f in fns.values() if f.cancels == [run_id])
    stop_id = next(i for i, f in fns.items() if f.fn is not None and f.targets == cancel.targets)
    after = next(f for f in fns.values() if f.trigger_after == stop_id and not f.trigger_only_on_failure)
    asked = next((f.fn for i, f in fns.items() if f.fn is not None and f.targets == fns[run_id].targets
                  and i != run_id and not f.outputs), None)
    return fns[stop_id].fn, after.fn, asked, fns[run_id].fn


def test_stop_with_nothing_running_says_so(tiny_pipe):
    from imagen_app.app.ui import build_app

    stop, after, asked, generate = generate_stop(build_app(tiny_pipe))
    first = stop(Req("idle"))
    assert first.startswith("Nothing was running"), first
    assert after(Req("idle")) == first  # the queued follow-up says the same
    NOTHING_RUNNING = first
    asked(Req("queued"))  # Generate clicked: the run waits in the queue (not started), and Stop cancels it
    assert stop(Req("queued")) == "Stopped." and after(Req("queued")) == "Stopped."
    assert stop(Req("queued")) == NOTHING_RUNNING  # that queued run was cancelled: a second Stop has nothing
    run = generate("red heart", progress=noop_progress, request=Req("going"))
    next(run)  # under way
    try:
        assert stop(Req("going")) == "Stopped."
    finally:
        run.close()
    assert after(Req("going")) == "Stopped."


# ----- 5. The prompt's length ------------------------------------------------------------------------------------
def test_a_long_prompt_leaves_no_transformers_warning_in_the_log(capfd):
    from imagen_app.app.ui import PipelineHolder, make_generate
    from imagen_app.training.tiny import tiny_pipeline

    pipe = tiny_pipeline()  # its own tokenizer: transformers warns once per tokenizer
    generate = make_generate(PipelineHolder(pipe))
    prompt = ("red heart panda " * 40)[:490]
    *_, final = generate(prompt, steps_stage_1=1, steps_stage_2=1, steps_stage_3=1, progress=noop_progress)
    result = generate_named(final)
    assert result["status"].startswith("Done")
    assert "Cut by the length limit" in result["understood"]  # the page names the words that were cut
    err = capfd.readouterr().err
    assert "Token indices sequence length" not in err and "indexing errors" not in err, err[-2000:]


def test_a_prompt_that_fills_the_box_is_named(tiny_pipe):
    from imagen_app.app.ui import understanding_markdown

    assert "500 characters" in understanding_markdown(tiny_pipe, "x" * 500)
    assert "500 characters" not in understanding_markdown(tiny_pipe, "red heart")


def test_understood_says_how_the_prompt_was_read_when_it_was_brought_to_a_name(tiny_pipe):
    """The shared normalisation (case, articles, a flag's wording) is shown, not hidden; a prompt read as typed
    gets no such line."""
    from imagen_app.app.ui import understanding_markdown

    assert "**Read as:** 'flag: japan'" in understanding_markdown(tiny_pipe, "The flag of Japan")
    assert "Read as" not in understanding_markdown(tiny_pipe, "Red  Heart")


# ----- 6. Compare --------------------------------------------------------------------------------------------------
def test_compare_cells_show_a_stage_big_enough_to_see(tiny_pipe):
    """Varying the tiny cascade's stage 1 (8 px) shows each cell as the cascade's 128 px image (stage 3, the first of
    128 px or more), not the 8 px image enlarged 16 times."""
    from imagen_app.app.compare_tab import make_compare
    from imagen_app.app.ui import PipelineHolder

    compare = make_compare(PipelineHolder(tiny_pipe))
    (_, _, first), *_, (grid, table, status) = compare("red heart", "1, 8", "thresholding", 1, 0)
    assert grid.size == (120 + 2 * 128, 22 + 3 * 128)
    cell = np.asarray(grid.convert("RGB"))[22:22 + 128, 120:120 + 128].astype(int)
    blocky = np.kron(cell[::16, ::16], np.ones((16, 16, 1), int))  # what an 8 px image enlarged 16x looks like
    assert np.abs(cell - blocky).mean() > 2, "the cell is the base stage's 8 px image enlarged"
    assert status == "Done: 6 cells, seed 0." and "stage 3, 128 px" in first, first  # the status says which stage

