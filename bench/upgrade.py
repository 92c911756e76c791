#!/usr/bin/env python3
"""A deploy no player notices, measured: an upgrade in place against a restart.

A server (pinned to CPU 0, a fresh ``--data``) runs from a copy of the source
tree, and N players play on it from the other CPUs: a share on version 1
over TCP (no token: a restart makes them new players), the rest on version 2
with ``--state`` (they come back as themselves), part of those over
WebSocket; every bot moves about once a second. Once all are in and have
played half of ``--hold``, the copy's spelltraction.py is replaced by rename
with a version that says so, and then either:

- ``upgrade``: ``spelltraction.py upgrade --data DIR`` (the server execs the
  new file, same pid, every connection and the world handed over);
- ``restart``: SIGTERM and a new server on the same port and directory (the
  version-2 bots reconnect with backoff and resume; version 1 ones are gone).

With ``--via nginx`` the players connect over TLS to nginx (the shipped
stream config, as bench/tls.py runs it), which ends TLS and passes plain
connections with a PROXY header to the server: what moves is nginx's side.
With ``--via gateway`` the players are on a gateway of a world (a
redis-server and the authority, ``game``, beside it on the server's CPU),
and the gateway is what upgrades (``upgrade --pid``); the restart path and
``--fresh`` are for a lone server only.

Then they play the other half and the bots report. For each path: players
disconnected and reconnected, score regressions (a score lower than the one
last shown), the longest gap between two TICKs any player saw, the least
share of ticks any player got, the wall time of the switch (upgrade: the
command's own figure), the kernel's listen-queue overflows meanwhile
(``nstat`` TcpExtListenOverflows), and the server's RSS before, just after,
and (``--fresh``) of a fresh start of the new version with the same players.
Targets for the upgrade: 0 disconnected, 0 reconnects, 0 score changes, the
largest tick gap < 1 s, RSS within 10 % of a fresh start.

    python3 bench/upgrade.py --count 15000 --fresh
    python3 bench/upgrade.py --count 1000 --hold 10 --paths upgrade   # a quick look

Loopback only; every process is ours, stopped by pid; each run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)

from procstat import (  # noqa: E402
    Children, cpu_sets, free_port, machine, read_line, rss_bytes, server_stats,
)
from report import fmt_table  # noqa: E402

LOG_DIR = os.path.join(HERE, "results", "upgrade-logs")
PROXY_SOURCE = "127.0.0.2"  # nginx's proxy_bind in the shipped stream config
TARGETS = {"disconnected": 0, "reconnected": 0, "score_regressions": 0, "tick_gap_ms": 1000,
           "rss_vs_fresh_pct": 10}


def copy_tree(work: str) -> str:
    """The game as it would be deployed: spelltraction.py, netcore/, web/."""
    tree = os.path.join(work, "game")
    os.makedirs(tree)
    shutil.copy(GAME, tree)
    for folder in ("netcore", "web"):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(tree, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def deploy(tree: str, tag: str) -> None:
    """A new version in place, by rename (a file rewritten in place can break a reader)."""
    with open(GAME, encoding="utf-8") as f:
        source = f.read()
    marker = '__version__ = "'
    at = source.index(marker) + len(marker)
    end = source.index('"', at)
    staged = os.path.join(tree, "spelltraction.py.new")
    with open(staged, "w", encoding="utf-8") as f:
        f.write(source[:end] + "+" + tag + source[end:])
    os.replace(staged, os.path.join(tree, "spelltraction.py"))


def listen_overflows() -> Optional[int]:
    """The kernel's TcpExtListenOverflows so far (None without nstat or /proc)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return None


