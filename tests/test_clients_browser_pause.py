"""The browser shows a paused world: a banner while the authority is away, gone on resume.

Headless Chromium (Debian's, through playwright) on a real world: redis-server,
``spelltraction.py game`` and a gateway serving the page. The authority is
killed (-9) and restarted, as systemd would.
"""

import signal

import pytest

from browserkit import wait_for
from clusterkit import http_get, world  # noqa: F401 - a fixture
from clusterkit import wait_for as wait_until

pytestmark = pytest.mark.slow

FAST = ("--tick-ms", "50")
STATE = ("() => { const s = window.spelltraction.state; return {id: s.id, status: s.status,"
         " paused: s.paused, tick: s.tick, text: s.statusText}; }")


def test_the_page_shows_the_pause_while_the_authority_restarts(world, browser):
    a = world.game(*FAST)
    gw = world.gateway()
    wait_until(lambda: http_get(gw.admin, "/healthz")[0] == 200)
    errors = []
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{gw.port}/")
    wait_for(page, "() => { const s = window.spelltraction.state;"
                   " return s.id > 0 && s.ticksSeen > 5; }")
    banner = page.locator("#paused")
    assert banner.is_hidden()
    before = page.evaluate(STATE)
    assert not before["paused"]

    a.stop(signal.SIGKILL)
    # The gateway says "paused" after 1 s without a TICK (then every 2 s).
    wait_for(page, "() => window.spelltraction.state.paused", timeout=10)
    assert banner.is_visible()
    assert "Game paused" in banner.inner_text()
    assert "your place is kept" in banner.inner_text().lower()
    assert page.locator("#st-p99").inner_text() == "paused"
    paused = page.evaluate(STATE)
    # Same connection, same player: nothing to reconnect.
    assert paused["status"] == "playing" and paused["id"] == before["id"]
    assert "paused" in paused["text"]

    world.game(*FAST)  # the restart (same data directory: it takes the world back at once)
    wait_for(page, "() => { const s = window.spelltraction.state;"
                   f" return !s.paused && s.tick > {paused['tick']}; }}", timeout=20)
    back = page.evaluate(STATE)
    assert banner.is_hidden()
    assert back["id"] == before["id"] and back["status"] == "playing"
    assert back["text"] == before["text"]  # "Playing as #..." again
    assert page.locator("#st-p99").inner_text() != "paused"
    assert not errors, errors
    page.close()
