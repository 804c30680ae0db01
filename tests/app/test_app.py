"""The Gradio app over its API (gradio_client), on a tiny random cascade."""
import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, generate_named as named

gradio_client = pytest.importorskip("gradio_client")


def image_of(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def final_image(result) -> np.ndarray:
    return image_of(named(result)["images"][0]["image"])


def test_streams_each_stage_before_final(client):
    job = client.submit("red heart", seed=1, steps_stage_1=3, steps_stage_2=3, steps_stage_3=3, api_name="/generate")
    updates = list(job)
    statuses = [named(u)["status"] for u in updates]
    stages_previewed = {int(s.split("/")[0].split()[-1]) for s in statuses if s.startswith("Stage ")}
    assert stages_previewed == {1, 2, 3}
    first_final = next(i for i, s in enumerate(statuses) if s.startswith("Done"))
    assert first_final == len(statuses) - 1  # previews of every stage came before the result
    for u in updates[:-1]:  # each preview update carries the image of the stage it names
        k = int(named(u)["status"].split("/")[0].split()[-1])
        assert named(u)[f"stage_{k}"] is not None
    result = named(job.result())
    assert [image_of(result[f"stage_{k}"]).shape[:2] for k in (1, 2, 3)] == [(8, 8), (32, 32), (128, 128)]
    assert image_of(result["images"][0]["image"]).shape == (128, 128, 3)
    settings = result["settings"]
    assert settings["prompt"] == "red heart" and settings["seed"] == 1
    meta = Image.open(result["download"]).text  # the PNG download carries the prompt and settings
    assert meta["prompt"] == "red heart" and json.loads(meta["parameters"])["seed"] == 1


def test_same_seed_same_image(client):
    a = client.predict("panda", seed=7, api_name="/generate")
    b = client.predict("panda", seed=7, api_name="/generate")
    c = client.predict("panda", seed=8, api_name="/generate")
    assert np.array_equal(final_image(a), final_image(b))
    assert not np.array_equal(final_image(a), final_image(c))


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps_stage_1=0), "steps_stage_1"),  # named as the API calls it
    (dict(prompt="x" * 5000), "too long"),
    (dict(scheduler_stage_2="warp-drive"), "warp-drive"),
    (dict(noise_aug_level_stage_2=3), "noise_aug_level_stage_2"),
    (dict(last_stage=1.5), "last_stage"),
])
def test_bad_input_gets_clear_error_then_next_request_works(client, kwargs, message):
    args = () if "prompt" in kwargs else ("red heart",)
    with pytest.raises(Exception) as err:
        client.predict(*args, **kwargs, api_name="/generate")
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)
    ok = client.predict("red heart", api_name="/generate")
    assert final_image(ok).shape == (128, 128, 3)


