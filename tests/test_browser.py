"""A real browser (Debian's headless Chromium driven by Playwright) uses the app like a person would."""
import os
import random
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .helpers import shape_image

pytestmark = pytest.mark.slow  # Chromium and a served app

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


WIDTHS = [1280, 390]  # a laptop and a phone (issue 37: every visitor's path at both)


def new_page(page, url: str, width: int, wait_until: str = "load", **options):
    """Another page of the same browser, `width` px wide; under 640 px a phone's: a touch screen, 844 px high."""
    phone = width < 640
    other = page.context.browser.new_page(viewport={"width": width, "height": 844 if phone else 900},
                                          is_mobile=phone, has_touch=phone, **options)
    other.goto(url, wait_until=wait_until)
    return other


def test_upload_shows_top_k_and_gallery_click_classifies(page, tmp_path):
    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "upload.png"
    shape_image("green", random.Random(3), size=128).save(image)

    page.locator("#upload input[type=file]").set_input_files(str(image))
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


def test_switching_the_model_reclassifies_the_upload_and_keeps_top_k(page, tmp_path):
    """The answers on screen are always the selected model's: a switch runs the current image again on the new model
    (with the same top-k), offers the new model's classes for the heatmap, and clears the gallery's answer."""
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery .thumbnail-item").first.click()
    gallery_answer = page.locator("#gallery-prediction")
    expect(gallery_answer).to_contain_text("%", timeout=30_000)
    page.get_by_role("tab", name="Classify").click()
    image = tmp_path / "tiny.png"
    shape_image("red", random.Random(4), size=32).save(image)
    page.locator("#upload input[type=file]").set_input_files(str(image))
    expect(page.locator("#summary")).to_contain_text("model model (", timeout=30_000)
    # a 32x32 upload keeps the box at its full height
    assert page.locator("#upload").bounding_box()["height"] >= 300
    top_k = page.locator("#top-k input[type=number]")
    top_k.fill("2")
    top_k.press("Enter")
    page.locator("#model input").click()
    page.get_by_role("option", name="intel-resnet18").click()
    expect(page.locator("#summary")).to_contain_text("model intel-resnet18 (", timeout=30_000)
    intel = re.compile("buildings|forest|glacier|mountain|sea|street")
    expect(page.locator("#prediction")).to_contain_text(intel, timeout=30_000)
    assert top_k.input_value() == "2"
    assert page.locator("#prediction .confidence-set").count() == 2
    # the heatmap's class is one of the new model's, and asking for it works
    open_heatmap_panel(page)
    expect(page.locator("#explain-class input")).to_have_value(intel, timeout=10_000)
    page.get_by_role("button", name="Show heatmap").click()
    expect(page.locator("#heatmap img")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("is not a class of")).to_have_count(0)
    page.get_by_role("tab", name="Gallery").click()
    expect(gallery_answer).not_to_contain_text("%", timeout=10_000)
    page.get_by_role("tab", name="Classify").click()
    page.locator("#model input").click()
    page.get_by_role("option", name="model", exact=True).click()
    expect(page.locator("#summary")).to_contain_text("model model (", timeout=30_000)


def test_an_error_clears_the_previous_answer(page, tmp_path):
    """An upload that cannot be decoded replaces the answer on screen with the error, with nothing in between."""
    page.get_by_role("tab", name="Classify").click()
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    shape_image("blue", random.Random(8), size=64).save(good)
    bad.write_text("not an image")
    page.locator("#upload input[type=file]").set_input_files(str(good))
    expect(page.locator("#summary")).to_contain_text("inference", timeout=30_000)
    answer = page.locator("#prediction .confidence-set")
    expect(answer.first).to_be_visible()
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text("not an image format").first).to_be_visible(timeout=30_000)
    expect(page.locator("#summary")).not_to_contain_text("inference")
    expect(answer).to_have_count(0)


def open_heatmap_panel(page) -> None:
    if not page.get_by_role("button", name="Show heatmap").is_visible():
        page.locator("#explain").get_by_text("Where the model looked").click()


def upload_and_ask_for_the_heatmap(page, image) -> None:
    """Classify `image` on the Classify tab, then press Show heatmap once its answer is there."""
    page.locator("#upload input[type=file]").set_input_files(str(image))
    expect(page.locator("#summary")).to_contain_text("inference", timeout=30_000)
    open_heatmap_panel(page)
    page.get_by_role("button", name="Show heatmap").click()


