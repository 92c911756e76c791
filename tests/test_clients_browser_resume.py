"""The browser client resumes by itself: a reload is the same player; two tabs don't fight.

Headless Chromium (Debian's, through playwright) against a real server with a
real --data directory.
"""

import socket
import time

import pytest

import spelltraction as st
from browserkit import wait_for
from serverproc import ServerProcess

pytestmark = pytest.mark.slow

STATE = "() => { const s = window.spelltraction.state; return {id: s.id, status: s.status," \
        " resumed: s.resumed, elsewhere: s.elsewhere, text: s.statusText, fame: s.fame," \
        " ticks: s.ticksSeen, score: s.me ? s.me.score : -1}; }"


@pytest.fixture
def server(tmp_path):
    proc = ServerProcess("--data", str(tmp_path / "data"), "--tick-ms", "50", "--seed", "5")
    yield proc
    proc.stop()


def test_a_reload_is_the_same_player_and_an_older_tab_steps_aside(server, browser):
    errors = []
    context = browser.new_context()  # one profile: the tabs share localStorage
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    url = f"http://127.0.0.1:{server.port}/?name=Ada"
    page.goto(url)
    first = wait_for(page, "() => { const s = window.spelltraction.state;"
                           " return s.id > 0 && s.me && s.ticksSeen > 2 && s; }", 15)
    assert not first["resumed"]
    token = page.evaluate("() => localStorage.getItem('spelltraction.token')")
    assert token and len(token) == 32

    page.reload()
    again = wait_for(page, "() => { const s = window.spelltraction.state;"
                           " return s.id > 0 && s.me && s; }")
    assert again["id"] == first["id"] and again["resumed"]
    assert again["me"]["letters"] == first["me"]["letters"]
    assert "Welcome back" in again["statusText"]

    # A second tab takes the player over; the first says so and stays put.
    other = context.new_page()
    other.on("pageerror", lambda e: errors.append(str(e)))
    other.goto(url)
    took = wait_for(other, "() => { const s = window.spelltraction.state;"
                           " return s.id > 0 && s.me && s; }")
    assert took["id"] == first["id"] and took["resumed"]
    old = wait_for(page, "() => { const s = window.spelltraction.state;"
                         " return s.elsewhere && s; }")
    assert old["statusText"] == "Playing in another tab"
    assert page.locator("#retry").is_visible()
    time.sleep(3)  # no reconnecting by itself: the newer tab keeps playing
    assert page.evaluate(STATE)["elsewhere"]
    now = other.evaluate(STATE)
    assert now["status"] == "playing" and not now["elsewhere"] and now["id"] == first["id"]
    assert not errors, errors
    context.close()


def test_the_hall_of_fame_is_drawn(server, browser):
    # Four TCP players stand on cell 0 with the page: the attractor holds it, and
    # its letter scores again and again, for whoever holds it.
    players = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(st.frame(st.Hello()) + st.frame(st.Move(1, 10, 10)))
        players.append(s)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/")
    wait_for(page, "() => window.spelltraction.state.id > 0")
    box = page.locator("#board").bounding_box()
    page.mouse.click(box["x"] + 10, box["y"] + 10)
    fame = wait_for(page, "() => window.spelltraction.state.fame.length &&"
                          " window.spelltraction.state.fame", timeout=60)
    items = page.locator("#fame li").all_inner_texts()
    assert len(items) == len(fame)
    top = fame[0]
    assert (top["name"] or f"#{top['id']}") in items[0] and str(top["score"]) in items[0]
    for s in players:
        s.close()
    page.close()
