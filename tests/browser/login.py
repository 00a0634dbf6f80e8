"""The web console's login and a read-only console in a real browser (tests/web.rs runs it).

Loads the console of a gateway with a users file and writes disabled: the login form shows,
a wrong password is refused with a message, the right one shows the console; the device page
shows values but no command buttons and no inputs, and there is no Commands page link.

Usage: login.py URL USER PASSWORD. Exits non-zero with the reason on any failure.
"""

import sys

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, user, password = sys.argv[1], sys.argv[2], sys.argv[3]

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 30, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])


def log_in(pw):
    driver.find_element(By.NAME, "user").clear()
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").clear()
    driver.find_element(By.NAME, "password").send_keys(pw)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()


try:
    driver.get(url)
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    log_in("wrong password")
    wait.until(lambda d: d.find_element(By.ID, "login-error").text != "")
    print("refused:", driver.find_element(By.ID, "login-error").text)
    log_in(password)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-live=yes]"))
    assert not driver.find_element(By.ID, "login").is_displayed(), "login form still shown"
    driver.get(url + "#/device/tower")
    wait.until(lambda d: d.execute_script(
        "const e = document.querySelector('[data-value=\"tower.level\"]'); return e && e.dataset.text;"))
    controls = driver.execute_script(
        "return document.querySelectorAll('button[data-payload], button[data-point], input[data-input]').length")
    assert controls == 0, f"{controls} controls on a read-only console"
    links = driver.execute_script("return [...document.querySelectorAll('#nav a')].map(a => a.textContent)")
    assert "Commands" not in links, links
    print("read-only console, nav:", links)
finally:
    driver.quit()