def test_gallery_captions_are_whole_and_the_command_wraps(page):
    for tab, gallery in (("Gallery", "#gallery"), ("Where it fails", "#failures")):
        page.get_by_role("tab", name=tab).click()
        caption = page.locator(f"{gallery} .caption-label").first
        expect(caption).to_be_visible(timeout=30_000)
        fits = caption.evaluate(
            "e => getComputedStyle(e).whiteSpace !== 'nowrap' && e.scrollWidth <= e.clientWidth + 1")
        assert fits, (tab, caption.inner_text())
    page.get_by_role("tab", name="About the model").click()
    command = page.locator("#about pre").first
    expect(command).to_be_visible(timeout=10_000)
    assert command.evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"
    assert command.evaluate("e => e.scrollWidth <= e.clientWidth + 1")


def test_the_screenshot_script_makes_every_picture(tmp_path):
    """docs/screenshots.py re-makes README's pictures after UI changes; it must keep working."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "docs/screenshots.py", "--out", str(tmp_path), "--traffic-seconds", "2"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shots = {name: (tmp_path / f"screenshot-{name}.png").read_bytes()
             for name in ("classify", "gallery", "failures", "about", "monitoring", "phone")}
    assert all(len(data) > 20_000 for data in shots.values())
    assert len(set(shots.values())) == len(shots)  # six different pictures, no tab shot twice


def test_the_heatmap_is_shown_on_request(page, tmp_path):
    page.get_by_role("tab", name="Classify").click()
    image = tmp_path / "for-heatmap.png"
    shape_image("yellow", random.Random(21), size=64).save(image)
    upload_and_ask_for_the_heatmap(page, image)
    expect(page.locator("#heatmap img")).to_be_visible(timeout=30_000)


def stats(server) -> dict:
    import httpx

    return httpx.get(f"{server[0]}api/stats").json()


def endpoint_counts(stats: dict, name: str) -> tuple[int, int]:
    endpoint = stats["endpoints"].get(name, {"requests": 0, "errors": 0})
    return endpoint["requests"], endpoint["errors"]


@pytest.mark.parametrize("width", WIDTHS)
def test_a_classification_offers_its_top_classes_for_the_heatmap(page, server, tmp_path, width):
    """Classify (and an upload) fill the heatmap's class menu with the top-k on screen, the top class chosen."""
    page = new_page(page, server[0], width)
    expect(page.locator("#upload")).to_be_visible(timeout=30_000)
    image = tmp_path / "for-menu.png"
    shape_image("blue", random.Random(31), size=64).save(image)
    page.locator("#upload input[type=file]").set_input_files(str(image))
    expect(page.locator("#summary")).to_contain_text("inference", timeout=30_000)
    top = page.locator("#prediction [data-testid=label-output-value]").inner_text().strip()
    open_heatmap_panel(page)
    expect(page.locator("#explain-class input")).to_have_value(top, timeout=10_000)
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#summary")).to_contain_text("inference", timeout=30_000)
    expect(page.locator("#explain-class input")).to_have_value(top, timeout=10_000)
    page.locator("#explain-class input").click()
    expect(page.get_by_role("option")).to_have_count(int(page.locator("#top-k input[type=number]").input_value()))
    page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_gallery_click_classifies_the_image_clicked_whatever_the_filter_says(page, server, width):
    """The answer is for the thumbnail clicked: a class typed into the filter that the model does not have leaves
    the grid as it was; a click then classifies the image shown (it classified by its index among the filter's
    images: an IndexError, or another image)."""
    page = new_page(page, server[0], width)
    page.get_by_role("tab", name="Gallery").click()
    thumbnails = page.locator("#gallery .thumbnail-item")
    expect(thumbnails.first).to_be_visible(timeout=30_000)
    class_filter = page.locator("#class-filter input")
    class_filter.fill("purple")
    class_filter.press("Enter")
    expect(page.get_by_text("'purple' is not a class of").first).to_be_visible(timeout=30_000)
    for index in (7, 2):
        caption = thumbnails.nth(index).locator(".caption-label").inner_text()
        predicted = caption.split("→")[-1].split()[-3] if "→" in caption else caption.split()[1]
        thumbnails.nth(index).click()
        expect(page.locator("#gallery-prediction [data-testid=label-output-value]")).to_have_text(
            predicted, timeout=30_000)
    page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_model_switch_discards_the_answer_of_the_previous_model(page, trained, tmp_path, width):
    """Classify while other requests keep the model busy, then switch the model 0.6 s later: the screen ends with
    the new model's answer, never the old one's arriving late (issue 37: 'airplane ... model cifar10-resnet18'
    under Model = intel-resnet18)."""
    import threading
    import time

    from gradio_client import Client, handle_file

    from classifier.monitor import RequestMonitor
    from classifier.predict import load_predictors
    from classifier.server import create_app
    from classifier.service import App

    from .helpers import serve

    slow, started, finished = threading.Event(), threading.Semaphore(0), threading.Semaphore(0)

    class BusyFirstModel(App):
        """The first model takes 3 s an answer once `slow` is set."""

        def classify_upload(self, image_path, top_k=5, model=None, what="The upload"):
            if not (slow.is_set() and model == "model"):
                return super().classify_upload(image_path, top_k, model, what)
            started.release()
            try:
                time.sleep(3)
                return super().classify_upload(image_path, top_k, model, what)
            finally:
                finished.release()

    image = tmp_path / "race.png"
    shape_image("red", random.Random(5), size=32).save(image)
    with serve(create_app(BusyFirstModel(load_predictors(str(trained))[0], RequestMonitor()))) as url:
        other = new_page(page, url, width)
        other.wait_for_timeout(2000)  # the page's own start-up events are done
        other.locator("#upload input[type=file]").set_input_files(str(image))
        summary = other.locator("#summary")
        expect(summary).to_contain_text("model model (", timeout=30_000)
        slow.set()
        client = Client(url, verbose=False)
        others = [client.submit(handle_file(str(image)), 3, "model", api_name="/predict") for _ in range(2)]
        assert all(started.acquire(timeout=30) for _ in others)  # both places of the queue are taken
        other.get_by_role("button", name="Classify", exact=True).click()
        other.wait_for_timeout(600)
        other.locator("#model input").click()
        other.get_by_role("option", name="intel-resnet18").click()
        expect(summary).to_contain_text("model intel-resnet18 (", timeout=30_000)
        for job in others:
            job.result(timeout=60)
        finished.acquire(timeout=30)
        finished.acquire(timeout=30)
        finished.acquire(timeout=10)  # the page's own request, if it ran
        other.wait_for_timeout(1500)  # its answer would have arrived by now
        shown = summary.inner_text()
        other.close()
    assert "model intel-resnet18 (" in shown and "model model (" not in shown, shown


