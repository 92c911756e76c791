"""The browser client over https and wss through the shipped nginx files, and the Origin rule.

A page served over https may only open ``wss://``; nginx terminates TLS in
front of the game (etc/nginx/spelltraction.conf, as shipped but for its ports
and certificate) and passes the browser's Host on, which the game's default
``--allowed-origins same-origin`` compares with the page's Origin. The page of
another site (here: the game's own plain port, another origin) cannot make
its visitors join through it.
"""

import sys

import pytest

import spelltraction as st
from browserkit import CHROMIUM, CHROMIUM_ARGS, require_browser, wait_for
from serverproc import Spawned

pytestmark = pytest.mark.slow  # a browser, nginx and a server

OPENS = """(url) => new Promise((done) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { done('open'); ws.close(); };
  ws.onerror = () => done('error');
  setTimeout(() => done('timeout'), 10000);
})"""


def opens(page, url):
    """What a WebSocket to ``url`` opened from ``page`` does: open, error or timeout."""
    return page.evaluate(OPENS, url)


def test_the_browser_plays_through_the_shipped_nginx_and_other_sites_cannot_join_it(tmp_path):
    from nginxkit import ShippedNginx

    sync_playwright = require_browser()
    with Spawned([sys.executable, st.__file__, "serve", "--host", "127.0.0.1", "--port", "0",
                  "--admin-port", "0", "--no-data", "--tick-ms", "100"]) as server, \
            sync_playwright() as p:
        admin = server.admin_port()
        nginx = ShippedNginx(tmp_path, server.port, admin)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)  # the test's own certificate
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"https://127.0.0.1:{nginx.https}/")
            try:  # app.js (deferred) defines window.spelltraction: wait for it too
                wait_for(page, "() => { const g = window.spelltraction; if (!g) return false;"
                               " const s = g.state;"
                               " return s.id > 0 && s.board.length === 12 && s.ticksSeen > 3; }",
                         timeout=20)
            except AssertionError:  # say what the browser got through nginx, and why
                raise AssertionError(f"{page.url}: errors {errors}; "
                                     f"the page: {page.content()[:1500]}; "
                                     f"{nginx.diagnosis(server)}") from None
            assert page.evaluate("() => location.protocol") == "https:"
            assert not errors, errors

            # Another origin's page (the game's plain port is one) opening the game's
            # wss:// through nginx: refused at the upgrade (403), so the socket fails.
            other = context.new_page()
            other.goto(f"http://127.0.0.1:{server.port}/")
            assert opens(other, f"wss://127.0.0.1:{nginx.https}/ws") == "error"
            assert opens(page, f"wss://127.0.0.1:{nginx.https}/ws") == "open"
        finally:
            browser.close()
            nginx.stop()
