"""Outbound connections: TCPClient on the same loop as a TCPServer, real sockets."""

import socket

import pytest

from netcore import EventLoop, FrameParser, Handler, ServerConfig, TCPServer, WebConfig, WebFront, WholeFrames
from netcore.client import ClientConfig, TCPClient
from netcore.testing import Echo, bound_socket, loopback_hosts, run_until
from conftest import require_ipv6_loopback
from netcore.wscodec import HandshakeError, websocket_client


class Record(Handler):
    def __init__(self):
        self.events = []
        self.got = []

    def on_connect(self, conn):
        self.events.append(("connect", conn.data))

    def on_protocol(self, conn, protocol):
        self.events.append(("protocol", protocol))

    def on_message(self, conn, payload):
        self.got.append(payload)

    def on_close(self, conn, reason):
        self.events.append(("close", reason))

    def on_bad_input(self, conn, exc):
        self.events.append(("bad", type(exc).__name__))
        super().on_bad_input(conn, exc)


def echo_server(loop, host="127.0.0.1", codec_factory=None):
    server = TCPServer(loop, Echo(prefix=b""), ServerConfig(hosts=[host]),
                       codec_factory=codec_factory)
    server.listen()
    return server


@pytest.mark.parametrize("host", loopback_hosts())
def test_a_client_connection_exchanges_frames_with_a_server(host):
    loop = EventLoop()
    server = echo_server(loop, host)
    rec = Record()
    client = TCPClient(loop, rec)
    failures = []
    attempt = client.connect(host, server.port, data="mine", on_failed=failures.append)
    assert not attempt.done and rec.events == []  # nothing happens inside connect()
    run_until(loop, lambda: rec.events, what="connected")
    assert rec.events == [("connect", "mine")] and attempt.done
    (conn,) = client.connections.values()
    for i in range(1, 50):
        conn.send(bytes([i]) * i)
    run_until(loop, lambda: len(rec.got) == 49)
    assert rec.got == [bytes([i]) * i for i in range(1, 50)]
    conn.close("done")
    assert rec.events[-1] == ("close", "done") and not client.connections
    run_until(loop, lambda: server.stats.connections == 0)
    assert failures == [] and client.stats.accepted == 1
    server.close()
    loop.close()


def test_a_refused_connect_is_reported_once_and_later():
    loop = EventLoop()
    lsock = bound_socket()
    port = lsock.getsockname()[1]
    lsock.close()  # nothing listens there now: refused
    rec = Record()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("127.0.0.1", port, on_failed=failures.append)
    assert failures == []
    run_until(loop, lambda: failures)
    loop.run_for(0.2)
    assert len(failures) == 1 and isinstance(failures[0], ConnectionRefusedError)
    assert rec.events == [] and client.connect_failures == 1 and not client.connections
    loop.close()


def test_localhost_tries_each_loopback_address_in_turn():
    loop = EventLoop()
    require_ipv6_loopback()  # a skip here, a failure in CI
    assert "::1" in loopback_hosts()
    server = echo_server(loop, "::1")  # only on ::1: 127.0.0.1 is refused first
    rec = Record()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("localhost", server.port, on_failed=failures.append)
    run_until(loop, lambda: rec.events or failures)
    assert rec.events == [("connect", None)] and failures == []
    client.close()
    server.close()
    loop.close()


def test_a_connect_that_hangs_times_out_once():
    loop = EventLoop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    # Fill the accept queue; further SYNs are dropped, so a connect hangs.
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    loop.run_for(0.1)
    rec = Record()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("127.0.0.1", port, timeout=0.3, on_failed=failures.append)
    run_until(loop, lambda: failures or rec.events, timeout=5)
    loop.run_for(0.4)
    assert rec.events == [] and len(failures) == 1
    assert isinstance(failures[0], socket.timeout), failures
    for s in fillers:
        s.close()
    lsock.close()
    loop.close()


def test_names_are_refused_at_once_and_cancel_reports_nothing():
    loop = EventLoop()
    client = TCPClient(loop, Record())
    with pytest.raises(ValueError, match="numeric"):
        client.connect("example.invalid", 80)
    server = echo_server(loop)
    failures = []
    attempt = client.connect("127.0.0.1", server.port, on_failed=failures.append)
    attempt.cancel()
    loop.run_for(0.2)
    assert attempt.done and failures == [] and not client.connections
    server.close()
    loop.close()


def test_client_output_obeys_its_limits():
    loop = EventLoop()
    lsock = bound_socket()  # never accepts, never reads: output piles up
    rec = Record()
    client = TCPClient(loop, rec, ClientConfig(max_output=64 << 10, high_water=32 << 10,
                                              low_water=8 << 10))
    client.connect("127.0.0.1", lsock.getsockname()[1])
    run_until(loop, lambda: rec.events)
    (conn,) = client.connections.values()
    chunk = b"x" * 60_000
    while conn.is_open:
        conn.send(chunk)
        loop.run_once(0)
    assert rec.events[-1] == ("close", "slow-consumer")
    assert client.stats.slow_consumers == 1
    lsock.close()
    loop.close()


def test_websocket_client_speaks_to_a_web_front_with_an_inner_stream():
    loop = EventLoop()
    front = WebFront(WebConfig(ws_path="/ws", message_codec=WholeFrames()))
    server = echo_server(loop, codec_factory=front)
    rec = Record()
    client = TCPClient(loop, rec)
    client.connect("127.0.0.1", server.port,
                   codec_factory=websocket_client(f"127.0.0.1:{server.port}", "/ws",
                                                  inner=FrameParser()))
    run_until(loop, lambda: rec.events)
    (conn,) = client.connections.values()
    conn.send(b"early")  # before the handshake's answer: held, then sent
    run_until(loop, lambda: ("protocol", "websocket") in rec.events)
    conn.send(b"later")
    run_until(loop, lambda: len(rec.got) == 2)
    assert rec.got == [b"early", b"later"]
    assert front.stats.upgrades == 1
    conn.write(conn.codec.closing(b"", 1000, "bye"))
    run_until(loop, lambda: rec.events[-1][0] == "close")
    assert rec.events[-1] == ("close", "peer-closed")
    server.close()
    loop.close()


def test_websocket_client_refuses_a_server_that_does_not_upgrade():
    loop = EventLoop()
    server = echo_server(loop, codec_factory=WebFront(WebConfig(ws_path="/ws")))
    rec = Record()
    client = TCPClient(loop, rec)
    client.connect("127.0.0.1", server.port,
                   codec_factory=websocket_client("h", "/elsewhere"))
    run_until(loop, lambda: rec.events and rec.events[-1][0] == "close")
    assert ("bad", "HandshakeError") in rec.events
    assert rec.events[-1] == ("close", HandshakeError.reason)
    server.close()
    loop.close()


def test_a_lookup_resolves_in_a_thread_and_says_why_it_failed():
    from netcore.client import Lookup, resolve

    found = Lookup("localhost", 9000)
    assert found.done.wait(10)
    assert found.addresses == resolve("localhost", 9000) and not found.error
    failed = Lookup("no-such-host.invalid", 9000)
    assert failed.done.wait(30)
    assert failed.addresses == [] and failed.error
