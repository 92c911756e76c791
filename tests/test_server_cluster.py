"""One world over Redis: an authority, gateways, and the faults (docs/CLUSTER.md).

Real processes on a real redis-server: ``spelltraction.py game`` and
``gateway``, players on plain sockets. Every fault test asserts what a
player must not see: a dropped socket, a lost score, TICK numbers going
backwards.
"""

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import spelltraction as st
from conftest import metric, parse_metrics
from clusterkit import Player, World, http_get, wait_for, world  # noqa: F401 - a fixture
from redisproc import RedisServer, free_port
from serverproc import GAME, Spawned

pytestmark = pytest.mark.slow

FAST = ("--tick-ms", "50")  # 20 ticks to score: a second


def cluster_stats(port):
    status, body = http_get(port, "/stats.json")
    assert status == 200, body
    return json.loads(body)


def crowd(gateways, n, version=st.PROTOCOL_V2):
    players = [Player(gateways[i % len(gateways)].port, version=version) for i in range(n)]
    for p in players:
        p.until(lambda p=p: p.welcome is not None)
    return players


def play(players, seconds, rng, stop=None):
    """Everyone to one cell and stay: the attractor comes and holds it, letters
    score (each scoring step, for everyone holding the old letter)."""
    x, y = st.cell_centre(rng.randrange(st.CELLS))
    for p in players:
        p.move(1, x, y)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop()):
        for p in players:
            p.pump(0.0)
        time.sleep(0.02)


