#!/usr/bin/env python3
"""What read coalescing (``serve --coalesce-ms``) costs and saves, side by side.

For each value of ``--coalesce-ms`` (default ``0,4``: off, and the default),
alternating for ``--rounds`` rounds, this starts the server (pinned to CPU 0),
connects ``--count`` bots that all move every tick (pinned to the other
CPUs) and, while they play, probes the same port from here:

- **HTTP**: ``GET /healthz`` on a fresh connection, time to the whole response;
- **WebSocket**: the upgrade on a fresh connection (time to the ``101``), then
  one ping on it (time to the pong);

and reports medians over the rounds: the server's CPU per player-tick (from
``/proc/PID/schedstat`` over the hold), polls per second and ready sockets
per poll (the server's own counters), the bots' move->echo latency p50/p99,
and each probe's latency p50/p99. Coalescing may delay a request only while
the loop is busy, and by at most the interval: the probe rows show it.

    python3 bench/coalesce.py --count 3000 --hold 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)

from procstat import Children, cpu_runtime, cpu_sets, free_port, median  # noqa: E402

HOST = "127.0.0.1"
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
PING = bytes([0x89, 0x84, 1, 2, 3, 4]) + bytes(b ^ m for b, m in zip(b"ping", b"\x01\x02\x03\x04"))
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _recv_until(sock: socket.socket, done: Any) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def probe_http(port: int) -> float:
    with socket.create_connection((HOST, port), timeout=5) as s:
        t0 = time.perf_counter()
        s.sendall(HEALTH)
        _recv_until(s, lambda d: False)  # Connection: close: read to EOF
        return time.perf_counter() - t0


def probe_ws(port: int) -> "tuple[float, float]":
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(UPGRADE)
        head = _recv_until(s, lambda d: b"\r\n\r\n" in d)
        t1 = time.perf_counter()
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"upgrade refused: {head[:40]!r}")
        s.sendall(PING)
        _recv_until(s, lambda d: len(d) >= 2 and d[0] == 0x8A and len(d) >= 2 + (d[1] & 0x7F))
        return t1 - t0, time.perf_counter() - t1


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def run_one(children: Children, coalesce_ms: float, count: int, hold: float,
            probe_every: float) -> Dict[str, Any]:
    server_cpus, load_cpus = cpu_sets()
    port = free_port(HOST)
    fd, stats_file = tempfile.mkstemp(prefix="coalesce-", suffix=".json")
    os.close(fd)
    server = children.start(
        [sys.executable, GAME, "serve", "--no-data", "--host", HOST, "--port", str(port),
         "--max-clients", str(count + 200), "--coalesce-ms", str(coalesce_ms),
         "--stats-out", stats_file, "--log-level", "warning"],
        server_cpus, f"coalesce-{coalesce_ms:g}-server")
    try:
        wait_listening(port)
        bots = children.start(
            [sys.executable, GAME, "bots", "--host", HOST, "--port", str(port), "--count",
             str(count), "--move-every", "0.25", "--duration", str(hold), "--probes", "50",
             "--json", "--log-level", "warning"], load_cpus, f"coalesce-{coalesce_ms:g}-bots")
        # Wait for the ramp: the server's connection count, read from /proc.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(os.listdir(f"/proc/{server.pid}/fd")) >= count:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        cpu0, t0 = cpu_runtime(server.pid), time.monotonic()
        http: List[float] = []
        upgrade: List[float] = []
        ping: List[float] = []
        errors = 0
        end = t0 + hold * 0.8
        while time.monotonic() < end:
            try:
                http.append(probe_http(port))
                up, pong = probe_ws(port)
                upgrade.append(up)
                ping.append(pong)
            except OSError:
                errors += 1
            time.sleep(probe_every)
        cpu1, t1 = cpu_runtime(server.pid), time.monotonic()
        assert bots.stdout is not None
        lines = [line for line in bots.stdout.read().splitlines() if line.startswith("{")]
        bots.wait(30)
        figures = json.loads(lines[-1]) if lines else {}
    finally:
        children.stop(server)
    with open(stats_file) as f:
        final = json.load(f)
    os.unlink(stats_file)
    loop = final.get("loop", {})
    ticks = final["ticks"]
    seconds = t1 - t0
    players = figures.get("connected", count)
    ms = 1000.0
    return {
        "coalesce_ms": coalesce_ms, "players": players, "window_s": seconds,
        "cpu_us_per_player_tick": (cpu1 - cpu0) / (players * seconds * 4.0) * 1e6,
        "cpu_pct": (cpu1 - cpu0) / seconds * 100,
        "polls": loop.get("polls", 0), "events": loop.get("events", 0),
        "events_per_poll": loop.get("events", 0) / max(loop.get("polls", 1), 1),
        "tick_lateness_p99_ms": ticks.get("lateness_p99_s", 0) * ms,
        "ticks_skipped": ticks.get("skipped", 0),
        "move_echo_p50_ms": figures.get("move_latency_ms_p50"),
        "move_echo_p99_ms": figures.get("move_latency_ms_p99"),
        "http_p50_ms": pct(http, 0.5) * ms, "http_p99_ms": pct(http, 0.99) * ms,
        "upgrade_p50_ms": pct(upgrade, 0.5) * ms, "upgrade_p99_ms": pct(upgrade, 0.99) * ms,
        "ping_p50_ms": pct(ping, 0.5) * ms, "ping_p99_ms": pct(ping, 0.99) * ms,
        "probes": len(http), "probe_errors": errors,
    }


COLUMNS = ["cpu_us_per_player_tick", "events_per_poll", "tick_lateness_p99_ms",
           "move_echo_p50_ms", "move_echo_p99_ms", "http_p50_ms", "http_p99_ms",
           "upgrade_p50_ms", "upgrade_p99_ms", "ping_p50_ms", "ping_p99_ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="bots, all moving every tick")
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--values", default="0,4", help="--coalesce-ms values, alternated")
    ap.add_argument("--probe-every", type=float, default=0.05)
    ap.add_argument("--json", default="", metavar="FILE")
    args = ap.parse_args()
    values = [float(v) for v in args.values.split(",")]
    children = Children(os.path.join(tempfile.gettempdir(), "coalesce-logs"))
    runs: List[Dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for value in values:
                run = run_one(children, value, args.count, args.hold, args.probe_every)
                run["round"] = rnd
                runs.append(run)
                print(f"round {rnd + 1} coalesce {value:g} ms: "
                      + ", ".join(f"{k} {run[k]:.2f}" for k in COLUMNS if run[k] is not None),
                      flush=True)
    finally:
        children.kill_all()
    print(f"\nmedians of {args.rounds} rounds, {args.count} players moving every tick; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| figure | " + " | ".join(f"coalesce {v:g} ms" for v in values) + " |")
    print("|---|" + "---|" * len(values))
    for col in COLUMNS:
        cells = []
        for value in values:
            got = [r[col] for r in runs if r["coalesce_ms"] == value and r[col] is not None]
            cells.append(f"{median(got):.2f}" if got else "-")
        print(f"| {col} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "load": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
