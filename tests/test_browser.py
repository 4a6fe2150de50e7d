"""The app in a real browser: Debian's chromium (never a downloaded one), headless, driven by Playwright, against a
tiny calibrated model with an out-of-distribution score. What only a page shows: one analysis per new image (upload,
replace, example), the decision always computed at the threshold on screen whichever control moved it (number box,
arrow keys, reset button, dragging) with the Grad-CAM refreshed for the new class, the OOD warning and the greyed-out
decision, a model switch (the new model's threshold, the range check kept), a failed input clearing the old results
and its preview, the no-image message, and the layout at phone width (fusion plot and CAM full width, the batch
table's label column on screen). Screenshots are written to $BROWSER_SCREENSHOTS (a folder) when it is set, to look
at."""

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import (
    calibrated_tiny_model,
    free_port,
    place_ood_threshold,
    save_tiny_model,
    served_app,
    write_bad_inputs,
)
from helpers import lesion_image

import app
from modeling.inference import OOD_WARNING, load_classifier
from modeling.ood_probes import synthetic_image

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 60_000
NUMBER = "#threshold input[type=number]"
RANGE = "#threshold input[type=range]"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found: `apt-get install -y chromium`"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_files")
    rng = np.random.default_rng(11)
    paths = {}
    for name, label in [("lesion_a.jpg", 1), ("lesion_b.jpg", 0), ("example.jpg", 1)]:
        paths[name] = folder / name
        lesion_image(label, rng, 96).save(paths[name])
    # Noise for now; `loaded` replaces it with the synthetic image the model finds most out of distribution.
    paths["not_a_lesion.png"] = folder / "not_a_lesion.png"
    synthetic_image("noise", rng, 96).save(paths["not_a_lesion.png"])
    for label in ("benign", "malignant"):  # same name, different folders and content
        (folder / label).mkdir()
        paths[f"{label}/1.jpg"] = folder / label / "1.jpg"
        lesion_image(int(label == "malignant"), rng, 96).save(paths[f"{label}/1.jpg"])
    return {**paths, **write_bad_inputs(folder / "bad")}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, files):
    model, processor, info = load_classifier(calibrated_tiny_model(tmp_path_factory))
    place_ood_threshold(model, processor, files["lesion_a.jpg"], files["not_a_lesion.png"])
    return model, processor, info


@pytest.fixture(scope="module")
def served(loaded, files):
    with served_app(*loaded, examples=[files["example.jpg"]]) as (url, demo):
        yield url, demo


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser, server):
    pages = []

    def open_page(width: int = 1280, height: int = 1100):
        from playwright.sync_api import expect

        page = browser.new_page(viewport={"width": width, "height": height})
        pages.append(page)
        page.goto(server, wait_until="domcontentloaded")
        expect(page.locator("#lesion-image")).to_be_visible(timeout=TIMEOUT_MS)
        return page

    yield open_page
    for page in pages:
        page.close()


@pytest.fixture
def analysis_requests(served, monkeypatch):
    """Every analysis request the server answers, whatever event sent it: the image's name (None for a request
    without an image), appended when the request is done."""
    requests = []
    for block_fn in served[1].fns.values():
        if block_fn.name in ("analyse", "reanalyse"):
            def counted(image, *args, _fn=block_fn.fn):
                try:
                    return _fn(image, *args)
                finally:
                    requests.append(None if image is None else Path(image).name)

            monkeypatch.setattr(block_fn, "fn", counted)
    return requests


