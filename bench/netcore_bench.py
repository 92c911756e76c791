#!/usr/bin/env python3
"""netcore's two headline costs, measured side by side in one run.

1. RSS per idle connection: a server process holds N idle loopback
   connections; RSS (``/proc/PID/statm``) after they are all accepted, minus
   RSS before, divided by N. Measured for netcore, for a naive ``selectors``
   server (the floor: a socket and a selector key each) and for an asyncio
   ``Protocol`` server, each in a fresh process against the same clients.

2. CPU per send of ``TCPServer.broadcast`` against a bare
   ``for s in socks: s.send(buf)`` loop over the very same sockets, rounds
   alternating in one process, with ``time.process_time()`` (user + system,
   so the kernel's loopback work is included). Reported as medians and as
   the median of per-round ratios.

3. Large WebSocket messages: unmasking 16 MiB with netcore's
   ``websocket.mask`` against the ``websockets`` library's pure-Python
   ``apply_mask`` (its C speedup aside: netcore has none), parsing a masked
   16 MiB frame fed in 64 KiB reads, and a 16 MiB binary message's round
   trip through ``examples/echo.py`` (medians of ``--large-rounds``).

The server is pinned to CPU 0 and the clients, which drain every byte, to
the other CPUs, as every bench here does (docs/MEASURED.md, the method).

    python3 bench/netcore_bench.py                 # 10,000 connections
    python3 bench/netcore_bench.py --count 2000 --rounds 10   # quick look
    python3 bench/netcore_bench.py --only large               # part 3 alone
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from procstat import (  # noqa: E402
    Children, cpu_sets, machine, median, open_fds, raise_nofile, rss_bytes, spread,
)
from report import fmt_table  # noqa: E402

FRAME_PAYLOAD = 100  # a 102-byte frame, the size MEASURED.md used
LOG_DIR = os.path.join(HERE, "results", "netcore_bench-logs")


# -- large messages -----------------------------------------------------------

LARGE = 16 << 20


def _timed(fn: Any, rounds: int) -> float:
    """Median wall time of ``fn()`` over ``rounds`` calls, in ms."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def large_messages(rounds: int) -> Dict[str, Any]:
    from netcore import websocket as ws
    from netcore.testing import spawn_listening

    data = os.urandom(LARGE)
    key = os.urandom(4)
    out: Dict[str, Any] = {"bytes": LARGE, "rounds": rounds}
    out["netcore_unmask_ms"] = _timed(lambda: ws.mask(data, key), rounds)
    try:
        from websockets.utils import apply_mask as websockets_py_mask
    except ImportError:  # optional: pip install websockets
        out["websockets_py_unmask_ms"] = None
    else:
        out["websockets_py_unmask_ms"] = _timed(lambda: websockets_py_mask(data, key), rounds)
    wire = ws.frame(data, ws.BINARY, mask_key=key)

    def parse() -> None:
        parser = ws.WebSocketParser(max_message=LARGE)
        view = memoryview(wire)
        events: List[Any] = []
        for pos in range(0, len(wire), 64 << 10):
            events += parser.parse(view[pos:pos + (64 << 10)])
        assert len(events) == 1 and len(events[0].data) == LARGE

    out["netcore_parse_ms"] = _timed(parse, rounds)
    proc, host, port = spawn_listening(
        [sys.executable, os.path.join(ROOT, "examples", "echo.py"), "--host", "127.0.0.1",
         "--port", "0", "--max-message", str(LARGE)])
    try:
        sock = socket.create_connection((host, port))
        sock.sendall(ws.client_handshake(f"{host}:{port}", "/", "dGhlIHNhbXBsZSBub25jZQ=="))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        rest = head.split(b"\r\n\r\n", 1)[1]
        assert not rest

        def echo() -> None:
            sock.sendall(wire)
            parser = ws.WebSocketParser(max_message=LARGE, client=True)
            events: List[Any] = []
            while not events:
                events += parser.parse(sock.recv(1 << 20))
            assert len(events[0].data) == LARGE

        out["echo_round_trip_ms"] = _timed(echo, rounds)
        sock.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    return out


def print_large(r: Dict[str, Any]) -> None:
    py = r["websockets_py_unmask_ms"]
    print(fmt_table(
        ["16 MiB message", "median (ms)"],
        [["unmask: netcore websocket.mask", f"{r['netcore_unmask_ms']:.0f}"],
         ["unmask: websockets.utils.apply_mask (pure Python)",
          "not installed" if py is None else f"{py:.0f}"],
         ["parse a masked frame in 64 KiB reads: netcore WebSocketParser",
          f"{r['netcore_parse_ms']:.0f}"],
         ["binary echo round trip through examples/echo.py", f"{r['echo_round_trip_ms']:.0f}"]],
    ))


