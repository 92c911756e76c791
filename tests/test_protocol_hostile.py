"""Hostile tests of the binary protocol (issue 11's catalogue, "binary" attacks).

One real server and one crowd of watchers for the module; each test attacks
it over plain TCP and checks the clear error the attacker gets (the ERROR
frame of docs/PROTOCOL.md, then a close), AND that every watcher got a TICK
at least once a second meanwhile, AND that the server's RSS and fds came
back. Index: tests/HOSTILE.md.
"""

import os
import socket
import struct
import time

import pytest

import spelltraction as st
from helpers import read_until_closed
from hostilekit import Crowd, HostileServer, connect
from netcore import FrameParser

pytestmark = pytest.mark.slow  # a server process and a crowd for the module

E = st.ErrorCode


@pytest.fixture(scope="module")
def arena():
    with HostileServer() as server, Crowd(server.port, tcp=8, ws_count=4) as crowd:
        yield server, crowd


@pytest.fixture
def watched(arena):
    """The arena, checked after the test: players ticked, resources came back."""
    server, crowd = arena
    before = server.resources()
    crowd.mark()
    yield server
    crowd.assert_ticking()
    server.assert_recovered(before)


def last_words(sock, timeout=5.0):
    """The ERROR frame the server closed ``sock`` with."""
    data = read_until_closed(sock, timeout)
    sock.close()
    frames = FrameParser(65535).feed(data)
    assert frames, f"closed without a word: {data[:100]!r}"
    msg = st.decode(frames[-1])
    assert isinstance(msg, st.Error), msg
    return msg


def joined(server):
    sock = connect(server.port)
    sock.sendall(st.frame(st.Hello()))
    frames = []
    parser = FrameParser(65535)
    while len(frames) < 3:
        frames += parser.feed(sock.recv(65536))
    assert st.decode(frames[0]).__class__ is st.Welcome
    return sock


@pytest.mark.parametrize("data, code, says", [
    (b"\x00\x00", E.BAD_FRAME, "zero-length frame"),
    (b"\x01\x01" + b"x" * 257, E.BAD_FRAME, "exceeds limit 256"),
    (b"\x40\xff", E.BAD_FRAME, "exceeds limit 256"),  # the largest non-HTTP first byte
    (st.frame(st.Move(1, 2, 3)), E.BAD_MESSAGE, "unexpected MOVE before HELLO"),
    (b"\x00\x03\x7f\x00\x00", E.BAD_MESSAGE, "unknown message type 0x7f"),
    (b"\x00\x05\x01\x00\x01\xff\xff", E.BAD_MESSAGE, "HELLO must be 8 bytes, got 5"),
    (st.frame(st.Hello(version=99)), E.VERSION, "client sent 99"),
    (st.frame(st.Welcome(1, 2, 3)), E.BAD_MESSAGE, "unknown message type 0x81"),
])
def test_a_bad_first_frame_gets_its_error_and_a_close(watched, data, code, says):
    sock = connect(watched.port)
    sock.sendall(data)
    err = last_words(sock)
    assert err.code == code and says in err.text, err


def test_a_second_hello_in_game_is_bad_message(watched):
    sock = joined(watched)
    sock.sendall(st.frame(st.Hello()))
    err = last_words(sock)
    assert err.code == E.BAD_MESSAGE and "unexpected HELLO in game" in err.text


def test_a_move_of_the_wrong_length_in_game_is_bad_message(watched):
    sock = joined(watched)
    sock.sendall(b"\x00\x06\x02\x00\x01\x00\x02\x00")
    err = last_words(sock)
    assert err.code == E.BAD_MESSAGE and "MOVE must be 7 bytes, got 6" in err.text


def test_a_move_flood_is_cut_with_flood(watched):
    sock = joined(watched)
    sock.sendall(st.frame(st.Move(1, 10, 10)) * 5000)  # 45 KB of moves in one burst
    err = last_words(sock)
    assert err.code == E.FLOOD and "more than 32 messages in one tick" in err.text


def test_a_megabyte_of_random_bytes_is_one_bad_frame(watched):
    sock = connect(watched.port)
    noise = b"\x7f" + os.urandom(1 << 20)  # not A-Z first: read as frames, not HTTP
    try:
        sock.sendall(noise)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before it was all sent: the point
    err = last_words(sock)
    assert err.code == E.BAD_FRAME


def test_a_hello_trickled_a_byte_at_a_time_still_joins(watched):
    """Slow is not hostile: a HELLO spread over 10 reads is a HELLO."""
    sock = connect(watched.port)
    for b in st.frame(st.Hello()):
        sock.sendall(bytes([b]))
        time.sleep(0.05)
    parser = FrameParser(65535)
    frames = []
    while not frames:
        frames += parser.feed(sock.recv(65536))
    assert isinstance(st.decode(frames[0]), st.Welcome)
    sock.close()


def test_a_storm_of_reset_connections_leaves_nothing_behind(watched):
    linger = struct.pack("ii", 1, 0)  # close() sends RST, not FIN
    for i in range(300):
        s = connect(watched.port)
        if i % 2:
            s.sendall(st.frame(st.Hello())[:5])  # half a HELLO, then gone
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()


def test_players_who_vanish_mid_game_are_forgotten(watched):
    socks = [joined(watched) for _ in range(50)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.5)
    assert b'"players":12,' in watched.get("/stats.json")[2]


def test_silent_and_half_hello_squatters_get_hello_timeout(watched):
    """40 connections that never finish a HELLO hold nothing past HELLO_TIMEOUT (10 s)."""
    socks = [connect(watched.port) for _ in range(40)]
    for s in socks[::2]:
        s.sendall(st.frame(st.Hello())[:4])
    for s in socks:
        err = last_words(s, timeout=15)
        assert err.code == E.HELLO_TIMEOUT and "no HELLO within 10 s" in err.text, err
