"""The asyncio peer of the capacity bench speaks the same game as the netcore server.

A benchmark against a peer that does less (no YOU, no limits, a different
wire format) would flatter nobody honestly, so these tests hold the peer
(``bench/peers/asyncio_server.py``, on asyncio and, when installed, uvloop)
to the netcore server's behaviour: the same messages, errors, limits, the
shutdown goodbye, and ``--stats-out`` in the same shape.
"""

import json
import os
import signal
import socket
import sys
import time

import pytest

import spelltraction as st
from helpers import read_frames, read_until_closed
from netcore import FrameParser, encode_frame
from serverproc import ROOT, Spawned

PEER = os.path.join(ROOT, "bench", "peers", "asyncio_server.py")

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:
    HAVE_UVLOOP = False

FLAVOURS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed")),
]


class Peer(Spawned):
    def __init__(self, flavour, *args, stats_out=""):
        self.welcomes = {}
        cmd = [sys.executable, PEER, "--host", "127.0.0.1", "--port", "0",
               "--tick-ms", "50", "--seed", "1", *args]
        if flavour == "uvloop":
            cmd.append("--uvloop")
        if stats_out:
            cmd += ["--stats-out", stats_out]
        super().__init__(cmd)
        assert f"({flavour})" in self.first_line

    def connect(self, hello=True):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if hello:
            sock.sendall(st.frame(st.Hello(1, 2, 0x112233)))
            # A loaded machine may deliver the first TICK in the same read: take three.
            welcome, you, stats = [st.decode(f) for f in read_frames(sock, 3)[:3]]
            assert isinstance(welcome, st.Welcome) and isinstance(you, st.You)
            assert isinstance(stats, st.Stats)
            self.welcomes[sock] = welcome
        return sock

    def stop(self, *args):
        try:
            return super().stop(*args)
        finally:
            self.close_pipes()


def start_peer(flavour):
    return Peer(flavour, "--max-clients", "6", "--hello-timeout", "0.3")


@pytest.fixture(params=FLAVOURS)
def peer(request):
    p = start_peer(request.param)
    yield p
    p.stop()


@pytest.fixture(scope="module", params=FLAVOURS)
def shared_peer(request):
    """One peer per flavour for tests that leave it as they found it (they close what
    they open): a process start each (about half a second) is most of their time."""
    p = start_peer(request.param)
    yield p
    p.stop()


def next_of(sock, kind, limit=60):
    parser = FrameParser(65535)
    for _ in range(limit):
        for payload in parser.feed(sock.recv(65536)):
            msg = st.decode(payload)
            if isinstance(msg, kind):
                return msg
    raise AssertionError(f"no {kind.__name__}")


def errors_until_closed(sock):
    parser = FrameParser(65535)
    msgs = [st.decode(f) for f in parser.feed(read_until_closed(sock))]
    return [m for m in msgs if isinstance(m, st.Error)]


def test_hello_welcome_and_moves_echoed_clamped_and_seen_by_others(peer):
    a, b = peer.connect(), peer.connect()
    wa, wb = peer.welcomes[a], peer.welcomes[b]
    assert wa.shape == 2 and wa.colour == 0x112233 and wa.tick_ms == 50
    assert wb.player_id == wa.player_id + 1
    a.sendall(st.frame(st.Move(42, 9999, 9999)))
    you = next_of(a, st.You)
    assert (you.seq, you.x, you.y) == (42, st.BOARD_W - 1, st.BOARD_H - 1)
    corner = (wa.player_id, st.BOARD_W - 1, st.BOARD_H - 1)
    for _ in range(20):
        tick = next_of(b, st.TickMsg)
        if any((m.player_id, m.x, m.y) == corner for m in tick.movers):
            break
    else:
        raise AssertionError("the other player never saw the move")
    assert tick.players == 2 and sum(tick.counts) == 2


@pytest.mark.parametrize(
    "raw, code, text",
    [
        (encode_frame(b"\x07hello"), st.ErrorCode.BAD_MESSAGE, "unknown message type 0x07"),
        (encode_frame(st.encode(st.Move(1, 2, 3))), st.ErrorCode.BAD_MESSAGE, "before HELLO"),
        (encode_frame(b"\x01\x00\x09\xff\xff\xff\xff\xff"), st.ErrorCode.VERSION,  # v1 layout
         "server speaks protocol 1, client sent 9"),
        (b"\x00\x00", st.ErrorCode.BAD_FRAME, "zero-length frame"),
        (b"\x7f\xff" + b"x" * 10, st.ErrorCode.BAD_FRAME, "exceeds limit 256"),
    ],
)
def test_bad_input_gets_the_same_reason_and_others_play_on(shared_peer, raw, code, text):
    other = shared_peer.connect()
    bad = shared_peer.connect(hello=False)
    bad.sendall(raw)
    errors = errors_until_closed(bad)
    assert errors and errors[-1].code == code and text in errors[-1].text
    other.sendall(st.frame(st.Move(77, 5, 5)))
    assert next_of(other, st.You).seq == 77
    other.close()
    bad.close()


def test_flood_and_hello_timeout(peer):
    flooder = peer.connect()
    flooder.sendall(st.frame(st.Move(1, 1, 1)) * (st.FLOOD_MESSAGES + 5))
    assert errors_until_closed(flooder)[-1].code == st.ErrorCode.FLOOD
    silent = peer.connect(hello=False)
    assert errors_until_closed(silent)[-1].code == st.ErrorCode.HELLO_TIMEOUT


def test_server_full_is_an_error_frame(peer):
    players = [peer.connect() for _ in range(6)]
    extra = socket.create_connection(("127.0.0.1", peer.port), timeout=5)
    errors = errors_until_closed(extra)
    assert errors[-1].code == st.ErrorCode.SERVER_FULL and "server full" in errors[-1].text
    assert players


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sigterm_says_goodbye_and_writes_stats_like_the_netcore_server(tmp_path, flavour, h):
    out = tmp_path / "stats.json"
    p = Peer(flavour, stats_out=str(out))
    try:
        clients = [p.connect() for _ in range(5)]
        time.sleep(0.3)
        p.proc.send_signal(signal.SIGTERM)
        for c in clients:
            assert errors_until_closed(c)[-1].code == st.ErrorCode.SHUTDOWN
    finally:
        code = p.stop()
    assert code == 0
    ours = json.loads(out.read_text())
    reference = h.server.final_stats()
    reference["ticks"] = h.server.ticker.snapshot()
    assert set(reference) <= set(ours)
    for section in ("ticks", "net", "game"):
        assert set(ours[section]) == set(reference[section]), section
    assert ours["server"] == flavour
    assert ours["net"]["accepted"] == 5 and ours["game"]["players"] == 0
    assert ours["ticks"]["fired"] >= 4 and ours["ticks"]["skipped"] == 0
    # One write per player per tick, the same accounting as netcore's broadcast.
    assert ours["net"]["sends"] >= 5 * 4
