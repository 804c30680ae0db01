"""Every input of the app's endpoints named in its error message; quiet logs for input errors; the disk
given back (Gradio's cache and the app's PNG downloads); weights faults named."""
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, free_port, generate_named as named

gradio_client = pytest.importorskip("gradio_client")


# (keyword arguments of /generate, text the error message must contain: the input's name)
BAD_GENERATE_INPUTS = [
    (dict(prompt=["red", "heart"]), "prompt"),
    (dict(prompt={"a": 1}), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt="x" * 5000), "prompt is too long"),
    (dict(negative_prompt="x" * 5000), "negative prompt"),
    (dict(negative_prompt=["x"]), "negative prompt"),
    (dict(seed=3.5), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed="7"), "seed"),
    (dict(seed=[1]), "seed"),
    (dict(seed=2**40), "seed"),
    (dict(randomize_seed="yes"), "randomize_seed"),
    (dict(randomize_seed=1), "randomize_seed"),
    (dict(num_images=0), "num_images"),
    (dict(num_images=5), "num_images"),
    (dict(num_images=1.5), "num_images"),
    (dict(num_images="2"), "num_images"),
    (dict(last_stage=0), "last_stage"),
    (dict(last_stage=4), "last_stage"),
    (dict(last_stage=1.5), "last_stage"),
    (dict(last_stage="all"), "last_stage"),
    (dict(steps_stage_1=0), "steps_stage_1"),
    (dict(steps_stage_2=2.5), "steps_stage_2"),
    (dict(steps_stage_3="many"), "steps_stage_3"),
    (dict(steps_stage_1=[3, 3]), "steps_stage_1"),
    (dict(steps_stage_2=100000), "steps_stage_2"),
    (dict(guidance_scale_stage_1=-1), "guidance_scale_stage_1"),
    (dict(guidance_scale_stage_2="high"), "guidance_scale_stage_2"),
    (dict(guidance_scale_stage_3={"w": 2}), "guidance_scale_stage_3"),
    (dict(guidance_scale_stage_1=1000), "guidance_scale_stage_1"),
    (dict(scheduler_stage_1="warp-drive"), "scheduler_stage_1"),
    (dict(scheduler_stage_2=3), "scheduler_stage_2"),
    (dict(scheduler_stage_3=["ddim"]), "scheduler_stage_3"),
    (dict(dynamic_thresholding_percentile_stage_1=20), "dynamic_thresholding_percentile_stage_1"),
    (dict(dynamic_thresholding_percentile_stage_2=101), "dynamic_thresholding_percentile_stage_2"),
    (dict(dynamic_thresholding_percentile_stage_3="p99"), "dynamic_thresholding_percentile_stage_3"),
    (dict(noise_aug_level_stage_2=3), "noise_aug_level_stage_2"),
    (dict(noise_aug_level_stage_3=-0.5), "noise_aug_level_stage_3"),
    (dict(noise_aug_level_stage_2="some"), "noise_aug_level_stage_2"),
    (dict(noise_aug_level_stage_3=[0.1]), "noise_aug_level_stage_3"),
]


def error_of(client, **kwargs) -> str:
    args = () if "prompt" in kwargs else ("red heart",)
    with pytest.raises(Exception) as err:
        client.predict(*args, **kwargs, api_name="/generate")
    return str(err.value)


def test_every_bad_generate_input_is_named_and_logs_no_traceback(client, capfd):
    capfd.readouterr()
    unnamed = []
    for kwargs, name in BAD_GENERATE_INPUTS:
        message = error_of(client, **kwargs)
        if name not in message or "upstream Gradio app" in message or "Traceback" in message:
            unnamed.append((kwargs if "x" * 100 not in str(kwargs) else list(kwargs), message))
    assert not unnamed, unnamed
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err
    ok = client.predict("red heart", api_name="/generate")  # and the server still works
    assert np.asarray(Image.open(named(ok)["images"][0]["image"])).shape == (128, 128, 3)


