"""The `deepres serve` page in a real browser: Debian's Chromium, headless, driven by Playwright with the system
executable (no browser download). Loads the page, uploads two images from examples/, waits for the results and the
Grad-CAM overlays, checks the classes shown against the API's top-1 and saves a screenshot. `make test` installs
Chromium (apt-get install chromium); elsewhere the test skips when it is missing."""
import shutil
from pathlib import Path

import httpx
import pytest

from serve_helpers import EXAMPLES, fashion_run, running_server

playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")

# Debian's /usr/bin/chromium is a shell wrapper; Playwright starts the binary itself
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()),
                None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (make test installs Debian's "
                                                              "chromium package)")


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


@needs_chromium
def test_page_shows_the_apis_predictions_and_cam_overlays(tmp_path):
    images = [EXAMPLES / "t10k_0000_ankle_boot.png", EXAMPLES / "t10k_0002_trouser.png"]
    run = fashion_run(tmp_path / "run")
    with running_server(str(run), "--max-wait-ms", "20") as url:
        expected = [httpx.post(f"{url}/v1/predict", content=p.read_bytes(), timeout=60).json()["results"][0]
                    for p in images]
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                errors = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                assert "resnet20" in page.inner_text("#model-line")
                assert "top1 11.5" in page.inner_text("#card-fields")
                page.set_input_files("#files", [str(p) for p in images])
                page.wait_for_function("document.querySelectorAll('.result.done, .result.failed').length == 2",
                                       timeout=60_000)
                assert page.locator(".result.failed").count() == 0, page.inner_text("#results")
                cards = page.locator(".result")
                for i, (path, want) in enumerate(zip(images, expected)):
                    card = cards.nth(i)
                    assert card.locator(".name").inner_text() == path.name
                    assert card.get_attribute("data-top1") == want["pred_class"]
                    shown = card.locator(".prediction .class-name").all_inner_texts()
                    assert shown == want["top_k_classes"]
                    assert card.locator(".overlay-caption").inner_text().startswith(
                        f"Grad-CAM: {want['pred_class']}")
                    # the overlay PNG decoded in the browser: 28x28 like the model's input
                    assert card.locator("img.overlay").evaluate("img => img.complete && img.naturalWidth") == 28
                page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
                assert errors == []
            finally:
                browser.close()
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000


@needs_chromium
def test_page_shows_a_segmentation_overlay_and_legend(tmp_path):
    image = EXAMPLES / "t10k_0008_sandal.png"
    with running_server("fcn_resnet20", "--precision", "fp32") as url:
        shares = httpx.post(f"{url}/v1/predict", content=image.read_bytes(), timeout=60).json()["results"][0][
            "class_shares"]
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page()
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                page.set_input_files("#files", [str(image)])
                page.wait_for_selector(".result.done, .result.failed", timeout=60_000)
                card = page.locator(".result")
                assert card.get_attribute("class") == "result done", card.inner_text()
                legend = card.locator(".legend li").all_inner_texts()
                assert [text.rsplit(" ", 1)[0] for text in legend] == sorted(shares, key=lambda c: -shares[c])
                assert card.locator("figure.stack img.overlay").evaluate("img => img.naturalWidth") == 28
                page.screenshot(path=str(tmp_path / "serve_segmentation.png"), full_page=True)
            finally:
                browser.close()
