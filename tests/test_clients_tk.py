"""The Tk client for real: a window on Xvfb, a server, bots, and a click.

Proof that a click reaches the server: an observer player sees the client's
player listed as a mover at the clicked spot. Proof that the window draws
the game: a screenshot (kept in test-artifacts/) has the board's colours.
"""

import importlib.util
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

import spelltraction as st
from conftest import require, require_tool
from gamekit import Player
from serverproc import GAME, ROOT, ServerProcess, stop_process
from xdisplay import Xvfb

pytestmark = pytest.mark.slow  # an X server, the Tk client, a server and bots


@pytest.fixture
def display():
    """Xvfb with xdotool and xwd beside it, and a Python with Tk; else skip (fail under CI)."""
    for tool in ("Xvfb", "xdotool", "xwd"):
        require_tool(tool)
    require(importlib.util.find_spec("tkinter"), "this Python has no tkinter",
            "apt-get install python3-tk")
    with Xvfb() as x:
        yield x

ARTIFACTS = os.path.join(ROOT, "test-artifacts")


def mover_in(tick, pid, cell):
    """``pid``'s entry among the tick's movers if it is in ``cell``, else None."""
    for m in tick.movers:
        if m.player_id == pid and st.cell_of(m.x, m.y) == cell:
            return m
    return None


def read_line_matching(proc, pattern, timeout=30.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
    raise AssertionError(f"no line matching {pattern!r}; client said: {''.join(seen)}")


def state_file(tmp_path):
    """The client's resume-token file: the test's own, never the user's."""
    return str(tmp_path / "client.json")


def test_a_click_in_the_window_moves_the_player_on_the_server_and_the_board_is_drawn(display,
                                                                                   tmp_path):
    x = display
    with ServerProcess() as server:
        bots = subprocess.Popen(
            [sys.executable, GAME, "bots", "--port", str(server.port), "--count", "5",
             "--move-every", "1", "--duration", "120", "--probes", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = subprocess.Popen(
            [sys.executable, GAME, "client", "--port", str(server.port),
             "--geometry", f"{st.VIEW_W}x{st.VIEW_H}+0+0", "--state", state_file(tmp_path)],
            env=x.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        observer = None
        try:
            joined = read_line_matching(client, r"as player (\d+) at \((\d+), (\d+)\)")
            pid, start = int(joined[1]), (int(joined[2]), int(joined[3]))
            observer = Player(server.port)
            window = x.find_window(f"SpellTraction: player #{pid}")
            wx, wy, width, height = x.window_geometry(window)
            scale, ox, oy = st.view_transform(width, height)

            # Click a spot in another cell than the one the player started in.
            target = (st.cell_of(*start) + 6) % st.CELLS
            cx, cy = st.cell_centre(target)
            bx, by = cx + 17, cy - 11
            x.click(window, round(ox + (st.BOARD_X0 + bx + 0.5) * scale),
                    round(oy + (st.BOARD_Y0 + by + 0.5) * scale))

            # A player is also listed in the tick after it joins, where it started,
            # which the observer may or may not see: only a listing in ``target`` counts.
            tick = observer.ticks_until(lambda t: mover_in(t, pid, target), timeout=20,
                                        what=f"player {pid} in cell {target}")
            moved = mover_in(tick, pid, target)
            assert abs(moved.x - bx) <= 1 and abs(moved.y - by) <= 1, (moved, bx, by)

            time.sleep(1.0)  # the marker eases into place; a tick or two arrive
            shot = x.screenshot().crop(wx, wy, wx + width, wy + height)
            shot.save_png(os.path.join(ARTIFACTS, "tk-client-e2e.png"))
            colours = shot.colours()
            total = width * height
            bg = colours.get(_rgb(st.TK_BG), 0)
            board_box = (round(ox + st.BOARD_X0 * scale), round(oy + st.BOARD_Y0 * scale),
                         round(ox + (st.BOARD_X0 + st.BOARD_W) * scale),
                         round(oy + (st.BOARD_Y0 + st.BOARD_H) * scale))
            board = shot.colours(board_box)
            board_total = sum(board.values())
            # 6 players leave at least 6 of the 12 cells empty: plain parchment.
            parchment = board.get(st.TK_CELL, 0)
            warm = sum(n for (r, g, b), n in board.items() if r > 200 and r >= g >= b)
            assert bg > total * 0.2, f"background {bg} of {total} pixels"
            assert parchment > board_total * 0.2, f"parchment {parchment} of {board_total}"
            assert warm > board_total * 0.6, f"board colours {warm} of {board_total}"
            assert len(colours) > 50  # letters, markers, text: not a blank window
            assert client.poll() is None, "the client exited"
        finally:
            if observer is not None:
                observer.close()
            stop_process(client)
            stop_process(bots, signal.SIGINT)
    assert client.returncode == 0, client.stderr.read()


def _rgb(hex_colour):
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_window_comes_back_as_the_same_player_from_its_state_file(display, tmp_path):
    """Close the client, start it again: the same player (its token is in the state file);
    --new-player starts afresh and saves the new one."""
    state = state_file(tmp_path)

    def session(*extra):
        client = subprocess.Popen(
            [sys.executable, GAME, "client", "--port", str(server.port), "--state", state,
             "--geometry", f"{st.VIEW_W}x{st.VIEW_H}+0+0", *extra],
            env=display.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            joined = read_line_matching(client, r"as player (\d+) at .* holding \w+( \(resumed\))?")
            return int(joined[1]), bool(joined[2])
        finally:
            stop_process(client)

    with ServerProcess("--data", str(tmp_path / "data")) as server:
        first, resumed = session("--name", "tk")
        assert not resumed
        assert oct(os.stat(state).st_mode & 0o777) == "0o600"
        again, resumed = session()
        assert (again, resumed) == (first, True)
        fresh, resumed = session("--new-player")
        assert fresh != first and not resumed
        back, resumed = session()
        assert (back, resumed) == (fresh, True)


def test_the_window_plays_over_tls_on_a_server_that_requires_it(display, tmp_path):
    """``client --tls --ca ROOT`` against ``serve --tls-required``: the window joins
    (a plain connection would be refused) and shows the player; a stranger's CA
    is refused with the reason in the log."""
    import sys as _sys

    _sys.path.insert(0, os.path.join(os.path.dirname(__file__), "core"))
    from tlskit import PKIFiles

    pki = PKIFiles(str(tmp_path / "pki"))
    with ServerProcess("--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-required") as server:
        client = subprocess.Popen(
            [sys.executable, GAME, "client", "--host", "localhost", "--port", str(server.port),
             "--tls", "--ca", pki.root, "--geometry", f"{st.VIEW_W}x{st.VIEW_H}+0+0",
             "--state", state_file(tmp_path)],
            env=display.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            joined = read_line_matching(client, r"as player (\d+) at")
            display.find_window(f"SpellTraction: player #{int(joined[1])}")
            assert client.poll() is None, "the client exited"
        finally:
            stop_process(client)
        assert client.returncode == 0, client.stderr.read()
        stranger = subprocess.Popen(
            [sys.executable, GAME, "client", "--host", "localhost", "--port", str(server.port),
             "--tls", "--ca", pki.stranger.root, "--state", state_file(tmp_path)],
            env=display.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            read_line_matching(stranger, r"TLS: certificate verify failed|TLS: .*certificate")
        finally:
            stop_process(stranger)