@pytest.mark.parametrize("width", WIDTHS)
def test_page_loads_are_not_requests_and_monitoring_polls_only_while_shown(page, server, width):
    from classifier.ui import MONITOR_EVERY_S

    before = stats(server)
    page = new_page(page, server[0], width)
    expect(page.locator("#upload")).to_be_visible(timeout=30_000)
    page.get_by_role("tab", name="Gallery").click()
    expect(page.locator("#gallery .thumbnail-item").first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(1000)
    assert stats(server)["requests"] == before["requests"], "a page load counted as a request"
    # a class the model does not have is refused: the user sees an error, and it is counted as one
    before = endpoint_counts(stats(server), "samples")
    class_filter = page.locator("#class-filter input")
    class_filter.fill("purple")
    class_filter.press("Enter")
    expect(page.get_by_text("'purple' is not a class of").first).to_be_visible(timeout=30_000)
    assert endpoint_counts(stats(server), "samples") == (before[0] + 1, before[1] + 1)

    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/gradio_api/" in r.url and "heartbeat" not in r.url else None)
    page.get_by_role("tab", name="Monitoring").click()
    expect(page.get_by_text("Errors:")).to_be_visible(timeout=30_000)
    sent.clear()
    page.wait_for_timeout(1000 * MONITOR_EVERY_S + 1500)
    assert sent, "the Monitoring tab did not refresh itself"
    page.get_by_role("tab", name="Classify").click()
    page.wait_for_timeout(500)
    sent.clear()
    page.wait_for_timeout(1000 * MONITOR_EVERY_S + 1500)
    page.close()
    assert not sent, f"the page polled while Monitoring was hidden: {sent}"


INTEL = re.compile("buildings|forest|glacier|mountain|sea|street")


@pytest.mark.parametrize("width", WIDTHS)
def test_an_example_is_one_click_from_an_answer_and_follows_the_model(page, server, width):
    """Classify shows the model's shipped test images, one per class; a click classifies one; another model shows
    its own (issue 37, point 11)."""
    other = new_page(page, server[0], width)
    examples = other.locator("#examples button.gallery-item")
    expect(examples).to_have_count(4, timeout=30_000)  # the test model's four classes
    expect(other.locator("#summary")).not_to_contain_text("inference")
    examples.nth(2).click()
    expect(other.locator("#summary")).to_contain_text("model model (", timeout=30_000)
    expect(other.locator("#prediction .confidence-set").first).to_be_visible()
    other.locator("#model input").click()
    other.get_by_role("option", name="intel-resnet18").click()
    expect(examples).to_have_count(6, timeout=30_000)  # the Intel model's six
    examples.nth(1).click()
    expect(other.locator("#summary")).to_contain_text("model intel-resnet18 (", timeout=30_000)
    expect(other.locator("#prediction")).to_contain_text(INTEL, timeout=30_000)
    other.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_link_opens_the_page_on_its_model(page, server, width):
    """`?model=<name>` opens the page on that model; a name not served leaves the first model and says so, and the
    page works as usual (issue 37, point 14)."""
    other = new_page(page, f"{server[0]}?model=intel-resnet18", width)
    expect(other.locator("#model input")).to_have_value("intel-resnet18", timeout=30_000)
    expect(other.locator("#examples button.gallery-item")).to_have_count(6, timeout=30_000)
    other.get_by_role("tab", name="About the model").click()
    expect(other.locator("#about")).to_contain_text("intel-resnet18", timeout=10_000)
    expect(other.locator("#link-notice")).to_have_count(0)
    other.close()

    other = new_page(page, f"{server[0]}?model=nope", width)
    notice = other.locator("#link-notice")
    expect(notice).to_contain_text("nope", timeout=30_000)
    expect(notice).to_contain_text("showing model")
    expect(other.locator("#model input")).to_have_value("model")
    other.locator("#examples button.gallery-item").first.click()
    expect(other.locator("#summary")).to_contain_text("model model (", timeout=30_000)
    other.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_gallery_or_failure_image_is_shown_beside_its_heatmap(page, server, width):
    """A click on a gallery image shows its answer and, beside it, the image and its Grad-CAM (an image slider); a
    click on a failure shows the same with the class it said and the true one (issue 37, point 12)."""
    other = new_page(page, f"{server[0]}?model=intel-resnet18", width)
    expect(other.locator("#model input")).to_have_value("intel-resnet18", timeout=30_000)
    other.get_by_role("tab", name="Gallery").click()
    other.locator("#gallery .thumbnail-item").nth(4).click()
    expect(other.locator("#gallery-prediction")).to_contain_text("%", timeout=30_000)
    expect(other.locator("#gallery-heatmap img")).to_have_count(2, timeout=30_000)  # the image and its heatmap
    other.get_by_role("tab", name="Where it fails").click()
    other.locator("#failures .thumbnail-item").first.click()
    expect(other.locator("#failure-info")).to_contain_text("the true class is", timeout=30_000)
    heatmaps = other.locator("#failure-heatmap img")
    expect(heatmaps).to_have_count(2, timeout=30_000)
    assert heatmaps.first.bounding_box()["width"] >= 150  # shown large enough to see, not at 32 or 150 px of a thumbnail
    other.close()


def contrast(page_or_locator, selector: str = None) -> float:
    """The WCAG contrast ratio of an element's text colour against its background colour."""
    def luminance(rgb):
        channels = [c / 255 for c in rgb]
        channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]

    colours = page_or_locator.evaluate(
        "e => [getComputedStyle(e).backgroundColor, getComputedStyle(e.querySelector('p') || e).color]")
    fore, back = (luminance([int(v) for v in re.findall(r"\d+", c)[:3]]) for c in reversed(colours))
    return (max(fore, back) + 0.05) / (min(fore, back) + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_notice_stands_out_and_is_readable_in_light_and_dark_mode(page, trained, scheme):
    """The notice is a box (a background and a solid amber border) whose text has at least WCAG AA's 4.5:1 against it;
    dark mode follows the system's preference (issue 37, point 8: near-white text on pale yellow, 1.06:1)."""
    from classifier.monitor import RequestMonitor
    from classifier.predict import load_predictors
    from classifier.server import create_app
    from classifier.service import App

    from .helpers import serve

    app = create_app(App(load_predictors(str(trained))[0], RequestMonitor()), notice="Could not load 'me/gone'.")
    with serve(app) as url:
        for width in WIDTHS:
            other = new_page(page, url, width, color_scheme=scheme)
            notice = other.locator("#notice")
            expect(notice).to_contain_text("me/gone", timeout=30_000)
            dark = other.evaluate("() => document.body.classList.contains('dark') || "
                                  "!!document.querySelector('.gradio-container.dark, .dark .gradio-container')")
            ratio = contrast(notice)
            style = notice.evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).borderTopStyle, "
                                    "getComputedStyle(e).borderTopColor]")
            other.goto(f"{url}?model=nope")  # the link's notice too
            ratio_link = contrast(other.locator("#link-notice"))
            other.close()
            assert dark == (scheme == "dark"), width
            assert style[0] not in ("rgba(0, 0, 0, 0)", "transparent") and style[1] == "solid", (width, style)
            # an amber border, ours: Gradio's own block border is grey (red no higher than blue) in both schemes
            red, green, blue = map(int, re.findall(r"\d+", style[2])[:3])
            assert red > blue + 60 and green > blue, (width, style)
            assert ratio >= 4.5 and ratio_link >= 4.5, (width, ratio, ratio_link)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_small_images_heatmap_is_shown_large(page, server, tmp_path, width):
    """A 32x32 upload's heatmap (32x32 px itself) fills the heatmap box, as the upload fills its own (issue 37,
    point 8: it was shown at 32x32 px)."""
    other = new_page(page, server[0], width)
    image = tmp_path / "small.png"
    shape_image("red", random.Random(41), size=32).save(image)
    upload_and_ask_for_the_heatmap(other, image)
    shown = other.locator("#heatmap img")
    expect(shown).to_be_visible(timeout=30_000)
    box = shown.bounding_box()
    other.close()
    assert box["width"] >= 200 and box["height"] >= 200, box


