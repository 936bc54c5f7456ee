"""The studio in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium; nothing downloaded) types a prompt, presses Generate, waits for the videos, checks that they play
(duration > 0), that a bad prompt shows an error in the page, and saves a screenshot. Without a browser the
test skips with the reason. ``REELKIT_STUDIO_SCREENSHOT=path`` also copies the screenshot there (the README's)."""

import os
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no system Chromium and chromedriver "
                                "(apt install chromium chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def browser(free_port):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from reelkit.studio import launch

    app, url = launch("127.0.0.1", free_port, block=False)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.get(url)
    yield driver
    driver.quit()
    app.close()


def set_prompt(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.clear()
    box.send_keys(text)


def wait_for(driver, script: str, timeout: float = 180):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: d.execute_script(script))


def test_generate_in_the_page_plays_the_videos_and_shows_errors(browser, tmp_path):
    from selenium.webdriver.common.by import By

    wait_for(browser, "return document.querySelector('#generate') !== null", 60)
    set_prompt(browser, "a red circle moving right and a yellow star spinning")
    steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type='number']")
    steps.clear()
    steps.send_keys("8")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    duration = ("const v = document.querySelector('#{} video'); "
                "return v && v.readyState >= 1 && v.duration > 0 ? v.duration : null;")
    assert wait_for(browser, duration.format("accelerated")) > 0
    assert wait_for(browser, duration.format("plain")) > 0
    assert "speedup" in browser.find_element(By.CSS_SELECTOR, "#figures").text
    screenshot = tmp_path / "studio.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("REELKIT_STUDIO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["REELKIT_STUDIO_SCREENSHOT"])

    set_prompt(browser, "a red circel moving right")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    message = wait_for(browser, "const e = document.querySelector('#error'); "
                                "return e && e.innerText.includes('circel') ? e.innerText : null;", 60)
    assert "did you mean circle" in message