# -- server roles -------------------------------------------------------------


def serve_netcore(args: argparse.Namespace) -> None:
    from netcore import EventLoop, Handler, ServerConfig, TCPServer, encode_frame

    loop = EventLoop()
    server = TCPServer(loop, Handler(), ServerConfig(hosts=["127.0.0.1"], max_connections=100_000))
    server.listen()
    print(server.port, flush=True)
    if not args.rounds:
        while True:
            loop.run_once()
    while server.stats.connections < args.expect:
        loop.run_once(0.1)
    loop.run_for(1.0)
    conns = list(server.connections.values())
    socks = [c.sock for c in conns]
    frame = encode_frame(b"x" * FRAME_PAYLOAD)
    n = len(conns)
    ours: List[float] = []
    bare: List[float] = []
    ratios: List[float] = []
    clock = time.process_time

    def timed_ours() -> float:
        t0 = clock()
        server.broadcast(frame, conns)
        return (clock() - t0) / n

    def timed_bare() -> float:
        t0 = clock()
        for s in socks:
            s.send(frame)
        return (clock() - t0) / n

    for r in range(args.rounds):
        # Alternate which goes first so neither always meets warmer caches.
        if r % 2 == 0:
            a = timed_ours()
            loop.run_for(args.gap)
            b = timed_bare()
        else:
            b = timed_bare()
            loop.run_for(args.gap)
            a = timed_ours()
        loop.run_for(args.gap)
        ours.append(a)
        bare.append(b)
        ratios.append(a / b)
    result = {
        "connections": n,
        "rounds": args.rounds,
        "frame_bytes": len(frame),
        "ours_us_per_send": median(ours) * 1e6,
        "bare_us_per_send": median(bare) * 1e6,
        "ratio_of_medians": median(ours) / median(bare),
        "median_of_ratios": median(ratios),
        "queued_out_bytes_after": server.stats.queued_out_bytes,
        "slow_consumers": server.stats.slow_consumers,
    }
    print(json.dumps(result), flush=True)


