"""A real browser (Debian's chromium, driven by Playwright) uses the app like a person would."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_type_prompt_click_generate_see_stages(app_url, tmp_path):
    shot = os.environ.get("IMAGEN_SCREENSHOT", str(tmp_path / "app.png"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(app_url, wait_until="networkidle", timeout=60_000)
            page.get_by_label("Prompt", exact=True).fill("red heart")
            page.get_by_role("button", name="Generate").click()
            # every stage output fills in with an image
            stage_imgs = page.locator(".stage-image img, [data-testid='image'] img")
            page.wait_for_function(
                "() => [...document.querySelectorAll('img')].filter(i => i.src && i.naturalWidth > 0"
                " && i.closest('.block')?.innerText.includes('Stage')).length >= 3", timeout=120_000)
            page.wait_for_function("() => document.body.innerText.includes('Done:')", timeout=120_000)
            page.screenshot(path=shot, full_page=True)
            final_src = page.evaluate(
                "() => [...document.querySelectorAll('img')].filter(i => i.closest('.block')?.innerText.includes('Stage 3'))"
                ".map(i => i.src)[0]")
            assert final_src
            data = page.request.get(final_src).body()
        finally:
            browser.close()
    import io

    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)
    assert arr.shape[0] == 128 and arr.std() > 1.0  # the final image is not blank
    assert Image.open(shot).size[0] > 0
