"""The page of `deepfake serve` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
which `.ci/run` installs; never downloaded at run time) opens it, uploads a picture and reads the verdict.

Skipped where Chromium is not installed, except in CI (``DEEPFAKE_REQUIRE_BROWSER=1``, set by `.ci/run`), where that
fails. Run against any running server, e.g. to take the README's screenshot of the page::

    python -m tests.test_serve_browser http://127.0.0.1:8000 demo_data/test/fake/fake_00255.jpg \\
        demo_data/test/real/real_00255.jpg --screenshot benchmarks/results/serve_page.png
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_paths() -> tuple[str, str] | None:
    """(the Chromium binary, its chromedriver), or None when either is missing."""
    binary = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def check_page(url: str, files: list[Path], screenshot: Path | None = None, timeout: float = 120) -> list[dict]:
    """Open the page at ``url``, upload ``files`` through its file input and wait for every verdict; return, per
    file, what the page shows (``status``: done or error, ``verdict``, ``probability`` text, ``heat_map`` shown)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("Chromium and chromedriver are needed: apt install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1300",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(lambda d: d.find_element(By.ID, "model-summary").text.startswith("Serving"))
        driver.find_element(By.ID, "files").send_keys("\n".join(str(Path(f).resolve()) for f in files))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(files) and not
                   d.find_elements(By.CSS_SELECTOR, ".result[data-status=pending]"))
        wait.until(lambda d: all(img.get_property("complete") for img in d.find_elements(By.CSS_SELECTOR, "img")))
        shown = []
        for card in reversed(driver.find_elements(By.CSS_SELECTOR, ".result")):  # newest first on the page
            def text(selector: str, card=card) -> str:
                found = card.find_elements(By.CSS_SELECTOR, selector)
                return found[0].text if found else ""

            shown.append({"name": text(".name"), "status": card.get_attribute("data-status"),
                          "verdict": text(".verdict"), "probability": text(".probability"),
                          "error": text(".error"), "heat_map": bool(card.find_elements(By.CSS_SELECTOR, "img.heat"))})
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):  # the page's height at the final window size
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1100, min(max(height + 140, 600), 2400))  # + the window's own chrome
            driver.save_screenshot(str(screenshot))
        return shown
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_uploads_a_picture_and_shows_its_verdict_and_heat_map(untrained_detector, tmp_path):
    from PIL import Image

    from deepfake.inference import Predictor
    from deepfake.server import ServeConfig, create_app
    from tests.helpers import RunningServer

    if browser_paths() is None:
        if os.environ.get("DEEPFAKE_REQUIRE_BROWSER"):
            pytest.fail("Chromium or chromedriver is missing (apt install chromium chromium-driver)")
        pytest.skip("Chromium and chromedriver are not installed")
    picture = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(picture)
    (tmp_path / "notes.txt").write_text("not a picture")
    predictor = Predictor.from_dir(untrained_detector)
    (expected,) = predictor.predict_values([picture.read_bytes()])
    with RunningServer(create_app(predictor, ServeConfig())) as server:
        shown = check_page(server.url, [picture, tmp_path / "notes.txt"], screenshot=tmp_path / "page.png")
    good, bad = shown
    assert good["status"] == "done" and good["name"] == "photo.jpg"
    assert good["verdict"] == expected["label"].upper()
    assert f"fake probability {expected['fake_probability']:.4f}" in good["probability"]
    assert good["heat_map"]
    assert bad["status"] == "error" and "not an image or video" in bad["error"]
    assert Image.open(io.BytesIO((tmp_path / "page.png").read_bytes())).size[0] == 1100


def main() -> None:
    parser = argparse.ArgumentParser(description="Upload files through a running deepfake serve page; print what "
                                                 "it shows, and save a screenshot.")
    parser.add_argument("url")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    for row in check_page(args.url, args.files, args.screenshot):
        print(row)


if __name__ == "__main__":
    main()
