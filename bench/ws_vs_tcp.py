#!/usr/bin/env python3
"""WebSocket players against TCP players: memory and CPU, side by side in one run.

For each transport a fresh ``spelltraction.py serve`` (same code, pinned to
CPU 0) gets N bots (``bots --count N``, or ``bots --ws --count N``, pinned
to the other CPUs) that hold for D seconds. From /proc, as in
``game_load.py``:

- RSS per connection: (median server RSS while holding - RSS before the
  bots) / players;
- CPU per send: server CPU time (user + system) while holding, divided by
  the sends made in that time (players x ticks: every player gets one send
  per tick).

Rounds alternate TCP, WS, TCP, WS... and the report gives each figure's
median over the rounds, and the WS/TCP ratios (targets: memory <= 1.3x,
CPU <= 1.2x).

    python3 bench/ws_vs_tcp.py                          # 10,000 each, 1 round
    python3 bench/ws_vs_tcp.py --count 1000 --duration 10 --rounds 2   # quick look
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from game_load import load_options, run  # noqa: E402
from procstat import machine, median  # noqa: E402
from report import fmt_table  # noqa: E402

TICK_S = 0.25
TARGETS = {"memory": 1.3, "cpu": 1.2}


def one(transport: str, count: int, duration: float, move_every: float,
        pin: bool) -> Dict[str, Any]:
    extra = ["--ws"] if transport == "ws" else []
    r = run(count, duration, move_every, pin, [], extra_bots=extra)
    players = max(1, r["players"])
    # cpu_us_per_player_tick is CPU per (player x tick), i.e. per send.
    return {
        "transport": transport,
        "players": r["players"],
        "failed": r["failed"],
        "dropped": r["dropped"],
        "rss_start_mb": r["rss_start_mb"],
        "rss_loaded_mb": r["rss_loaded_mb"],
        "rss_per_conn_b": r["bytes_per_player"],
        "cpu_us_per_send": r["cpu_us_per_player_tick"],
        "cpu_pct": r["cpu_pct"],
        "tick_lateness_p99_ms": r["tick_lateness_p99_ms"],
        "client_tick_interval_p99_ms": r["client_tick_interval_p99_ms"],
        "bots_below_95pct_ticks": r["bots_below_95pct_ticks"],
        "sends_total": r["server_final"]["net"]["sends"],
        "ws_players_at_exit": r["server_final"].get("ws_players"),
        "players_checked": players,
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = load_options(__doc__, 10_000, 30.0, "ws_vs_tcp")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    results: List[Dict[str, Any]] = []
    for k in range(args.rounds):
        for transport in ("tcp", "ws"):
            print(f"round {k + 1}/{args.rounds}: {args.count} {transport.upper()} bots, "
                  f"{args.duration:g} s hold", file=sys.stderr, flush=True)
            results.append(one(transport, args.count, args.duration, args.move_every,
                               not args.no_pin))

    def med(transport: str, key: str) -> float:
        return median(r[key] for r in results if r["transport"] == transport)

    rows = []
    for t in ("tcp", "ws"):
        rows.append([
            t.upper(), int(med(t, "players")), f"{med(t, 'rss_start_mb'):.1f}",
            f"{med(t, 'rss_loaded_mb'):.1f}", f"{med(t, 'rss_per_conn_b'):.0f}",
            f"{med(t, 'cpu_us_per_send'):.2f}", f"{med(t, 'cpu_pct'):.1f}",
            f"{med(t, 'tick_lateness_p99_ms'):.1f}",
        ])
    mem_ratio = med("ws", "rss_per_conn_b") / max(1e-9, med("tcp", "rss_per_conn_b"))
    cpu_ratio = med("ws", "cpu_us_per_send") / max(1e-9, med("tcp", "cpu_us_per_send"))
    rows.append(["WS / TCP", "", "", "", f"{mem_ratio:.2f}x (target <= {TARGETS['memory']})",
                 f"{cpu_ratio:.2f}x (target <= {TARGETS['cpu']})", "", ""])
    print(fmt_table(["transport", "players", "RSS start MB", "RSS loaded MB",
                     "RSS per connection B", "CPU per send us", "server CPU %",
                     "tick lateness p99 ms"], rows))
    failures = sum(r["failed"] + r["dropped"] for r in results)
    print(f"\n{args.rounds} round(s) of {args.count} players each, {args.duration:g} s holds, "
          f"moves every {args.move_every:g} s; medians over rounds; {failures} bots failed or "
          f"dropped.\n{started}, python {sys.version.split()[0]}, {machine()}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"started": started, "machine": machine(), "args": vars(args),
                   "memory_ratio": mem_ratio, "cpu_ratio": cpu_ratio, "rounds": results},
                  f, indent=1)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
