"""The dashboard in headless Chromium (Debian's chromium and chromium-driver, through Selenium):
a wrong token gets a clear message; with the right one a sleeping service shows, a click on
Wake turns it running without reloading the page, and a request then appears in the activity
list. Usage: dashboard.py BASE_URL TOKEN SCREENSHOT"""
import json
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, token, shot = sys.argv[1], sys.argv[2], sys.argv[3]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--window-size=1400,1800"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20, poll_frequency=0.05)
try:
    driver.get(base + "/ui")
    token_box = wait.until(lambda d: d.find_element(By.ID, "token"))
    token_box.send_keys("not-the-token")
    driver.find_element(By.ID, "login-button").click()
    wait.until(lambda d: "refused" in d.find_element(By.ID, "login-error").text)
    print("wrong token:", driver.find_element(By.ID, "login-error").text)

    token_box = driver.find_element(By.ID, "token")
    token_box.clear()
    token_box.send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    # Read in one script: the page re-renders its tables, so an element found in one call may
    # be gone by the next.
    text_of = lambda d, css: d.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css)
    state = lambda d: text_of(d, 'tr[data-service="llm"] .state')
    wait.until(lambda d: state(d) == "stopped")
    # A mark on this page: if the page were reloaded, it would be gone.
    driver.execute_script("window.__same_page = true")
    driver.execute_script("document.querySelector('tr[data-service=\"llm\"] button.wake').click()")
    wait.until(lambda d: state(d) == "running")
    assert driver.execute_script("return window.__same_page === true"), "the page was reloaded"
    print("woken: running")

    req = urllib.request.Request(base + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "llm", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                                 headers={"content-type": "application/json", "authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200
    row = lambda d: text_of(d, "#activity tbody tr")
    wait.until(lambda d: "llm" in row(d) and "200" in row(d))
    assert driver.execute_script("return window.__same_page === true"), "the page was reloaded"
    print("activity:", row(driver))
    driver.save_screenshot(shot)
finally:
    driver.quit()
