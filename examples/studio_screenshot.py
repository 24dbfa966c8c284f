"""Screenshot of ``gpstoken studio`` for the README (docs/images/studio.png), taken in headless Chromium.

    python examples/studio_screenshot.py -o docs/images/studio.png

Needs ``chromium``, ``chromium-driver`` (Debian) and ``pip install selenium``. The script starts
the studio on a free local port, opens the astronaut example at 64 tokens, draws a priority
box over the face, re-encodes, then marks a few Gaussian edits (pending) and saves the page.
"""
from __future__ import annotations

import argparse
import io
import shutil
import threading

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait

from gpstoken.studio import make_server


def wait_version(page, version: int) -> None:
    WebDriverWait(page, 300, 0.2).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-version") == str(version)
        and d.find_element("tag name", "body").get_attribute("data-state") == "idle")


def canvas_offset(canvas, x: float, y: float) -> tuple[int, int]:
    """Image pixel (x, y) of a 256x256 image -> selenium offset from the canvas centre."""
    k = canvas.size["width"] / 256.0
    return int((x + 0.5) * k - canvas.size["width"] / 2), int((y + 0.5) * k - canvas.size["height"] / 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="studio.png")
    a = p.parse_args()

    server = make_server(port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1520,920",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    page = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        page.get(server.url)
        WebDriverWait(page, 60).until(
            lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle")
        page.execute_script("document.getElementById('tokens').value = 64;")
        page.find_element("css selector", "button[data-example='astronaut.png']").click()
        wait_version(page, 1)
        canvas = page.find_element("id", "editor")
        x0, y0 = canvas_offset(canvas, 80, 40)
        x1, y1 = canvas_offset(canvas, 180, 140)
        ActionChains(page).move_to_element_with_offset(canvas, x0, y0).click_and_hold() \
            .move_by_offset((x1 - x0) // 2, (y1 - y0) // 2).move_by_offset((x1 - x0) // 2, (y1 - y0) // 2) \
            .release().perform()
        page.find_element("id", "encode").click()
        wait_version(page, 2)
        page.find_element("css selector", "input[name=tool][value=add]").click()
        for x, y in ((30, 220), (225, 200)):
            ActionChains(page).move_to_element_with_offset(canvas, *canvas_offset(canvas, x, y)).click().perform()
        shot = Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")
        # 256 colours keep the PNG small (UI plus 256x256 pictures)
        shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(a.output, optimize=True)
        print(f"wrote {a.output}")
    finally:
        page.quit()
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