@pytest.mark.parametrize("width", WIDTHS)
def test_a_page_load_runs_nothing_over_top_k_and_the_prediction(page, server, width):
    """For 3 s after a page load no progress overlay covers Top-k or Prediction (issue 37, point 8: a load event
    that re-ran the model switch showed 'processing' over them for 2-3 s after each load)."""
    other = new_page(page, server[0], width, wait_until="commit")
    covered = set()
    for _ in range(30):
        other.wait_for_timeout(100)
        covered |= set(other.evaluate("""() => ['top-k', 'prediction', 'summary'].filter(id => {
            const e = document.getElementById(id);
            return e && [...e.querySelectorAll('[data-testid=status-tracker]')].some(
                s => !s.classList.contains('hide') && s.getBoundingClientRect().width > 0);
        })"""))
    expect(other.locator("#upload")).to_be_visible(timeout=30_000)
    other.close()
    assert not covered, f"progress shown over {covered} after a page load"


def test_on_a_phone_every_tab_and_a_tapped_answer_are_in_view(page, server):
    """390 px wide (issue 37, point 9): all six tabs show (none behind "..."), a caption stays on its thumbnail's
    lower part, a tapped thumbnail's answer is scrolled into the screen, and "Use via API" is there and opens."""
    phone = new_page(page, server[0], 390)
    tabs = phone.get_by_role("tab")
    expect(tabs).to_have_count(6, timeout=30_000)
    for name in ("Classify", "Gallery", "Where it fails", "Batch", "About the model", "Monitoring"):
        box = phone.get_by_role("tab", name=name).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, name

    phone.get_by_role("tab", name="Gallery").click()
    thumbnail = phone.locator("#gallery .thumbnail-item").nth(7)
    expect(thumbnail).to_be_visible(timeout=30_000)
    picture, caption = thumbnail.bounding_box(), thumbnail.locator(".caption-label").bounding_box()
    assert caption["height"] <= 0.35 * picture["height"], (caption, picture)
    thumbnail.tap()
    answer = phone.locator("#gallery-prediction")
    expect(answer).to_contain_text("%", timeout=30_000)
    phone.wait_for_timeout(1000)  # the scroll
    box = answer.bounding_box()
    assert box["y"] < 844 and box["y"] + box["height"] > 0, box  # on the screen

    # the header points to "Use via API" at the bottom, which Gradio itself hides on a phone
    api_link = phone.locator("footer").get_by_role("button", name="Use via API")
    expect(api_link).to_be_visible(timeout=10_000)
    api_link.tap()
    expect(phone.get_by_text("Choose one of the following ways to interact with the API")).to_be_visible(
        timeout=10_000)
    expect(phone.get_by_text("Classify an image").first).to_be_visible()  # predict, described
    phone.close()