def raw_generate(app_url, prompt, negative_prompt="") -> str:
    """/generate called with raw JSON (which, unlike gradio_client, can carry a lone surrogate): the event stream."""
    import urllib.request

    # prompt, negative, seed, randomize, guidance x3, steps x3, scheduler x3, percentile x3, noise aug x2, count, last
    body = json.dumps({"data": [prompt, negative_prompt, 0, False, 4.0, 2.0, 1.0, 3, 3, 3, "dpm++", "dpm++", "dpm++",
                                0, 0, 0, 0.1, 0.1, 1, 3]}).encode()  # ensure_ascii: "\\ud800" in the JSON text
    req = urllib.request.Request(app_url + "gradio_api/call/generate", data=body, headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    return urllib.request.urlopen(app_url + f"gradio_api/call/generate/{event_id}", timeout=60).read().decode()


def test_a_prompt_that_is_not_valid_unicode_is_refused_by_name(app_url, client, capfd):
    capfd.readouterr()
    for kwargs, name in [(dict(prompt="red \ud800 heart"), "prompt"),
                         (dict(prompt="red heart", negative_prompt="blue \udfff"), "negative prompt")]:
        stream = raw_generate(app_url, **kwargs)
        assert "event: error" in stream, stream
        assert f"The {name}" in stream and "contains a character that is not valid Unicode text" in stream, stream
        assert "codec" not in stream and "Traceback" not in stream
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err
    assert "event: complete" in raw_generate(app_url, "red heart")  # and the server still works


def test_messages_say_what_is_accepted(client):
    assert "whole number" in error_of(client, steps_stage_2=2.5) or "integer" in error_of(client, steps_stage_2=2.5)
    assert "integer from 0 to" in error_of(client, seed=3.5)  # refused, not rounded to 4
    assert "too long" in error_of(client, negative_prompt="x" * 600) and "negative" in error_of(client, negative_prompt="x" * 600)


def test_none_for_every_optional_input_is_its_default(client, tiny_pipe):
    from imagen_app.app.ui import generate_parameters

    names = [p.name for p in generate_parameters(tiny_pipe.num_stages)][1:-2]  # all but prompt, progress and request
    nones = {name: None for name in names}
    result = named(client.predict("red heart", **nones, api_name="/generate"))
    default = named(client.predict("red heart", api_name="/generate"))
    assert np.array_equal(np.asarray(Image.open(result["images"][0]["image"])),
                          np.asarray(Image.open(default["images"][0]["image"])))
    used = result["settings"]
    assert used["num_inference_steps"] == [s.num_inference_steps for s in tiny_pipe.resolve_settings()]


def test_edit_and_upscale_inputs_are_named(client):
    from gradio_client import handle_file

    heart = os.path.join(EXAMPLES, "red_heart_32.png")
    if not os.path.exists(heart):
        pytest.skip("no example image")
    cases = [(dict(seed=3.5), "seed"), (dict(prompt=["x"]), "prompt"), (dict(prompt="x" * 600), "prompt"),
             (dict(noise_aug_level="lots"), "noise_aug_level")]
    for kwargs, name in cases:
        args = dict(image=handle_file(heart), prompt="red heart")
        args.update(kwargs)
        with pytest.raises(Exception) as err:
            client.predict(**args, api_name="/upscale")
        assert name in str(err.value) and "upstream" not in str(err.value), (kwargs, str(err.value))


# (keyword arguments of /compare, text the error message must contain: the input's name)
BAD_COMPARE_INPUTS = [
    (dict(prompt=["red", "heart"]), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt=""), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt="x" * 600), "prompt is too long"),
    (dict(guidance_text="one, two"), "guidance_text"),
    (dict(guidance_text=4), "guidance_text"),
    (dict(guidance_text=[1, 4]), "guidance_text"),
    (dict(guidance_text=""), "guidance_text"),
    (dict(guidance_text="1, 400"), "guidance_text"),
    (dict(guidance_text="nan"), "guidance_text"),
    (dict(guidance_text=", ".join(["1"] * 9)), "guidance_text"),
    (dict(guidance_text="1," * 300), "guidance_text"),
    (dict(row_kind="diagonal"), "row_kind"),
    (dict(row_kind=1), "row_kind"),
    (dict(row_kind=["thresholding"]), "row_kind"),
    (dict(stage=0), "stage"),
    (dict(stage=4), "stage"),
    (dict(stage=1.5), "stage"),
    (dict(stage="2"), "stage"),
    (dict(stage=True), "stage"),
    (dict(row_kind="noise augmentation", stage=1), "stage"),
    (dict(seed=3.5), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed="7"), "seed"),
    (dict(seed=[1]), "seed"),
    (dict(seed=2**40), "seed"),
]