def wait_for_requests(requests: list, count: int, extra_wait: float = 1.5) -> None:
    """Waits for `count` analysis requests, then a little longer for a (wrong) extra one to arrive."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(requests) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(extra_wait)


@pytest.fixture
def explain_calls(monkeypatch):
    """Every call of the app's `explain` (the server runs in this process): `cam_class` None for an analysis, a
    class index for a Grad-CAM refreshed after the decision flipped."""
    calls = []
    real = app.explain

    def counted(*args, **kwargs):
        calls.append(kwargs.get("cam_class"))
        return real(*args, **kwargs)

    monkeypatch.setattr(app, "explain", counted)
    return calls


def screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("BROWSER_SCREENSHOTS"):  # keep a copy to look at
        Path(os.environ["BROWSER_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["BROWSER_SCREENSHOTS"]) / name)
    return path


def upload(page, path: Path) -> None:
    page.locator("#lesion-image input[type=file]").set_input_files(str(path))


def remove_image(page) -> None:
    from playwright.sync_api import expect

    page.locator('#lesion-image button[aria-label="Remove Image"]').click()
    expect(page.locator("#lesion-image img")).to_have_count(0)


def wait_for_analysis(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#decision")).to_contain_text("Prediction", timeout=TIMEOUT_MS)
    expect(page.locator("#cam img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#cam-caption")).to_contain_text("Grad-CAM of", timeout=TIMEOUT_MS)


def shown_decision(page) -> tuple[str, float, float]:
    """(decided class, p(malignant), threshold) as the headline states them, once it states the threshold that the
    number box shows."""
    from playwright.sync_api import expect

    value = float(page.locator(NUMBER).input_value())
    expect(page.locator("#decision")).to_contain_text(f"threshold {value:.2f}", timeout=TIMEOUT_MS)
    text = page.locator("#decision").inner_text()
    label = re.search(r"Prediction: (\w+)", text)[1]
    p = float(re.search(r"p\(malignant\) = ([0-9.]+)", text)[1])
    return label, p, value


def assert_decision_matches_threshold(page) -> str:
    """The headline decides at the threshold on screen, and the Grad-CAM explains the decided class."""
    from playwright.sync_api import expect

    label, p, value = shown_decision(page)
    if abs(p - value) > 1e-3:  # p is shown to 3 decimals
        assert label == ("malignant" if p >= value else "benign"), (label, p, value)
    expect(page.locator("#cam-caption")).to_contain_text(f"Grad-CAM of {label}", timeout=TIMEOUT_MS)
    expect(page.locator("#timing")).not_to_contain_text("no CAM")
    other = "benign" if label == "malignant" else "malignant"  # the decided class's bar comes first
    expect(page.locator("#probabilities")).to_have_text(re.compile(rf"{label}\s+[\d.]+%\s+{other}\s+[\d.]+%"),
                                                        timeout=TIMEOUT_MS)
    return label


def test_one_analysis_per_image_and_the_decision_follows_every_threshold_control(
        open_page, files, analysis_requests, explain_calls, tmp_path, loaded):
    from playwright.sync_api import expect

    page = open_page()
    expect(page.get_by_text("NOT a diagnostic device")).to_have_count(1)
    upload(page, files["lesion_a.jpg"])
    wait_for_analysis(page)
    expect(page.locator("#fusion-plot img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#probabilities")).to_contain_text("%")
    assert page.locator("#probabilities").evaluate("e => getComputedStyle(e).opacity") == "1"  # in distribution
    wait_for_requests(analysis_requests, 1)
    assert analysis_requests == ["lesion_a.jpg"]  # one request for one upload
    assert_decision_matches_threshold(page)
    screenshot(page, "desktop.png", tmp_path)

    # Typing in the number box (and Enter), to both ends: the decision flips, and the CAM follows it.
    number = page.locator(NUMBER)
    number.fill("0")
    number.press("Enter")
    assert assert_decision_matches_threshold(page) == "malignant"
    number.fill("1")
    number.press("Enter")
    assert assert_decision_matches_threshold(page) == "benign"
    # Arrow keys on the slider.
    page.locator(RANGE).focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    expect(number).to_have_value(re.compile(r"^0\.97"))
    assert_decision_matches_threshold(page)
    # The reset button: back to the model's threshold.
    page.locator("#reset-threshold").click()
    expect(number).to_have_value(re.compile(rf"^{loaded[2].decision_threshold:.2f}"))
    assert_decision_matches_threshold(page)
    # Dragging the slider.
    box = page.locator(RANGE).bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.05, y, steps=5)
    page.mouse.up()
    expect(number).not_to_have_value(re.compile(rf"^{loaded[2].decision_threshold:.2f}"))
    assert assert_decision_matches_threshold(page) == "malignant"
    time.sleep(1.5)
    assert analysis_requests == ["lesion_a.jpg"]  # the threshold never re-runs the analysis...
    assert explain_calls[0] is None and all(c is not None for c in explain_calls[1:]) and len(explain_calls) >= 3
    screenshot(page, "after_threshold_changes.png", tmp_path)  # ... only the Grad-CAM, on the flips

    # Replacing the image, directly (the upload button) or after removing it: one request each.
    upload(page, files["lesion_b.jpg"])
    wait_for_requests(analysis_requests, 2)
    assert analysis_requests == ["lesion_a.jpg", "lesion_b.jpg"]
    expect(page.locator("#lesion-image img")).to_have_attribute("src", re.compile(r"lesion_b\.jpg$"))
    assert_decision_matches_threshold(page)
    remove_image(page)
    expect(page.locator("#decision")).not_to_contain_text("Prediction")
    upload(page, files["lesion_a.jpg"])
    wait_for_analysis(page)
    wait_for_requests(analysis_requests, 3)
    assert analysis_requests == ["lesion_a.jpg", "lesion_b.jpg", "lesion_a.jpg"]
    assert_decision_matches_threshold(page)


def test_example_click_runs_one_analysis(open_page, files, analysis_requests):
    from playwright.sync_api import expect

    page = open_page()
    page.locator("#examples button").first.click()
    wait_for_analysis(page)
    wait_for_requests(analysis_requests, 1)
    assert analysis_requests == ["example.jpg"]
    assert_decision_matches_threshold(page)
    # The image input still hands bad files to the app's own checks (their clear messages) after an example.
    remove_image(page)
    upload(page, files["not_an_image.jpg"])
    expect(page.get_by_text(re.compile("not an image")).first).to_be_visible(timeout=TIMEOUT_MS)


def test_ood_warning_failed_input_and_no_image(open_page, files, tmp_path):
    from playwright.sync_api import expect

    page = open_page()
    upload(page, files["not_a_lesion.png"])
    wait_for_analysis(page)
    warning = page.locator("#decision .ood-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text(OOD_WARNING)
    expect(page.locator("#decision")).to_contain_text("(not meaningful)")
    opacity = page.locator("#decision .headline").evaluate("e => getComputedStyle(e).opacity")
    assert float(opacity) < 1  # greyed out
    expect(page.locator("#probabilities")).to_contain_text("%")  # still shown, greyed out with the headline
    assert float(page.locator("#probabilities").evaluate("e => getComputedStyle(e).opacity")) < 1
    screenshot(page, "ood.png", tmp_path)

    # A decompression bomb: its message, and nothing left from the previous image (nor the bomb's preview).
    remove_image(page)
    upload(page, files["bomb.png"])
    expect(page.get_by_text(re.compile("too large")).first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#lesion-image img")).to_have_count(0, timeout=TIMEOUT_MS)
    expect(page.locator("#decision")).not_to_contain_text("Prediction")
    expect(page.locator("#cam img")).to_have_count(0)
    expect(page.locator("#probabilities")).not_to_contain_text("%")
    expect(page.get_by_text("Traceback")).to_have_count(0)
    screenshot(page, "failed_input.png", tmp_path)

    # "Analyse" with no image: the same message as the API gives.
    page.locator("#analyse").click()
    expect(page.get_by_text(app.NO_IMAGE).first).to_be_visible(timeout=TIMEOUT_MS)


def test_phone_width(open_page, files, tmp_path):
    from playwright.sync_api import expect

    width = 390
    page = open_page(width=width, height=844)
    upload(page, files["lesion_a.jpg"])
    wait_for_analysis(page)
    page.locator("#tta input[type=checkbox]").check()
    expect(page.locator("#decision")).to_contain_text("over 8 views", timeout=TIMEOUT_MS)
    expect(page.locator("#decision")).to_contain_text("±")
    expect(page.locator("#fusion-plot img")).to_be_visible(timeout=TIMEOUT_MS)
    plot = page.locator("#fusion-plot img").bounding_box()
    cam = page.locator("#cam img").bounding_box()
    assert plot["width"] >= 0.75 * width and plot["x"] + plot["width"] <= width + 1, plot
    assert cam["width"] >= 0.6 * width, cam
    screenshot(page, "phone.png", tmp_path)

    page.get_by_role("tab", name="Batch").click()
    table = page.locator("#batch-table")
    expect(table).to_contain_text("label", timeout=TIMEOUT_MS)
    headers = [h.strip() for h in table.locator("th").all_inner_texts() if h.strip()]
    assert headers[:2] == ["file", "label"], headers  # real headers on the empty table, not "1 2 3"
    names = ["benign/1.jpg", "malignant/1.jpg", "not_a_lesion.png"]
    page.locator("#batch-files input[type=file]").set_input_files([str(files[n]) for n in names])
    page.get_by_role("button", name="Classify all").click()
    expect(table).to_contain_text("1.jpg (2)", timeout=TIMEOUT_MS)
    expect(table).to_contain_text("1.jpg (1)")
    expect(page.locator("#batch-summary")).to_contain_text("numbered in upload order")
    boxes = table.locator("th").evaluate_all(
        "cells => cells.map(c => [c.innerText.trim(), c.getBoundingClientRect().toJSON()])")
    label = dict(boxes)["label"]
    assert label["right"] <= width, boxes  # on screen without scrolling sideways
    assert label["height"] < 100, boxes  # headers on one or two lines, not a stack of letters
    screenshot(page, "phone_batch.png", tmp_path)


def test_a_model_switch_relabels_the_threshold_and_keeps_its_range_check(browser, files, tmp_path):
    """Two models in the dropdown: switching re-analyses the image at the new model's threshold, and a threshold
    typed out of range after the switch (Analyse clicked before leaving the box) gets the app's message and is put
    back; the decision stays at the threshold on screen."""
    from playwright.sync_api import expect

    from modeling import AsffResNetConfig

    root = tmp_path / "models"
    default = save_tiny_model(root / "tiny-a", seed=0)
    other = save_tiny_model(root / "tiny-b", seed=1)
    config = AsffResNetConfig.from_pretrained(other)
    config.decision_threshold = 0.3
    config.save_pretrained(other)
    demo = app.build_demo(*load_classifier(default), models=app.model_choices(root, default))
    port = free_port()
    app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        upload(page, files["lesion_a.jpg"])
        wait_for_analysis(page)
        number = page.locator(NUMBER)
        expect(number).to_have_value(re.compile(r"^0\.5"))
        page.locator("#model input").click()
        page.get_by_role("option", name="tiny-b").click()
        expect(number).to_have_value(re.compile(r"^0\.3"), timeout=TIMEOUT_MS)
        assert_decision_matches_threshold(page)
        number.fill("1.5")
        page.locator("#analyse").click()
        expect(page.locator(".toast-body").first).to_contain_text("between 0 and 1; 1.5 was typed",
                                                                  timeout=TIMEOUT_MS)
        number.press("Tab")
        expect(number).to_have_value(re.compile(r"^0\.3"), timeout=TIMEOUT_MS)
        assert_decision_matches_threshold(page)
        screenshot(page, "model_switch_out_of_range.png", tmp_path)
    finally:
        demo.close()
