"""Pipelined HTTP requests are answered a few per turn of the loop, in order, bounded.

A client may send many requests before reading an answer (HTTP/1.1
pipelining). Answering all of them in the turn they arrive lets one
connection's 100 requests (3.7 KB) hold every other connection, and the tick,
for 100 requests' work. The front answers ``REQUESTS_PER_TURN`` per turn and
takes the rest on the following turns, waits while the client has not read
the answers already sent, and refuses input pipelined more than
``MAX_PIPELINED`` bytes ahead of its answers.
"""

import socket

import pytest

from netcore import EventLoop, Handler, ServerConfig, TCPServer, WebConfig, WebFront
from netcore import websocket as ws
from netcore.testing import run_until
from netcore.web import MAX_PIPELINED, REQUESTS_PER_TURN


class Served:
    """A web front with ``routes`` on loopback, and a nonblocking client of it."""

    def __init__(self, routes, **config):
        self.loop = EventLoop()
        self.server = TCPServer(self.loop, Handler(), ServerConfig(hosts=["127.0.0.1"], **config),
                                codec_factory=WebFront(WebConfig(routes=routes,
                                                                 max_requests=1000)))
        self.server.listen()
        self.sock = self.client()
        self.got = b""

    def client(self):
        sock = socket.create_connection(("127.0.0.1", self.server.port))
        sock.setblocking(False)
        return sock

    def read(self, most=1 << 20):
        """What has come (at most ``most`` bytes); True once the server has closed."""
        try:
            data = self.sock.recv(most)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        self.got += data
        return not data

    def read_until(self, done, what, timeout=10):
        run_until(self.loop, lambda: self.read() or done(self.got), timeout, what)

    def close(self):
        self.sock.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def served():
    made = []

    def make(routes, **config):
        made.append(Served(routes, **config))
        return made[-1]

    yield make
    for s in made:
        s.close()


def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_a_pipelined_burst_is_answered_a_few_per_turn_and_in_order(served):
    calls = []
    s = served({f"/r{i}": (lambda i=i: calls.append(i) or ("text/plain", b"%d" % i))
                for i in range(60)})
    s.sock.sendall(b"".join(get(f"/r{i}") for i in range(60)))
    run_until(s.loop, lambda: calls, 5, "the first answers")
    per_turn = [len(calls)]
    while len(calls) < 60:
        before = len(calls)
        s.loop.run_once(0.01)
        per_turn.append(len(calls) - before)
    assert REQUESTS_PER_TURN <= 8  # "a few"
    assert max(per_turn) <= REQUESTS_PER_TURN, per_turn
    assert calls == list(range(60))
    s.read_until(lambda got: got.count(b"HTTP/1.1 200") == 60, "every answer")
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in s.got.split(b"HTTP/1.1 200")[1:]]
    assert [int(b) for b in bodies] == list(range(60))


def test_the_rest_of_a_burst_waits_its_turn_behind_other_connections(served):
    """While one connection's burst is answered, another connection's request is
    answered within a turn or two, not after the burst."""
    calls = []
    s = served({"/slow": lambda: calls.append("burst") or ("text/plain", b"x"),
                "/other": lambda: calls.append("other") or ("text/plain", b"y")})
    other = s.client()
    s.sock.sendall(get("/slow") * 200)
    run_until(s.loop, lambda: calls, 5, "the burst begins")
    other.sendall(get("/other"))
    run_until(s.loop, lambda: "other" in calls, 5, "the other request")
    assert calls.index("other") < 40, calls.index("other")
    run_until(s.loop, lambda: calls.count("burst") == 200, 10, "the whole burst")
    other.close()


def test_an_upgrade_after_pipelined_requests_is_served_in_its_turn(served):
    s = served({"/x": lambda: ("text/plain", b"x")})
    s.sock.sendall(get("/x") * 9 + ws.client_handshake("t", "/ws", "dGhlIHNhbXBsZSBub25jZQ=="))
    s.read_until(lambda got: b"101 Switching Protocols" in got, "the upgrade", timeout=5)
    assert s.got.count(b"HTTP/1.1 200") == 9
    assert s.got.index(b"101 Switching") > s.got.rindex(b"HTTP/1.1 200")


def test_requests_pipelined_too_far_ahead_are_refused(served):
    s = served({"/x": lambda: ("text/plain", b"x")})
    try:
        s.sock.sendall(get("/x") * (MAX_PIPELINED // len(get("/x")) + 200))
    except BlockingIOError:
        pass  # the kernel's buffers are full: the server has refused it by then
    run_until(s.loop, s.read, 10, "the close")
    assert b"429" in s.got
    assert s.server.stats.connections == 0


def test_a_burst_waits_for_its_reader_instead_of_overflowing_the_output_queue(served):
    """Answers bigger than the output queue: the front stops answering while the
    client has not read (above high water) and goes on as it reads; nobody is cut.
    (Without the pause, four answers a turn overflow the 32 KiB queue at once.)"""
    big = b"x" * 9_000
    s = served({"/big": lambda: ("text/plain", big)}, max_output=32 << 10,
               high_water=8 << 10, low_water=2 << 10, sndbuf=4096)
    s.sock.close()
    s.sock = socket.socket()
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sock.connect(("127.0.0.1", s.server.port))
    s.sock.setblocking(False)
    s.sock.sendall(get("/big") * 40)
    run_until(s.loop, lambda: s.read(16384) or (s.got.count(b"HTTP/1.1 200") == 40
                                                and s.got.endswith(big)),
              30, "every answer, read slowly (some each turn)")
    assert s.server.stats.slow_consumers == 0 and s.server.stats.connections == 1
