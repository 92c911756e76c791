#!/usr/bin/env python3
"""Remake docs/img/tk-client.png: the Tk client in a live game, on Xvfb.

A server, 600 bots moving at random, and a herd of 50 players crowding one
cell (as real players chase a letter); the client joins, its player clicks
into the crowd, and the picture is taken while the attractor counts down.

    python3 docs/img/shoot.py            # needs Debian xvfb, xdotool, x11-apps
"""

import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import spelltraction as st  # noqa: E402
from netcore import FrameParser  # noqa: E402
from serverproc import GAME, ServerProcess  # noqa: E402
from xdisplay import Xvfb  # noqa: E402


class Herd:
    """Players that gather in one cell, a few at a time, and keep reading."""

    def __init__(self, port, count):
        self.socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(st.frame(st.Hello()))
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while not self.stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                s.recv(65536)

    def gather(self, cell, rng):
        x0, y0 = (cell % st.COLS) * st.CELL_PX, (cell // st.COLS) * st.CELL_PX
        for i, s in enumerate(self.socks):
            s.sendall(st.frame(st.Move(1, x0 + rng.randrange(8, st.CELL_PX - 8),
                                       y0 + rng.randrange(8, st.CELL_PX - 8))))
            time.sleep(0.02)

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def watch(port, until, timeout=60.0):
    """Read TICKs as a player until ``until(tick)`` is true; returns that tick."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(st.frame(st.Hello()))
    parser = FrameParser(st.MAX_SERVER_FRAME)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for payload in parser.feed(s.recv(65536)):
                msg = st.decode(payload)
                if isinstance(msg, st.TickMsg) and until(msg):
                    return msg
    finally:
        s.close()
    raise TimeoutError("the game never got there")


def main():
    rng = random.Random(2012)
    out = os.path.join(HERE, "tk-client.png")
    with Xvfb(st.VIEW_W, st.VIEW_H) as x, ServerProcess("--seed", "2012") as server:
        bots = subprocess.Popen(
            [sys.executable, GAME, "bots", "--port", str(server.port), "--count", "600",
             "--move-every", "30", "--duration", "120", "--probes", "0", "--seed", "7"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Join once the bots are in, and leave time for a STATS after the herd's.
        watch(server.port, lambda t: t.players >= 600)
        client = subprocess.Popen(
            [sys.executable, GAME, "client", "--port", str(server.port), "--shape", "circle",
             "--colour", "ff9f1c", "--geometry", f"{st.VIEW_W}x{st.VIEW_H}+0+0"],
            env=x.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        herd = None
        try:
            line = client.stderr.readline()
            joined = re.search(r"as player (\d+) at .* holding ([A-Z]{3})", line)
            assert joined, line
            hand = joined[2]
            board = watch(server.port, lambda t: True).board
            mine = [c for c in range(st.CELLS) if board[c] in hand]
            target = mine[0] if mine else 5
            window = x.find_window("SpellTraction: player")
            herd = Herd(server.port, 50)
            watch(server.port, lambda t: t.number % st.STATS_EVERY == 1)  # fresh STATS
            herd.gather(target, rng)
            cx, cy = st.cell_centre(target)
            x.click(window, st.BOARD_X0 + cx + 37, st.BOARD_Y0 + cy + 33)
            watch(server.port, lambda t: t.attractor == target and t.held >= 13)
            time.sleep(0.3)
            shot = x.screenshot()
            shot.save_png(out)
            print(f"{out}: {os.path.getsize(out)} bytes; crowd on cell {target} "
                  f"({board[target]}), hand {hand}")
        finally:
            if herd is not None:
                herd.close()
            for proc, sig in ((client, signal.SIGTERM), (bots, signal.SIGINT)):
                proc.send_signal(sig)
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
