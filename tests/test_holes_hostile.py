"""Hostile tests of the holes found in review: each attack with a crowd watching its ticks.

The server runs with nobody exempt from the per-address limits. Each test
watches the crowd for at least 2 s after the attack has reached the server
(a stall of a second fails it), and checks what the attacker got and what
the server kept afterwards.
"""

import json
import math
import os
import selectors
import sqlite3
import time

import pytest

import spelltraction as st
from helpers import read_until_closed
from hostilekit import Crowd, HostileServer, connect

pytestmark = pytest.mark.slow  # subprocess servers and crowds, seconds each

NOBODY_EXEMPT = ("--exempt", "")
WATCH_AFTER = 2.0  # seconds the crowd is watched after an attack reached the server


def watched(crowd, since):
    """Wait out the watch window after ``since``, then the crowd must have ticked."""
    time.sleep(max(0.0, since + WATCH_AFTER - time.monotonic()))
    crowd.assert_ticking(since=since)


def test_pipelined_scrapes_cost_the_loop_one_scrape_a_tick(tmp_path):
    """20 connections x 99 pipelined GET /metrics on the game port, with the figures
    public and 1,000 players in (each scrape lists every open file): the players
    tick on, and every scrape is answered."""
    with HostileServer("--public-stats", *NOBODY_EXEMPT) as server, \
            Crowd(server.port) as crowd:
        fillers = []
        for i in range(1000):
            s = connect(server.port, source=f"127.0.7.{1 + i % 250}")
            s.sendall(st.frame(st.Hello()))
            fillers.append(s)
        time.sleep(1.0)
        before = server.resources()
        since = crowd.mark()
        burst = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 99
        attackers = [connect(server.port, source=f"127.0.6.{1 + i}") for i in range(20)]
        for s in attackers:
            s.sendall(burst)
        got = {s: b"" for s in attackers}
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            for s in attackers:
                sel.register(s, selectors.EVENT_READ)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    chunk = key.fileobj.recv(1 << 20)
                    got[key.fileobj] += chunk
                    if not chunk or got[key.fileobj].count(b"HTTP/1.1 200") == 99:
                        sel.unregister(key.fileobj)
        assert [data.count(b"HTTP/1.1 200") for data in got.values()] == [99] * 20
        for s in attackers:
            s.close()
        watched(crowd, since)
        for s in fillers:
            s.close()
        server.assert_recovered(before)


def test_the_operators_figures_are_not_on_the_game_port_by_default():
    with HostileServer() as server:
        for path in ("/metrics", "/stats", "/stats.json"):
            assert server.get(path, port=server.port)[0] == 404, path
            assert server.get(path, port=server.admin_port())[0] == 200, path


def test_hello_then_close_at_full_speed_leaves_no_rows_and_the_game_ticks_on(tmp_path):
    """600 version-2 HELLOs from one address, each closed at once: the players tick on,
    the address is held to its burst of new players, and the store keeps no row of a
    client that never heard its token."""
    data = str(tmp_path / "data")
    with HostileServer("--data", data, *NOBODY_EXEMPT) as server, Crowd(server.port) as crowd:
        before = server.resources()
        since = crowd.mark()
        hello = st.frame(st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, b"", b""))
        started = time.monotonic()
        for i in range(600):
            s = connect(server.port, source="127.0.8.1")
            s.sendall(hello)
            s.close()
            if i % 8 == 7:
                time.sleep(0.01)  # within the address's 16 pending: each HELLO is read
        took = time.monotonic() - started
        watched(crowd, since)
        server.assert_recovered(before)
        snap = json.loads(server.get("/stats.json")[2])
        refused = snap["closed_by_reason"].get("new-players-per-address", 0)
        # The burst (64) and the rate (1/s) let in at most this many new players:
        assert refused >= 600 - 64 - math.ceil(took + 3), (refused, took)
        status, _, body = server.get("/metrics")
        assert f'limit="new-players-per-address"}} {refused}'.encode() in body
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    try:
        rows = db.execute("SELECT count(*) FROM players").fetchone()[0]
    finally:
        db.close()
    # Only the crowd's v1 players are on the board, and they have no rows; the
    # strangers' HELLOs (new identities, at most the burst of 64) left none.
    assert rows == 0, f"{rows} rows of strangers kept"


def test_a_browser_school_behind_one_address_all_join_while_squatters_are_held(tmp_path):
    """40 version-2 players behind one address (a school's NAT) all join past the
    pending limit of 16, and a squatter from that address is still refused at 16."""
    with HostileServer(*NOBODY_EXEMPT) as server, Crowd(server.port) as crowd:
        since = crowd.mark()
        school = []
        for _ in range(40):
            s = connect(server.port, source="127.0.9.1")
            s.sendall(st.frame(st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, b"",
                                        b"")))
            s.settimeout(5)
            assert s.recv(4)[2] == st.WELCOME
            school.append(s)
        squatters = [connect(server.port, source="127.0.9.1") for _ in range(16)]
        time.sleep(0.3)
        refused = connect(server.port, source="127.0.9.1")
        said = read_until_closed(refused, 5)
        assert b"pending-per-address" in said, said[:120]
        watched(crowd, since)
        for s in school + squatters + [refused]:
            s.close()
