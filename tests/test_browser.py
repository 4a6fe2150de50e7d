"""The app in a real browser: Debian's chromium (never a downloaded one), headless, driven by Playwright. Uploads an
image, waits for the probabilities, the Grad-CAM overlay and the fusion plot, and saves a screenshot."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import free_port
from helpers import lesion_image

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found: `apt-get install -y chromium`"),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    import app
    from modeling.explain import load_classifier

    demo = app.build_demo(*load_classifier(tiny_model_dir))
    port = free_port()
    app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_upload_shows_probabilities_cam_and_fusion_plot(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image = tmp_path / "lesion.jpg"
    lesion_image(1, np.random.default_rng(0), size=96).save(image)
    screenshot = tmp_path / "app.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server, wait_until="domcontentloaded")
            expect(page.get_by_text("NOT a diagnostic device").first).to_be_visible(timeout=60_000)
            page.locator("#lesion-image input[type=file]").set_input_files(str(image))
            probabilities = page.locator("#probabilities")
            expect(probabilities).to_contain_text("malignant", timeout=60_000)
            expect(probabilities).to_contain_text("%")
            expect(page.locator("#cam img")).to_be_visible(timeout=60_000)
            expect(page.locator("#fusion-plot img")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Inference time")).to_be_visible()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("BROWSER_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(screenshot, os.environ["BROWSER_SCREENSHOT"])
