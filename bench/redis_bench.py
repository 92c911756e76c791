#!/usr/bin/env python3
"""netcore.redis against redis-benchmark, side by side in one run.

One redis-server (pinned to CPU 0, no persistence) serves both clients in
turn, each on ONE connection (``redis-benchmark -c 1``), with the same
pipeline depth ``-P`` (send P commands, wait for the P replies, repeat) and
the same commands (``SET key:__rand_int__ xxx`` and ``GET`` of it,
redis-benchmark's defaults). Rounds alternate the two clients; the table
shows the median commands/s of each and the median of the per-round ratios.
Our client runs in this process, pinned to the load CPUs like
redis-benchmark; its CPU per command is ``time.process_time()``.

redis-benchmark is C with hiredis; ours is pure Python on netcore's loop,
so the figure to read is the ratio, and where the time goes (CPU/command).

    python3 bench/redis_bench.py                     # -P 1, 16, 256; 5 rounds
    python3 bench/redis_bench.py --depth 16 --rounds 3 --count 50000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from procstat import Children, cpu_runtime, cpu_sets, free_port, machine, median  # noqa: E402
from report import fmt_table  # noqa: E402

from netcore.loop import EventLoop  # noqa: E402
from netcore.redis import Pending, Redis, RedisAddress, RedisConfig  # noqa: E402
from netcore.testing import run_until  # noqa: E402

LOG_DIR = os.path.join(HERE, "results", "redis_bench-logs")
KEY = "key:__rand_int__"  # redis-benchmark's key without -r
VALUE = b"xxx"  # -d 3, its default


def ours(port: int, command: str, count: int, depth: int) -> Dict[str, float]:
    """``count`` commands on one connection, ``depth`` in flight at a time."""
    loop = EventLoop()
    client = Redis(loop, RedisAddress("127.0.0.1", port))
    client.start()
    run_until(loop, lambda: client.ready, timeout=10)
    args = ("SET", KEY, VALUE) if command == "SET" else ("GET", KEY)
    state = {"sent": 0, "done": 0, "errors": 0}

    def issue() -> None:
        n = min(depth, count - state["sent"])
        state["sent"] += n
        for _ in range(n):
            client.execute(*args, callback=on_reply)

    def on_reply(pending: Pending) -> None:
        state["done"] += 1
        if not pending.ok:
            state["errors"] += 1
        if state["done"] == state["sent"] and state["sent"] < count:
            issue()

    cpu0, t0 = time.process_time(), time.perf_counter()
    issue()
    run_until(loop, lambda: state["done"] >= count, timeout=300, step=1.0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    client.close()
    loop.close()
    if state["errors"]:
        raise SystemExit(f"{state['errors']} commands failed")
    return {"rps": count / wall, "cpu_us": cpu / count * 1e6}


def theirs(children: Children, cpus: List[int], port: int, command: str, count: int, depth: int) -> float:
    proc = children.start(
        ["redis-benchmark", "-p", str(port), "-c", "1", "-n", str(count), "-P", str(depth),
         "-t", command.lower(), "--csv"], cpus, "redis-benchmark")
    out, _ = proc.communicate(timeout=300)
    children.stop(proc)
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] == command:
            return float(cells[1])
    raise SystemExit(f"no {command} line in redis-benchmark's output: {out!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="commands per run")
    parser.add_argument("--depth", type=int, action="append", help="pipeline depth (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    opts = parser.parse_args()
    depths = opts.depth or [1, 16, 256]
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install redis-server redis-tools)")
    server_cpus, load_cpus = cpu_sets()
    if load_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(load_cpus))
    children = Children(LOG_DIR)
    port = free_port()
    rows = []
    figures: Dict[str, object] = {"machine": machine(), "count": opts.count, "rounds": opts.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        server = children.start(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], server_cpus, "redis-server")
        try:
            loop = EventLoop()
            probe = Redis(loop, RedisAddress("127.0.0.1", port), RedisConfig(backoff_max=0.1))
            probe.start()
            run_until(loop, lambda: probe.ready, timeout=10)
            probe.close()
            loop.close()
            for command in ("SET", "GET"):
                for depth in depths:
                    mine, cpu, them, ratios = [], [], [], []
                    redis_cpu = []
                    for _ in range(opts.rounds):
                        before = cpu_runtime(server.pid)
                        got = ours(port, command, opts.count, depth)
                        redis_cpu.append((cpu_runtime(server.pid) - before) / opts.count * 1e6)
                        ref = theirs(children, load_cpus, port, command, opts.count, depth)
                        mine.append(got["rps"])
                        cpu.append(got["cpu_us"])
                        them.append(ref)
                        ratios.append(got["rps"] / ref)
                    rows.append([command, depth, f"{median(mine):,.0f}", f"{median(them):,.0f}",
                                 f"{median(ratios):.2f}", f"{median(cpu):.1f}",
                                 f"{median(redis_cpu):.1f}"])
                    figures[f"{command}-P{depth}"] = {
                        "netcore_rps": mine, "redis_benchmark_rps": them, "ratio": ratios,
                        "netcore_cpu_us_per_command": cpu, "redis_cpu_us_per_command": redis_cpu}
                    print(f"{command} -P {depth}: ours {median(mine):,.0f}/s, "
                          f"redis-benchmark {median(them):,.0f}/s", file=sys.stderr)
        finally:
            children.kill_all()
    print(f"{opts.count:,} commands per run, one connection, median of {opts.rounds} rounds "
          f"(alternating); redis-server on CPU {server_cpus or 'any'}, clients on {load_cpus or 'any'}\n")
    print(fmt_table(["command", "-P", "netcore.redis cmd/s", "redis-benchmark cmd/s",
                     "ratio (median)", "our CPU µs/cmd", "redis CPU µs/cmd (ours)"], rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
