"""Headless Chromium for the tests: Debian's browser, driven by playwright.

No ``playwright install``: the system's /usr/bin/chromium is used. Outside CI a
missing playwright or Chromium skips the test with the line that installs it;
under CI=true it fails (conftest.require).
"""

import time

from conftest import require_module, require_tool

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_browser():
    """playwright's ``sync_playwright``, once both it and Chromium are here."""
    api = require_module("playwright.sync_api")
    require_tool("chromium", CHROMIUM)
    return api.sync_playwright


def wait_for(page, js, timeout=15.0):
    """Poll ``js`` (a function expression) until it returns something truthy.

    Not ``page.wait_for_function``: some playwright versions run that through
    ``new Function``, which the page's Content-Security-Policy forbids.
    """
    end = time.monotonic() + timeout
    while True:
        value = page.evaluate(js)
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {js}"
        time.sleep(0.05)


def open_page(browser, url, errors):
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(url)
    return page