def pump_all(players, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in players:
            p.pump(0.0)
        time.sleep(0.02)


def test_two_gateways_one_world_same_bytes_and_each_others_crowds(world):
    a = world.game(*FAST)
    g1, g2 = world.gateway(), world.gateway()
    wait_for(lambda: http_get(g2.admin, "/healthz")[0] == 200)
    on1 = crowd([g1], 5)
    on2 = crowd([g2], 4) + crowd([g2], 1, version=st.PROTOCOL_VERSION)
    ids1 = {p.welcome.player_id for p in on1}
    ids2 = {p.welcome.player_id for p in on2}
    assert len(ids1 | ids2) == 10
    for i, p in enumerate(on1 + on2):
        p.move(1, 20 + 30 * i, 20 + 20 * i)
    pump_all(on1 + on2, 3.5)  # STATS comes every 51 ticks: 2.55 s
    seen_on2 = {m.player_id for p in on2 for payload in p.ticks.values()
                for m in st.decode(payload).movers}
    seen_on1 = {m.player_id for p in on1 for payload in p.ticks.values()
                for m in st.decode(payload).movers}
    assert ids1 <= seen_on2 and ids2 <= seen_on1
    # The same TICK bytes on both gateways, tick for tick.
    common = set(on1[0].ticks) & set(on2[0].ticks) & set(on2[-1].ticks)
    assert len(common) >= 5
    for n in common:
        assert on1[0].ticks[n] == on2[0].ticks[n] == on2[-1].ticks[n]
    assert st.decode(on1[0].ticks[max(common)]).players == 10
    # STATS describes the world: 10 players, wherever they are.
    stats = [st.decode(f) for f in on1[0].frames if f[0] == st.STATS]
    assert len(stats) >= 2 and stats[-1].players == 10 and stats[-1].connections == 10
    snap = cluster_stats(a.admin)
    auth = snap["cluster"]
    assert sorted(auth["gateways"].values()) == [5, 5]
    g1s = cluster_stats(g1.admin)
    assert g1s["players"] == 5 and g1s["cluster"]["world_players"] == 10
    # The authority's traffic: a tick is one shared message plus a private
    # message only for a gateway with something in it.
    assert auth["bus"]["messages_out"] <= 3 * snap["tick"]["fired"] + 3
    # /metrics per role: players per gateway, the bus and its latency.
    samples, _ = parse_metrics(http_get(g1.admin, "/metrics")[1])
    assert metric(samples, "spelltraction_gateway_players") == 5
    assert metric(samples, "spelltraction_world_players") == 10
    assert 0 < metric(samples, "spelltraction_bus_latency_p99_seconds") < 1.0
    assert metric(samples, "spelltraction_bus_messages_total") > 0
    samples, _ = parse_metrics(http_get(a.admin, "/metrics")[1])
    per_gateway = {dict(labels)["gateway"]: v for (name, labels), v in samples.items()
                   if name == "spelltraction_gateway_players"}
    assert sorted(per_gateway.values()) == [5, 5]
    assert metric(samples, "spelltraction_authority_epoch") == 1
    for p in on1 + on2:
        assert not p.closed and not p.errors


def test_gateways_share_one_port(world):
    world.game()
    g1 = world.gateway()
    g2 = world.gateway(port=g1.port)
    assert g2.port == g1.port
    players = crowd([g1], 8)
    assert all(p.welcome is not None for p in players)
    served = [cluster_stats(g.admin)["players"] for g in (g1, g2)]
    assert sum(served) == 8


def test_authority_kill_9_and_restart_keeps_every_socket_and_score(world):
    rng = random.Random(7)
    a = world.game(*FAST)
    gws = [world.gateway(), world.gateway()]
    players = crowd(gws, 16)
    v1 = crowd(gws, 2, version=st.PROTOCOL_VERSION)
    play(players + v1, 15, rng, stop=lambda: sum(max(p.score, 0) for p in players) >= 3)
    shown = [p.score for p in players]
    assert sum(shown) > 0, "nothing scored: the test would prove nothing"
    ids = [p.welcome.player_id for p in players]
    pump_all(players + v1, 2.7)  # a world STATS (every 51 ticks) passes the gateways
    a.stop(signal.SIGKILL)
    pump_all(players + v1, 0.5)  # what was on its way
    last = max(p.last_tick() for p in players)
    pump_all(players + v1, 2.5)  # paused: v2 players are told, nobody is dropped
    assert all(p.paused_stats >= 1 for p in players)
    assert max(p.last_tick() for p in players + v1) == last
    # A paused STATS still describes the world, as the authority last did.
    for p in players:
        assert (p.paused_stat.players, p.paused_stat.connections) == (18, 18), p.paused_stat
    restarted = time.monotonic()
    world.game(*FAST)
    for p in players + v1:
        p.until(lambda p=p: p.last_tick() > last, timeout=15)
    took = time.monotonic() - restarted
    assert took < 10, f"play resumed {took:.1f} s after the restart"
    assert not any(p.closed for p in players + v1)
    assert [p.welcome.player_id for p in players] == ids  # WELCOME not sent again
    pump_all(players, 1.0)
    lost = [(p.welcome.player_id, s, p.score) for p, s in zip(players, shown) if p.score < s]
    assert not lost, f"(id, shown before, now): {lost}"
    # TICK numbers went on from where they were.
    for p in players:
        after = [n for n in p.ticks if n > last]
        assert after and min(after) > last


def test_redis_restart_everyone_reconnects_and_resynchronises(world):
    rng = random.Random(3)
    a = world.game(*FAST)
    gws = [world.gateway(), world.gateway()]
    players = crowd(gws, 12)
    play(players, 12, rng, stop=lambda: sum(max(p.score, 0) for p in players) >= 2)
    shown = [p.score for p in players]
    assert sum(shown) > 0
    world.redis.kill()
    pump_all(players, 0.5)
    last = max(p.last_tick() for p in players)
    pump_all(players, 2.0)
    assert all(p.paused_stats >= 1 for p in players)
    for g in gws:
        assert http_get(g.admin, "/healthz")[0] == 503
    world.redis.start()  # the same port, empty: no lease, no epoch
    for p in players:
        p.until(lambda p=p: p.last_tick() > last, timeout=20)
    wait_for(lambda: all(http_get(x.admin, "/healthz")[0] == 200 for x in gws + [a]))
    pump_all(players, 1.0)
    assert not any(p.closed for p in players)
    assert all(p.score >= s for p, s in zip(players, shown))
    auth = cluster_stats(a.admin)
    assert auth["players"] == 12  # resynchronised once each, not doubled
    assert sorted(auth["cluster"]["gateways"].values()) == [6, 6]


def test_gateway_killed_its_players_resume_on_another(world):
    rng = random.Random(5)
    a = world.game(*FAST)
    g1, g2 = world.gateway(), world.gateway()
    players = crowd([g1, g2], 12)
    play(players, 12, rng, stop=lambda: sum(max(p.score, 0) for p in players) >= 2)
    on1 = [p for p in players if p.sock.getpeername()[1] == g1.port]
    others = [p for p in players if p not in on1]
    g1.stop(signal.SIGKILL)
    pump_all(players, 0.5)
    assert all(p.closed for p in on1) and not any(p.closed for p in others)
    back = []
    for p in on1:  # what the clients do: back off, retry, with the token
        q = Player(g2.port, token=p.welcome.token)
        q.until(lambda q=q: q.welcome is not None)
        assert q.welcome.resumed == st.RESUMED and q.welcome.player_id == p.welcome.player_id
        q.until(lambda q=q: q.score >= 0)
        assert q.score >= p.score
        back.append(q)
    # The dead gateway's lease runs out: the authority forgets it.
    wait_for(lambda: len(cluster_stats(a.admin)["cluster"]["gateways"]) == 1,
             timeout=st.HEARTBEAT_LEASE_S + 15)
    assert cluster_stats(a.admin)["players"] == 12
    pump_all(others + back, 1.0)
    assert not any(p.closed for p in others + back)


def test_a_second_authority_for_the_world_refuses(world, tmp_path):
    first = world.game()
    wait_for(lambda: http_get(first.admin, "/healthz")[0] == 200)
    started = time.monotonic()
    second = subprocess.run([sys.executable, GAME, "game", "--redis", world.redis.url, "--world",
                             world.name, "--data", str(tmp_path / "other")],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 3
    assert "held by another authority" in second.stderr
    # It waited out the lease once (a dead holder's would have expired): the
    # first renewed it, so the second refused.
    assert time.monotonic() - started < st.LEASE_S + 10
    assert "renewed while we waited" in second.stderr
    assert first.proc.poll() is None and http_get(first.admin, "/healthz")[0] == 200


def test_redis_down_at_start_is_waited_for_not_fatal(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    world = World.__new__(World)  # the roles first; Redis later
    game = subprocess.Popen([sys.executable, GAME, "game", "--redis", url, "--world", "late",
                             "--admin-port", "0", "--data", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    redis = None
    gateway = None
    try:
        line = game.stdout.readline()
        admin = int(line.rsplit(":", 1)[1])
        gateway = Spawned([sys.executable, GAME, "gateway", "--redis", url, "--world", "late",
                           "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"])
        gw_admin = int(gateway.proc.stdout.readline().rsplit(":", 1)[1].strip("/\n"))
        time.sleep(1.5)
        assert game.poll() is None and gateway.proc.poll() is None
        assert http_get(admin, "/healthz")[0] == 503
        status, body = http_get(gw_admin, "/healthz")
        assert status == 503 and "Redis" in body
        redis = RedisServer(str(tmp_path))
        redis.port = port
        redis.start()
        wait_for(lambda: http_get(gw_admin, "/healthz")[0] == 200, timeout=15)
        p = Player(gateway.port)
        p.until(lambda: p.welcome is not None and p.last_tick() >= 0)
        p.close()
    finally:
        game.kill()
        game.wait()
        if gateway is not None:
            gateway.stop(signal.SIGKILL)
            gateway.close_pipes()
        if redis is not None:
            redis.kill()
    del world


def test_a_gateway_behind_on_ticks_keeps_its_heartbeat_and_its_players(world):
    """A join storm on a gateway that cannot broadcast every TICK in time (the
    authority ticks every 10 ms): it must skip to the newest TICK, not replay
    the backlog (each turn longer than the last: seconds without its heartbeat
    or its Redis PINGs answered, then the authority drops all its players)."""
    from netcore.resp import RespParser

    world.game("--tick-ms", "10")
    gw = world.gateway()
    wait_for(lambda: http_get(gw.admin, "/healthz")[0] == 200)
    sub = socket.create_connection(("127.0.0.1", world.redis.port), timeout=1)
    sub.sendall(b"SUBSCRIBE spelltraction:test:up\r\n")
    arrivals = []

    def listen():
        parser = RespParser()
        while not done:
            try:
                data = sub.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            arrivals.extend(now for r in parser.feed(data) if r[0] == b"message")

    done = False
    listener = threading.Thread(target=listen)
    listener.start()
    try:
        bots = subprocess.run(
            [sys.executable, GAME, "bots", "--port", str(gw.port), "--count", "3000",
             "--duration", "15", "--ramp-timeout", "30", "--probes", "0", "--json"],
            capture_output=True, text=True, timeout=120)
    finally:
        done = True
        listener.join()
        sub.close()
    figures = json.loads(bots.stdout.strip().splitlines()[-1])
    # The gateway's up messages (its heartbeat: 4 a second), to the end.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:] + [time.monotonic()])]
    assert arrivals and max(gaps) < st.HEARTBEAT_LEASE_S / 3, sorted(gaps)[-5:]
    assert (figures["connected"], figures["failed"], figures["dropped"]) == (3000, 0, 0), figures
    redis = cluster_stats(gw.admin)["cluster"]["redis"]
    assert redis["losses"] == 0, redis  # no PING went unanswered


def test_a_gateway_sends_a_tick_as_soon_as_it_reads_it(world):
    """Players get a TICK a few ms after the authority publishes it, not at the
    gateway's own next tick (up to a period later: 125 ms on average at 4 Hz).
    Measured from outside: a subscriber of our own on the ``down`` channel and
    the players, read in one loop with one clock."""
    from netcore.resp import RespParser

    period = 0.25  # the default tick, on the authority and the gateway
    world.game()
    gw = world.gateway()
    wait_for(lambda: http_get(gw.admin, "/healthz")[0] == 200)
    players = crowd([gw], 4)
    sub = socket.create_connection(("127.0.0.1", world.redis.port), timeout=5)
    sub.sendall(b"SUBSCRIBE spelltraction:test:down\r\n")
    parser = RespParser()
    published = {}  # TICK number -> when our subscriber read it
    received = {id(p): {} for p in players}  # TICK number -> when the player read it
    end = time.monotonic() + 4.0
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([sub] + [p.sock for p in players], [], [], 0.05)
            now = time.monotonic()
            for s in ready:
                if s is sub:
                    for reply in parser.feed(sub.recv(1 << 16)):
                        if reply[0] != b"message":
                            continue
                        data = reply[2]
                        if data[1] == st.BUS_TICK:
                            n = st.BUS_TICK_HEAD.unpack_from(data, st.BUS_HEAD.size)[0]
                            published.setdefault(n, now)
                    continue
                p = next(p for p in players if p.sock is s)
                before = set(p.ticks)
                p.pump(0.0)
                for n in set(p.ticks) - before:
                    received[id(p)][n] = now
    finally:
        sub.close()
    delays = sorted(at - published[n] for got in received.values() for n, at in got.items()
                    if n in published)
    assert len(delays) >= 4 * 10, f"too few ticks to judge: {len(delays)}"
    median = delays[len(delays) // 2]
    # A wide margin: on time is a few ms; waiting for the gateway's own tick
    # would put the median near period / 2.
    assert median < period / 5, f"median {median * 1000:.1f} ms; {delays}"
    bus = cluster_stats(gw.admin)["cluster"]["bus"]
    assert bus["to_first_send_p50_s"] < period / 5, bus
    assert bus["broadcast_p50_s"] <= bus["latency_p50_s"], bus
    assert 0 < bus["broadcast_cpu_p50_s"] <= bus["broadcast_p99_s"] + 0.001, bus
    assert not any(p.closed for p in players)


def test_tick_numbers_go_on_after_a_restart_without_a_data_directory(world):
    """``game --no-data`` keeps no disk: the TICK number lives in Redis (the
    ``tick`` key, reserved ahead and written only by the lease's holder), so a
    restarted authority goes on above every TICK players have seen."""
    a = world.game(*FAST, data=None)
    gw = world.gateway()
    players = crowd([gw], 3)
    players[0].until(lambda: players[0].last_tick() >= 60)  # past a first reservation (40)
    held = int(world.redis.command("GET", "spelltraction:test:tick").split(b"\r\n")[1])
    assert held >= players[0].last_tick()
    a.stop(signal.SIGKILL)
    pump_all(players, 0.5)
    last = max(p.last_tick() for p in players)
    # Restarted at once, as systemd does. Without a data directory there is
    # no proof the old one is gone (no lock to hold): the new one waits out
    # the old lease (a live holder would renew it), then takes the world.
    assert world.redis.command("EXISTS", "spelltraction:test:lease") == b":1\r\n"
    seen = [len(p.frames) for p in players]
    b = world.game(*FAST, data=None)
    for p in players:
        p.until(lambda p=p: p.last_tick() > last, timeout=st.LEASE_S + 15)
    assert b.proc.poll() is None
    pump_all(players, 0.5)
    for p, k in zip(players, seen):
        numbers = [st.decode(f).number for f in p.frames[k:] if f[0] == st.TICK]
        assert numbers and min(numbers) > last, f"after the restart: {numbers[:5]}, last {last}"
        assert numbers == sorted(numbers)
        assert not p.closed
    # Redis forgetting the key does not matter while the authority lives: it
    # writes what it holds again.
    world.redis.command("DEL", "spelltraction:test:tick")
    pump_all(players, 3.0)  # 60 ticks: past half a reservation
    now = max(p.last_tick() for p in players)
    assert int(world.redis.command("GET", "spelltraction:test:tick").split(b"\r\n")[1]) >= now


def test_only_the_lease_holder_writes_the_tick_number(world):
    """The ``tick`` key is written by fenced scripts: a writer whose lease
    token is not the one in Redis (an old authority that was paused) fails."""
    a = world.game(*FAST, data=None)
    wait_for(lambda: http_get(a.admin, "/healthz")[0] == 200)
    key = "spelltraction:test:tick"
    wait_for(lambda: world.redis.command("GET", key).startswith(b"$"))
    lease = world.redis.command("GET", "spelltraction:test:lease").split(b"\r\n")[1].decode()
    stale = "0:" + lease.split(":", 1)[1]  # the same holder, an older epoch
    script = st._TICK_RESERVE
    from netcore.redis import FENCE
    reply = world.redis.command("EVAL", FENCE + script, "2", "spelltraction:test:lease", key,
                                stale, "999999999")
    assert reply.startswith(b"-FENCED"), reply
    assert int(world.redis.command("GET", key).split(b"\r\n")[1]) < 999999999


def publish(port, channel, data, password=None):
    """PUBLISH raw bytes on a fresh socket, as anyone who can reach Redis could."""
    cmds = ([[b"AUTH", password.encode()]] if password else []) + [[b"PUBLISH", channel, data]]
    out = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in c)
                   for c in cmds)
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.sendall(out)
        reply = b""
        while reply.count(b"\r\n") < len(cmds):
            reply += s.recv(1024)
    assert reply.endswith(b":1\r\n") or b":1\r\n" in reply, reply  # a gateway heard it


def test_a_forged_epoch_on_the_bus_does_not_silence_the_authority(world):
    """One PUBLISH of a TICK claiming epoch 0xFFFFFFFF fenced the real authority
    on every gateway until they restarted; the gateway now asks the lease."""
    world.game(*FAST)
    g = world.gateway()
    wait_for(lambda: http_get(g.admin, "/healthz")[0] == 200)
    players = crowd([g], 3) + crowd([g], 1, version=st.PROTOCOL_VERSION)
    pump_all(players, 0.5)
    data = st.frame(st.TickMsg(4000000000, 0, 0, "ZZZZZZZZZZZZ", 0, (0,) * 12))
    forged = st.bus_pack(st.BUS_TICK, 0xFFFFFFFF, 1,
                         st.BUS_TICK_HEAD.pack(4000000000, 1, 0, len(data), time.time()) + data)
    for _ in range(3):
        publish(world.redis.port, b"spelltraction:test:down", forged)
    forged_at = time.monotonic()
    last = max(p.last_tick() for p in players)
    pump_all(players, 2.5)
    for p in players:
        assert 4000000000 not in p.ticks and not p.closed and not p.errors
        # The real authority's ticks went on: 50 ms each, about 50 in 2.5 s.
        after = sorted(n for n in p.ticks if n > last)
        assert len(after) >= 25, (p.welcome, len(after))
    snap = cluster_stats(g.admin)["cluster"]
    assert snap["epoch"] == 1 and snap["bus"]["forged"] == 3 and snap["bus"]["bad"] == 0
    samples, _ = parse_metrics(http_get(g.admin, "/metrics")[1])
    assert metric(samples, "spelltraction_bus_forged_total") == 3
    assert time.monotonic() - forged_at < 10


def test_no_log_line_shows_the_redis_password(tmp_path):
    """The password in --redis (where it works, with a warning) is shown as ***
    in every line: connected, lost, retrying, the health text."""
    secret = "pw-Kq81zz"
    srv = RedisServer(str(tmp_path), password=secret).start()
    g = None
    try:
        g = Spawned([sys.executable, GAME, "gateway", "--redis",
                     f"redis://:{secret}@127.0.0.1:{srv.port}", "--world", "test",
                     "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"])
        admin = int(re.search(r"http://\S+:(\d+)/", g.proc.stdout.readline())[1])
        wait_for(lambda: "waiting for Redis" not in http_get(admin, "/healthz")[1])
        srv.kill()  # lost, then retried with backoff: each says where, with ***
        status, body = wait_for(lambda: (lambda r: r if "waiting for Redis" in r[1] else None)(
            http_get(admin, "/healthz")))
        time.sleep(1.5)
        assert "***@127.0.0.1" in body and secret not in body
    finally:
        if g is not None:
            g.stop()
        srv.kill()
    out = g.proc.stdout.read() + g.proc.stderr.read()
    g.close_pipes()
    assert "connection lost" in out and "***@127.0.0.1" in out, out
    assert secret not in out, [line for line in out.splitlines() if secret in line]
