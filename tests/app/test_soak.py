"""Memory (issue 16, item 4): a server that runs for weeks must not grow with every generation.

The soak is slow (200 generations, about 15 minutes on a loaded 2-core CPU): `python -m pytest -m slow
tests/app/test_soak.py -s`. It found two causes: every gr.skip() in a stream left a component copy in the session
(checked fast here too), and glibc kept the memory each generation freed (imagen_app/memory.py)."""
import os
import subprocess
import sys
import time

import httpx
import pytest

from conftest import REPO, edit_named, free_port, generate_named

gradio_client = pytest.importorskip("gradio_client")

GENERATIONS, BASELINE_AFTER, MAX_GROWTH = 200, 20, 0.10
# The server, as `python app.py` runs it, on the tiny random pipeline: its own process, so that the RSS measured is
# the server's alone (not the client's, nor pytest's).
SERVER = """
import sys
from imagen_app.training.tiny import tiny_pipeline
from imagen_app.app.ui import build_app
build_app(tiny_pipeline(), cache_minutes=0.5).launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
"""


def rss_bytes(pid: int) -> int:
    """A process's resident set size."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except OSError:  # not Linux
        import psutil

        return psutil.Process(pid).memory_info().rss


@pytest.mark.slow
def test_rss_does_not_grow_over_200_generations(tmp_path):
    from imagen_app.training.tiny import TINY_CAPTIONS

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path))
        rss, t0 = {}, time.time()
        for i in range(1, GENERATIONS + 1):
            prompt = f"{TINY_CAPTIONS[i % len(TINY_CAPTIONS)]} {i}"  # new prompts: the embedding cache fills and evicts
            result = client.predict(prompt, seed=i, api_name="/generate")
            status = generate_named(result)["status"]
            assert status.startswith("Done:"), status
            if i in (BASELINE_AFTER, GENERATIONS):
                rss[i] = rss_bytes(server.pid)
        elapsed = time.time() - t0
    finally:
        server.terminate()
        server.wait(timeout=60)
    growth = rss[GENERATIONS] / rss[BASELINE_AFTER] - 1
    print(f"\nServer RSS after generation {BASELINE_AFTER}: {rss[BASELINE_AFTER] / 2**20:.1f} MiB, after {GENERATIONS}: "
          f"{rss[GENERATIONS] / 2**20:.1f} MiB ({growth:+.1%}); {GENERATIONS} generations in {elapsed:.0f} s")
    assert growth < MAX_GROWTH


def is_update(value) -> bool:
    """gr.skip() and gr.update(...): Gradio replaces the output's component in the session for each."""
    return isinstance(value, dict) and value.get("__type__") == "update"


def test_streams_give_every_output_a_value(tiny_pipe):
    """Every update of the /generate and /upscale streams (/edit shares upscale's) gives each output a value:
    with gr.skip() a session kept 8 more component copies every generation (124 components, 148 after 3, 172
    after 6), and the files written for them were never deleted by Gradio's delete_cache."""
    from PIL import Image

    from imagen_app.app.ui import build_app

    demo = build_app(tiny_pipe)
    fns = {f.api_name: f.fn for f in demo.fns.values() if f.api_name in ("generate", "upscale")}
    runs = {"generate": fns["generate"]("red heart"), "upscale": fns["upscale"](Image.new("RGB", (8, 8), "red"), "red heart")}
    by_name = {"generate": generate_named, "upscale": lambda update: edit_named(update, 2)}
    for name, updates in runs.items():
        updates = [by_name[name](update) for update in updates]  # every output of every update, by name
        assert len(updates) > 3, name
        skipped = [(name, i, output) for i, update in enumerate(updates) for output, value in update.items()
                   if is_update(value)]
        assert not skipped, skipped
