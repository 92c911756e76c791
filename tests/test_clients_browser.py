"""End to end in headless Chromium: the page plays against a live server with bots.

Needs Debian's ``chromium`` and ``playwright`` from PyPI (test-only; no
``playwright install``: the system browser is used). CI installs both and
sets CI=true, where a missing piece fails instead of skipping.
"""

import os
import struct
import subprocess
import sys
import time
import zlib

import pytest

import spelltraction as st
from browserkit import open_page, require_browser, wait_for
from gamekit import Player
from serverproc import GAME, ROOT, ServerProcess

pytestmark = pytest.mark.slow  # a browser, a server and bots, each test seconds long

ARTIFACTS = os.path.join(ROOT, "test-artifacts")


def png_pixels(data):
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes): (w, h, channels, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    ch = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    rows, prev, stride = [], bytearray(w * ch), w * ch
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - ch] if x >= ch else 0
            b = prev[x]
            c = prev[x - ch] if x >= ch else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, ch, rows


@pytest.fixture(scope="module")
def game():
    require_browser()
    server = ServerProcess("--tick-ms", "100", "--seed", "3")
    bots = subprocess.Popen(
        [sys.executable, GAME, "bots", "--port", str(server.port), "--count", "12",
         "--duration", "90", "--move-every", "0.5", "--probes", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield server
    finally:
        bots.kill()
        bots.wait()
        server.stop()


CELL_INK = """() => {
  // Fraction of letter-coloured pixels in the middle of each cell, from the canvas.
  const c = document.getElementById('board'), s = window.spelltraction.state;
  const g = c.getContext('2d'), k = c.width / (s.cols * s.cellPx), out = [];
  for (let i = 0; i < 12; i++) {
    const x0 = Math.round(((i % 4) * s.cellPx + s.cellPx * 0.3) * k);
    const y0 = Math.round((Math.floor(i / 4) * s.cellPx + s.cellPx * 0.25) * k);
    const w = Math.round(s.cellPx * 0.4 * k), h = Math.round(s.cellPx * 0.5 * k);
    const d = g.getImageData(x0, y0, w, h).data;
    let ink = 0;
    for (let p = 0; p < d.length; p += 4) {
      const white = d[p] > 200 && d[p + 1] > 200 && d[p + 2] > 200;
      const gold = d[p] > 230 && d[p + 1] > 180 && d[p + 2] < 160;
      if (white || gold) ink++;
    }
    out.push(ink / (w * h));
  }
  return out;
}"""


def test_page_renders_the_board_and_plays_with_tcp_players(game, browser):
    errors = []
    observer = Player(game.port)
    page = open_page(browser, f"http://127.0.0.1:{game.port}/", errors)
    wait_for(page,
        "() => { const s = window.spelltraction.state; return s.id > 0 && s.me &&"
        " s.board.length === 12 && s.drawnLetters === s.board && s.ticksSeen > 3; }",
        timeout=15)
    state = page.evaluate("() => { const s = window.spelltraction.state;"
                          " return {id: s.id, board: s.board, drawn: s.drawnLetters}; }")
    browser_id = state["id"]
    assert state["drawn"] == state["board"]

    # The page shows the server's board: compare with what a TCP player reads.
    tick = observer.expect(st.TickMsg)
    page_board = page.evaluate("() => window.spelltraction.state.board")
    if page_board != tick.board:  # a letter may just have scored: one more look
        tick = observer.expect(st.TickMsg)
        page_board = page.evaluate("() => window.spelltraction.state.board")
    assert page_board == tick.board

    # Pixels: every cell has its letter drawn (light ink in its middle).
    ink = page.evaluate(CELL_INK)
    assert all(f > 0.04 for f in ink), ink

    # The screenshot is saved and is not blank.
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "browser-board.png")
    page.screenshot(path=shot)
    with open(shot, "rb") as f:
        w, h, ch, rows = png_pixels(f.read())
    colours = {row[x : x + 3] for row in rows[::7] for x in range(0, w * ch, ch * 7)}
    assert len(colours) > 200, f"screenshot looks blank: {len(colours)} colours"

    # Click the middle of cell 6 (column 2, row 1): the server sees the move.
    box = page.locator("#board").bounding_box()
    px = box["x"] + box["width"] * (2.5 / 4)
    py = box["y"] + box["height"] * (1.5 / 3)
    page.mouse.click(px, py)
    tick = observer.ticks_until(
        lambda t: any(m.player_id == browser_id and st.cell_of(m.x, m.y) == 6 for m in t.movers))
    me = wait_for(page,
        "() => { const m = window.spelltraction.state.me; return m && m.seq > 0 && m; }",
        timeout=5)
    assert st.cell_of(me["x"], me["y"]) == 6

    # The TCP observer moves; the page sees it (by id) among the markers.
    observer_id = observer.welcome.player_id
    observer.sock.sendall(st.frame(st.Move(1, 50, 300)))
    wait_for(page,
        f"() => window.spelltraction.state.others.has({observer_id})", timeout=5)
    others = page.evaluate("() => Array.from(window.spelltraction.state.others.keys())")
    assert observer_id in others and browser_id not in others
    assert len(others) >= 10  # the TCP bots are there too
    assert errors == []
    page.close()
    observer.sock.close()


def test_wrong_protocol_version_shows_the_servers_error(game, browser):
    errors = []
    page = open_page(browser, f"http://127.0.0.1:{game.port}/?protocol=9", errors)
    wait_for(page,
        "() => document.getElementById('status-text').textContent.includes('client sent 9')",
        timeout=10)
    assert page.locator("#status").get_attribute("class") == "status error"
    assert page.locator("#retry").is_visible()
    time.sleep(1.5)  # no reconnect loop: it stays on the error
    assert "client sent 9" in page.locator("#status-text").text_content()
    assert errors == []
    page.close()


def test_reconnects_after_the_server_comes_back(browser, tmp_path):
    server = ServerProcess("--tick-ms", "100")
    port = server.port
    errors = []
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}/", errors)
        wait_for(page, "() => window.spelltraction.state.id > 0", timeout=10)
        server.stop()
        wait_for(page,
            "() => document.getElementById('status-text').textContent.includes('reconnecting')",
            timeout=10)
        server = ServerProcess("--tick-ms", "100", port=port)
        wait_for(page,
            "() => window.spelltraction.state.me && window.spelltraction.state.status === 'playing'",
            timeout=20)
        page.close()
    finally:
        server.stop()
