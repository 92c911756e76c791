"""/metrics and /stats.json: parsed by a real Prometheus parser, checked against what tests did."""

import json
import math
import re
import socket
import sys
import subprocess
import time
from types import SimpleNamespace

import pytest

import spelltraction as st
from conftest import metric as value, parse_metrics as parse
from serverproc import GAME, ServerProcess
from webkit import RawConn
from netcore.metrics import CONTENT_TYPE


# -- the game server's /metrics -------------------------------------------------


def quiesce(h):
    """Stop ticking and let every queued byte reach the kernel."""
    h.loop.stop_ticker(h.server.ticker)
    h.run(0.05)
    assert h.server.front.net.stats.queued_out_bytes == 0


def drain(clients):
    """Read everything already sent to ``clients`` (the loop is not run)."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.2:
        before = sum(c.bytes_received for c in clients)
        for c in clients:
            c.pump()
        if sum(c.bytes_received for c in clients) != before:
            quiet_since = time.monotonic()
        time.sleep(0.01)


def test_metrics_count_what_the_clients_did(h):
    n_clients, n_moves, n_closed = 7, 5, 2
    clients = [h.client() for _ in range(n_clients)]
    for i in range(n_moves):
        clients[0].send(st.Move(i + 1, 10 * i, 10 * i))
        h.ticks(1)
    h.ticks(2)
    quiesce(h)
    samples, types = parse(h.server.metrics_text())
    drain(clients)

    assert value(samples, "spelltraction_connections") == n_clients
    assert value(samples, "spelltraction_connections_accepted_total") == n_clients
    assert value(samples, "spelltraction_players") == n_clients
    assert value(samples, "spelltraction_frames_received_total") == n_clients + n_moves
    hello, move = len(st.frame(st.Hello())), len(st.frame(st.Move(1, 1, 1)))
    assert value(samples, "spelltraction_bytes_received_total") == \
        n_clients * hello + n_moves * move
    assert value(samples, "spelltraction_moves_accepted_total") == n_moves
    # Everything the server counted as sent is exactly what the clients read.
    assert value(samples, "spelltraction_bytes_sent_total") == \
        sum(c.bytes_received for c in clients)
    assert value(samples, "spelltraction_frames_sent_total") == \
        sum(c.frames_received for c in clients)
    assert value(samples, "spelltraction_output_queued_bytes") == 0
    assert value(samples, "spelltraction_slow_consumer_disconnects_total") == 0
    assert value(samples, "spelltraction_connections_max") == 15_000
    assert value(samples, "spelltraction_build_info", version=st.__version__, protocol="1") == 1
    assert types["spelltraction_connections_accepted"] == "counter"
    assert types["spelltraction_connections"] == "gauge"
    assert types["spelltraction_tick_duration_seconds"] == "histogram"

    for c in clients[:n_closed]:
        c.sock.close()
    h.run_until(lambda: h.server.front.net.stats.connections == n_clients - n_closed)
    samples, _ = parse(h.server.metrics_text())
    assert value(samples, "spelltraction_connections") == n_clients - n_closed
    assert value(samples, "spelltraction_players") == n_clients - n_closed
    assert value(samples, "spelltraction_connections_accepted_total") == n_clients
    assert value(samples, "spelltraction_connections_closed_total", reason="peer-closed") \
        == n_closed


def test_tick_histograms_agree_with_the_tick_count(h):
    h.client()
    h.ticks(12)
    samples, _ = parse(h.server.metrics_text())
    fired = value(samples, "spelltraction_ticks_total")
    assert fired == h.server.ticker.fired >= 12
    for name in ("spelltraction_tick_duration_seconds", "spelltraction_tick_lateness_seconds"):
        les = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == name + "_bucket")
        counts = [v for _, v in les]
        assert counts == sorted(counts), "buckets are cumulative"
        assert les[-1] == (math.inf, fired)
        assert value(samples, name + "_count") == fired
        assert value(samples, name + "_sum") >= 0
    assert value(samples, "spelltraction_tick_period_seconds") == 0.02
    assert value(samples, "spelltraction_tick_lateness_max_seconds") >= 0
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_open_fds") >= 2


def test_the_loops_time_by_phase_adds_up_and_counts_the_ticks(h):
    h.client().send(st.Move(1, 5, 5))
    h.ticks(8)
    samples, types = parse(h.server.metrics_text())
    assert types["spelltraction_loop_seconds"] == "counter"
    phases = {p: value(samples, "spelltraction_loop_seconds_total", phase=p)
              for p in ("waiting", "io", "timers", "ticks")}
    assert all(v >= 0 for v in phases.values())
    assert phases["ticks"] == pytest.approx(
        value(samples, "spelltraction_tick_duration_seconds_sum"))
    assert phases["io"] > 0 and phases["waiting"] > 0  # the HELLO and MOVE; idle between ticks
    assert value(samples, "spelltraction_loop_events_total") >= 2
    assert value(samples, "spelltraction_loop_poller_info", poller=st.DEFAULT_POLLER) == 1


def test_slow_consumers_and_errors_sent_are_counted(h):
    good = h.client()
    slow = h.client()
    bad = h.client(hello=False)
    bad.send_raw(b"\x00\x03\x07xx")  # unknown message type
    bad.wait_closed()
    h.run_until(lambda: h.server.front.net.stats.connections == 2)
    conn = [c for c in h.server.front.net.connections.values() if c.data is not None
            and c.data.id == slow.welcome.player_id][0]
    # The peer reads nothing; queue past the cap (max_output) as a stalled client would.
    while conn.write(b"\x00" * 8192):
        pass
    samples, _ = parse(h.server.metrics_text())
    assert value(samples, "spelltraction_slow_consumer_disconnects_total") == 1
    assert value(samples, "spelltraction_connections_closed_total", reason="slow-consumer") == 1
    assert value(samples, "spelltraction_errors_sent_total", code="bad-message") == 1
    assert value(samples, "spelltraction_connections_closed_total", reason="protocol-error") == 1
    assert value(samples, "spelltraction_connections") == 1
    assert value(samples, "spelltraction_output_queued_bytes") == 0
    good.send(st.Move(9, 1, 1))
    assert good.expect(st.You).seq == 9


def test_letters_scored_are_counted(h):
    a, b, c = h.client(), h.client(), h.client()
    a.send(st.Move(1, 10, 10))
    b.send(st.Move(1, 20, 20))
    c.expect(st.Scored, timeout=10)
    samples, _ = parse(h.server.metrics_text())
    assert value(samples, "spelltraction_letters_scored_total") == \
        h.server.world.game.letters_scored >= 1


def test_refused_connections_are_counted(make_harness):
    h = make_harness(max_clients=2)
    players = [h.client(), h.client()]  # kept: a dropped client closes its socket
    extra = socket.create_connection(("127.0.0.1", h.port))
    h.run_until(lambda: h.server.front.net.stats.refused_full == 1)
    samples, _ = parse(h.server.metrics_text())
    assert value(samples, "spelltraction_connections_refused_total", reason="full") == 1
    assert value(samples, "spelltraction_connections_refused_total", reason="fd-limit") == 0
    assert value(samples, "spelltraction_connections") == len(players)
    extra.close()


# -- /stats.json and the /stats page -------------------------------------------


def test_stats_snapshot_agrees_with_metrics_and_is_json(h):
    clients = [h.client() for _ in range(4)]
    clients[0].send(st.Move(1, 5, 5))
    h.ticks(3)
    quiesce(h)
    snap = json.loads(h.server.stats_json())
    samples, _ = parse(h.server.metrics_text())
    assert snap["connections"] == snap["players"] == 4
    assert snap["accepted"] == value(samples, "spelltraction_connections_accepted_total")
    assert snap["bytes_out"] == value(samples, "spelltraction_bytes_sent_total")
    assert snap["frames_in"] == value(samples, "spelltraction_frames_received_total") == 5
    assert snap["tick"]["duration_count"] == value(samples, "spelltraction_ticks_total")
    assert snap["rss_bytes"] > 1 << 20 and snap["cpu_s"] > 0
    assert abs(snap["time_s"] - time.time()) < 5
    ticker = h.server.ticker  # the schedule, for benches: the last TICK's number and due time
    assert snap["last_tick"]["number"] == snap["game_tick"]
    assert snap["last_tick"]["due_monotonic_s"] == pytest.approx(ticker.deadline - ticker.period)


def test_ops_routes_serve_all_four_on_the_admin_side_and_the_hall_of_fame_in_public(
        make_harness):
    h = make_harness()
    assert set(h.server.ops_routes(public=True)) == {"/leaderboard.json"}
    h = make_harness(public_stats=True)
    assert set(h.server.ops_routes(public=True)) == {"/metrics", "/stats", "/stats.json",
                                                     "/leaderboard.json"}
    h.client()
    routes = h.server.ops_routes(public=False)
    assert set(routes) == {"/metrics", "/stats", "/stats.json", "/leaderboard.json"}
    ctype, body = routes["/leaderboard.json"]()
    assert ctype == "application/json" and json.loads(body) == {"top": []}
    ctype, body = routes["/metrics"]()
    assert ctype == CONTENT_TYPE and b"spelltraction_connections 1" in body
    ctype, body = routes["/stats.json"]()
    assert ctype == "application/json" and json.loads(body)["connections"] == 1
    ctype, body = routes["/stats"]()
    assert ctype.startswith("text/html") and body == st.read_asset("stats.html")


def test_metrics_and_stats_are_not_on_the_game_port_by_default(make_harness, tmp_path):
    """The operator's figures are on the admin port; the game port answers the players
    (and probes: /healthz), and with --public-stats names no file or error of the host."""
    h = make_harness(admin_port=0, data=str(tmp_path))
    for path in ("/metrics", "/stats", "/stats.json"):
        assert RawConn(h).request(path).status == 404, path
    assert RawConn(h).request("/healthz").status == 200
    assert RawConn(h).request("/leaderboard.json").status == 200
    admin = SimpleNamespace(port=h.server.admin.port, loop=h.loop)
    for path in ("/metrics", "/stats", "/stats.json", "/healthz"):
        assert RawConn(admin).request(path).status == 200, path
    private = json.loads(h.server.stats_json())
    assert private["store"]["path"].startswith(str(tmp_path))
    public = h.server.stats_json(public=True)
    assert str(tmp_path).encode() not in public and b"last_error" not in public
    assert json.loads(public)["store"]["commits"] == private["store"]["commits"]


def test_a_scrape_is_made_once_per_tick_however_many_ask(make_harness):
    """100 pipelined GET /metrics in one tick make the figures once; the next tick's
    scrape makes them afresh, and no tick makes them when nobody asks."""
    h = make_harness(public_stats=True, tick_ms=1000)
    made = []
    real = h.server.metrics_text
    h.server.metrics_text = lambda: made.append(1) or real()
    h.run(0.05)
    assert not made  # nobody asked: nothing made
    conn = RawConn(h)
    conn.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 98)
    answers = conn.responses(98, timeout=10)
    assert all(a.status == 200 for a in answers)
    assert len({a.body for a in answers}) == 1
    assert len(made) == 1, "one scrape's figures for the whole tick"
    h.ticks(1)
    assert conn.request("/metrics").status == 200
    assert len(made) == 2


def test_metrics_and_stats_are_served_on_the_game_port_with_public_stats(make_harness):
    h = make_harness(public_stats=True)
    players = [h.client() for _ in range(3)]
    for i, c in enumerate(players):
        c.send(st.Move(i + 1, 10, 10))
    h.ticks(2)
    metrics = RawConn(h).request("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"] == CONTENT_TYPE
    assert metrics.headers["cache-control"] == "no-store"
    samples, _ = parse(metrics.body.decode())
    assert value(samples, "spelltraction_players") == 3
    # The HTTP connection asking is itself a connection (not a player).
    assert value(samples, "spelltraction_connections") == 4
    assert value(samples, "spelltraction_frames_received_total") == 3 + 3
    page = RawConn(h).request("/stats")
    assert page.status == 200 and page.body == st.read_asset("stats.html")
    snap = RawConn(h).request("/stats.json")
    assert snap.status == 200 and json.loads(snap.body)["players"] == 3
    head = RawConn(h).request("/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""


def test_stats_page_is_self_contained_and_reads_real_fields(h):
    page = st.read_asset("stats.html").decode()
    assert "<script src" not in page and "<link" not in page
    urls = re.findall(r"https?://[^\s\"']+", page)
    assert urls == ["http://www.w3.org/2000/svg"], "no CDN, no external fetch"
    h.client()
    h.ticks(2)
    snap = h.server.stats_snapshot()
    top = set(re.findall(r"\b[sp]\.([a-z_0-9]+)", page))
    tick = set(re.findall(r"\bp?t\.([a-z_0-9]+)", page)) - {"toFixed"}
    assert top and tick
    assert top <= set(snap), top - set(snap)
    assert tick <= set(snap["tick"]), tick - set(snap["tick"])


@pytest.mark.slow
def test_stats_page_charts_live_snapshots_in_a_browser(browser):
    """Chromium loads /stats from a live server and charts /stats.json each second."""
    with ServerProcess("--tick-ms", "50", "--public-stats") as server:
        bots = subprocess.Popen(
            [sys.executable, GAME, "bots", "--port", str(server.port), "--count", "6",
             "--duration", "30", "--move-every", "0.5", "--probes", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/stats")
            end = time.monotonic() + 20
            while "6 players" not in page.content():
                assert time.monotonic() < end, "the page never showed the 6 bots"
                time.sleep(0.2)
            time.sleep(5.0)  # five more polls, a second apart
            dom = page.content()
            page.close()
        finally:
            bots.kill()
            bots.wait()
    summary = re.search(r"(\d+) connections, (\d+) players", dom)
    assert summary, dom[-2000:]
    # The page's own HTTP connections count as connections, not players.
    assert int(summary.group(2)) == 6 and int(summary.group(1)) > 6
    lines = {name: pts for pts, name in re.findall(
        r'<polyline class="s\d" points="([^"]*)" id="([a-z]+-line\d)"', dom)}
    assert set(lines) == {"connections-line0", "connections-line1", "rss-line0", "cpu-line0",
                          "tick-line0", "tick-line1", "bytes-line0", "bytes-line1"}
    for name, pts in lines.items():
        assert len(pts.split()) >= 4, f"{name} has too few points: {pts!r}"