def serve_selectors(args: argparse.Namespace) -> None:
    sel = selectors.DefaultSelector()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    clients: Dict[int, socket.socket] = {}
    print(lsock.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is lsock:
                while True:
                    try:
                        s, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    clients[s.fileno()] = s
                    sel.register(s, selectors.EVENT_READ, 1)
            else:
                s = clients[key.fd]
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    del clients[key.fd]
                    s.close()


def serve_asyncio(args: argparse.Namespace) -> None:
    import asyncio

    class Idle(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Idle, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- client role --------------------------------------------------------------


def clients(args: argparse.Namespace) -> None:
    """Open ``count`` connections, report, then drain everything until told."""
    raise_nofile()
    socks: List[socket.socket] = []
    linger = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT piles up
    for _ in range(args.count):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.setblocking(False)
        socks.append(s)
    print("connected", flush=True)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                return
            try:
                key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                pass


# -- orchestration ------------------------------------------------------------


class Proc:
    """One role of this script (server or clients) in a child process of ``children``."""

    def __init__(self, children: Children, role: List[str], cpus: List[int], name: str) -> None:
        self.children = children
        self.name = name
        self.p = children.start([sys.executable, os.path.abspath(__file__), *role], cpus, name,
                                stdin_pipe=True)

    def line(self) -> str:
        assert self.p.stdout is not None
        out = self.p.stdout.readline()
        if not out:
            raise RuntimeError(f"{self.name} exited with {self.p.wait()}: "
                               f"{self.children.log_tail(self.name)}")
        return out.strip()

    def stop(self) -> None:
        """Close its stdin (a clients process returns then), then SIGTERM what is left."""
        if self.p.poll() is None and self.p.stdin is not None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        self.children.stop(self.p, timeout=5)


def idle_rss(children: Children, kind: str, count: int, per_proc: int) -> Dict[str, Any]:
    server_cpus, load_cpus = cpu_sets()
    server = Proc(children, ["server", "--kind", kind], server_cpus, f"idle-{kind}-server")
    holders: List[Proc] = []
    try:
        port = int(server.line())
        time.sleep(1.0)
        pid = server.p.pid
        fds0 = open_fds(pid)
        rss0 = rss_bytes(pid)
        t0 = time.monotonic()
        for i, n in enumerate(spread(count, per_proc)):
            holders.append(Proc(children, ["clients", "--port", str(port), "--count", str(n)],
                                load_cpus, f"idle-{kind}-clients-{i}"))
        for h in holders:
            assert h.line() == "connected"
        while open_fds(pid) < fds0 + count:
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"{kind}: only {open_fds(pid) - fds0} of {count} accepted")
            time.sleep(0.1)
        time.sleep(2.0)
        rss1 = rss_bytes(pid)
        return {
            "server": kind,
            "connections": count,
            "rss_before_mb": rss0 / 1e6,
            "rss_after_mb": rss1 / 1e6,
            "bytes_per_conn": (rss1 - rss0) / count,
        }
    finally:
        for h in holders:
            h.stop()
        server.stop()


def broadcast_cpu(children: Children, count: int, per_proc: int, rounds: int,
                  gap: float) -> Dict[str, Any]:
    server_cpus, load_cpus = cpu_sets()
    server = Proc(
        children,
        ["server", "--kind", "netcore", "--expect", str(count), "--rounds", str(rounds),
         "--gap", str(gap)],
        server_cpus, "broadcast-server",
    )
    holders: List[Proc] = []
    try:
        port = int(server.line())
        for i, n in enumerate(spread(count, per_proc)):
            holders.append(Proc(children, ["clients", "--port", str(port), "--count", str(n)],
                                load_cpus, f"broadcast-clients-{i}"))
        for h in holders:
            assert h.line() == "connected"
        return dict(json.loads(server.line()))
    finally:
        for h in holders:
            h.stop()
        server.stop()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    srv = sub.add_parser("server")
    srv.add_argument("--kind", choices=["netcore", "selectors", "asyncio"], required=True)
    srv.add_argument("--expect", type=int, default=0)
    srv.add_argument("--rounds", type=int, default=0)
    srv.add_argument("--gap", type=float, default=0.05)
    cli = sub.add_parser("clients")
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--count", type=int, required=True)
    ap.add_argument("--count", type=int, default=10_000, help="connections (default 10000)")
    ap.add_argument("--per-proc", type=int, default=5_000, help="client connections per process")
    ap.add_argument("--rounds", type=int, default=40, help="broadcast rounds of each kind")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between rounds (drain time)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "netcore_bench.json"))
    ap.add_argument("--large-rounds", type=int, default=5, help="rounds of the 16 MiB part")
    ap.add_argument("--only", choices=["large"], help="run one part only")
    ap.add_argument("--skip-large", action="store_true",
                    help="parts 1 and 2 only (e.g. against an older netcore without examples/)")
    args = ap.parse_args(argv)

    if args.role:  # a child: pinned by the driver (procstat.Children)
        raise_nofile()
        if args.role == "clients":
            clients(args)
        else:
            {"netcore": serve_netcore, "selectors": serve_selectors, "asyncio": serve_asyncio}[args.kind](args)
        return 0

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.only == "large":
        print_large(large_messages(args.large_rounds))
        print(f"\n{started}, {machine()}")
        return 0
    print(f"netcore bench: {args.count} connections, {args.rounds} rounds, python {sys.version.split()[0]}")
    mem = []
    children = Children(LOG_DIR)
    try:
        for kind in ("netcore", "selectors", "asyncio"):
            r = idle_rss(children, kind, args.count, args.per_proc)
            print(f"  idle RSS {kind:9s}: {r['bytes_per_conn']:7.0f} B/conn "
                  f"({r['rss_before_mb']:.1f} -> {r['rss_after_mb']:.1f} MB)", flush=True)
            mem.append(r)
        cpu = broadcast_cpu(children, args.count, args.per_proc, args.rounds, args.gap)
    finally:
        children.kill_all()
    large: Optional[Dict[str, Any]] = None
    if not args.skip_large:
        large = large_messages(args.large_rounds)
    print(f"  broadcast: netcore {cpu['ours_us_per_send']:.2f} us/send, bare loop "
          f"{cpu['bare_us_per_send']:.2f} us/send, ratio {cpu['ratio_of_medians']:.3f} "
          f"(median of per-round ratios {cpu['median_of_ratios']:.3f})")
    print()
    print(fmt_table(
        ["server", "connections", "RSS before (MB)", "RSS after (MB)", "bytes / idle conn"],
        [[r["server"], r["connections"], f"{r['rss_before_mb']:.1f}", f"{r['rss_after_mb']:.1f}",
          f"{r['bytes_per_conn']:.0f}"] for r in mem],
    ))
    print()
    print(fmt_table(
        ["sender", "CPU per send (median of rounds)", "ratio to bare loop"],
        [["bare `for s in socks: s.send(buf)`", f"{cpu['bare_us_per_send']:.2f} us", "1.00"],
         ["netcore `TCPServer.broadcast`", f"{cpu['ours_us_per_send']:.2f} us",
          f"{cpu['ratio_of_medians']:.3f}"]],
    ))
    if large is not None:
        print()
        print_large(large)
    result = {"started": started, "python": sys.version.split()[0], "machine": machine(),
              "args": {k: v for k, v in vars(args).items() if k != "role"},
              "idle_rss": mem, "broadcast": cpu, "large_messages": large}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{started}, {machine()}; results in {os.path.relpath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
