#!/usr/bin/env python3
"""The game under load: a SpellTraction server and N bots, figures from both sides.

Starts ``spelltraction.py serve`` on a free loopback port (pinned to CPU 0),
then ``spelltraction.py bots --count N --duration D --json`` (pinned to the
other CPUs), samples the server's RSS and CPU time from /proc once a second,
and at the end reads the server's own tick figures (``--stats-out``).

Reports: server RSS at start and with N players, server CPU % while holding
N, tick lateness p99 and max, the tick interval clients saw (p50/p99),
move->echo latency (p50/p99) and the ramp-up time.

    python3 bench/game_load.py --count 15000 --duration 60
    python3 bench/game_load.py --count 5000 --move-every 0.25   # every bot moves every tick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)

from procstat import Children, cpu_seconds, cpu_sets, free_port, machine, median, rss_bytes  # noqa: E402
from report import fmt_table  # noqa: E402

LOG_DIR = os.path.join(HERE, "results", "game_load-logs")


def run(count: int, duration: float, move_every: float, pin: bool, extra_server: List[str],
        python: str = sys.executable, extra_bots: Optional[List[str]] = None) -> Dict[str, Any]:
    """One server, ``count`` bots for ``duration`` seconds; the figures. The
    children's stderr goes to ``bench/results/game_load-logs/``."""
    port = free_port()
    server_cpus, bot_cpus = cpu_sets() if pin else ([], [])
    stats_file = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    children = Children(LOG_DIR)
    server = children.start(
        [python, GAME, "serve", *([] if "--data" in extra_server else ["--no-data"]),
         "--host", "127.0.0.1", "--port", str(port),
         "--max-clients", str(count + 200), "--log-level", "warning",
         "--stats-out", stats_file, *extra_server], server_cpus, "server")
    bots: Optional[subprocess.Popen[str]] = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"server did not start: {line!r} {children.log_tail('server')}")
        time.sleep(1.0)
        rss_start = rss_bytes(server.pid)
        t_bots = time.monotonic()
        bots = children.start(
            [python, GAME, "bots", "--port", str(port), "--count", str(count),
             "--duration", str(duration), "--move-every", str(move_every), "--json",
             *(extra_bots or [])], bot_cpus, "bots")
        samples = []
        while bots.poll() is None:
            u, s = cpu_seconds(server.pid)
            samples.append((time.monotonic() - t_bots, rss_bytes(server.pid), u, s))
            time.sleep(1.0)
        assert bots.stdout is not None
        lines = bots.stdout.read().strip().splitlines()
        if not lines:
            raise RuntimeError(f"bots printed no figures: {children.log_tail('bots')}")
        figures = json.loads(lines[-1])
        rss_end = rss_bytes(server.pid)
        children.stop(server, timeout=10)  # SIGTERM: the server writes --stats-out
        with open(stats_file) as f:
            final = json.load(f)
    finally:
        children.kill_all()
        if os.path.exists(stats_file):
            os.unlink(stats_file)

    ramp = figures["ramp_s"] or 0.0
    hold = [x for x in samples if ramp + 2.0 <= x[0] <= ramp + duration]
    if len(hold) >= 2:
        wall = hold[-1][0] - hold[0][0]
        user = hold[-1][2] - hold[0][2]
        system = hold[-1][3] - hold[0][3]
    else:
        wall, user, system = 1.0, 0.0, 0.0
    ticks = final["ticks"]
    players = figures["connected"]
    cpu_pct = 100.0 * (user + system) / wall
    return {
        "players": players,
        "move_every_s": move_every,
        "rss_start_mb": rss_start / 1e6,
        "rss_loaded_mb": median(x[1] for x in hold) / 1e6 if hold else rss_end / 1e6,
        "rss_max_mb": max(x[1] for x in samples) / 1e6,
        "bytes_per_player": ((median(x[1] for x in hold) if hold else rss_end) - rss_start)
        / max(1, players),
        "cpu_pct": cpu_pct,
        "cpu_user_pct": 100.0 * user / wall,
        "cpu_system_pct": 100.0 * system / wall,
        "cpu_us_per_player_tick": (user + system) / wall / (1000.0 / 250) / max(1, players) * 1e6,
        "tick_lateness_p99_ms": ticks["lateness_p99_s"] * 1000,
        "tick_lateness_max_ms": ticks["lateness_max_s"] * 1000,
        "ticks_late": ticks["late"],
        "ticks_skipped": ticks["skipped"],
        "tick_work_p99_ms": ticks["duration_p99_s"] * 1000,
        "client_tick_interval_p50_ms": figures["tick_interval_ms_p50"],
        "client_tick_interval_p99_ms": figures["tick_interval_ms_p99"],
        "move_latency_p50_ms": figures["move_latency_ms_p50"],
        "move_latency_p99_ms": figures["move_latency_ms_p99"],
        "ramp_s": figures["ramp_s"],
        "failed": figures["failed"],
        "dropped": figures["dropped"],
        "bots_below_95pct_ticks": figures["bots_below_95pct_ticks"],
        "server_final": final,
    }


def load_options(doc: str, count: int, duration: float, name: str) -> argparse.ArgumentParser:
    """The options of every script that drives ``run``: bots, hold, moves, pinning, JSON."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=count)
    ap.add_argument("--duration", type=float, default=duration)
    ap.add_argument("--move-every", type=float, default=80.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and bots to CPUs")
    ap.add_argument("--json", default=os.path.join(HERE, "results", name + ".json"))
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = load_options(__doc__, 15_000, 60.0, "game_load").parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    r = run(args.count, args.duration, args.move_every, not args.no_pin, [])
    print(fmt_table(["figure", "value"], [
        ["players connected", r["players"]],
        ["failed / dropped", f"{r['failed']} / {r['dropped']}"],
        ["ramp-up", f"{r['ramp_s']} s"],
        ["server RSS at start", f"{r['rss_start_mb']:.1f} MB"],
        [f"server RSS with {r['players']} players", f"{r['rss_loaded_mb']:.1f} MB "
         f"(max {r['rss_max_mb']:.1f})"],
        ["RSS per player", f"{r['bytes_per_player']:.0f} B"],
        ["server CPU", f"{r['cpu_pct']:.1f} % of one core "
         f"({r['cpu_user_pct']:.1f} user, {r['cpu_system_pct']:.1f} system)"],
        ["CPU per player-tick", f"{r['cpu_us_per_player_tick']:.2f} us"],
        ["tick lateness p99 / max", f"{r['tick_lateness_p99_ms']:.1f} / "
         f"{r['tick_lateness_max_ms']:.1f} ms ({r['ticks_late']} late, "
         f"{r['ticks_skipped']} skipped)"],
        ["tick work p99", f"{r['tick_work_p99_ms']:.1f} ms"],
        ["tick interval seen by clients p50 / p99",
         f"{r['client_tick_interval_p50_ms']:.0f} / {r['client_tick_interval_p99_ms']:.0f} ms"],
        ["move->echo latency p50 / p99",
         f"{r['move_latency_p50_ms']} / {r['move_latency_p99_ms']} ms"],
        ["bots below 95% of ticks", r["bots_below_95pct_ticks"]],
    ]))
    print(f"\n{started}, python {sys.version.split()[0]}, {machine()}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"started": started, "machine": machine(), "args": vars(args), "result": r},
                  f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