def test_nan_guidance_over_raw_http_is_a_clear_error(app_url, client):
    """JSON clients cannot send NaN; a raw request can. It must be refused with a message."""
    # prompt, negative, seed, randomize, guidance x3, steps x3, scheduler x3, percentile x3, noise aug x2, count, last
    body = json.dumps({"data": ["red heart", "", 0, False, float("nan"), 2.0, 1.0, 3, 3, 3, "dpm++", "dpm++", "dpm++",
                                99.5, 99.5, 99.5, 0.1, 0.1, 1, 3]}).encode()
    req = urllib.request.Request(app_url + "gradio_api/call/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
        stream = urllib.request.urlopen(app_url + f"gradio_api/call/generate/{event_id}", timeout=60).read().decode()
        assert "event: error" in stream and "finite" in stream
    except urllib.error.HTTPError as e:  # refused before it reached the function: also a clear error
        assert e.code in (400, 422)
    ok = client.predict("red heart", api_name="/generate")
    assert final_image(ok).shape == (128, 128, 3)


def test_empty_prompt_is_allowed(client):
    result = client.predict("", api_name="/generate")
    assert final_image(result).shape == (128, 128, 3)
    assert "unconditional" in named(result)["understood"]


def test_unknown_words_are_reported(client):
    understood = named(client.predict("red corgi heart", api_name="/generate"))["understood"]
    assert "doesn't know" in understood and "corgi" in understood


def test_four_clients_at_once(app_url):
    results, errors = {}, []

    def run(i):
        try:
            c = gradio_client.Client(app_url, verbose=False)
            results[i] = c.predict("blue heart", seed=i, api_name="/generate")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 4
    assert all(final_image(r).shape == (128, 128, 3) for r in results.values())


def test_cancelled_job_frees_its_slot(client):
    long_job = client.submit("panda", steps_stage_1=200, steps_stage_2=200, steps_stage_3=200, api_name="/generate")
    deadline = time.time() + 60
    while time.time() < deadline and not long_job.outputs():
        time.sleep(0.2)
    assert long_job.outputs(), "the long job never started"
    long_job.cancel()
    t0 = time.time()
    quick = client.predict("red heart", api_name="/generate")  # one worker: only runs if the slot was freed
    assert final_image(quick).shape == (128, 128, 3)
    assert time.time() - t0 < 60


def used(settings):
    return {k: settings[k] for k in ("num_inference_steps", "guidance_scale", "dynamic_thresholding_percentile",
                                     "dynamic_thresholding_max", "noise_aug_level", "scheduler")}


def test_omitted_settings_are_the_pipeline_defaults(client, tiny_pipe):
    """Over the API and in a direct Python call, a setting left out is the loaded pipeline's default,
    stage by stage (each super-resolution stage has its own guidance)."""
    from imagen_app.pipeline.settings import settings_kwargs
    from imagen_app.app.ui import PipelineHolder, make_generate

    expected = used(settings_kwargs(tiny_pipe.resolve_settings()))
    assert expected["guidance_scale"] == [3.0, 2.0, 1.0]
    assert used(named(client.predict("red heart", api_name="/generate"))["settings"]) == expected
    *_, final = make_generate(PipelineHolder(tiny_pipe))("red heart")
    assert used(named(final)["settings"]) == expected


def test_generate_resolves_the_settings_once(tiny_pipe, monkeypatch):
    """The app resolves a request's settings once and streams them as they are (stage_settings=)."""
    from imagen_app.app.ui import PipelineHolder, make_generate

    calls = []
    resolve = tiny_pipe.resolve_settings
    monkeypatch.setattr(tiny_pipe, "resolve_settings", lambda **kwargs: calls.append(kwargs) or resolve(**kwargs))
    *_, final = make_generate(PipelineHolder(tiny_pipe))("red heart", steps_stage_2=2, guidance_scale_stage_1=5.0)
    assert len(calls) == 1
    settings = named(final)["settings"]
    assert settings["num_inference_steps"] == [3, 2, 3] and settings["guidance_scale"] == [5.0, 2.0, 1.0]


@pytest.mark.parametrize("resolutions", [(8,), (8, 32), (8, 32, 128)])
def test_ui_controls_follow_the_pipeline(resolutions):
    """The app has one set of per-stage controls per stage of the pipeline, and their initial values (what
    a browser sends when nobody touches them) are the pipeline's own defaults."""
    from imagen_app.pipeline.settings import settings_kwargs
    from imagen_app.training.tiny import tiny_pipeline
    from imagen_app.app.ui import PipelineHolder, build_app, make_generate

    pipe = tiny_pipeline(resolutions=resolutions)
    n = len(resolutions)
    pipe.settings.update(num_inference_steps=[2, 1, 1][:n], guidance_scale=[3.5, 2.5, 1.5][:n],
                         dynamic_thresholding_percentile=[99.5, 0, 95][:n], noise_aug_level=[0.0, 0.25, 0.5][:n],
                         scheduler=["ddim", "euler", "unipc"][:n])
    demo = build_app(pipe)
    fn = next(f for f in demo.fns.values() if f.api_name == "generate")
    labels = [c.label for c in fn.inputs]
    assert sum(label.startswith("Guidance scale, stage") for label in labels) == n
    assert sum(label.startswith("Steps, stage") for label in labels) == n
    assert f"Steps, stage {n} ({resolutions[-1]} px)" in labels
    untouched = [c.value for c in fn.inputs]
    untouched[0] = "red heart"
    *_, from_controls = make_generate(PipelineHolder(pipe))(*untouched)
    *_, omitted = make_generate(PipelineHolder(pipe))("red heart")
    expected = used(settings_kwargs(pipe.resolve_settings()))
    assert used(named(from_controls, n)["settings"]) == used(named(omitted, n)["settings"]) == expected
    assert expected["guidance_scale"] == [3.5, 2.5, 1.5][:n] and expected["scheduler"] == ["ddim", "euler", "unipc"][:n]


def test_eight_clients_served_in_order_and_the_17th_is_told_the_queue_is_full(app_url):
    """Under load (loopback only, bounded): while one long generation runs, 8 clients queue 16 quick ones
    (the queue's size); all 16 are served, in the order they joined, and one more is refused with a clear
    "queue is full" message instead of waiting or failing silently."""
    from gradio_client.utils import QueueError, Status

    clients = [gradio_client.Client(app_url, verbose=False) for _ in range(8)]
    blocker = clients[0].submit("panda", steps_stage_1=200, steps_stage_2=200, steps_stage_3=200, api_name="/generate")
    deadline = time.time() + 60
    while time.time() < deadline and not blocker.outputs():
        time.sleep(0.1)
    assert blocker.outputs(), "the long job never started"
    quick = dict(steps_stage_1=1, steps_stage_2=1, steps_stage_3=1, api_name="/generate")
    jobs, finished = [], []
    try:
        for i in range(16):  # one after another, each in the queue before the next joins
            job = clients[i % 8].submit("red heart", seed=i, **quick)
            job.add_done_callback(lambda _f, i=i: finished.append(i))
            deadline = time.time() + 30
            while time.time() < deadline and job.status().code < Status.IN_QUEUE:
                time.sleep(0.05)
            assert job.status().code == Status.IN_QUEUE, job.status()
            jobs.append(job)
        assert [j.status().rank for j in jobs] == list(range(16))
        extra = clients[0].submit("red heart", seed=99, **quick)
        with pytest.raises(QueueError, match="(?i)queue is full"):
            extra.result(timeout=30)
    finally:
        blocker.cancel()
    results = [j.result(timeout=120) for j in jobs]
    assert finished == list(range(16))  # served first come, first served
    assert [named(r)["settings"]["seed"] for r in results] == list(range(16))
    assert all(final_image(r).shape == (128, 128, 3) for r in results)


@pytest.mark.parametrize("argv, env, has_mcp, expected", [
    (["--mcp"], None, False, False), ([], "1", False, False), (["--mcp"], None, True, True), ([], None, False, None)])
def test_mcp_flag(argv, env, has_mcp, expected, tiny_pipe, monkeypatch, capsys):
    """`--mcp` (or IMAGEN_MCP=1) launches with Gradio's MCP server where the `mcp` package is there; without it, one
    clear message says to install gradio[mcp] and the app still builds and launches, without the MCP server."""
    import importlib.util
    import os

    import gradio as gr

    spec = importlib.util.spec_from_file_location("imagen_app_main", os.path.join(REPO, "app.py"))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    built, launched = [], []
    from imagen_app.app.ui import build_app

    monkeypatch.setattr(app, "build_app", lambda source, **kw: built.append(build_app(tiny_pipe, **kw)) or built[-1])
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(kw))
    monkeypatch.setattr(app, "mcp_available", lambda: has_mcp)
    if env is None:
        monkeypatch.delenv("IMAGEN_MCP", raising=False)
    else:
        monkeypatch.setenv("IMAGEN_MCP", env)
    app.main(argv)
    assert len(built) == 1 and isinstance(built[0], gr.Blocks)  # the app builds
    assert launched[0]["mcp_server"] is expected
    err = capsys.readouterr().err
    if expected is False:
        assert err.count('pip install "gradio[mcp]"') == 1
    else:
        assert "gradio[mcp]" not in err


def test_generate_describes_itself_to_api_and_mcp_clients(tiny_pipe):
    """The MCP tool description (Gradio reads it from generate's docstring and signature) names every argument."""
    import inspect

    import gradio as gr
    from imagen_app.app.ui import PipelineHolder, make_generate

    generate = make_generate(PipelineHolder(tiny_pipe))
    description, params, returns = gr.utils.get_function_description(generate)
    assert "prompt" in description and returns
    sig = inspect.signature(generate)
    for name, p in sig.parameters.items():
        if name not in ("progress", "request"):  # filled by Gradio, not arguments of the tool
            assert params[name], f"{name} has no description"
            assert p.annotation is not inspect.Parameter.empty, f"{name} has no type hint"
    assert sig.parameters["prompt"].annotation is str
