"""The write path on a real socketpair whose reader stops reading."""

import logging
import socket
import struct

from netcore import EventLoop, Handler, ServerConfig, TCPServer


class Recorder(Handler):
    def __init__(self):
        self.events = []

    def on_high_water(self, conn):
        self.events.append(("high", conn.queued))

    def on_drain(self, conn):
        self.events.append(("drain", conn.queued))

    def on_close(self, conn, reason):
        self.events.append(("close", reason))


def small_pair():
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, theirs


def make(config):
    loop = EventLoop()
    handler = Recorder()
    server = TCPServer(loop, handler, config)
    ours, theirs = small_pair()
    conn = server.adopt(ours)
    assert conn is not None
    return loop, server, handler, conn, theirs


def drain_while_looping(loop, peer, want):
    """Read ``want`` bytes from ``peer`` while the loop flushes to it."""
    got = bytearray()
    peer.setblocking(False)
    for _ in range(10_000):
        loop.run_once(0.005)
        try:
            got += peer.recv(65536)
        except BlockingIOError:
            pass
        if len(got) >= want:
            break
    return bytes(got)


def test_partial_send_queues_the_rest_in_order_and_water_marks_fire():
    loop, server, handler, conn, peer = make(
        ServerConfig(high_water=64 << 10, low_water=8 << 10, max_output=1 << 20)
    )
    chunks = [bytes([i]) * 10_000 for i in range(30)]  # 300 kB, far above the socket buffers
    for chunk in chunks:
        assert conn.write(chunk)
    assert conn.queued > 0, "the kernel cannot have taken 300 kB"
    assert server.stats.queued_out_bytes == conn.queued
    assert ("high", conn.queued) in handler.events or handler.events[0][0] == "high"
    assert [e[0] for e in handler.events] == ["high"]
    assert server.stats.bytes_out + conn.queued == sum(map(len, chunks))

    # Reader resumes: the loop flushes on writability until the queue is empty.
    expected = b"".join(chunks)
    assert drain_while_looping(loop, peer, len(expected)) == expected, "complete and in order"
    assert conn.out is None, "drained output releases its ring buffer"
    assert server.stats.queued_out_bytes == 0
    assert [e[0] for e in handler.events] == ["high", "drain"]
    assert handler.events[1][1] <= 8 << 10
    assert conn.events == 1, "write interest is dropped once drained"


def test_cap_closes_the_slow_consumer_with_a_reason(caplog):
    caplog.set_level(logging.DEBUG, logger="netcore")  # per-connection lines are DEBUG
    loop, server, handler, conn, peer = make(
        ServerConfig(high_water=16 << 10, low_water=4 << 10, max_output=64 << 10)
    )
    wrote = 0
    while conn.write(b"x" * 4096):
        wrote += 4096
        assert wrote < 10 << 20, "never reached the cap"
    assert conn.closed
    assert handler.events[0][0] == "high"
    assert handler.events[-1] == ("close", "slow-consumer")
    assert server.stats.slow_consumers == 1
    assert server.stats.closed_by_reason == {"slow-consumer": 1}
    assert server.stats.queued_out_bytes == 0
    assert server.stats.connections == 0
    assert "slow-consumer" in caplog.text and "cap 65536" in caplog.text
    assert not conn.write(b"late"), "writes after close are refused"


def test_broadcast_shares_one_object_and_queues_only_the_remainder():
    loop = EventLoop()
    server = TCPServer(loop, Recorder(), ServerConfig())
    pairs = [small_pair() for _ in range(3)]
    conns = [server.adopt(ours) for ours, _ in pairs]
    # Fill the first connection so it has a backlog before the broadcast.
    conns[0].write(b"A" * 200_000)
    assert conns[0].queued
    frame = b"B" * 50_000
    assert server.broadcast(frame, conns) == 3
    assert server.stats.sends == 4
    for conn, (_, peer) in zip(conns, pairs):
        expected = (b"A" * 200_000 if conn is conns[0] else b"") + frame
        assert drain_while_looping(loop, peer, len(expected)) == expected


def test_close_after_flush_delivers_then_closes():
    loop, server, handler, conn, peer = make(ServerConfig())
    conn.write(b"y" * 100_000)
    conn.close_after_flush("bye", "test")
    assert not conn.closed and not conn.write(b"more")
    got = drain_while_looping(loop, peer, 100_000)
    assert got == b"y" * 100_000
    loop.run_once(0.01)
    assert conn.closed and handler.events[-1] == ("close", "bye")


def test_close_after_flush_gives_up_after_linger():
    loop, server, handler, conn, peer = make(ServerConfig(close_linger=0.05))
    conn.write(b"z" * 300_000)
    conn.close_after_flush("bye")
    loop.run_for(0.3)
    assert conn.closed


def test_epipe_closes_quietly(caplog):
    loop, server, handler, conn, peer = make(ServerConfig())
    peer.close()
    conn.write(b"x" * 10)  # EPIPE on a socketpair whose peer is gone
    assert conn.closed
    assert handler.events[-1] == ("close", "reset")
    assert "WARNING" not in caplog.text and "ERROR" not in caplog.text


def test_econnreset_closes_quietly(caplog):
    loop = EventLoop()
    handler = Recorder()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    client = socket.create_connection(("127.0.0.1", server.port))
    loop.run_for(0.1)
    (conn,) = server.connections.values()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST instead of FIN
    loop.run_for(0.1)
    assert conn.closed
    assert handler.events[-1] == ("close", "reset")
    assert "WARNING" not in caplog.text and "ERROR" not in caplog.text
    server.close()
