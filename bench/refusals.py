#!/usr/bin/env python3
"""What a connect storm at a full server costs the loop, with and without ``refuse_rate``.

A netcore ``TCPServer`` at ``max_connections=0`` (full from the start) on
CPU 0; four client processes on CPU 1 connect ``--count`` times in all, as
fast as they can, each reading what the server says before closing (with
RST: no TIME_WAIT). For ``refuse_rate`` None (every connect accepted and
refused at once) and then the given rate, it prints the loop's CPU time per
refusal and as a share of a core over the storm. The rate trades the
storm's clients' wait (they queue in the kernel, then retry SYNs) for the
loop's CPU. Linux only (CPU affinity); loopback only; bounded by
``--timeout`` per run.

    python3 bench/refusals.py --count 4000 --rate 1000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import struct
import sys
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from netcore import EventLoop, ServerConfig, TCPServer, testing  # noqa: E402

LINGER_RST = struct.pack("ii", 1, 0)


def connect_many(port: int, count: int) -> None:
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        try:
            s.connect(("127.0.0.1", port))
            s.recv(100)
        except OSError:
            pass
        s.close()


def storm(rate: Optional[float], count: int, timeout: float) -> str:
    loop = EventLoop()
    server = TCPServer(loop, testing.Echo(), ServerConfig(
        hosts=["127.0.0.1"], max_connections=0, refuse_rate=rate))
    server.listen()
    clients = [multiprocessing.Process(target=connect_many, args=(server.port, count // 4))
               for _ in range(4)]
    for p in clients:
        p.start()
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(p.pid, {1})
    cpu0, t0 = time.process_time(), time.monotonic()
    while any(p.is_alive() for p in clients) and time.monotonic() - t0 < timeout:
        loop.run_once(0.01)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    refused = server.stats.refused_full
    server.close()
    loop.close()
    for p in clients:
        p.terminate()
        p.join()
    return (f"refuse_rate {rate}: {refused} refused in {wall:.2f} s ({refused / wall:.0f}/s), "
            f"loop CPU {cpu / max(1, refused) * 1e6:.1f} us a refusal, "
            f"{100 * cpu / wall:.0f} % of a core")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=4000, help="connects in all (default 4000)")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="the refuse_rate to compare with none (default 1000)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per run at most")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    for rate in (None, args.rate):
        print(storm(rate, args.count, args.timeout), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
