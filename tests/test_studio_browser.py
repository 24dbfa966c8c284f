"""``gpstoken studio`` in a real browser: headless Chromium driven by selenium.

Uploads a photo, changes the token count, draws a priority box with the mouse, re-encodes,
and checks that the page shows a new reconstruction whose PSNR inside the box improved.
Needs Debian's ``chromium`` + ``chromium-driver`` and ``selenium`` (``.ci/run`` installs
them); skips with the reason when they are missing.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "data" / "astronaut.png"


def _browser() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def studio_url():
    from gpstoken.studio import make_server

    server = make_server(generator=None, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page():
    browser, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    yield drv
    drv.quit()


def _wait_version(page, version: int, timeout: float = 120.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        error = d.find_element("id", "error")
        if error.is_displayed() and error.text:
            raise AssertionError(f"the page shows an error: {error.text}")
        body = d.find_element("tag name", "body")
        return body.get_attribute("data-version") == str(version) and body.get_attribute("data-state") == "idle"

    WebDriverWait(page, timeout, poll_frequency=0.2).until(ready)


def _value(page, element_id: str) -> float:
    return float(page.find_element("id", element_id).get_attribute("data-value"))


def test_upload_tokens_priority_box_improves_psnr_in_the_box(page, studio_url):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    page.get(studio_url)
    WebDriverWait(page, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle")
    assert "gpstoken-tiny" in page.find_element("id", "model").text

    # 1. upload: the page encodes it at the default token count
    page.find_element("id", "file").send_keys(str(PHOTO))
    _wait_version(page, 1)
    assert page.find_element("id", "tokens-after").text == "128"

    # 2. token count slider -> re-encoded with 64 tokens
    page.execute_script(
        "const s = document.getElementById('tokens'); s.value = 64;"
        "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    _wait_version(page, 2)
    assert page.find_element("id", "tokens-after").text == "64"
    assert page.find_element("id", "tokens-before").text == "128"

    # 3. drag a priority box over the face (image pixels 80,40 - 180,140) on the canvas
    canvas = page.find_element("id", "editor")
    size = canvas.size  # CSS pixels; the image is 256x256
    k = size["width"] / 256.0
    x0, y0, x1, y1 = 80, 40, 180, 140
    start = ((x0 + 0.5) * k - size["width"] / 2, (y0 + 0.5) * k - size["height"] / 2)
    (ActionChains(page).move_to_element_with_offset(canvas, int(start[0]), int(start[1])).click_and_hold()
     .move_by_offset(int((x1 - x0) * k / 2), int((y1 - y0) * k / 2))
     .move_by_offset(int((x1 - x0) * k / 2), int((y1 - y0) * k / 2)).release().perform())
    assert "1 priority box" in page.find_element("id", "pending").text
    box = page.execute_script("return S.boxes[0]")
    assert all(abs(a - b) <= 2 for a, b in zip(box, (x0, y0, x1, y1))), box

    # 4. re-encode: a new reconstruction whose PSNR inside the box beats the one before
    page.find_element("id", "encode").click()
    _wait_version(page, 3)
    after, before = _value(page, "psnr-box-after"), _value(page, "psnr-box-before")
    assert after > before + 0.5, (before, after)
    src, complete, width = page.execute_script(
        "const i = document.getElementById('after'); return [i.src, i.complete, i.naturalWidth];")
    assert "after.png?v=3" in src
    WebDriverWait(page, 30).until(lambda d: d.execute_script(
        "const i = document.getElementById('after'); return i.complete && i.naturalWidth === 256;"))
    assert page.find_element("id", "tokens-after").text == "64"
