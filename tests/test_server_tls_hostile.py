"""Hostile TLS peers against the game server (serve --tls-cert), a crowd watching.

Each runs a real server process on a certificate from the test PKI, a crowd
of plain players watching their ticks (tests/hostilekit.py: a TICK at least
every second, watched at least 2 s after the attack reached the server, and
the server's RSS and fds back afterwards), mounts an attack over TLS and
checks what the attacker got and what the server counted. netcore's own
hostile TLS tests (tests/core/test_tls_hostile.py) drive its server in
process; these drive the game as it is run.
"""

import os
import socket
import subprocess
import threading
import time

import pytest

import spelltraction as st
from conftest import require_tool
from hostilekit import Crowd, HostileServer, connect, lateness_by_window, snapshot
from tlsgamekit import MemoryClient, pki, tls_connect, tls_player  # noqa: F401 - pki: a fixture

pytestmark = pytest.mark.slow  # a server process and a crowd, seconds each


def tls_server(pki, *flags):
    return HostileServer("--tls-cert", pki.cert, "--tls-key", pki.key, *flags)


def tls_figures(server):
    return snapshot(server)["tls"]


def metric_line(server, prefix):
    text = server.get("/metrics")[2].decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def closed_by_peer(sock, timeout=5.0):
    """Whether the server closed ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


GARBAGE = {
    # A handshake record whose body is no ClientHello.
    "not-a-client-hello": b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
    # A record longer than TLS allows (2^14 + 2048).
    "record-too-long": b"\x16\x03\x01\xff\xff" + b"\x00" * 64,
    # Another protocol version (SSL 2-ish).
    "bad-version": b"\x16\x09\x09\x00\x05hello",
    # 4 KiB of random bytes after the TLS byte.
    "random": b"\x16" + os.urandom(4096),
}


def test_garbage_after_a_tls_byte_is_closed_counted_and_players_tick_on(pki):
    with tls_server(pki) as server, Crowd(server.port) as crowd:
        before = server.resources()
        crowd.mark()
        for name, data in GARBAGE.items():
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(data)
                    assert closed_by_peer(s), name
        errors = tls_figures(server)["errors"]
        assert sum(errors.values()) == 5 * len(GARBAGE), errors
        assert metric_line(server, "spelltraction_tls_errors_total{")
        tls_player(server.port, pki.client_context()).close()  # a real one still joins
        crowd.assert_ticking()
        server.assert_recovered(before)


def test_a_client_hello_dribbled_a_byte_a_second_is_closed_at_the_handshake_timeout(pki):
    with tls_server(pki) as server, Crowd(server.port) as crowd:
        before = server.resources()
        hello = MemoryClient(server.port, pki.client_context())
        data = hello.hello()
        crowd.mark()
        started = time.monotonic()
        closed_after = None
        for i in range(len(data)):
            try:
                hello.sock.send(data[i:i + 1])
            except OSError:
                closed_after = time.monotonic() - started
                break
            time.sleep(1.0)
            try:
                if hello.sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
        hello.close()
        assert closed_after is not None and 9 <= closed_after <= 14, closed_after
        closed = snapshot(server)["closed_by_reason"]
        assert closed.get("tls-handshake-timeout") == 1, closed
        crowd.assert_ticking()
        server.assert_recovered(before)


def test_a_handshake_flood_from_20_connections_keeps_the_tick(pki):
    """20 connections doing full handshakes back to back for 4 s (each a
    signature for the server), while the crowd watches: every watcher gets
    its ticks, and their lateness p99 stays under 50 ms."""
    with tls_server(pki) as server, Crowd(server.port) as crowd:
        before = server.resources()
        ctx = pki.client_context()
        done = [0] * 20
        stop = time.monotonic() + 4.0

        def flood(k):
            while time.monotonic() < stop:
                try:
                    with tls_connect(server.port, ctx):
                        done[k] += 1
                except OSError:
                    pass

        t0 = crowd.mark()
        threads = [threading.Thread(target=flood, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        handshakes = tls_figures(server)["handshakes"]
        assert sum(done) >= 100 and handshakes >= sum(done), (done, handshakes)
        crowd.assert_ticking()
        period = 0.25
        late = sorted(x for window in lateness_by_window(crowd.watchers, period, t0, [0.0, 4.0])
                      for x in window)
        p99 = late[int(len(late) * 0.99) - 1] if late else 0.0
        assert late and p99 < 0.050, f"tick lateness p99 {p99 * 1000:.1f} ms during the flood"
        server.assert_recovered(before)


def test_renegotiation_is_refused_and_the_game_goes_on(pki):
    openssl = require_tool("openssl")
    with tls_server(pki) as server, Crowd(server.port) as crowd:
        before = server.resources()
        crowd.mark()
        proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
             "localhost", "-CAfile", pki.root, "-tls1_2", "-brief"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait(lambda: tls_figures(server)["handshakes"] >= 1, 10, "the first handshake")
            proc.stdin.write(b"R\n")  # s_client: renegotiate
            proc.stdin.flush()
            wait(lambda: tls_figures(server)["errors"], 10, "the renegotiation refused")
        finally:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
        figures = tls_figures(server)
        assert figures["handshakes"] == 1, figures  # no second handshake happened
        assert snapshot(server)["closed_by_reason"].get("tls-error") == 1
        crowd.assert_ticking()
        server.assert_recovered(before)


def test_a_tls_player_that_never_reads_is_cut_and_its_memory_freed(pki):
    """Handshake done, HELLO said, then never a read: the game's send-backlog
    rule cuts it (ciphertext queues as plaintext did) and the others tick on."""
    with tls_server(pki, "--tick-ms", "50", "--send-backlog-grace", "2") as server, \
            Crowd(server.port) as crowd:
        before = server.resources()
        ctx = pki.client_context()
        never = []
        for i in range(10):
            raw = connect(server.port, source=f"127.0.12.{i + 1}", rcvbuf=2048)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(st.frame(st.Hello(st.PROTOCOL_V2)))
            never.append(s)
        crowd.mark()
        wait(lambda: 'limit="send-backlog"} 10' in server.get("/metrics")[2].decode(), 60,
             "every never-reader cut")
        assert tls_figures(server)["players"] == 0
        for s in never:
            s.close()
        crowd.assert_ticking()
        server.assert_recovered(before)
