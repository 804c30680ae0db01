"""Screenshot of the app mid-generation, for the README:  python docs/make_screenshot.py [--weights weights]

Starts the app on a free local port, types a prompt in Debian's chromium (through Playwright),
clicks Generate and saves docs/screenshot.png while a super-resolution stage is denoising.
"""
import argparse
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from playwright.sync_api import sync_playwright  # noqa: E402

from imagen_app.app.ui import CSS, build_app  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--prompt", default="woman firefighter: dark skin tone")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "screenshot.png"))
    parser.add_argument("--stage", default="Stage 3/3", help="take the picture once the status shows this")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(args.weights)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            # The Generate tab's prompt box (the Edit, Upscale and Compare tabs have a "Prompt" too).
            page.get_by_placeholder("an emoji name, e.g. 'red heart'").fill(args.prompt)
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(f"() => document.body.innerText.includes({args.stage!r})", timeout=120_000)
            page.screenshot(path=args.out)
            # Let the run end before the server closes (a generation thread cut off at exit aborts the process).
            page.get_by_role("button", name="Stop").first.click()
            page.wait_for_function("() => /Stopped\\.|Done:/.test(document.body.innerText)", timeout=120_000)
            browser.close()
    finally:
        demo.close()
    print(args.out)


if __name__ == "__main__":
    main()
