"""Hostile tests of the game server's own side (issue 11): signals, the admin port, stalls.

Each runs a real server process with a crowd of watching players
(tests/hostilekit.py) and checks what the attacker (or the operator's
signal) gets AND that the players kept getting TICKs at least once a
second, and that the server's RSS and fds came back.
"""

import signal
import socket
import time

import pytest

import spelltraction as st
from hostilekit import Crowd, HostileServer, connect, http_get
from helpers import read_until_closed

pytestmark = pytest.mark.slow  # subprocess servers and crowds, a few seconds each


# -- signals: none kills without the drain ----------------------------------------


@pytest.mark.parametrize("sig, says", [
    (signal.SIGHUP, "SIGHUP: no TLS certificate to reload (no --tls-cert): still serving"),
    (signal.SIGUSR1, "SIGUSR1: status: 12 players, 12 connections of 15000"),
])
def test_hup_usr1_are_logged_and_the_game_goes_on(sig, says):
    """Without TLS, SIGHUP has nothing to reload (with TLS it reloads the
    certificate: tests/test_server_tls.py); SIGUSR1 reports. (SIGUSR2 upgrades:
    the next test.)"""
    with HostileServer() as server, Crowd(server.port) as crowd:
        before = server.resources()
        crowd.mark()
        for _ in range(3):  # repeated: still no harm
            server.proc.send_signal(sig)
            time.sleep(0.4)
        time.sleep(0.6)
        assert server.alive(), server.log()
        assert server.log().count(says) == 3, server.log()
        crowd.assert_ticking()
        server.assert_recovered(before)
        assert server.stop() == 0  # and SIGTERM still drains


def test_sigusr2_upgrades_in_place_and_the_crowd_ticks_on():
    """SIGUSR2 is an upgrade (to the same file here): the same process serves on, and
    the watchers tick on through it. Three at once: one upgrade at a time, the others
    refused or held across the exec; none ends the server."""
    with HostileServer() as server, Crowd(server.port) as crowd:
        since = crowd.mark()
        for _ in range(3):
            server.proc.send_signal(signal.SIGUSR2)
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while "upgrade: upgraded to" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(max(0.0, since + 3.0 - time.monotonic()))
        assert server.alive(), server.log()
        assert "upgrade: upgraded to" in server.log(), server.log()
        crowd.assert_ticking(since=since)
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_term_int_quit_drain_every_player_gets_shutdown_and_exit_is_0(sig):
    with HostileServer() as server, Crowd(server.port) as crowd:
        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=5) == 0
        deadline = time.monotonic() + 3
        while len(crowd.dropped()) < len(crowd.watchers) and time.monotonic() < deadline:
            time.sleep(0.05)
        why = dict(crowd.dropped())
        assert len(why) == len(crowd.watchers), why
        for index, text in why.items():
            assert f"code={st.ErrorCode.SHUTDOWN}" in text, (index, text)
        assert f"{signal.Signals(sig).name}: shutting down" in server.log()
        assert "stopped after" in server.output()


def test_sigusr1_status_line_names_ticks_memory_and_fds():
    with HostileServer() as server, Crowd(server.port, tcp=4, ws_count=2):
        server.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        line = [x for x in server.log().splitlines() if "SIGUSR1: status:" in x]
        assert len(line) == 1, server.log()
        for word in ("6 players", "over WebSocket", "fired", "skipped", "lateness p99",
                     "RSS", "fds"):
            assert word in line[0], (word, line[0])


# -- the admin port: /healthz when full -------------------------------------------


