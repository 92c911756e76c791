"""Hostile TLS peers against a netcore server, with players watching their ticks.

Each test runs a TLS server in this process whose loop ticks at 20 Hz and
broadcasts a frame to a few plain "watching" players every tick, mounts an
attack, and checks what the attacker got, that the ticks kept coming (the
largest gap between two ticks, with a wide bound: this is a shared
machine) and that every watcher kept receiving them.
"""

import os
import subprocess
import time

import pytest

from conftest import require_tool
from netcore import EventLoop, Handler, ServerConfig, TCPServer, encode_frame
from netcore.codec import PlainOutput
from netcore.testing import LoopClient, run_until
from netcore.tls import server_context
from tlskit import MemoryClient, pki  # noqa: F401 - pki is a fixture

TICK = 0.05
MAX_GAP = 0.5  # ten periods: a stall, not scheduling noise


class Raw(PlainOutput):
    """Bytes in, the same bytes out: for peers that send lines (s_client)."""

    def feed(self, data):
        return [bytes(data)]


class Crowd(Handler):
    """Echoes; keeps the open connections and why the others closed."""

    def __init__(self):
        self.open = []
        self.closed = []

    def on_connect(self, conn):
        self.open.append(conn)

    def on_message(self, conn, payload):
        conn.send(payload)

    def on_close(self, conn, reason):
        self.open.remove(conn)
        self.closed.append(reason)


