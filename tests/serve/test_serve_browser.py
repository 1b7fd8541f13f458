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


def test_chat_page_controls_stop_and_reset(tiny_model_dir, tmp_path) -> None:
    """System prompt, sampling fields, tokens/s and the model's size; Stop cancels a reply
    mid-stream (the server frees its row), Reset clears the conversation. A screenshot of
    the page after a reply is saved (and checked to be a real image) so a broken layout shows."""
    import time

    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with start_server(tiny_model_dir, max_tokens_limit=4000) as s:
        browser = _chrome()
        try:
            browser.set_window_size(1000, 800)
            browser.get(s.url + "/")
            WebDriverWait(browser, 30).until(lambda b: "params" in b.find_element(By.ID, "model").text)
            assert "tiny" in browser.find_element(By.ID, "model").text
            browser.find_element(By.ID, "system").send_keys("You are terse.")
            for field, value in (("temperature", "0.7"), ("max_tokens", "12"), ("seed", "3")):
                box = browser.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            browser.find_element(By.ID, "input").send_keys("Hello, model")
            browser.find_element(By.ID, "send").click()
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant[data-done='true']"))
            assert "tokens/s" in browser.find_element(By.ID, "stats").text
            shot = tmp_path / "chat.png"
            assert browser.save_screenshot(str(shot))
            data = shot.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") >= 800
            print(f"\nscreenshot: {shot}")
            # a long reply, stopped after its first pieces
            box = browser.find_element(By.ID, "max_tokens")
            box.clear()
            box.send_keys("4000")
            browser.find_element(By.ID, "input").send_keys("Tell me everything")
            browser.find_element(By.ID, "send").click()
            WebDriverWait(browser, 60).until(lambda b: int(b.find_elements(By.CSS_SELECTOR, ".assistant")[-1]
                                                             .get_attribute("data-chunks") or 0) > 2)
            browser.find_element(By.ID, "stop").click()
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant[data-stopped='true']"))
            deadline = time.time() + 10
            while httpx.get(s.url + "/health").json()["active"] and time.time() < deadline:
                time.sleep(0.1)
            assert httpx.get(s.url + "/health").json()["active"] == 0
            assert s.server.config.app.state.backend.scheduler.stats.tokens_generated < 2000
            browser.find_element(By.ID, "reset").click()
            assert browser.find_elements(By.CSS_SELECTOR, "#log .msg") == []
        finally:
            browser.quit()
