"""The web console in a real browser: headless Chromium driven by selenium (tests/web.rs runs it).

Loads the demo's tower page, sees the level change (live, by Server-Sent Events), sees the
Age column stay right with the browser's clock 10 hours ahead, clicks the
`startp1` button, sees the executor's ack and pump 1's running state change, checks the level
trend and the four pump buttons are there, and saves a screenshot.

Usage: console.py URL SCREENSHOT. Exits non-zero with the reason on any failure; a missing
chromium, chromedriver or selenium is a failure too.
"""

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, shot = sys.argv[1], sys.argv[2]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
# Live updates replace cells and a status change re-renders the page: an element found a moment
# ago may be gone, so every lookup is retried until the deadline.
wait = WebDriverWait(driver, 60, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])


def text(point):
    """The point's value as a plain topic carries it (`data-text`), read in one step."""
    return driver.execute_script(
        "const e = document.querySelector(`[data-value=\"${arguments[0]}\"]`); return e ? e.dataset.text : null;",
        point,
    )


def click(selector):
    driver.find_element(By.CSS_SELECTOR, selector).click()
    return True


try:
    driver.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-live=yes]"))
    wait.until(lambda d: text("tower.level"))
    first = text("tower.level")
    wait.until(lambda d: text("tower.level") not in (None, first))
    print(f"level changed: {first} -> {text('tower.level')}")

    # A browser clock 10 hours ahead must not change the Age column: it comes from the
    # gateway's age_ms (plus the time since the row arrived, by the page's monotonic clock).
    driver.execute_script("const real = Date.now; Date.now = () => real() + 36e6;")
    seen = text("tower.level")
    wait.until(lambda d: text("tower.level") != seen)
    ages = driver.execute_script(
        "const e = document.querySelector('[data-age=\"tower.level\"]'); return e ? e.textContent : null;"
    )
    assert ages is not None and ages.endswith(" s"), f"age with a wrong browser clock: {ages!r}"
    print("age with the browser clock 10 h ahead:", ages)

    buttons = driver.execute_script(
        "return [...document.querySelectorAll('button[data-payload]')].map(b => b.dataset.payload).sort()"
    )
    assert buttons == ["startp1", "startp2", "stopp1", "stopp2"], buttons
    assert driver.find_elements(By.CSS_SELECTOR, '[data-chart="tower.level"] canvas'), "no level trend"

    assert text("tower.p1_running") == "false", f"pump 1 already running: {text('tower.p1_running')}"
    wait.until(lambda d: click('button[data-payload="startp1"]'))
    wait.until(lambda d: "startp1: ok" in d.find_element(By.ID, "result").text)
    print("ack:", driver.find_element(By.ID, "result").text)
    wait.until(lambda d: text("tower.p1_running") == "true")
    print("pump 1 running")
    # One more sample on the trend before the picture.
    seen = text("tower.level")
    wait.until(lambda d: text("tower.level") != seen)
    # The whole page in the picture: the window as tall as the document.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height + 40, 4000))
    # The chart repaints on the next animation frame: wait for two before the picture.
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    assert driver.save_screenshot(shot), "screenshot failed"
    print("screenshot", shot)
finally:
    driver.quit()