def test_every_bad_compare_input_is_named_and_logs_no_traceback(client, capfd):
    capfd.readouterr()
    unnamed = []
    for kwargs, name in BAD_COMPARE_INPUTS:
        call = dict(prompt="red heart", guidance_text="1, 8")
        call.update(kwargs)
        with pytest.raises(Exception) as err:
            client.predict(**call, api_name="/compare")
        message = str(err.value)
        if name not in message or "upstream Gradio app" in message or "Traceback" in message:
            unnamed.append((kwargs if "x" * 100 not in str(kwargs) else list(kwargs), message))
    assert not unnamed, unnamed
    assert "Traceback" not in "".join(capfd.readouterr())
    grid, table, status = client.predict("red heart", "1, 8", "thresholding", 1, 2, api_name="/compare")  # still works
    assert status == "Done: 6 cells, seed 2." and Image.open(grid).size == (120 + 2 * 128, 22 + 3 * 128)


@pytest.mark.parametrize("api_name, table", [("/generate", BAD_GENERATE_INPUTS), ("/compare", BAD_COMPARE_INPUTS)],
                         ids=["generate", "compare"])
def test_every_input_of_the_endpoint_has_bad_values_in_the_table(client, api_name, table):
    """The tables above cover every input that the running app's endpoint takes, as its API shows them to a client
    (generate_parameters, the compare tab's signature): an input added to the app without a case fails here."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]
    inputs = [p["parameter_name"] for p in api["parameters"]]
    tried = {name for kwargs, _ in table for name in kwargs}
    assert "prompt" in inputs and [name for name in inputs if name not in tried] == []


def test_none_for_every_optional_compare_input_is_its_default(client):
    grid, _, status = client.predict("red heart", guidance_text=None, row_kind=None, stage=None, seed=None,
                                     api_name="/compare")
    default_grid, _, default_status = client.predict("red heart", api_name="/compare")
    assert status == default_status == "Done: 12 cells, seed 0."
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(Image.open(default_grid)))


@pytest.mark.parametrize("api_name, args", [("/generate", ["red heart", "", 0, False] + [None] * 16),
                                            ("/compare", ["red heart", "1", "thresholding", 1, 0])])
def test_an_extra_positional_argument_is_refused_by_name(client, capfd, api_name, args):
    """Gradio 6.31 would drop it before the function runs (it checks only too few); inputs.refuse_extra_inputs."""
    capfd.readouterr()
    with pytest.raises(Exception) as err:
        client.predict(*args, "one too many", api_name=api_name)
    message = str(err.value)
    assert f"{api_name} takes {len(args)} inputs but got {len(args) + 1}" in message and "'one too many'" in message
    assert "Traceback" not in "".join(capfd.readouterr())
    assert client.predict(*args, api_name=api_name)  # the right count still works


# ----- disk ------------------------------------------------------------------------------------------
def test_png_downloads_do_not_pile_up():
    from imagen_app.app.ui import KEEP_DOWNLOADS, downloads_folder, png_with_metadata

    image = Image.new("RGB", (8, 8), "red")
    paths = [png_with_metadata(image, {"prompt": "red", "i": i}) for i in range(KEEP_DOWNLOADS + 8)]
    assert all(os.path.dirname(p) == downloads_folder() for p in paths)
    left = [f for f in os.listdir(downloads_folder()) if f.endswith(".png")]
    assert len(left) <= KEEP_DOWNLOADS
    assert os.path.exists(paths[-1]) and not os.path.exists(paths[0])
    assert json.loads(Image.open(paths[-1]).text["parameters"])["i"] == KEEP_DOWNLOADS + 7


def cached_files(folders) -> set:
    return {os.path.join(d, f) for folder in folders for d, _, names in os.walk(folder) for f in names}


def test_gradio_cache_is_purged_after_cache_minutes(tiny_pipe):
    from imagen_app.app.cache_sweeper import component_cache_folders
    from imagen_app.app.ui import build_app, downloads_folder

    demo = build_app(tiny_pipe, cache_minutes=2 / 60)  # files older than 2 s go, checked every second
    assert demo.delete_cache == (1, 2)
    folders = [*component_cache_folders(demo), downloads_folder()]
    before = cached_files(folders)  # examples, initial values, files of earlier tests: never touched by the app's sweeper
    gradio_tracked = {f for s in demo.temp_file_sets for f in s}  # Gradio's own delete_cache (2 s here) may take these
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    written, done = set(), threading.Event()

    def watch():  # every file written meanwhile (with a 2 s age the first ones go before the last generation ends)
        while not done.wait(0.1):
            written.update(cached_files(folders) - before)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # The client does not download the results: with a 2 s age, on a loaded CPU the download after the last
        # update can come later than the purge (a 403; with the default 60 minutes no client is that slow).
        c = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        seed = time.time_ns() % 10**9  # new images: not copies of files an earlier run left in the cache
        for i in range(3):  # the first run outlasts the 2 s age (its stage 1 pane is shown until its end)
            result = c.predict("red heart", seed=seed + i, steps_stage_1=40 if i == 0 else 2, steps_stage_2=2,
                               steps_stage_3=2, api_name="/generate")
            status = named(result)["status"]
            assert status.startswith("Done:"), status
        done.set()
        watcher.join()
        written.update(cached_files(folders) - before)
        assert len([f for f in written if f.endswith(".png")]) >= 3 * 4, "the generations wrote no preview frames"
        assert len([f for f in written if os.path.dirname(f) == downloads_folder()]) == 3  # the PNG downloads
        hash_folders = {os.path.dirname(f) for f in written} - {os.path.dirname(f) for f in before} - set(folders)
        assert hash_folders
        deadline = time.time() + 30  # Gradio's sweep: 2-3 s; the app's sweeper (its leftovers, empty folders): 6-7 s
        while time.time() < deadline and any(os.path.exists(f) for f in written | hash_folders):
            time.sleep(0.5)
        assert not [f for f in written if os.path.exists(f)]
        assert not [d for d in hash_folders if os.path.exists(d)]  # the emptied hash folders go too
        assert all(os.path.exists(f) for f in before - gradio_tracked if "imagen_app_downloads" not in f)
        # The app's sweeper left Gradio's own files to Gradio: none is still listed in its temp files once deleted.
        assert not [f for s in demo.temp_file_sets for f in s if f in written]
    finally:
        done.set()
        demo.close()


def test_a_stage_pane_shown_again_is_touched_not_written_again(monkeypatch):
    """The streams send an unchanged stage pane again in every update: its file is not rewritten (under a client
    downloading it), but touched, so that a cache age shorter than the run does not take it (a result that got 403),
    and written again if it was taken."""
    import gradio as gr

    from imagen_app.app.stage_pane import StagePane

    saved = []
    image_postprocess = gr.Image.postprocess
    monkeypatch.setattr(gr.Image, "postprocess", lambda self, value: saved.append(value) or image_postprocess(self, value))
    pane = StagePane(type="pil", format="png", interactive=False, render=False)
    saved.clear()  # its initial value
    image = Image.new("RGB", (8, 8), "red")
    first = pane.postprocess(image)
    written_at = os.stat(first.path).st_ctime
    time.sleep(0.05)
    again = pane.postprocess(image)
    assert again.path == first.path and len(saved) == 1  # not encoded nor written again
    assert os.stat(first.path).st_ctime > written_at  # touched: its age starts again
    os.remove(first.path)  # taken by delete_cache meanwhile
    assert os.path.exists(pane.postprocess(image).path) and len(saved) == 2
    assert pane.postprocess(None) is None


def test_cache_sweeper_deletes_only_old_files_written_while_the_app_runs(tmp_path):
    from imagen_app.app.cache_sweeper import CacheSweeper

    class App:  # the one thing the sweeper reads of a Gradio app
        is_running = False

    def write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return path

    def wait_until(condition, timeout=10.0):
        deadline = time.time() + timeout
        while not condition() and time.time() < deadline:
            time.sleep(0.02)
        return condition()

    cache, downloads = tmp_path / "gradio", tmp_path / "downloads"
    example = write(cache / "aaa" / "example.png")
    old_download = write(downloads / "earlier.png")
    (cache / "empty_before").mkdir()
    app = App()
    sweeper = CacheSweeper(app, [str(cache), str(downloads)], every_s=0.05, age_s=1.0).start()

    frame = write(cache / "bbb" / "frame.png")
    shared = write(cache / "aaa" / "new.png")  # a new file beside an example
    png = write(downloads / "imagen_1.png")
    write(cache / "ddd" / "tracked.png").unlink()  # deleted by Gradio's own delete_cache, which leaves the folder
    time.sleep(1.3)
    assert sweeper.thread.is_alive() and frame.exists() and sweeper.deleted == 0  # not launched yet: waits

    app.is_running = True  # demo.launch()
    assert wait_until(lambda: not frame.exists() and not shared.exists() and not png.exists())
    assert wait_until(lambda: not (cache / "bbb").exists() and not (cache / "ddd").exists())  # hash folders left empty
    assert example.exists() and old_download.exists()  # there before the start: never touched
    assert (cache / "aaa").is_dir() and (cache / "empty_before").is_dir() and downloads.is_dir() and cache.is_dir()
    young = write(cache / "ccc" / "young.png")
    time.sleep(0.3)
    assert young.exists()  # younger than age_s

    app.is_running = False  # demo.close()
    sweeper.thread.join(timeout=2)
    assert not sweeper.thread.is_alive()
    time.sleep(1.0)
    assert young.exists()  # older than age_s now, but the app is closed: nothing more is deleted


def test_cache_sweeper_thread_ends_with_a_never_launched_app(tmp_path):
    import gc

    from imagen_app.app.cache_sweeper import CacheSweeper

    class App:
        is_running = False

    app = App()
    sweeper = CacheSweeper(app, [str(tmp_path)], every_s=0.05, age_s=1.0).start()
    del app
    gc.collect()
    sweeper.thread.join(timeout=2)
    assert not sweeper.thread.is_alive()


# ----- weights faults --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_pipe):
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipe.save_pretrained(str(folder))
    return folder


def test_missing_defaults_file_is_named(saved, tmp_path):
    from imagen_app import ImagenPipeline

    copy = tmp_path / "pipe"
    shutil.copytree(saved, copy)
    os.remove(copy / "pipeline_defaults.json")
    with pytest.warns(UserWarning, match="pipeline_defaults.json is missing"):
        pipe = ImagenPipeline.from_pretrained(str(copy))
    assert any("pipeline_defaults.json" in w for w in pipe.load_warnings)
    from imagen_app.app.ui import build_app

    demo = build_app(pipe)
    notices = [b.value for b in demo.blocks.values() if type(b).__name__ == "Markdown" and isinstance(b.value, str)]
    assert any("pipeline_defaults.json is missing" in n for n in notices)


def test_truncated_weights_are_named(saved, tmp_path):
    from imagen_app import ImagenPipeline

    copy = tmp_path / "pipe"
    shutil.copytree(saved, copy)
    weights = next((copy / "unet_2").glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(OSError) as err:
        ImagenPipeline.from_pretrained(str(copy))
    assert str(weights) in str(err.value) and "truncated" in str(err.value)


def test_wrong_weights_path_says_no_such_folder(tmp_path):
    from imagen_app import ImagenPipeline

    for path in [str(tmp_path / "nope"), "weightz", "./nope/nope"]:
        with pytest.raises(FileNotFoundError, match="no such folder"):
            ImagenPipeline.from_pretrained(path)


def test_app_without_weights_says_so_on_generate(tmp_path, capfd):
    from imagen_app.app.ui import build_app

    demo = build_app(str(tmp_path / "missing"))
    run = next(b for b in demo.blocks.values() if type(b).__name__ == "Button" and b.value == "Generate")
    assert run.interactive is False
    fn = next(f for f in demo.fns.values() if f.api_name == "generate").fn
    import gradio as gr

    capfd.readouterr()
    with pytest.raises(gr.Error) as err:
        next(fn("red heart"))
    assert "no such folder" in str(err.value) and "could not be loaded" in str(err.value)
    assert "Traceback" not in "".join(capfd.readouterr())