def start_server(children: Children, tree: str, port: int, data: str, count: int,
                 cpus: List[int], name: str, tick_ms: int) -> "subprocess.Popen[str]":
    server = children.start(
        [sys.executable, os.path.join(tree, "spelltraction.py"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--data", data, "--max-clients", str(count + 500),
         "--tick-ms", str(tick_ms), "--log-level", "info", "--public-stats",
         "--trusted-proxies", PROXY_SOURCE], cpus, name)
    line = read_line(server, 30)
    if "listening" not in line:
        raise RuntimeError(f"server did not start: {line!r} {children.log_tail(name)}")
    return server


def start_gateway(children: Children, tree: str, port: int, work: str, count: int,
                  cpus: List[int], tick_ms: int) -> "subprocess.Popen[str]":
    """A world on our own redis-server: its authority, and one gateway on ``port``
    (the one that upgrades, logging as "server")."""
    from cluster import redis_config  # bench/cluster.py: etc/redis's settings, our port

    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("--via gateway needs redis-server (Debian: apt-get install redis-server)")
    redis_port = free_port()
    children.start([redis, redis_config(work, "127.0.0.1", redis_port)], cpus, "redis")
    url = f"redis://127.0.0.1:{redis_port}"
    game = os.path.join(tree, "spelltraction.py")
    authority = children.start(
        [sys.executable, game, "game", "--redis", url, "--world", "bench", "--data",
         os.path.join(work, "data"), "--admin-port", "0", "--tick-ms", str(tick_ms),
         "--log-level", "warning"], cpus, "authority")
    line = read_line(authority, 30)
    if "listening" not in line:
        raise RuntimeError(f"the authority did not start: {line!r} {children.log_tail('authority')}")
    gateway = children.start(
        [sys.executable, game, "gateway", "--redis", url, "--world", "bench", "--host",
         "127.0.0.1", "--port", str(port), "--max-clients", str(count + 500),
         "--tick-ms", str(tick_ms), "--log-level", "info", "--public-stats"], cpus, "server")
    line = read_line(gateway, 30)
    if "listening" not in line:
        raise RuntimeError(f"the gateway did not start: {line!r} {children.log_tail('server')}")
    return gateway


def bot_groups(count: int, v1_share: float, ws_share: float) -> List[Tuple[str, int, List[str]]]:
    """(name, bots, extra flags): version 1 over TCP, version 2 over TCP and WebSocket."""
    v1 = int(count * v1_share)
    ws = int(count * ws_share)
    v2 = count - v1 - ws
    return [(name, n, flags) for name, n, flags in (
        ("v1-tcp", v1, []), ("v2-tcp", v2, ["--state", "STATE"]),
        ("v2-ws", ws, ["--ws", "--state", "STATE"])) if n > 0]


def one_path(path: str, count: int, hold: float, tick_ms: int, v1_share: float,
             ws_share: float, fresh: bool, pin: bool, via: str = "direct") -> Dict[str, Any]:
    server_cpus, bot_cpus = cpu_sets() if pin else ([], [])
    work = tempfile.mkdtemp(prefix="upgrade-bench-")
    port = free_port()
    data = os.path.join(work, "data")
    children = Children(LOG_DIR)
    try:
        tree = copy_tree(work)
        if via == "gateway":
            if path != "upgrade" or fresh:
                raise ValueError("--via gateway measures the upgrade alone (no restart, no --fresh)")
            server = start_gateway(children, tree, port, work, count, server_cpus, tick_ms)
        else:
            server = start_server(children, tree, port, data, count, server_cpus, "server",
                                  tick_ms)
        player_port, tls = port, []
        if via == "nginx":  # TLS ends at nginx; the server sees nginx's plain connections
            import tls as tls_bench  # bench/tls.py: the shipped stream config, as it runs it

            cert, key = tls_bench.make_certificate(work)
            _nginx, player_port = tls_bench.start_nginx(children, work, cert, key, port, count,
                                                        server_cpus)
            tls = ["--tls", "--insecure"]
        bots = []
        for name, n, flags in bot_groups(count, v1_share, ws_share):
            flags = [os.path.join(work, name + ".json") if f == "STATE" else f for f in flags]
            bots.append(children.start(
                [sys.executable, GAME, "bots", "--port", str(player_port), *tls, "--count", str(n),
                 "--move-every", "1", "--duration", str(hold + 30), "--ramp-timeout", "120",
                 "--probes", "0", "--json", *flags], bot_cpus, name))
        for proc in bots:
            while True:
                line = read_line(proc, 150)
                if not line:
                    raise RuntimeError(f"bots did not ramp up: {children.log_tail('v1-tcp')}")
                if line.startswith(("ramp:", "ramp timed out")):
                    break
        time.sleep(hold / 2)
        rss_before = rss_bytes(server.pid)
        before = server_stats(port) or {}
        overflows = listen_overflows()
        deploy(tree, "next")
        t0 = time.monotonic()
        said = ""
        if path == "upgrade":
            which = ["--pid", str(server.pid)] if via == "gateway" else ["--data", data]
            done = subprocess.run([sys.executable, GAME, "upgrade", *which],
                                  capture_output=True, text=True, timeout=120)
            said = (done.stdout or done.stderr).strip()
            if done.returncode != 0:
                raise RuntimeError(f"upgrade failed: {said}")
            switched = time.monotonic() - t0
        else:
            server.send_signal(signal.SIGTERM)  # our own child, by pid
            server.wait(30)
            children.stop(server)
            server = start_server(children, tree, port, data, count, server_cpus, "server-2",
                                  tick_ms)
            v2 = sum(n for name, n, _ in bot_groups(count, v1_share, ws_share)
                     if name.startswith("v2"))
            while time.monotonic() - t0 < 120:
                now = server_stats(port)
                if now is not None and now.get("resumes", 0) >= v2:
                    break
                time.sleep(0.2)
            switched = time.monotonic() - t0
        time.sleep(3.0)
        rss_after = rss_bytes(server.pid)
        timeline = [line.split("upgrade: ", 1)[1].strip() for line in
                    open(os.path.join(LOG_DIR, "server.log"), errors="replace")
                    if "upgrade: " in line and (" ms" in line or "MiB" in line)] \
            if path == "upgrade" else []
        after_overflows = listen_overflows()
        summaries = []
        for proc in bots:
            assert proc.stdout is not None
            summaries.append(json.loads(proc.stdout.read().strip().splitlines()[-1]))
        after = server_stats(port) or {}
        rss_fresh = fresh_rss(tree, count, tick_ms, v1_share, ws_share, pin) if fresh else None
    finally:
        children.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    row: Dict[str, Any] = {
        "path": path, "via": via, "players": count,
        "switch_s": round(switched, 2), "said": said, "timeline": timeline,
        "disconnected": sum(s["dropped"] for s in summaries),
        "reconnected": sum(s["reconnected"] for s in summaries),
        "failed": sum(s["failed"] for s in summaries),
        "score_regressions": sum(s["score_regressions"] for s in summaries),
        "tick_gap_ms": max(s.get("tick_interval_ms_max", 0) for s in summaries),
        "tick_share_min": min(s["tick_fraction_min"] for s in summaries),
        "listen_overflows": (after_overflows - overflows
                             if overflows is not None and after_overflows is not None else None),
        "letters_scored": [before.get("letters_scored"), after.get("letters_scored")],
        "rss_before_mb": round(rss_before / 1e6, 1), "rss_after_mb": round(rss_after / 1e6, 1),
        "rss_fresh_mb": round(rss_fresh / 1e6, 1) if rss_fresh else None,
    }
    if rss_fresh:
        row["rss_vs_fresh_pct"] = round(100 * (rss_after - rss_fresh) / rss_fresh, 1)
    return row


def fresh_rss(tree: str, count: int, tick_ms: int, v1_share: float, ws_share: float,
              pin: bool) -> int:
    """The new version started fresh with the same players: its RSS once they are in."""
    server_cpus, bot_cpus = cpu_sets() if pin else ([], [])
    work = tempfile.mkdtemp(prefix="upgrade-fresh-")
    port = free_port()
    children = Children(LOG_DIR)
    try:
        server = start_server(children, tree, port, os.path.join(work, "data"), count,
                              server_cpus, "fresh", tick_ms)
        bots = []
        for name, n, flags in bot_groups(count, v1_share, ws_share):
            flags = [os.path.join(work, name + ".json") if f == "STATE" else f for f in flags]
            bots.append(children.start(
                [sys.executable, GAME, "bots", "--port", str(port), "--count", str(n),
                 "--move-every", "1", "--duration", "8", "--ramp-timeout", "120", "--probes",
                 "0", *flags], bot_cpus, "fresh-" + name))
        for proc in bots:
            while True:
                line = read_line(proc, 150)
                if not line or line.startswith(("ramp:", "ramp timed out")):
                    break
        time.sleep(5.0)
        return rss_bytes(server.pid)
    finally:
        children.kill_all()
        shutil.rmtree(work, ignore_errors=True)


def meets(row: Dict[str, Any]) -> bool:
    return (row["disconnected"] == 0 and row["reconnected"] == 0
            and row["score_regressions"] == 0 and row["tick_gap_ms"] < TARGETS["tick_gap_ms"]
            and (row.get("rss_vs_fresh_pct") is None
                 or row["rss_vs_fresh_pct"] <= TARGETS["rss_vs_fresh_pct"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--count", type=int, default=15_000, help="players (default 15000)")
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds of play, the switch in the middle (default 20)")
    ap.add_argument("--paths", default="upgrade,restart",
                    help="upgrade, restart, or both (default both)")
    ap.add_argument("--v1-share", type=float, default=0.5,
                    help="share of players on version 1 over TCP (default 0.5)")
    ap.add_argument("--ws-share", type=float, default=0.2,
                    help="share on version 2 over WebSocket (default 0.2; the rest: v2 TCP)")
    ap.add_argument("--via", default="direct",
                    help="direct, nginx (TLS ended by the shipped stream config in front), "
                         "gateway (the players on a world's gateway, which upgrades), or a "
                         "comma list (default direct)")
    ap.add_argument("--tick-ms", type=int, default=250)
    ap.add_argument("--fresh", action="store_true",
                    help="also start the new version fresh with the same players, for its RSS")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--json", default="", metavar="FILE")
    args = ap.parse_args()
    rows = []
    for via in [v for v in args.via.split(",") if v]:
        for path in [p for p in args.paths.split(",") if p]:
            row = one_path(path, args.count, args.hold, args.tick_ms, args.v1_share,
                           args.ws_share, args.fresh and path == "upgrade", args.pin, via)
            row["meets_targets"] = meets(row) if path == "upgrade" else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    headers = ["path", "via", "players", "switch s", "disconnected", "reconnected", "score regressions",
               "largest tick gap ms", "least share of ticks", "listen overflows",
               "RSS MB before / after / fresh", "targets"]
    print(fmt_table(headers, [[
        r["path"], r["via"], r["players"], r["switch_s"], r["disconnected"], r["reconnected"],
        r["score_regressions"], r["tick_gap_ms"], r["tick_share_min"], r["listen_overflows"],
        f"{r['rss_before_mb']} / {r['rss_after_mb']} / {r['rss_fresh_mb'] or '-'}",
        "-" if r["meets_targets"] is None else ("met" if r["meets_targets"] else "**missed**")]
        for r in rows]))
    for r in rows:
        if r["said"]:
            print(f"{r['path']} ({r['via']}): {r['said']}")
        for line in r["timeline"]:
            print(f"  the server's log: {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "targets": TARGETS, "machine": machine(),
                       "command": " ".join(sys.argv)}, f, indent=1)
    return 0 if all(r["meets_targets"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
