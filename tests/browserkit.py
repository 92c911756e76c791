"""Headless Chromium for the tests: Debian's browser, driven by playwright.

No ``playwright install``: the system's /usr/bin/chromium is used. Under
CI=true a missing piece fails the test instead of skipping it.
"""

import os

import pytest

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - reported by require_browser()
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require(ok, why):
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)


def require_browser():
    require(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    require(os.path.exists(CHROMIUM), f"{CHROMIUM} missing (apt-get install chromium)")
