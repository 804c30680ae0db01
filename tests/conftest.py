import atexit
import os
import shutil
import socket
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

# Paths for tests at any depth of tests/ (never os.path.dirname(__file__) nor the working directory):
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout's root
WEIGHTS = os.path.join(REPO, "weights")  # the shipped model: a test that loads it is marked slow
# Real-browser tests: Debian's chromium, driven by Playwright (which downloads no browser of its own here)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MAIN_PROMPT = "an emoji name, e.g. 'red heart'"  # the main tab's prompt box placeholder (the Edit tab has another "Prompt")
EXAMPLES = os.path.join(REPO, "docs", "examples")
# Each test run has its own Gradio cache (and gradio_client download) folder, removed at the end: the apps' cache
# sweepers (imagen_app/cache_sweeper.py, 2 s in one test) never see another run's files, and no run leaves files.
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="imagen_app_tests_gradio_")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pipe():
    from imagen_app.training.tiny import tiny_pipeline

    return tiny_pipeline()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(tiny_pipe):
    from imagen_app.app.ui import build_app

    demo = build_app(tiny_pipe, concurrency_limit=1, max_queue=16)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright (skipped without either), one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser, app_url):
    """A fresh page (its own session) of the app on the tiny cascade for each test."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_url, wait_until="networkidle", timeout=60_000)
    yield page
    page.close()


@pytest.fixture()
def client(app_url):
    """A gradio_client of the app on the tiny cascade (skipped without gradio_client)."""
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(app_url, verbose=False)


def generate_named(values, n_stages: int = 3) -> dict:
    """An update or result of /generate by name (ui.generate_outputs); the tiny cascade has 3 stages."""
    from imagen_app.app.ui import generate_outputs

    return generate_outputs(values, n_stages)


def edit_named(values, first_pane: int, n_stages: int = 3) -> dict:
    """An update or result of /edit (first_pane 1) or /upscale (first_pane 2) by name (edit_tabs.edit_outputs)."""
    from imagen_app.app.edit_tabs import edit_outputs

    return edit_outputs(values, first_pane, n_stages)


@pytest.fixture(scope="session")
def scene_world():
    """The scene corpus's world (emoji renders, held-out split): built once for the scene and GenEval tests."""
    from imagen_app.training.scenes import load_scene_world

    return load_scene_world()


SMALL_UNET = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=(1, 1), cross_attention_levels=(False, True),
             self_attention_levels=(False, False), text_embed_dim=16, attention_head_dim=8, norm_num_groups=4)


def small_unet(**kwargs):
    """A U-Net of a few thousand parameters whose output depends on its text (no zero output layers)."""
    from imagen_app.models.unet import ImagenUNet

    torch.manual_seed(0)
    unet = ImagenUNet(**SMALL_UNET, **kwargs).eval()
    for param in unet.parameters():  # the output layers start at zero: the output would depend on nothing
        if not param.any():
            torch.nn.init.normal_(param, std=0.5)
    return unet


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


# Palette colours of OpenMoji, and a flat-filled emoji of one of them (tests of the recolouring and the colour measure).
RED, PURPLE, GREEN = np.array([210, 47, 39]), np.array([137, 103, 170]), np.array([177, 204, 51])
YELLOW, BLUE = np.array([252, 234, 43]), np.array([146, 211, 245])


def filled(colour, size=8):
    """A square of `colour` outlined in black on white, with one pixel half fill, half white."""
    image = np.full((size, size, 3), 255, np.uint8)
    image[1:-1, 1:-1] = 0
    image[2:-2, 2:-2] = colour
    image[0, 0] = np.rint((np.asarray(colour) + 255) / 2)  # an anti-aliased edge on the white
    return image
