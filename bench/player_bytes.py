#!/usr/bin/env python3
"""Where a player's bytes go: the server's memory per connected player, line by line.

Runs the game server in this process (the default ``serve --no-data``
configuration: limits on, web front on), connects ``--count`` idle bots from
a child process (``spelltraction.py bots``), and once every bot has joined
reports, divided by the number of players:

- ``tracemalloc``: the Python allocations the players added, by the source
  line that made them (a snapshot before any player, one with all of them);
- ``sys.getsizeof`` of each per-player object (Connection, socket, codec,
  Player, selector key) and what the dicts that index them cost per entry;
- RSS (``/proc/self/statm``) before and after, in a second run without
  tracemalloc (``--rss``), since tracing inflates it.

    python3 bench/player_bytes.py --count 5000          # the table, traced
    python3 bench/player_bytes.py --count 5000 --rss    # RSS per player only
    python3 bench/player_bytes.py --count 2000 --ws     # browser players (WebSocket)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from procstat import free_port, rss_bytes  # noqa: E402


def _deep_entry(d: Any) -> float:
    """Bytes per entry of a dict or set (its table, shared over its entries)."""
    n = len(d)
    return sys.getsizeof(d) / n if n else 0.0


def objects_table(srv: Any) -> List[Tuple[str, float]]:
    """sys.getsizeof of one player's objects, and the per-entry share of each index."""
    conns = [c for c in srv.front.net.connections.values() if c.data is not None]
    if not conns:
        return []
    conn = conns[len(conns) // 2]
    player = conn.data
    poller = getattr(srv.loop, "poller", None)  # None: a netcore before the epoll poller
    codec_users = sum(1 for c in conns if c.codec is conn.codec)
    codec = f"codec ({type(conn.codec).__name__})"
    rows: List[Tuple[str, float]] = [
        ("Connection", sys.getsizeof(conn)),
        (f"socket ({type(conn.sock).__module__}.{type(conn.sock).__name__})",
         sys.getsizeof(conn.sock)),
        (f"{codec}, one shared by {codec_users} players" if codec_users > 1 else codec,
         sys.getsizeof(conn.codec) / codec_users),
        ("Player", sys.getsizeof(player)),
    ]
    # An int is the player's own only if no other player holds the same object
    # (ids are; a palette colour or the tick a player joined at is shared).
    players = [c.data for c in conns]
    ints = []
    for name in player.__slots__:
        value = getattr(player, name, None)
        if isinstance(value, int) and not -5 <= value <= 256 and sum(
                1 for p in players if getattr(p, name) is value) == 1:
            ints.append(name)
    rows.append((f"Player's own ints ({', '.join(ints) or 'none'})",
                 sum(sys.getsizeof(getattr(player, name)) for name in ints)))
    if not -5 <= conn.fd <= 256:
        rows.append(("Connection.fd (an int > 256, also the dicts' key)", sys.getsizeof(conn.fd)))
    if poller is None or hasattr(poller, "selector"):  # selectors: a SelectorKey per socket
        sel = srv.loop.selector if poller is None else poller.selector
        key = sel.get_key(conn.fd)
        rows.append(("SelectorKey (selectors)", sys.getsizeof(key)))
        rows.append(("selector's fd->key dict, per entry", _deep_entry(sel._fd_to_key)))
    else:
        by_fd = getattr(poller, "_data", None)  # netcore.poller's EpollPoller
        if by_fd is None:  # the loop's own poller, before netcore.poller
            by_fd = poller._handlers
        if isinstance(by_fd, dict):  # before the list by fd
            rows.append(("epoll poller's fd->handler dict, per entry", _deep_entry(by_fd)))
        else:
            rows.append(("epoll poller's handler list by fd, per player",
                         sys.getsizeof(by_fd) / len(conns)))
    rows.append(("server.connections dict, per entry", _deep_entry(srv.front.net.connections)))
    rows.append(("game.players, per entry", _deep_entry(srv.world.game.players)))
    for name in ("_counted", "proxied", "_over_backlog"):
        d = getattr(srv.front.net, name, None)
        if d:
            rows.append((f"net.{name}, per entry", _deep_entry(d)))
    return rows


def run(count: int, trace: bool, hold: float, ws: bool = False) -> Dict[str, Any]:
    import spelltraction as st
    from netcore import EventLoop

    if trace:
        tracemalloc.start(1)
    port = free_port()
    loop = EventLoop()
    srv = st.GameServer(loop, st.ServerOptions(host="127.0.0.1", port=port,
                                               max_clients=count + 100))
    srv.start()
    loop.run_for(0.5)
    gc.collect()
    rss0 = rss_bytes(os.getpid())
    snap0 = tracemalloc.take_snapshot() if trace else None
    bots = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "spelltraction.py"), "bots", "--port", str(port),
         "--count", str(count), "--duration", str(hold + 30), "--log-level", "error",
         *(["--ws"] if ws else [])],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(srv.world.game.players) < count and time.monotonic() < deadline:
            loop.run_for(0.25)
        loop.run_for(hold)  # a few ticks with everyone in
        players = len(srv.world.game.players)
        gc.collect()
        rss1 = rss_bytes(os.getpid())
        out: Dict[str, Any] = {"players": players, "rss_before": rss0, "rss_after": rss1,
                               "rss_per_player": (rss1 - rss0) / max(players, 1),
                               "objects": objects_table(srv)}
        if trace:
            assert snap0 is not None
            snap1 = tracemalloc.take_snapshot()
            lines = []
            for stat in snap1.compare_to(snap0, "lineno")[:25]:
                frame = stat.traceback[0]
                lines.append((f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}",
                              stat.size_diff / max(players, 1), stat.count_diff))
            out["traced"] = lines
            out["traced_total"] = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    finally:
        bots.terminate()
        bots.wait(10)
        srv.close()
        loop.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--rss", action="store_true", help="RSS only, no tracemalloc")
    ap.add_argument("--ws", action="store_true", help="the bots come over WebSocket")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = run(args.count, not args.rss, args.hold, args.ws)
    if args.json:
        print(json.dumps(out))
        return 0
    n = out["players"]
    if args.rss:
        print(f"{n} players; RSS {out['rss_before'] / 1e6:.1f} -> {out['rss_after'] / 1e6:.1f} MB:"
              f" {out['rss_per_player']:.0f} B per player")
    else:
        print(f"{n} players (RSS with tracemalloc on means nothing: see --rss)")
    print("\n| per-player object | bytes |\n|---|---|")
    for name, size in out["objects"]:
        print(f"| {name} | {size:.0f} |")
    if "traced" in out:
        print(f"\ntracemalloc: {out['traced_total'] / max(n, 1):.0f} B per player in all\n")
        print("| allocated at | B per player | blocks |\n|---|---|---|")
        for where, per, blocks in out["traced"]:
            if abs(per) >= 1:
                print(f"| {where} | {per:.0f} | {blocks} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
