"""Re-make README's screenshots of the app serving the bundled models, in headless Chromium (Debian's package).

    python docs/screenshots.py              # docs/screenshot-{classify,gallery,failures,about,monitoring,phone}.png
    python docs/screenshots.py --out /tmp/shots

Starts `python app.py` on a free loopback port, classifies one of the CIFAR-10 model's own test images (shipped in
its samples/), opens each tab and saves a picture of it, then the Classify tab as a phone shows it (390 px wide).
Run it after any change to the UI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load_app import free_port, start_app  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SHOTS = ("classify", "gallery", "failures", "about", "monitoring", "phone")


def cifar_photo(label: str = "cat") -> Path:
    """One of the bundled CIFAR-10 model's gallery images (a real test photo) of `label`."""
    samples = ROOT / "models" / "cifar10-resnet18" / "samples"
    entry = next(e for e in json.loads((samples / "manifest.json").read_text())
                 if e["kind"] == "gallery" and e["label"] == label)
    return samples / entry["file"]


def traffic(url: str, seconds: float = 40) -> None:
    """A little traffic for the Monitoring plots: REST requests with a few images of each class, spread over
    `seconds`, one of them not an image (an error)."""
    import time

    import httpx

    samples = ROOT / "models" / "cifar10-resnet18" / "samples"
    entries = [e for e in json.loads((samples / "manifest.json").read_text()) if e["kind"] == "gallery"][::4]
    uploads = [(samples / e["file"]).read_bytes() for e in entries] + [b"not an image"]
    for i, data in enumerate(uploads * 2):
        httpx.post(f"{url}api/classify", files={"file": (f"{i}.png", data, "image/png")}, timeout=60)
        time.sleep(seconds / (2 * len(uploads)))


def main(argv=None) -> int:
    from playwright.sync_api import expect, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--traffic-seconds", type=float, default=40, help="requests spread over this long for the "
                                                                          "Monitoring plots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    port = free_port()
    server = start_app(None, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")

            def shot(name: str) -> None:
                page.wait_for_timeout(500)  # let plots and images finish drawing
                page.screenshot(path=str(args.out / f"screenshot-{name}.png"), full_page=True)

            page.locator("#upload input[type=file]").set_input_files(str(cifar_photo()))
            expect(page.locator("#summary")).to_contain_text("inference", timeout=60_000)
            # the first requests pay for warming the model up (a few hundred ms): show the time of a warm one
            for _ in range(3):
                page.get_by_role("button", name="Classify", exact=True).click()
                page.wait_for_timeout(1500)
            expect(page.locator("#summary")).to_contain_text("inference", timeout=60_000)
            shot("classify")

            page.get_by_role("tab", name="Gallery").click()
            thumbnails = page.locator("#gallery .thumbnail-item")
            expect(thumbnails.first).to_be_visible(timeout=60_000)
            thumbnails.nth(3).click()
            expect(page.locator("#gallery-prediction")).to_contain_text("%", timeout=60_000)
            expect(page.locator("#gallery-heatmap img")).to_have_count(2, timeout=60_000)  # the image and its heatmap
            shot("gallery")

            page.get_by_role("tab", name="Where it fails").click()
            expect(page.locator("#failures .thumbnail-item").first).to_be_visible(timeout=60_000)
            page.locator("#failures .thumbnail-item").nth(1).click()  # why it failed: the image beside its heatmap
            expect(page.locator("#failure-info")).to_contain_text("true class", timeout=60_000)
            shot("failures")

            page.get_by_role("tab", name="About the model").click()
            expect(page.locator("#about")).to_contain_text("Training command", timeout=60_000)
            shot("about")

            traffic(f"http://127.0.0.1:{port}/", args.traffic_seconds)
            page.get_by_role("tab", name="Monitoring").click()
            expect(page.get_by_text("Errors:")).to_be_visible(timeout=60_000)
            page.set_viewport_size({"width": 1280, "height": 1300})  # the plots' page is taller than the window
            page.wait_for_timeout(1500)  # the plots draw (opening the tab fetches them, the requests above included)
            shot("monitoring")

            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#upload input[type=file]").set_input_files(str(cifar_photo()))
            expect(page.locator("#summary")).to_contain_text("inference", timeout=60_000)
            shot("phone")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in SHOTS:
        print(args.out / f"screenshot-{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