def test_admin_healthz_answers_while_the_game_port_is_full_and_says_so():
    with HostileServer("--max-clients", "14", "--admin-port", "0") as server, \
            Crowd(server.port, tcp=10, ws_count=2) as crowd:
        before = server.resources()
        fillers = [connect(server.port) for _ in range(2)]
        for f in fillers:
            f.sendall(st.frame(st.Hello()))
        time.sleep(0.3)
        crowd.mark()
        # The game port is full: a new client, even an HTTP probe, is refused
        # before its first byte with the binary SERVER_FULL.
        probe = connect(server.port)
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until_closed(probe)
        probe.close()
        assert st.decode(got[2:]) == st.Error(st.ErrorCode.SERVER_FULL,
                                             "server full (14 players); try later")
        admin = server.admin_port()
        for _ in range(20):  # a probe every 50 ms: answered every time
            status, headers, body = server.get("/healthz", port=admin)
            assert status == 200 and body.startswith(b"ok: full: new players are refused"), body
            assert b"14 of 14 connections" in body
            time.sleep(0.05)
        status, _, body = server.get("/metrics", port=admin)
        assert status == 200 and b"spelltraction_players 14" in body
        status, headers, body = server.get("/stats.json", port=admin)
        assert status == 200 and b'"players":14' in body
        status, _, body = server.get("/stats", port=admin)
        assert status == 200 and b"<html" in body.lower()
        crowd.assert_ticking()
        for f in fillers:
            f.close()
        time.sleep(0.3)
        status, _, body = server.get("/healthz", port=admin)
        assert body.startswith(b"ok: accepting players; 12 players"), body
        server.assert_recovered(before)


def test_admin_port_is_loopback_http_only_and_not_the_players_files():
    with HostileServer("--admin-port", "0") as server:
        assert "admin (/healthz, /metrics, /stats) on http://127.0.0.1:" in server.output()
        admin = server.admin_port()
        status, _, _ = server.get("/", port=admin)
        assert status == 404  # no browser client here, no WebSocket
        status, _, _ = server.get("/ws", port=admin)
        assert status == 404
        s = connect(admin)
        s.sendall(st.frame(st.Hello()))  # the game's binary protocol: closed, unanswered
        assert read_until_closed(s) == b""
        s.close()


def refused(host, port):
    """True if nothing listens on host:port (the connect is refused)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_admin_port_is_on_admin_host_and_the_game_on_host_not_the_other_way():
    """--host and --admin-host name different loopback addresses: each listener
    is on its own and refuses on the other's (binding the admin listener to
    the game's public host passed every test that read only the banner)."""
    with HostileServer("--host", "127.0.0.2", "--admin-host", "127.0.0.3",
                       "--admin-port", "0") as server:
        game, admin = server.port, server.admin_port()
        assert f"on http://127.0.0.3:{admin}/" in server.output()
        status, _, body = http_get("127.0.0.3", admin, "/healthz")
        assert status == 200 and body.startswith(b"ok: accepting players"), body
        assert refused("127.0.0.2", admin) and refused("127.0.0.1", admin)
        s = connect(game, host="127.0.0.2")
        s.sendall(st.frame(st.Hello()))
        assert st.decode(st.FrameParser(65535).feed(s.recv(4096))[0]).__class__ is st.Welcome
        s.close()
        assert refused("127.0.0.3", game) and refused("127.0.0.1", game)


def test_a_flood_of_admin_connections_is_refused_with_503_and_players_tick_on():
    with HostileServer("--admin-port", "0") as server, Crowd(server.port) as crowd:
        before = server.resources()
        admin = server.admin_port()
        crowd.mark()
        held = [connect(admin) for _ in range(st.ADMIN_MAX_CONNECTIONS)]
        time.sleep(0.3)
        extra = connect(admin)
        assert read_until_closed(extra).startswith(b"HTTP/1.1 503")
        extra.close()
        crowd.assert_ticking()
        for s in held:
            s.close()
        time.sleep(0.3)
        assert server.get("/healthz", port=admin)[0] == 200
        server.assert_recovered(before)


# -- a stalled server: skipped ticks are visible ----------------------------------


def test_after_a_stall_tick_numbers_jump_by_the_ticks_skipped():
    with HostileServer() as server, Crowd(server.port, tcp=4, ws_count=2) as crowd:
        server.proc.send_signal(signal.SIGSTOP)  # as a stuck VM or a swap storm would
        time.sleep(3.0)
        server.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        assert not crowd.dropped()
        for w in crowd.watchers:
            numbers = [n for _, n in w.ticks]
            jumps = [b - a for a, b in zip(numbers, numbers[1:]) if b - a != 1]
            assert len(jumps) == 1 and jumps[0] >= 8, (w.index, jumps)  # 3 s at 4 Hz: ~12
        skipped = jumps[0] - 1
        assert f"skipped {skipped} ticks" in server.log(), server.log()
        stats = server.get("/stats.json")[2]
        assert f'"skipped":{skipped}'.encode() in stats
