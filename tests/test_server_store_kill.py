"""kill -9: the server dies at a random moment and no player loses a score it was shown.

A real server process on a real data directory; 200 protocol-2 players in
this process, each remembering its token and the last score the server
showed it. The server is SIGKILLed, started again on the same --data, and
every player comes back with its token.
"""

import os
import random
import select
import signal
import socket
import time

import pytest

import spelltraction as st
from netcore import FrameParser
from serverproc import ServerProcess

pytestmark = pytest.mark.slow


class Crowd:
    """``n`` v2 players on nonblocking sockets, one poll loop."""

    def __init__(self, port, tokens):
        self.socks = []
        self.parsers = []
        self.welcome = [None] * len(tokens)
        self.shown = [-1] * len(tokens)  # the last score a YOU showed, -1 before any
        self.first_score = [-1] * len(tokens)  # the score in the YOU that came with WELCOME
        self.errors = []
        self.scored = 0
        self.closed = set()
        for token in tokens:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(st.frame(st.Hello(st.PROTOCOL_V2, token=token)))
            s.setblocking(False)
            self.socks.append(s)
            self.parsers.append(FrameParser(65535))
        self.index = {s.fileno(): i for i, s in enumerate(self.socks)}

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            live = [s for i, s in enumerate(self.socks) if i not in self.closed]
            if not live:
                return
            ready, _, _ = select.select(live, [], [], min(left, 0.05))
            for s in ready:
                i = self.index[s.fileno()]
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    self.closed.add(i)
                    continue
                for payload in self.parsers[i].feed(data):
                    self.handle(i, st.decode(payload))

    def handle(self, i, msg):
        if isinstance(msg, st.Welcome):
            self.welcome[i] = msg
        elif isinstance(msg, st.You):
            if self.first_score[i] < 0:
                self.first_score[i] = msg.score
            self.shown[i] = msg.score
        elif isinstance(msg, st.Scored):
            if i == 0:
                self.scored += 1
        elif isinstance(msg, st.Error):
            self.errors.append(msg)

    def wait_welcomed(self, timeout=30):
        end = time.monotonic() + timeout
        while None in self.welcome:
            assert time.monotonic() < end, f"{self.welcome.count(None)} players never welcomed"
            self.pump(0.1)

    def move_some(self, rng, k, cell):
        """``k`` players, picked at random, go to ``cell``."""
        for i in rng.sample(range(len(self.socks)), k):
            x, y = st.cell_centre(cell)
            try:
                self.socks[i].send(st.frame(st.Move(rng.randrange(1, 65535), x, y)))
            except OSError:
                pass

    def close(self):
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("seed", [11, 22, 33, 44])
def test_kill_9_at_a_random_moment_loses_no_score_a_player_was_shown(tmp_path, seed):
    rng = random.Random(seed)
    data = str(tmp_path / "data")
    args = ("--data", data, "--tick-ms", "50")
    n = 200
    server = ServerProcess(*args)
    try:
        crowd = Crowd(server.port, [b""] * n)
        crowd.wait_welcomed()
        assert all(w.resumed == st.NEW_PLAYER for w in crowd.welcome)
        # Play: every second or two a fifth of the crowd flocks to another cell,
        # so the attractor moves about and letters score for different players.
        until = time.monotonic() + rng.uniform(3.0, 7.0)
        while time.monotonic() < until:
            crowd.move_some(rng, n // 5, rng.randrange(st.CELLS))
            crowd.pump(min(rng.uniform(1.2, 2.0), max(0.0, until - time.monotonic())))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        crowd.pump(0.2)  # anything the kernel still had for us was shown too
    finally:
        server.stop()
    shown = list(crowd.shown)
    tokens = [w.token for w in crowd.welcome]
    ids = [w.player_id for w in crowd.welcome]
    crowd.close()
    assert sum(shown) > 0, "nothing scored before the kill: the test proved nothing"

    server = ServerProcess(*args)
    try:
        back = Crowd(server.port, tokens)
        back.wait_welcomed()
        assert [w.resumed for w in back.welcome] == [st.RESUMED] * n
        assert [w.player_id for w in back.welcome] == ids
        lost = [(ids[i], shown[i], back.first_score[i]) for i in range(n)
                if back.first_score[i] < shown[i]]
        assert not lost, f"(id, shown, after restart) for players who lost score: {lost}"
        back.close()
    finally:
        server.stop()
    assert not os.path.exists(os.path.join(data, st.DATA_FILE + "-journal"))
