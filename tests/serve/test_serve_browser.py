"""Headless Chromium opens the chat page, sends a message and sees a streamed reply.

Needs Debian's chromium + chromium-driver and the selenium package; `.ci/run`
installs them. Marked `browser`; it skips where no browser is installed.
"""

from __future__ import annotations

import shutil

import pytest

from tests.serve.server_utils import start_server

pytestmark = pytest.mark.browser
webdriver = pytest.importorskip("selenium.webdriver")


def _chrome() -> object:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_chat_page_streams_a_reply(tiny_model_dir) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with start_server(tiny_model_dir) as s:
        browser = _chrome()
        try:
            browser.get(s.url + "/")
            box = browser.find_element(By.ID, "input")
            box.send_keys("Hello, model")
            browser.find_element(By.ID, "send").click()
            WebDriverWait(browser, 60).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant[data-done='true']")
            )
            reply = browser.find_element(By.CSS_SELECTOR, ".assistant")
            assert reply.text.startswith("model: ") and len(reply.text) > len("model: ")
            assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces
            assert "Hello, model" in browser.find_element(By.CSS_SELECTOR, ".user").text
        finally:
            browser.quit()
