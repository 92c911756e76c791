"""Headless Chromium for the tests: Debian's browser, driven by playwright.

No ``playwright install``: the system's /usr/bin/chromium is used. Outside CI a
missing playwright or Chromium skips the test with the line that installs it;
under CI=true it fails (conftest.require).
"""

from conftest import require_module, require_tool

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_browser():
    """playwright's ``sync_playwright``, once both it and Chromium are here."""
    api = require_module("playwright.sync_api")
    require_tool("chromium", CHROMIUM)
    return api.sync_playwright
