#!/usr/bin/env python3
"""Nothing lost, measured: kill -9 a loaded server, restart it, count who comes back.

Part 1, the restart. A server on a fresh ``--data`` directory (pinned to CPU
0), N players from ``bots --state FILE`` (protocol 2, on the other CPUs).
Once all are in and have played ``--hold`` seconds, the server is SIGKILLed
and started again on the same port and directory. The bots reconnect by
themselves (jittered backoff, 0.5 s doubling to 8 s) with their tokens. The
driver polls the new server's ``/stats.json`` and reports:

- the time from the kill (and from the new server listening) until all N
  have resumed, and how many did (target: all);
- score regressions: bots whose score on return was lower than the last
  one the server had shown them (target: 0), as the bots count them;
- the server's RSS at start, with N players before the kill, and with N
  players again after the restart.

Part 2, the cost of the store, side by side in one run: the game under N
players (``bench/game_load.py``'s measurement: tick lateness p99, server
CPU, RSS) with ``--no-data``, with ``--data`` (``--sync normal``, the
default), and with ``--sync full`` (an fsync per commit). Also the store's
commit time p50/p99 as the server reports it in ``/metrics``.

    python3 bench/restart.py --count 15000
    python3 bench/restart.py --count 2000 --hold 10 --ab-duration 20   # a quick look
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
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)

from game_load import run as game_load  # noqa: E402
from procstat import (  # noqa: E402
    Children, cpu_sets, free_port, load_average, machine, read_line, rss_bytes, server_stats,
)
from report import fmt_table  # noqa: E402

LOG_DIR = os.path.join(HERE, "results", "restart-logs")


def metric(port: int, name: str) -> Optional[float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def start_server(children: Children, port: int, data: str, count: int, cpus: List[int],
                 name: str, extra: List[str]) -> "subprocess.Popen[str]":
    server = children.start(
        [sys.executable, GAME, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data", data, "--max-clients", str(count + 500), "--log-level", "warning",
         "--public-stats", *extra],  # /stats.json on the one port both servers use
        cpus, name)
    line = read_line(server, 30)
    if "listening" not in line:
        raise RuntimeError(f"server did not start: {line!r} {children.log_tail(name)}")
    return server


def restart(count: int, hold: float, tick_ms: int, sync: str, pin: bool) -> Dict[str, Any]:
    """Part 1: N players, kill -9, restart, until all are back."""
    port = free_port()
    server_cpus, bot_cpus = cpu_sets() if pin else ([], [])
    work = tempfile.mkdtemp(prefix="restart-bench-")
    data, state = os.path.join(work, "data"), os.path.join(work, "bots.json")
    extra = ["--tick-ms", str(tick_ms), "--sync", sync]
    children = Children(LOG_DIR)
    try:
        server = start_server(children, port, data, count, server_cpus, "server-1", extra)
        time.sleep(1.0)
        rss_start = rss_bytes(server.pid)
        # Long enough for the ramp, the hold, the restart and the return.
        bots = children.start(
            [sys.executable, GAME, "bots", "--port", str(port), "--count", str(count),
             "--duration", str(hold + 90), "--ramp-timeout", "120", "--probes", "0",
             "--state", state, "--json"], bot_cpus, "bots")
        t0 = time.monotonic()
        while True:  # the bots say when every one is in
            line = read_line(bots, 150)
            if not line:
                raise RuntimeError(f"bots did not ramp up: {children.log_tail('bots')}")
            if line.startswith(("ramp:", "ramp timed out")):  # not the "ramp 3.0 s" lines
                break
        ramp_s = time.monotonic() - t0
        time.sleep(hold)
        before: Optional[Dict[str, Any]] = None
        for _ in range(5):  # a loaded server may take a while to answer
            before = server_stats(port)
            if before is not None:
                break
        if before is None:
            raise RuntimeError("the server did not answer /stats.json before the kill")
        in_game = before["players"]  # who is there to come back
        rss_loaded = rss_bytes(server.pid)
        scored_before = before.get("letters_scored", 0)
        os.kill(server.pid, signal.SIGKILL)  # our own child, by pid
        t_kill = time.monotonic()
        server.wait()
        children.stop(server)
        server = start_server(children, port, data, count, server_cpus, "server-2", extra)
        t_up = time.monotonic()
        resumed = players = 0
        t_all = None
        while time.monotonic() - t_kill < 80:
            now = server_stats(port)
            if now is not None:
                resumed, players = now.get("resumes", 0), now["players"]
                if resumed >= in_game:
                    t_all = time.monotonic()
                    break
            time.sleep(0.25)
        time.sleep(3.0)
        rss_after = rss_bytes(server.pid)
        commit_p50 = metric(port, "spelltraction_store_commit_p50_seconds")
        commit_p99 = metric(port, "spelltraction_store_commit_p99_seconds")
        assert bots.stdout is not None
        out = bots.stdout.read()  # the bots end after their duration
        summary = json.loads(out.strip().splitlines()[-1])
        children.stop(server)
    finally:
        children.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "players": count,
        "in_game_at_kill": in_game,
        "sync": sync,
        "ramp_s": round(ramp_s, 1),
        "letters_scored_before_kill": scored_before,
        "restart_listening_s": round(t_up - t_kill, 2),
        "all_resumed_after_kill_s": round(t_all - t_kill, 2) if t_all else None,
        "all_resumed_after_listening_s": round(t_all - t_up, 2) if t_all else None,
        "server_resumes": resumed,
        "server_players_after": players,
        "bots_resumed": summary["resumed"],
        "bots_reconnected": summary["reconnected"],
        "bots_dropped": summary["dropped"],
        "score_regressions": summary["score_regressions"],
        "rss_start_mb": round(rss_start / 1e6, 1),
        "rss_loaded_mb": round(rss_loaded / 1e6, 1),
        "rss_after_restart_mb": round(rss_after / 1e6, 1),
        "commit_p50_ms": round(commit_p50 * 1000, 2) if commit_p50 is not None else None,
        "commit_p99_ms": round(commit_p99 * 1000, 2) if commit_p99 is not None else None,
    }


def cost(count: int, duration: float, pin: bool) -> List[Dict[str, Any]]:
    """Part 2: the same load with no store, the store (normal), the store (full)."""
    rows = []
    for label, extra in (("--no-data", []), ("--data, sync normal", ["--sync", "normal"]),
                         ("--data, sync full", ["--sync", "full"])):
        work = tempfile.mkdtemp(prefix="restart-bench-")
        try:
            args = extra + (["--data", os.path.join(work, "data")] if extra else [])
            r = game_load(count, duration, 80.0, pin, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        store = r["server_final"].get("store") or {}
        rows.append({
            "server": label,
            "players": r["players"],
            "tick_lateness_p99_ms": round(r["tick_lateness_p99_ms"], 1),
            "tick_lateness_max_ms": round(r["tick_lateness_max_ms"], 1),
            "cpu_pct": round(r["cpu_pct"], 1),
            "rss_start_mb": round(r["rss_start_mb"], 1),
            "rss_loaded_mb": round(r["rss_loaded_mb"], 1),
            "letters_scored": r["server_final"]["game"]["letters_scored"],
            "commits": store.get("commits"),
            "commit_p50_ms": round(store["commit_p50_s"] * 1000, 2) if store else None,
            "commit_p99_ms": round(store["commit_p99_s"] * 1000, 2) if store else None,
            "dropped": r["dropped"],
        })
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=15_000)
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds played before the kill (default 20)")
    ap.add_argument("--tick-ms", type=int, default=250)
    ap.add_argument("--ab-duration", type=float, default=30.0,
                    help="seconds each side of part 2 holds N players (default 30)")
    ap.add_argument("--skip-cost", action="store_true", help="part 1 only")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "restart.json"))
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_at_start = load_average()
    r = restart(args.count, args.hold, args.tick_ms, "normal", not args.no_pin)
    print(fmt_table(["restart after kill -9", "value"], [
        ["players (bots --state); in the game at the kill", f"{r['players']}; {r['in_game_at_kill']}"],
        ["letters scored before the kill", r["letters_scored_before_kill"]],
        ["new server listening after", f"{r['restart_listening_s']} s"],
        ["all resumed, after the kill", f"{r['all_resumed_after_kill_s']} s"],
        ["all resumed, after listening", f"{r['all_resumed_after_listening_s']} s"],
        ["resumed (server / bots)", f"{r['server_resumes']} / {r['bots_resumed']}"],
        ["score regressions", r["score_regressions"]],
        ["dropped (never came back)", r["bots_dropped"]],
        ["server RSS: start / N players / N after restart",
         f"{r['rss_start_mb']} / {r['rss_loaded_mb']} / {r['rss_after_restart_mb']} MB"],
        ["commit time p50 / p99 (after restart)", f"{r['commit_p50_ms']} / {r['commit_p99_ms']} ms"],
    ]))
    rows: List[Dict[str, Any]] = []
    if not args.skip_cost:
        rows = cost(args.count, args.ab_duration, not args.no_pin)
        print(fmt_table(
            ["server", "players", "tick lateness p99 / max ms", "CPU % of a core",
             "RSS start / loaded MB", "letters scored", "commit p50 / p99 ms"],
            [[x["server"], x["players"],
              f"{x['tick_lateness_p99_ms']} / {x['tick_lateness_max_ms']}", x["cpu_pct"],
              f"{x['rss_start_mb']} / {x['rss_loaded_mb']}", x["letters_scored"],
              f"{x['commit_p50_ms']} / {x['commit_p99_ms']}" if x["commits"] else "-"]
             for x in rows]))
    load = f"load average {load_at_start} at start, {load_average()} at the end"
    print(f"machine: {machine()}; {load}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"started": started, "command": " ".join(sys.argv), "machine": machine(),
                   "load": load, "restart": r, "cost": rows}, f, indent=1)
    print(f"wrote {args.json}")
    ok = r["server_resumes"] >= r["in_game_at_kill"] and r["score_regressions"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
