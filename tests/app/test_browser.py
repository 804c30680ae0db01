"""A real browser (Debian's chromium, driven by Playwright) uses the app like a person would: one page load,
then a generation watched live, the final gallery, and an over-long prompt."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, MAIN_PROMPT

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
PROMPT = MAIN_PROMPT

# Every 20 ms during a run: is each stage pane's image there and on top at its centre, is any progress overlay
# (Gradio's status tracker: .wrap with translucent/generating/full, not .hide) over a pane or the seed box,
# and is the seed box on top at its centre.
SAMPLER = """() => {
  window.__samples = [];
  const block = el => el.closest('.block');
  const hitAt = el => { const r = el.getBoundingClientRect(); if (!r.width || !r.height) return null;
    return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2); };
  const onTop = el => { const hit = hitAt(el); return !!hit && (hit === el || el.contains(hit)); };
  // A new preview frame may be drawn by a second <img> of the same pane for a moment: the stage is still shown.
  const paneOnTop = (img, pane) => { const hit = hitAt(img); return !!hit && (hit === img || (hit.tagName === 'IMG' && pane.contains(hit))); };
  const describe = el => el ? `${el.tagName.toLowerCase()}.${[...el.classList].join('.')}` : 'nothing';
  const overlaid = b => [...b.querySelectorAll('.wrap, [data-testid=status-tracker]')].some(w =>
    !w.classList.contains('hide') && /translucent|generating|full/.test(w.className) && w.getBoundingClientRect().height > 0);
  window.__sampler = setInterval(() => {
    const panes = [...document.querySelectorAll('.stage-image')].slice(0, 3);
    const seed = [...document.querySelectorAll('input[type=number]')].find(i => block(i)?.innerText.startsWith('Seed'));
    window.__samples.push({
      status: [...document.querySelectorAll('.prose, .md')].map(e => e.innerText).find(t => /^(Stage \\d|Done:|Ready)/.test(t)) || '',
      panes: panes.map(p => { const img = p.querySelector('img');
        const shown = !!(img && img.naturalWidth > 0), top = shown && paneOnTop(img, p);
        return {present: !!img, img: shown, top, hit: shown && !top ? describe(hitAt(img)) : '', overlay: overlaid(p)}; }),
      seed_top: !!seed && onTop(seed), seed_overlay: !!seed && overlaid(block(seed)),
    });
  }, 20);
}"""


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(app_url, wait_until="networkidle", timeout=60_000)
            yield page
        finally:
            browser.close()


def test_stages_stay_visible_during_a_run_and_the_result_is_whole(page, tmp_path):
    """Issue 13 items 2 and 3: while a run streams, no progress overlay covers or blanks a stage pane or the seed
    box (an image, once shown, stays on top in every sample), and the final gallery shows the image uncropped."""
    shot = os.environ.get("IMAGEN_SCREENSHOT", str(tmp_path / "app.png"))
    for k, px, n in [(1, 8, 30), (2, 32, 10), (3, 128, 2)]:  # a run long enough to sample (stage 3 is the slow one)
        box = page.get_by_label(f"number input for Steps, stage {k} ({px} px)")
        box.fill(str(n))
        box.blur()
    page.get_by_placeholder(PROMPT).fill("red heart")
    page.evaluate(SAMPLER)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.body.innerText.includes('Done:')", timeout=120_000)
    samples = page.evaluate("() => { clearInterval(window.__sampler); return window.__samples; }")
    page.screenshot(path=shot, full_page=True)

    running = [s for s in samples if s["status"].startswith("Stage ")]
    assert len(running) >= 5, f"too few samples during the run: {len(running)} of {len(samples)}"
    for s in samples:
        assert s["seed_top"] and not s["seed_overlay"], f"the seed box is covered: {s}"
        for k, pane in enumerate(s["panes"]):
            assert not pane["overlay"], f"a progress overlay covers stage {k + 1}: {s}"
    for k in range(3):  # once a stage's image is shown its <img> stays, and it is on top whenever it is drawn
        shown = [s["panes"][k] for s in samples]
        first = next((i for i, p in enumerate(shown) if p["img"]), None)
        assert first is not None, f"stage {k + 1} never showed an image"
        after = shown[first:]
        assert all(p["present"] for p in after), f"stage {k + 1}'s image was removed during the run"
        covered = [p["hit"] for p in after if p["img"] and not p["top"]]
        assert not covered, f"stage {k + 1}'s image was covered by {covered}"
        # Each new preview frame takes a moment to decode (the <img> stays, still loading); the old overlay
        # blanked a pane for 0.1-0.3 s at a time. Allow the decode gaps, not a pane that is mostly blank.
        loading = sum(not p["img"] for p in after)
        assert loading <= 0.25 * len(after), f"stage {k + 1} was blank in {loading} of {len(after)} samples"
    assert sum(any(p["img"] for p in s["panes"]) for s in running) >= 3  # previews were visible while it ran

    final = final_gallery_image(page)
    assert final["fit"] == "contain", final  # the whole picture, never cropped to fill the box (`cover`)
    arr = np.asarray(Image.open(io.BytesIO(page.request.get(final["src"]).body())).convert("RGB")).astype(float)
    assert arr.shape[0] == 128 and arr.std() > 1.0  # the final image is not blank
    assert Image.open(shot).size[0] > 0


def final_gallery_image(page) -> dict:
    return page.evaluate("""() => {
      const b = [...document.querySelectorAll('.block')].find(b => b.querySelector('[data-testid=block-label]')?.innerText
                                                                     .includes('Final images'));
      const img = b.querySelector('img'); const r = img.getBoundingClientRect();
      const box = (img.closest('.grid-wrap') || b).getBoundingClientRect();
      return {fit: getComputedStyle(img).objectFit, src: img.src, w: img.naturalWidth, h: img.naturalHeight,
              img: [r.left, r.top, r.right, r.bottom], box: [box.left, box.top, box.right, box.bottom]};
    }""")


def test_final_image_fits_its_box(page):
    """After the run (the test above), the "Final images" gallery shows its image whole, without scrolling."""
    final = final_gallery_image(page)
    left, top, right, bottom = final["img"]
    assert final["box"][0] - 1 <= left and final["box"][1] - 1 <= top and right <= final["box"][2] + 1 \
        and bottom <= final["box"][3] + 1, f"the final image runs out of its box: {final}"


def test_over_long_prompt_gives_one_message(page):
    """Issue 13 item 5: the prompt box stops at 500 characters; a longer prompt that gets through anyway (the
    limit removed from the page) gives one message, not a red "Error" badge on every output."""
    box = page.get_by_placeholder(PROMPT)
    box.fill("x" * 600)
    assert len(box.input_value()) == 500  # the box itself keeps to the limit
    box.evaluate("e => e.removeAttribute('maxlength')")
    box.fill("x" * 3000)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.body.innerText.includes('too long')", timeout=60_000)
    page.wait_for_timeout(500)  # any badges would be drawn by now
    badges = page.evaluate("""() => [...document.querySelectorAll('.wrap .error, .wrap.error, span.error')]
                              .filter(e => e.offsetParent !== null && !e.closest('[class*=toast]'))
                              .map(e => e.className + ': ' + e.innerText.slice(0, 80))""")
    messages = page.evaluate("() => [...document.querySelectorAll('.toast-body')].filter(e => /too long/.test(e.innerText)).length")
    assert badges == [], f"error badges on the outputs: {badges}"
    assert messages == 1
    assert "Ready." not in page.evaluate("() => document.body.innerText")  # the status says what happened


def test_stop_leaves_stopped_status(page):
    """Issue 13 item 4: after Stop, the status line says "Stopped." (not a stale "Stage 1/3 · step 43/200"),
    every time; three tries. (A sleep-based fix still failed 1 try in 12 on a loaded CPU; Stop's queued
    follow-up now waits for the run to end, ui_stop.py.)"""
    status_js = """() => [...document.querySelectorAll('.prose, .md')].map(e => e.innerText.trim())
                    .find(t => /^(Stage \\d|Done:|Ready|Stopped)/.test(t)) || ''"""
    page.get_by_placeholder(PROMPT).fill("panda")
    for _ in range(3):
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function(f"() => ({status_js})().startsWith('Stage ')", timeout=60_000)
        page.get_by_role("button", name="Stop").first.click()  # the main tab's (the Edit tab has its own)
        page.wait_for_function(f"() => ({status_js})() === 'Stopped.'", timeout=15_000)
        page.wait_for_timeout(2000)  # and it stays: no late preview of the cancelled run overwrites it
        assert page.evaluate(status_js) == "Stopped."
