#!/usr/bin/env python3
"""Never-readers: the kernel memory the server holds for them, measured with ``ss -tm``.

Runs ``spelltraction.py serve`` twice, side by side in one run: **before**
(``--sndbuf 0 --send-backlog 0``: kernel autotuning and no backlog rule, as
the server was) and **after** (the defaults: ``--sndbuf 32768``, a 4 KiB
backlog for 4 s cuts). Each gets a crowd of watching players
(tests/hostilekit.py) and ``--count`` clients that say HELLO and never read
(their receive buffer set to ``--rcvbuf`` so the backlog reaches the server in
seconds, not the ~100 s a default 125 KB buffer takes at 4 Hz). Every second
it reads the server's own sockets with ``ss -tmn`` (``sport`` = the game
port, the never-readers' addresses only) and prints, per mode:

- the peak of their Send-Q (bytes in the server's kernel queues) and of
  ``skmem`` ``w`` (wmem_queued) summed over them, and a socket's ``tb`` (its
  send buffer limit);
- how long after its backlog appeared at the server (Send-Q > 0) each was
  cut: median and max;
- the watchers' longest wait for a TICK.

    python3 bench/never_readers.py                 # 200 never-readers, 40 s per mode
    python3 bench/never_readers.py --count 1000 --hold 60
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, os.path.dirname(HERE))

import spelltraction as st  # noqa: E402
from hostilekit import Crowd, HostileServer  # noqa: E402

_ENTRY = re.compile(r"^(\d+)\s+(\d+)\s+(\S+)\s+(\S+)")  # "state established": no State column
_SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def server_sockets(port: int, prefix: str) -> Dict[str, Tuple[int, Dict[str, int]]]:
    """peer address -> (Send-Q, skmem fields) of the server's sockets to ``prefix``*."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    found: Dict[str, Tuple[int, Dict[str, int]]] = {}
    entries = re.split(r"\n(?=\S)", out)
    for entry in entries:
        m = _ENTRY.match(entry.replace("\n", " "))
        sk = _SKMEM.search(entry)
        if not m or not sk:
            continue
        _recv_q, send_q, _local, peer = m.groups()
        if not peer.startswith(prefix):
            continue
        fields = {}
        for item in sk.group(1).split(","):
            key = item.rstrip("0123456789")
            fields[key] = int(item[len(key):] or 0)
        found[peer] = (int(send_q), fields)
    return found


def run(mode: str, flags: List[str], count: int, rcvbuf: int, hold: float,
        prefix_octet: int) -> Dict[str, object]:
    prefix = f"127.0.{prefix_octet}."
    with HostileServer(*flags, "--exempt", "") as server, Crowd(server.port) as crowd:
        crowd.mark()
        never = []
        for i in range(count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((f"127.0.{prefix_octet + i // 250}.{1 + i % 250}", 0))
            s.connect(("127.0.0.1", server.port))
            s.sendall(st.frame(st.Hello()))
            never.append(s)
        appeared: Dict[str, float] = {}
        gone: Dict[str, float] = {}
        peak_sendq = peak_w = 0
        tb: Optional[int] = None
        start = time.monotonic()
        seen = set()
        while time.monotonic() - start < hold:
            now = time.monotonic() - start
            socks = {}
            for octet in range(prefix_octet, prefix_octet + 1 + (count - 1) // 250):
                socks.update(server_sockets(server.port, f"127.0.{octet}."))
            seen |= set(socks)
            for peer, (sendq, fields) in socks.items():
                if sendq > 0 and peer not in appeared:
                    appeared[peer] = now
                tb = fields.get("tb", tb)
            for peer in seen - set(socks):
                gone.setdefault(peer, now)
            peak_sendq = max(peak_sendq, sum(q for q, _ in socks.values()))
            peak_w = max(peak_w, sum(f.get("w", 0) for _, f in socks.values()))
            if seen and len(gone) == len(seen):
                break
            time.sleep(1.0)
        delays = [gone[p] - appeared[p] for p in gone if p in appeared]
        result = {
            "mode": mode, "never_readers": count, "cut": len(gone),
            "peak_sendq_kib": peak_sendq / 1024, "peak_wmem_kib": peak_w / 1024,
            "tb_bytes": tb, "cut_after_backlog_median_s": statistics.median(delays) if delays else None,
            "cut_after_backlog_max_s": max(delays) if delays else None,
            "watchers_max_tick_gap_s": crowd.max_gap(), "seconds": time.monotonic() - start,
        }
        for s in never:
            s.close()
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rcvbuf", type=int, default=4096)
    ap.add_argument("--hold", type=float, default=40.0)
    args = ap.parse_args()
    rows = [
        run("before", ["--sndbuf", "0", "--send-backlog", "0"], args.count, args.rcvbuf,
            args.hold, 20),
        run("after", [], args.count, args.rcvbuf, args.hold, 30),
    ]
    print(f"{'mode':7} {'cut':>9} {'peak Send-Q':>12} {'peak skmem w':>13} {'tb/socket':>10} "
          f"{'cut after backlog (median/max)':>31} {'max tick gap':>13}")
    for r in rows:
        med, mx = r["cut_after_backlog_median_s"], r["cut_after_backlog_max_s"]
        cut_txt = "-" if med is None else f"{med:.1f} / {mx:.1f} s"
        print(f"{r['mode']:7} {r['cut']:>4}/{r['never_readers']:<4} "
              f"{r['peak_sendq_kib']:>9.0f} KiB {r['peak_wmem_kib']:>10.0f} KiB "
              f"{r['tb_bytes'] or 0:>10} {cut_txt:>31} {r['watchers_max_tick_gap_s']:>11.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
