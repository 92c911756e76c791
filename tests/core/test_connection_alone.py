"""A Connection needs only an Owner (netcore.connection.Owner), not a server."""

import socket

from netcore import Connection, EventLoop, FrameParser, Handler, NetStats, encode_frame
from netcore.connection import EVENT_READ, EVENT_WRITE


class Limits:
    max_output = 1 << 16
    high_water = 1 << 14
    low_water = 1 << 12
    close_linger = 1.0


class Recorder(Handler):
    def __init__(self):
        self.messages = []
        self.closed = []

    def on_message(self, conn, payload):
        self.messages.append(payload)
        conn.send(payload.upper())

    def on_close(self, conn, reason):
        self.closed.append(reason)


class TinyOwner:
    """The whole Owner protocol, in a dozen lines."""

    def __init__(self, loop, handler):
        self.loop = loop
        self.handler = handler
        self.stats = NetStats()
        self.config = Limits()
        self.recv_view = memoryview(bytearray(4096))
        self.bad = []

    def _bad_input(self, conn, exc):
        self.bad.append(exc)
        conn.close(exc.reason, str(exc))

    def _forget(self, conn, reason, detail):
        self.loop.unregister(conn.sock)
        self.handler.on_close(conn, reason)


def connected(handler):
    """``(loop, owner, conn, theirs)``: ``conn`` on one end of a socket pair."""
    loop = EventLoop()
    owner = TinyOwner(loop, handler)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(ours, owner, FrameParser())
    loop.register(ours, EVENT_READ, conn)
    return loop, owner, conn, theirs


def test_a_connection_reads_frames_answers_and_closes_with_a_tiny_owner():
    handler = Recorder()
    loop, owner, conn, theirs = connected(handler)
    theirs.sendall(encode_frame(b"hello") + encode_frame(b"again"))
    theirs.settimeout(5)
    for _ in range(100):
        loop.run_once(0.01)
        if len(handler.messages) == 2:
            break
    assert handler.messages == [b"hello", b"again"]
    parser = FrameParser()
    got = []
    while len(got) < 2:
        got += parser.feed(theirs.recv(4096))
    assert got == [b"HELLO", b"AGAIN"]
    theirs.sendall(b"\x00\x00")  # a zero-length frame: bad input
    for _ in range(100):
        loop.run_once(0.01)
        if handler.closed:
            break
    assert handler.closed == ["bad-frame"] and len(owner.bad) == 1
    assert conn.closed and owner.stats.bytes_in == 16
    theirs.close()
    loop.close()


class Refill(Handler):
    """Writes again as soon as it hears its queue drained (what on_drain is for)."""

    def __init__(self):
        self.drains = 0

    def on_drain(self, conn):
        self.drains += 1
        conn.send(b"after the drain")


def test_what_on_drain_writes_is_sent_even_when_the_queue_just_emptied():
    handler = Refill()
    loop, owner, conn, theirs = connected(handler)
    backlog = b"x" * 4000
    while conn.queued < Limits.high_water:  # past high water: on_drain is due
        assert conn.send(backlog)
    assert conn.above_high_water and conn.events == EVENT_READ | EVENT_WRITE
    parser = FrameParser(65535)
    theirs.setblocking(False)
    got = []
    for _ in range(500):  # read everything: the kernel takes the whole queue
        loop.run_once(0.01)
        try:
            got += parser.feed(theirs.recv(1 << 20))
        except BlockingIOError:
            pass
        if got and got[-1] == b"after the drain":
            break
    assert handler.drains == 1
    assert got[-1] == b"after the drain" and conn.queued == 0
    assert owner.stats.queued_out_bytes == 0
    assert conn.events == EVENT_READ and not conn.above_high_water
    conn.close()
    theirs.close()
    loop.close()
