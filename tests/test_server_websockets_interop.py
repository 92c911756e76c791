"""Interop: the `websockets` library (PyPI) as the client, our server as a process."""

import signal

import pytest

import spelltraction as st
from conftest import loopback_only, require_module
from netcore import FrameParser
from serverproc import ServerProcess

websockets = require_module("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--tick-ms", "50") as s:
        yield s


def client(port):
    return connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=5,
                   **loopback_only(connect))


def messages(raw):
    """The game messages in one WebSocket message: whole frames only."""
    parser = FrameParser(65535)
    frames = parser.feed(raw)
    assert parser.buffered == 0, "a server message ended inside a frame"
    return [st.decode(f) for f in frames]


def test_play_over_websockets(server):
    with client(server.port) as c:
        c.send(st.frame(st.Hello()))
        first = c.recv(timeout=5)
        assert isinstance(first, bytes)  # a binary message
        welcome, you, stats = messages(first)
        assert isinstance(welcome, st.Welcome) and welcome.tick_ms == 50
        assert isinstance(you, st.You) and isinstance(stats, st.Stats)
        c.send(st.frame(st.Move(9, 100, 200)))
        for _ in range(40):
            got = messages(c.recv(timeout=5))
            assert isinstance(got[0], st.TickMsg)  # every tick message starts with TICK
            echo = [m for m in got if isinstance(m, st.You)]
            if echo:
                assert (echo[0].seq, echo[0].x, echo[0].y) == (9, 100, 200)
                break
        else:
            raise AssertionError("no YOU echo for the move")
        movers = []
        for _ in range(5):
            tick = messages(c.recv(timeout=5))[0]
            movers += [m.player_id for m in tick.movers]
    # Leaving the block ran the close handshake: we answered the client's Close.
    assert c.protocol.close_code == 1000


def test_ping_pong(server):
    with client(server.port) as c:
        c.send(st.frame(st.Hello()))
        c.recv(timeout=5)
        pong = c.ping(b"interop")
        assert pong.wait(5), "no pong"


def test_version_error_then_close_1002(server):
    with client(server.port) as c:
        c.send(st.frame(st.Hello(version=3)))
        (err,) = messages(c.recv(timeout=5))
        assert err.code == st.ErrorCode.VERSION and "client sent 3" in err.text
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
    assert c.protocol.close_code == 1002
    assert "client sent 3" in c.protocol.close_reason


def test_text_messages_are_refused_with_1003(server):
    with client(server.port) as c:
        c.send("HELLO")
        (err,) = messages(c.recv(timeout=5))
        assert err.code == st.ErrorCode.BAD_FRAME
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
    assert c.protocol.close_code == 1003


def test_shutdown_closes_with_1001():
    with ServerProcess("--tick-ms", "50") as s:
        with client(s.port) as c:
            c.send(st.frame(st.Hello()))
            c.recv(timeout=5)
            s.proc.send_signal(signal.SIGTERM)
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got += messages(c.recv(timeout=5))
            assert [m.code for m in got if isinstance(m, st.Error)] == [st.ErrorCode.SHUTDOWN]
        assert c.protocol.close_code == 1001
        assert s.proc.wait(timeout=10) == 0
