"""Issue 30, item 1, on the page (Debian's chromium through Playwright; the API side is test_damaged_images.py): the
Edit and Upscale tabs read the browser's uploads with the app's own reader (their image components pass the upload
on unread), so a damaged file gets the app's message, and the editor's upload and painted layer still work."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")


def test_a_damaged_upload_on_the_upscale_tab_is_named(page, tmp_path):
    (tmp_path / "notes.png").write_text("shopping list: eggs, milk\n")
    page.get_by_role("tab", name="Upscale").click()
    panel = page.locator("div[role=tabpanel]:visible")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "notes.png"))
    page.wait_for_timeout(1000)
    panel.get_by_role("button", name="Upscale").click()
    page.wait_for_function("() => document.body.innerText.includes('is a text file')", timeout=30_000)
    text = page.evaluate("() => document.body.innerText")
    assert "The image to upscale (image: notes.png) is a text file, not an image. Accepted: PNG, JPEG" in text
    assert "upstream Gradio app" not in text


def test_the_edit_tab_reads_the_editors_upload_and_painted_layer(page, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    page.get_by_role("tab", name="Edit").click()
    panel = page.locator("div[role=tabpanel]:visible")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "in.png"))
    # the editor takes the file in client-side (no request to wait for): 2 s lost it 2 times in 5 on a busy CPU
    page.wait_for_timeout(6000)
    panel.get_by_placeholder("what the painted region should become").fill("red heart")
    box = panel.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    page.mouse.move(x + 40, y, steps=10)  # a stroke of the brush: the region to repaint
    page.mouse.up()
    page.wait_for_timeout(1000)
    panel.get_by_role("button", name="Edit", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('Done: Inpainting')", timeout=120_000)
