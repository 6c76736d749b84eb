"""The run report (``report/index.html``) rendered in a real browser: headless Chromium.

A tiny checkpoint in the trainer's format (as in test_eval_cli.py) and a short ``metrics.jsonl``
beside it; ``loupe eval`` writes the report with its pictures; Chromium opens the page from
``file://`` (as a user opens it) through Selenium and Debian's chromedriver. Checked: every
``<img>`` loaded (``complete`` and ``naturalWidth > 0``), the pictures the report promises are
all on the page, and the browser logged no error (console or failed resource). Two controls show
that both checks can fail: a page with a missing picture, and a ``console.error`` call.

Needs ``chromium`` and ``chromium-driver`` (Debian packages: /usr/bin/chromium,
/usr/bin/chromedriver) and the ``selenium`` package (``pip install -e ".[dev]"``); skips with
the reason when one is missing. Nothing is downloaded: the driver is given by path, so
Selenium Manager is never asked. A screenshot of the whole page is saved in the test's tmp
folder; ``LOUPE_REPORT_SCREENSHOT=PATH`` saves it to PATH too.

Run as a script, ``python tests/test_report_browser.py RUN/report/index.html OUT.png [SCALE]``
makes the same checks on a report already written and saves its screenshot; docs/report_screenshot.png
is that of ``loupe pretrain --config tiny train.steps=6 eval.every=0`` at SCALE 0.5.
"""
import base64
import json
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from loupe_core.cli import main

from _trainer_helpers import write_tiny_checkpoint

# headless, as root, on a machine with no outside network: no sandbox, no GPU, none of Chromium's
# background connections (they are refused there, many at a time); a fresh profile is added per start
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1000")
PICTURES = {"training_curves.png", "regions_0.png", "alignment_0.png", "regions_1.png", "alignment_1.png",
            "instability.png"}


def _find(names, env):
    for name in (os.environ.get(env), *names):
        if name and (shutil.which(name) or os.path.isfile(name)):
            return shutil.which(name) or name
    return None


def _chromium_paths():
    """(chromium, chromedriver) paths, either None where missing."""
    return (_find(("chromium", "chromium-browser", "/usr/bin/chromium"), "LOUPE_CHROMIUM"),
            _find(("chromedriver", "/usr/bin/chromedriver"), "LOUPE_CHROMEDRIVER"))


def start_chromium(chromium, driver_path, profile_dir):
    """A headless Chromium (Selenium WebDriver) with browser logs on; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver by path: Selenium Manager (which would look for one online) is never run
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium driven by Selenium through chromedriver; skips when one is missing."""
    chromium, driver_path = _chromium_paths()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver (or set LOUPE_CHROMIUM)")
    if driver_path is None:
        pytest.skip("no chromedriver: apt-get install -y chromium-driver (or set LOUPE_CHROMEDRIVER)")
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    driver = start_chromium(chromium, driver_path, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``report/index.html`` written by ``loupe eval`` on a tiny untrained checkpoint."""
    root = tmp_path_factory.mktemp("report")
    run = pathlib.Path(write_tiny_checkpoint(root, 3))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 4.8 - 0.1 * s, "loss/cmc": 2.1 - 0.05 * s, "loss/tsa": 1.4 - 0.03 * s})
        + "\n" for s in range(1, 4)))
    out = root / "eval"
    assert main(["eval", "--checkpoint", str(run), "--task", "retrieval", "grounding", "--out", str(out)]) == 0
    index = out / "report" / "index.html"
    assert index.is_file()
    return index


def _images(driver):
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
        " width: i.naturalWidth, height: i.naturalHeight}));")


def _errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def save_screenshot(driver, path, scale=1.0):
    """A PNG of the whole page, beyond the window (DevTools' Page.captureScreenshot), at ``scale``."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": scale}})
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(shot["data"]))


def check_page(driver, uri, timeout: float = 30.0):
    """Open ``uri``; (images, errors): every <img>'s load state, once every image has settled
    (loaded or failed; at most ``timeout`` s on a loaded machine), and the browser's error log."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(uri)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);"))
    return _images(driver), _errors(driver)


def test_report_renders_with_every_picture_and_no_console_error(browser, report, tmp_path):
    images, errors = check_page(browser, report.as_uri())
    assert browser.title == "LOUPE run report"
    assert {img["src"] for img in images} >= PICTURES, images
    broken = [img for img in images if not (img["complete"] and img["width"] > 0 and img["height"] > 0)]
    assert not broken, f"pictures that did not load: {broken}"
    assert "retrieval/i2t_r1" in browser.find_element("tag name", "table").text
    assert not errors, errors
    shot = tmp_path / "report.png"
    save_screenshot(browser, shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("LOUPE_REPORT_SCREENSHOT")
    if keep:
        os.makedirs(os.path.dirname(os.path.abspath(keep)), exist_ok=True)
        shutil.copyfile(shot, keep)


def test_the_checks_catch_a_missing_picture_and_a_console_error(browser, report, tmp_path):
    """Controls: the same checks fail on a page with a missing picture and on console.error."""
    page = tmp_path / "broken.html"
    shutil.copyfile(report.parent / "instability.png", tmp_path / "instability.png")
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>"
                    "<img src='instability.png'><img src='missing.png'></body></html>")
    browser.get(page.as_uri())
    loaded = {img["src"]: img["width"] > 0 for img in _images(browser)}
    assert loaded == {"instability.png": True, "missing.png": False}
    assert any("missing.png" in entry["message"] for entry in _errors(browser))  # the failed resource
    browser.execute_script("console.error('loupe report check')")
    assert any("loupe report check" in entry["message"] for entry in _errors(browser))


if __name__ == "__main__":
    # python tests/test_report_browser.py RUN/report/index.html OUT.png [SCALE]: the same checks on
    # a report already written (e.g. by `loupe pretrain --config tiny`), and its screenshot
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    chromium, driver_path = _chromium_paths()
    if chromium is None or driver_path is None:
        sys.exit("needs chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    with tempfile.TemporaryDirectory() as profile:
        driver = start_chromium(chromium, driver_path, profile)
        try:
            images, errors = check_page(driver, "file://" + os.path.abspath(sys.argv[1]))
            broken = [img for img in images if not (img["complete"] and img["width"] > 0)]
            save_screenshot(driver, sys.argv[2], float(sys.argv[3]) if len(sys.argv) == 4 else 1.0)
        finally:
            driver.quit()
    print(f"{len(images)} pictures, {len(broken)} not loaded, {len(errors)} browser errors -> {sys.argv[2]}")
    sys.exit(1 if broken or errors else 0)
