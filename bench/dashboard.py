"""P9's browser side: opens warden's /ui in headless Chromium (Selenium, Debian's chromium and
chromium-driver) with the token already in session storage, and measures how long until the
page shows every service and a full page of recent requests. Prints JSON.
Usage: dashboard.py BASE_URL TOKEN SERVICES"""
import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

base, token, services = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(base + "/health")
    driver.execute_script("sessionStorage.setItem('warden-token', arguments[0])", token)
    rows = "return [document.querySelectorAll('#services tbody tr').length, document.querySelectorAll('#activity tbody tr').length]"
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        driver.get(base + "/ui")
        WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.execute_script(rows)[0] >= services and d.execute_script(rows)[1] >= 100)
        loads.append((time.perf_counter() - t0) * 1000)
    nav = driver.execute_script("return performance.getEntriesByType('navigation')[0].duration")
    print(json.dumps({"ready_ms": sorted(loads), "navigation_ms": nav, "rows": driver.execute_script(rows)}))
finally:
    driver.quit()
