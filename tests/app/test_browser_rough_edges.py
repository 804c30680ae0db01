""""The second hour" on the page, in a real browser (Debian's chromium through Playwright; the rest of the issue is in
test_rough_edges.py): Stop with nothing running, the prompt box's limit, the Upscale tab's output size, the word
maps' gallery, the Compare tab's cells, and the README screenshot script."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM, MAIN_PROMPT, REPO

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
PROMPT = MAIN_PROMPT
STATUS_JS = """() => [...document.querySelectorAll('.prose, .md')].map(e => e.innerText.trim())
                .find(t => /^(Stage \\d|Done:|Ready|Stopped|Nothing)/.test(t)) || ''"""


def set_steps(page, steps):
    for k, (px, n) in enumerate(zip((8, 32, 128), steps), 1):
        box = page.get_by_label(f"number input for Steps, stage {k} ({px} px)")
        box.fill(str(n))
        box.blur()


def test_stop_with_nothing_running_says_so(page):
    page.get_by_role("button", name="Stop").first.click()  # the main tab's; nothing was started
    page.wait_for_function(f"() => ({STATUS_JS})().startsWith('Nothing was running')", timeout=15_000)
    page.wait_for_timeout(1000)  # Stop's queued follow-up says the same
    assert page.evaluate(STATUS_JS).startswith("Nothing was running")


def test_a_prompt_cut_at_the_box_limit_is_told(page):
    box = page.get_by_placeholder(PROMPT)
    box.fill("red heart " * 60)  # 600 characters: the box keeps 500
    assert len(box.input_value()) == 500
    notice = page.get_by_text("holds at most 500 characters")
    notice.first.wait_for(state="visible", timeout=10_000)
    box.fill("red heart")
    page.wait_for_function("() => !document.body.innerText.includes('holds at most 500 characters')", timeout=10_000)


def test_upscale_tab_starts_from_the_image_and_offers_output_sizes(page, tmp_path):
    page.get_by_role("tab", name="Upscale").click()
    panel = page.locator("div[role=tabpanel]:visible")
    sizes = panel.get_by_role("radio")
    assert [sizes.nth(i).evaluate("e => e.closest('label').innerText.trim()") for i in range(sizes.count())] == \
        ["32 px", "128 px"]  # the output sizes: every super-resolution stage's
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "in.png"))
    page.wait_for_timeout(1000)
    panel.get_by_role("button", name="Upscale").click()
    page.wait_for_function("() => document.body.innerText.includes('Done: Upscaling')", timeout=120_000)
    text = page.evaluate("() => document.body.innerText")
    assert "40×40 px image from 32 px to 128 px" in text, text[:3000]  # straight into stage 3, not via the 8 px base


def test_word_maps_gallery_shows_all_its_rows(page):
    set_steps(page, (1, 1, 1))
    page.get_by_placeholder(PROMPT).fill("red heart panda")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.body.innerText.includes('Done:')", timeout=120_000)
    page.get_by_text("Where each word went", exact=True).first.click()  # open the accordion
    page.wait_for_timeout(1500)
    info = page.evaluate("""() => {
      const b = [...document.querySelectorAll('.block')].find(b => b.querySelector('[data-testid=block-label]')
                 ?.innerText.includes('Where each word went'));
      const thumbs = [...b.querySelectorAll('.grid-container img, .thumbnail-item img, button img')];
      const scrollers = [b, ...b.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 2
                         && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY));
      const box = b.getBoundingClientRect();
      const hidden = thumbs.filter(t => { const r = t.getBoundingClientRect();
        return r.height === 0 || r.bottom > box.bottom + 1 || r.top < box.top - 1; });
      return {thumbs: thumbs.length, scrollers: scrollers.map(e => e.className), hidden: hidden.length,
              rows: new Set(thumbs.map(t => Math.round(t.getBoundingClientRect().top))).size};
    }""")
    assert info["thumbs"] == 9 and info["rows"] == 2, info  # 3 words x 3 stages, 6 a row
    assert not info["scrollers"] and not info["hidden"], info


def test_compare_cells_are_big_enough_to_see_and_the_tab_says_what_thresholding_does(page):
    page.get_by_role("tab", name="Compare").click()
    panel = page.locator("div[role=tabpanel]:visible")
    text = panel.inner_text()
    assert "background" in text and "dynamic thresholding" in text.lower(), text[:2000]
    panel.get_by_label("Guidance weights (columns)").fill("1, 8")
    panel.get_by_role("button", name="Compare").click()
    page.wait_for_function("() => document.body.innerText.includes('Done: 6 cells')", timeout=180_000)
    grid = page.evaluate("""() => { const b = [...document.querySelectorAll('.block')].find(b =>
        b.querySelector('[data-testid=block-label]')?.innerText.trim() === 'Grid');
      const img = b.querySelector('img'); const r = img.getBoundingClientRect();
      return {src: img.src, w: img.naturalWidth, shown: r.width}; }""")
    assert grid["shown"] >= grid["w"] - 1, grid  # shown at its size at least, not shrunk
    sheet = np.asarray(Image.open(io.BytesIO(page.request.get(grid["src"]).body())).convert("RGB")).astype(int)
    cell = sheet[22:22 + 128, 120:120 + 128]
    blocky = np.kron(cell[::16, ::16], np.ones((16, 16, 1), int))
    assert np.abs(cell - blocky).mean() > 2, "a cell is the base stage's 8 px image, enlarged"


def test_readme_screenshot_script_runs(tmp_path):
    """docs/make_screenshot.py (which made docs/screenshot.png from the shipped weights) runs against the current
    page: here on the tiny cascade saved as a weights folder, in its own process."""
    from imagen_app.training.tiny import tiny_pipeline

    weights = tmp_path / "weights"
    tiny_pipeline().save_pretrained(weights)
    out = tmp_path / "shot.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "docs", "make_screenshot.py"), "--weights", str(weights),
                           "--out", str(out), "--prompt", "red heart"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shot = Image.open(out)
    assert shot.size[0] >= 1280 and np.asarray(shot.convert("L")).std() > 10