class Watched:
    """A TLS server whose ticks plain players watch (see the module docstring)."""

    def __init__(self, pki, watchers=3, raw=False, **config):
        self.loop = EventLoop()
        self.crowd = Crowd()
        config.setdefault("tls", server_context(pki.cert, pki.key))
        self.server = TCPServer(self.loop, self.crowd, ServerConfig(hosts=["127.0.0.1"], **config),
                                codec_factory=(lambda conn: Raw()) if raw else None)
        self.server.listen()
        self.port = self.server.port
        self.ticks = []
        self.watchers = [LoopClient(self.port) for _ in range(watchers)]
        for w in self.watchers:
            w.send(encode_frame(b"watching"))  # plain, so the sniff has its first byte
            w.got = 0
        self.watching = []
        self.loop.start_ticker(TICK, self.on_tick)
        self.run_until(lambda: len(self.crowd.open) == watchers, 5, "the watchers to join")
        self.watching = list(self.crowd.open)
        self.begun = len(self.ticks)

    def on_tick(self, tick):
        self.ticks.append(time.monotonic())
        self.server.broadcast(encode_frame(b"TICK"), self.watching)

    def pump_watchers(self):
        for w in self.watchers:
            w.got += len(w.read_available())

    def run_until(self, condition, timeout, what=""):
        def check():
            self.pump_watchers()
            return condition()
        run_until(self.loop, check, timeout, what, step=0.01)

    def run_for(self, seconds):
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, seconds + 5)

    def assert_the_players_ticked_on(self, seconds_at_least=0.5):
        """Ticks never stopped for long, and every watcher got them."""
        self.run_for(0.3)  # a stall right after the attack shows too
        self.run_until(lambda: self.ticks[-1] - self.ticks[self.begun] >= seconds_at_least,
                       seconds_at_least + 5)
        ticks = self.ticks[self.begun:]
        assert ticks[-1] - ticks[0] >= seconds_at_least, "the test watched too briefly"
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert max(gaps) < MAX_GAP, f"a tick came {max(gaps):.3f} s after the one before"
        for w in self.watchers:
            assert not w.eof, "a watcher was disconnected"
            assert w.got >= len(encode_frame(b"TICK")) * (len(ticks) // 2), (w.got, len(ticks))
        for conn in self.watching:
            assert conn.is_open

    def close(self):
        for w in self.watchers:
            w.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def watched(pki):
    made = []

    def make(**config):
        w = Watched(pki, **config)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


GARBAGE = {
    "a handshake record that is no ClientHello": b"\x16\x03\x01\x00\x05hello",
    "a record longer than TLS allows": b"\x16\x03\x03\xff\xff" + b"\x00" * 64,
    "a record of another version": b"\x16\x7f\x7f\x00\x10" + b"\x01" * 16,
    "random bytes": b"\x16" + os.urandom(4096),
    "a ClientHello cut short, then HTTP": b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03"
                                          + b"GET / HTTP/1.1\r\n\r\n" * 4,
}


def test_garbage_after_a_tls_byte_is_closed_and_counted_by_name(pki, watched):
    w = watched()
    attackers = []
    for data in GARBAGE.values():
        attacker = LoopClient(w.port)
        attacker.send(data)
        attackers.append(attacker)

    def all_closed():
        for a in attackers:
            a.read_available()
        return all(a.eof for a in attackers)

    w.run_until(all_closed, 5, lambda: repr(w.crowd.closed))
    stats = w.server.stats
    assert w.crowd.closed.count("tls-error") == len(GARBAGE), w.crowd.closed
    assert sum(stats.tls_errors.values()) == len(GARBAGE), stats.tls_errors
    assert all(name and name == name.lower() and " " not in name for name in stats.tls_errors)
    assert stats.tls_handshakes == 0
    # A real player still gets in.
    player = MemoryClient(w.port, pki.client_context())
    player.sock.sendall(player.hello())
    w.run_until(lambda: player.pump() or player.done, 5)
    w.assert_the_players_ticked_on()
    for a in attackers:
        a.close()
    player.close()


@pytest.mark.slow  # a few seconds of a byte a second
def test_a_client_hello_dribbled_a_byte_a_second_is_closed_by_the_handshake_timeout(pki,
                                                                                    watched):
    w = watched(tls_handshake_timeout=2.0)
    dribbler = MemoryClient(w.port, pki.client_context())
    hello = dribbler.hello()
    started = time.monotonic()
    sent = 0
    while not dribbler.eof and time.monotonic() - started < 6.0:
        if sent < len(hello):
            try:
                dribbler.sock.send(hello[sent:sent + 1])
                sent += 1
            except OSError:
                break
        w.run_until(lambda: time.monotonic() - started >= sent, 5)
        dribbler.pump()
    took = time.monotonic() - started
    assert dribbler.eof, f"still open after {took:.1f} s and {sent} of {len(hello)} bytes"
    assert 2.0 <= took < 4.0 and sent < len(hello)
    assert w.crowd.closed == ["tls-handshake-timeout"]
    assert w.server.stats.limits["tls-handshake-timeout"] == 1
    assert not w.server._tls.handshaking
    w.assert_the_players_ticked_on(2.0)
    dribbler.close()


def test_a_handshake_flood_is_served_a_budget_per_turn_and_the_tick_goes_on(pki, watched,
                                                                            monkeypatch):
    import ssl

    budget = 4
    w = watched(tls_handshake_budget=budget)
    steps = {}  # loop iteration -> server handshake steps in it
    real = ssl.SSLObject.do_handshake

    def counted(obj):
        if obj.server_side:
            steps[w.loop.iterations] = steps.get(w.loop.iterations, 0) + 1
        return real(obj)

    monkeypatch.setattr(ssl.SSLObject, "do_handshake", counted)
    flood = [MemoryClient(w.port, pki.client_context()) for _ in range(40)]
    w.run_until(lambda: len(w.crowd.open) == len(w.watching) + len(flood), 5)
    for c in flood:  # every ClientHello is waiting before the server reads one
        c.sock.sendall(c.hello())
    w.run_until(lambda: [c.pump() for c in flood] and all(c.done for c in flood)
                and w.server.stats.tls_handshakes == len(flood), 20,
                lambda: f"{sum(c.done for c in flood)} of {len(flood)} handshakes")
    assert max(steps.values()) <= budget, steps
    assert sum(steps.values()) >= 2 * len(flood) // 2  # each took at least one step
    assert w.server.stats.limits["tls-handshake-budget"] > 0
    assert w.server.stats.tls_handshakes == len(flood)
    for c in flood:  # and each works
        c.write(b"\x00\x02ok")
    w.run_until(lambda: [c.pump() for c in flood] and all(c.received == b"\x00\x02ok"
                                                          for c in flood), 10)
    w.assert_the_players_ticked_on()
    for c in flood:
        c.close()


def s_client(port, version, pki):
    openssl = require_tool("openssl")
    return subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-CAfile", pki.root, version],  # no -quiet: it would turn the letter commands off
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until(w, proc, want, timeout=10):
    """What ``proc`` printed until ``want`` (or its exit), running the server meanwhile."""
    os.set_blocking(proc.stdout.fileno(), False)
    out = bytearray()

    def seen():
        chunk = proc.stdout.read()
        if chunk:
            out.extend(chunk)
        return want in out or proc.poll() is not None

    w.run_until(seen, timeout, lambda: repr(bytes(out)))
    return bytes(out)


def test_renegotiation_is_refused_and_a_tls_1_3_key_update_is_not_an_attack(pki, watched):
    w = watched(raw=True)
    # TLS 1.2: "R" makes s_client renegotiate; the server refuses, the attempt fails.
    proc = s_client(w.port, "-tls1_2", pki)
    try:
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        assert b"first\n" in read_until(w, proc, b"first\n")
        proc.stdin.write(b"R\n")  # alone in its read, as "first" was echoed first
        proc.stdin.flush()
        w.run_until(lambda: "tls-error" in w.crowd.closed, 10, lambda: repr(w.crowd.closed))
        proc.stdin.write(b"after\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    finally:
        w.run_for(0.3)
        proc.kill()
        proc.wait()
    assert w.server.stats.tls_handshakes == 1  # no second handshake happened
    assert sum(w.server.stats.tls_errors.values()) == 1
    # TLS 1.3: "K" asks for a key update (and one back); the connection carries on.
    proc = s_client(w.port, "-tls1_3", pki)
    try:
        for line in (b"one\n", b"K\n", b"two\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            if line == b"K\n":  # a letter alone in a read: what follows it would be lost
                w.run_for(0.5)
            else:
                assert line in read_until(w, proc, line)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert w.server.stats.tls_handshakes == 2
    w.assert_the_players_ticked_on()


def test_a_client_that_never_reads_is_cut_and_its_buffers_stay_bounded(pki, watched):
    cap = 256 << 10
    w = watched(max_output=cap, high_water=64 << 10, low_water=16 << 10, sndbuf=16 << 10)
    # 1. Done with its handshake, then it never reads again.
    lazy = MemoryClient(w.port, pki.client_context())
    lazy.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 16384)
    lazy.sock.sendall(lazy.hello())
    w.run_until(lambda: lazy.pump() or lazy.done, 5)
    w.run_until(lambda: len(w.crowd.open) == len(w.watching) + 1, 5)
    conn = w.crowd.open[-1]
    layer = conn.tls
    chunk = encode_frame(b"x" * 60000)
    written = 0
    while conn.is_open and written < 64 << 20:
        conn.write(chunk)
        written += len(chunk)
        assert conn.queued <= cap + len(chunk) + 1024  # the cap holds for ciphertext
        assert layer.outgoing.pending == 0 and layer.incoming.pending == 0
        w.loop.run_once(0)
    assert not conn.is_open and written < 16 << 20, written
    assert w.crowd.closed == ["slow-consumer"]
    # 2. A ClientHello, then nothing: what the server writes meanwhile waits, up to the cap.
    stuck = MemoryClient(w.port, pki.client_context())
    w.run_until(lambda: len(w.crowd.open) == len(w.watching) + 1, 5)
    conn = w.crowd.open[-1]
    stuck.sock.sendall(stuck.hello()[:20])  # a TLS record begun: the server knows it is TLS
    w.run_until(lambda: conn.tls is not None, 5)
    held = 0
    while conn.is_open and held < 64 << 20:
        assert conn.tls.outgoing.pending == 0
        conn.write(chunk)
        held = len(conn.tls.early or b"") if conn.tls is not None else held
        assert held <= cap + len(chunk)
    assert w.crowd.closed == ["slow-consumer", "slow-consumer"]
    assert w.server.stats.slow_consumers == 2
    w.assert_the_players_ticked_on()
    lazy.close()
    stuck.close()
