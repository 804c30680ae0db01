import atexit
import os
import shutil
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
# Each test run has its own Gradio cache (and gradio_client download) folder, removed at the end: the apps' cache
# sweepers (imagen_app/cache_sweeper.py, 2 s in one test) never see another run's files, and no run leaves files.
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="imagen_app_tests_gradio_")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pipe():
    from imagen_app.tiny import tiny_pipeline

    return tiny_pipeline()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(tiny_pipe):
    from imagen_app.ui import build_app

    demo = build_app(tiny_pipe, concurrency_limit=1, max_queue=16)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()




def pytest_configure(config):
    config.addinivalue_line("markers", "slow: checks on the shipped weights, timing-dependent checks, the memory soak "
                                       "(minutes on a CPU); run with -m slow")


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `python -m pytest -m slow tests`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
