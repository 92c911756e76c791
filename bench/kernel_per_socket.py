#!/usr/bin/env python3
"""Kernel memory per idle TCP socket: the figure behind doctor's KERNEL_BYTES_PER_SOCKET.

Opens ``--pairs`` loopback connections (two sockets each, both ends here),
reads ``Slab`` from /proc/meminfo before and after, closes them, and repeats
``--rounds`` times; prints the median slab bytes per socket. The whole
machine's slab is counted, so other work on the box adds noise: use the
median, and a quiet moment. Idle sockets only: data in flight lives in
buffers doctor budgets separately (BUFFER_BYTES_PER_SOCKET).

    python3 bench/kernel_per_socket.py                # 4,000 pairs, 3 rounds
    python3 bench/kernel_per_socket.py --pairs 8000 --rounds 5
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import time
from typing import List


def slab_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise SystemExit("no Slab line in /proc/meminfo")


def one_round(pairs: int) -> float:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    address = listener.getsockname()
    socks: List[socket.socket] = []
    try:
        time.sleep(0.2)
        before = slab_kib()
        for _ in range(pairs):
            socks.append(socket.create_connection(address))
            socks.append(listener.accept()[0])
        time.sleep(0.2)
        return (slab_kib() - before) * 1024 / len(socks)
    finally:
        for s in socks:
            s.close()
        listener.close()
        time.sleep(1.0)  # let the closed sockets' memory go before the next round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * args.pairs + 64
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"--pairs {args.pairs} needs {needed} open files; the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    figures = [one_round(args.pairs) for _ in range(args.rounds)]
    print(f"kernel slab per idle TCP socket: {statistics.median(figures):,.0f} B median "
          f"({', '.join(f'{f:,.0f}' for f in figures)}; {2 * args.pairs} sockets a round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
