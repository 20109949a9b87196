"""A real browser (Debian's headless Chromium driven by Playwright) uses the app like a person would."""
import os
import random
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .conftest import shape_image

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server[0])
        yield page
        browser.close()


def test_upload_shows_top_k_and_gallery_click_classifies(page, tmp_path):
    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "upload.png"
    shape_image("green", random.Random(3), size=128).save(image)

    page.locator("input[type=file]").first.set_input_files(str(image))
    prediction = page.locator("#prediction")
    expect(prediction).to_contain_text("green", timeout=30_000)
    expect(page.get_by_text("inference")).to_be_visible()
    page.screenshot(path=str(shots / "screenshot-classify.png"), full_page=True)

    page.get_by_role("tab", name="Gallery").click()
    thumbnails = page.locator("#gallery button.thumbnail-item, #gallery .thumbnail-item")
    expect(thumbnails.first).to_be_visible(timeout=30_000)
    thumbnails.first.click()
    expect(page.locator("#gallery-prediction")).to_contain_text("%", timeout=30_000)
    page.screenshot(path=str(shots / "screenshot-gallery.png"), full_page=True)
