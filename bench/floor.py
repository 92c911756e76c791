#!/usr/bin/env python3
"""The floor and Node, side by side: one broadcast workload, three servers.

The workload: N loopback connections, the same 102-byte frame (a u16
length of 100, then 100 bytes) sent to each every 250 ms, whatever a client
sends read and thrown away. Served by

- **netcore**: a minimal broadcast server on netcore's ``TCPServer`` (the
  ``serve-netcore`` role of this script: ``broadcast`` from a fixed-rate
  ticker; not the game);
- **C**: ``bench/peers/floor.c``, epoll and a timerfd, doing nothing the
  workload does not need: the floor. Built with ``cc -O2`` into a temporary
  directory when ``cc`` is present, skipped with a message otherwise;
- **Node**: ``bench/peers/broadcast.js`` on Node's ``net`` module, when
  ``node`` is present.

One load generator for all (the ``load`` role: N connections spread over
processes of at most ``--per-proc`` each, under the 20,000 open-files limit of
a process), which drains every byte and counts frames per connection,
checking each frame's header. The server is pinned to CPU 0 and the load to
the other CPUs (``procstat.Children``). Each run, for one server:

1. start the server, wait for "listening", let it settle 1 s, read its RSS
   (``/proc/PID/statm``): the empty server;
2. connect the N clients, wait until the server holds N more fds, settle;
3. mark (server CPU from ``/proc/PID/stat`` utime + stime, and every
   generator's frame counts), hold ``--hold`` seconds sampling RSS twice a
   second, mark again;
4. stop everything (the generators close with RST: no TIME_WAIT).

CPU per send = server CPU over the hold / frames the clients received over
it; RSS per connection = (median RSS over the hold - the empty server's
RSS) / N (user-space memory only: the kernel's socket buffers are in no
process's RSS). Each is reported as a ratio to the C floor. Runs repeat
``--repeats`` times per N, the servers' order rotating each repeat (C,
netcore, Node; then netcore, Node, C; ...), and the table gives medians; the
load average is recorded before and after every run, since the machine may
be shared. Linux only (/proc, epoll); loopback only; every run is bounded
in time and the whole thing stops by itself.

    python3 bench/floor.py --count 8000,15000 --hold 15 --repeats 3   # docs/MEASURED.md's table
    python3 bench/floor.py --count 1000 --hold 5 --repeats 1          # a quick look

Prints a Markdown table; writes every run to ``--json``
(``bench/results/floor.json`` by default); ``--summarize FILE...`` prints the
table of saved runs again. The measured table and the load it ran under:
docs/MEASURED.md, "At the floor".
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from procstat import (  # noqa: E402
    Children, build_c, cpu_seconds, cpu_sets, load_average, machine, median, open_fds,
    raise_nofile, read_line, rss_bytes, spread, stoppable, wait_for_ports,
)
from report import fmt, fmt_table  # noqa: E402

HOST = "127.0.0.1"
PAYLOAD = 100
FRAME = 2 + PAYLOAD  # bytes on the wire
HEADER = PAYLOAD.to_bytes(2, "big")
PERIOD_S = 0.25
SERVERS = ("c", "netcore", "node")
LABELS = {"c": "C epoll (the floor)", "netcore": "netcore TCPServer", "node": "Node net"}
# --pollers: the netcore server once per poller of its loop, side by side:
# "netcore" on the default (epoll on Linux), "netcore-selectors" on a
# selectors.DefaultSelector (EventLoop(poller="selectors")).
POLLERS = ("epoll", "selectors")
DEFAULT_POLLER = "epoll"
LABELS["netcore-selectors"] = "netcore TCPServer (selectors)"


def netcore_kind(poller: str) -> str:
    return "netcore" if poller == DEFAULT_POLLER else f"netcore-{poller}"
RSS_EVERY_S = 0.5


# =============================================================================
# Roles: the netcore server and the load generator, each in its own process
# =============================================================================


def serve_netcore(period: float, poller: Optional[str] = None) -> int:
    """The workload on netcore: ``TCPServer.broadcast`` from a fixed-rate ticker."""
    raise_nofile()
    from netcore import EventLoop, Handler, ServerConfig, TCPServer, Tick, encode_frame

    loop = EventLoop(poller=poller)
    server = TCPServer(loop, Handler(), ServerConfig(hosts=[HOST], max_connections=100_000))
    server.listen()
    frame = encode_frame(b"x" * PAYLOAD)
    conns = server.connections
    ticks = 0

    def tick(_tick: Tick) -> None:
        nonlocal ticks
        ticks += 1
        server.broadcast(frame, list(conns.values()))

    loop.start_ticker(period, tick)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda _sig: loop.stop())
    print(f"listening {server.port}", flush=True)
    loop.run()
    print(f"ticks {ticks} sends {server.stats.sends} accepted {server.stats.accepted}", flush=True)
    return 0


class Load:
    """``count`` client connections that drain everything and count frames.

    Frames are counted per connection from the byte stream (every frame is
    ``FRAME`` bytes), and each frame header that starts inside a received
    chunk is checked; a wrong one is counted in ``bad``.
    """

    def __init__(self, port: int, count: int) -> None:
        linger = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT piles up
        self.socks: List[socket.socket] = []
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.setblocking(False)
            self.socks.append(s)
        self.index = {s.fileno(): i for i, s in enumerate(self.socks)}
        self.frames = [0] * count  # whole frames received, per connection
        self.partial = [0] * count  # bytes of the frame in progress
        self.last_mark = [0] * count
        self.bad = 0
        self.closed = 0

    def on_readable(self, fd: int, buf: bytearray) -> bool:
        """Drain one connection; False once it is closed."""
        i = self.index[fd]
        try:
            n = self.socks[i].recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            n = 0
        if n == 0:
            self.closed += 1
            return False
        off = self.partial[i]
        pos = FRAME - off if off else 0
        while pos + 2 <= n:
            if buf[pos:pos + 2] != HEADER:
                self.bad += 1
            pos += FRAME
        total = off + n
        self.frames[i] += total // FRAME
        self.partial[i] = total % FRAME
        return True

    def mark(self) -> Dict[str, Any]:
        """Counts now, and each connection's frames since the last mark."""
        since = sorted(f - m for f, m in zip(self.frames, self.last_mark))
        self.last_mark = list(self.frames)
        n = len(since)
        return {"t": time.monotonic(), "frames": sum(self.frames), "connections": n,
                "since_min": since[0] if n else 0, "since_p1": since[n // 100] if n else 0,
                "since_median": since[n // 2] if n else 0, "since_max": since[-1] if n else 0,
                "bad": self.bad, "closed": self.closed}

    def run(self) -> None:
        """Print ``connected``; then drain, answering each ``mark`` line on
        stdin with a JSON line, until stdin closes."""
        ep = select.epoll()
        stdin = sys.stdin.fileno()
        ep.register(stdin, select.EPOLLIN)
        for fd in self.index:
            ep.register(fd, select.EPOLLIN)
        buf = bytearray(65536)
        print("connected", flush=True)
        while True:
            for fd, _events in ep.poll():
                if fd == stdin:
                    line = sys.stdin.readline()
                    if not line:
                        return
                    print(json.dumps(self.mark()), flush=True)
                elif not self.on_readable(fd, buf):
                    ep.unregister(fd)


def load(port: int, count: int) -> int:
    raise_nofile()
    Load(port, count).run()
    return 0


# =============================================================================
# The driver
# =============================================================================


def server_commands(servers: Sequence[str], build_dir: str, log: Any) -> Dict[str, List[str]]:
    period_ms = str(int(PERIOD_S * 1000))
    cmds: Dict[str, List[str]] = {}
    for kind in servers:
        if kind == "c":
            exe = build_c(os.path.join(PEERS, "floor.c"), build_dir, log, "the C floor")
            if exe:
                cmds[kind] = [exe, "0", period_ms]
        elif kind == "node":
            node = shutil.which("node") or shutil.which("nodejs")
            if node is None:
                log("skipping Node: no node on PATH; e.g. apt-get install nodejs")
            else:
                cmds[kind] = [node, os.path.join(PEERS, "broadcast.js"), "0", period_ms]
        else:
            poller = kind.split("-", 1)[1] if "-" in kind else DEFAULT_POLLER
            cmds[kind] = [sys.executable, os.path.abspath(__file__), "serve-netcore",
                          "--period", str(PERIOD_S), "--poller", poller]
    return cmds


def mark(server_pid: int, gens: List["subprocess.Popen[str]"]) -> Dict[str, Any]:
    """Server CPU and the generators' counts at (nearly) one moment."""
    u0, s0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    for g in gens:
        assert g.stdin is not None
        g.stdin.write("mark\n")
        g.stdin.flush()
    replies = []
    for g in gens:
        line = read_line(g, 10.0)
        if not line.startswith("{"):
            raise RuntimeError(f"load generator {g.pid} did not answer a mark: {line!r}")
        replies.append(json.loads(line))
    u1, s1 = cpu_seconds(server_pid)
    load_cpu = 0.0
    for g in gens:
        u, s = cpu_seconds(g.pid)
        load_cpu += u + s
    return {"t": (t0 + time.monotonic()) / 2, "server_cpu_s": (u0 + u1 + s0 + s1) / 2,
            "server_user_s": (u0 + u1) / 2, "load_cpu_s": load_cpu,
            "frames": sum(r["frames"] for r in replies), "gens": replies}


def run_one(children: Children, kind: str, cmd: List[str], count: int, hold: float,
            settle: float, per_proc: int, log: Any) -> Dict[str, Any]:
    """One server, ``count`` connections, one hold: the raw figures and the derived ones."""
    server_cpus, load_cpus = cpu_sets()
    run: Dict[str, Any] = {"server": kind, "count": count, "hold_s": hold, "errors": [],
                           "loadavg_before": load_average(),
                           "started_at": time.strftime("%H:%M:%S")}
    run["ports_before"] = wait_for_ports(count + 1, log)
    name = f"{kind}-{count}"
    server = children.start(cmd, server_cpus, f"{name}-server")
    run["pids"] = [server.pid]
    gens: List["subprocess.Popen[str]"] = []
    try:
        line = read_line(server, 15.0)
        if not line.startswith("listening"):
            raise RuntimeError(f"server did not start: {line!r} "
                               f"{children.log_tail(name + '-server')}")
        port = int(line.split()[1])
        time.sleep(1.0)
        pid = server.pid
        run["rss_empty"] = rss_bytes(pid)
        fds0 = open_fds(pid)
        t0 = time.monotonic()
        for i, n in enumerate(spread(count, per_proc)):
            gens.append(children.start(
                [sys.executable, os.path.abspath(__file__), "load", "--port", str(port),
                 "--count", str(n)], load_cpus, f"{name}-load-{i}", stdin_pipe=True))
            run["pids"].append(gens[-1].pid)
        deadline = t0 + 30.0 + count / 200  # Node accepts slowly on a busy CPU
        for i, g in enumerate(gens):
            line = read_line(g, max(0.1, deadline - time.monotonic()))
            if line.strip() != "connected":
                raise RuntimeError(f"load generator {i} did not connect: {line!r} "
                                   f"{children.log_tail(f'{name}-load-{i}')}")
        while open_fds(pid) < fds0 + count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server accepted {open_fds(pid) - fds0} of {count}")
            time.sleep(0.1)
        run["ramp_s"] = round(time.monotonic() - t0, 3)
        time.sleep(settle)
        first = mark(pid, gens)
        rss: List[int] = []
        end = first["t"] + hold
        while time.monotonic() < end:
            rss.append(rss_bytes(pid))
            time.sleep(min(RSS_EVERY_S, max(0.0, end - time.monotonic())))
        last = mark(pid, gens)
        run["rss_samples"] = rss
        run["marks"] = [first, last]
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} during the hold")
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        run["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"  run failed: {exc}")
    finally:
        for g in gens:
            children.stop(g, timeout=5.0)  # SIGTERM; its sockets close with RST
        if server.poll() is None:
            children.signal_group(server, signal.SIGTERM)
            line = read_line(server, 5.0)
            words = line.split()
            if len(words) % 2 == 0 and words[:1] == ["ticks"]:
                run["server_counters"] = {k: int(v) for k, v in zip(words[::2], words[1::2])}
            try:  # let it exit by itself: stop() would send a second SIGTERM
                server.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        run["server_exit"] = children.stop(server, timeout=5.0)
        run["loadavg_after"] = load_average()
    run["derived"] = derive(run)
    return run


def derive(run: Dict[str, Any]) -> Dict[str, Any]:
    marks = run.get("marks")
    if not marks or run["errors"]:
        return {"ok": False}
    first, last = marks
    wall = last["t"] - first["t"]
    frames = last["frames"] - first["frames"]
    cpu = last["server_cpu_s"] - first["server_cpu_s"]
    user = last["server_user_s"] - first["server_user_s"]
    gens = last["gens"]
    connections = sum(g["connections"] - g["closed"] for g in gens)
    nominal = connections * wall / PERIOD_S
    return {
        "ok": frames > 0 and connections > 0,
        "connections": connections,
        "window_s": wall,
        "frames": frames,
        "cpu_us_per_send": cpu / frames * 1e6 if frames else None,
        "cpu_user_us_per_send": user / frames * 1e6 if frames else None,
        "server_cpu_pct": 100.0 * cpu / wall,
        "load_cpu_pct": 100.0 * (last["load_cpu_s"] - first["load_cpu_s"]) / wall,
        "rss_empty_mb": run["rss_empty"] / 1e6,
        "rss_mb": median(run["rss_samples"]) / 1e6,
        "rss_per_conn": (median(run["rss_samples"]) - run["rss_empty"]) / max(1, connections),
        "delivered": frames / nominal if nominal else 0.0,
        "per_conn_min": min(g["since_min"] for g in gens),
        "per_conn_median": median(g["since_median"] for g in gens),
        "bad_frames": sum(g["bad"] for g in gens),
        "closed": sum(g["closed"] for g in gens),
    }


def summarize(runs: List[Dict[str, Any]], servers: Sequence[str]) -> List[Dict[str, Any]]:
    """Per (N, server): medians over the repeats, ratios to C from them, and the
    median of the CPU ratios to C within each repeat (the runs nearest in time)."""
    out: List[Dict[str, Any]] = []
    for count in sorted({r["count"] for r in runs}):
        rows: Dict[str, Dict[str, Any]] = {}
        for kind in servers:
            ok = [r["derived"] for r in runs
                  if r["count"] == count and r["server"] == kind and r["derived"]["ok"]]
            if not ok:
                continue
            rows[kind] = {"count": count, "server": kind, "repeats": len(ok)}
            for key in ("cpu_us_per_send", "cpu_user_us_per_send", "rss_per_conn",
                        "server_cpu_pct", "load_cpu_pct", "rss_empty_mb", "rss_mb",
                        "delivered"):
                rows[kind][key] = median(d[key] for d in ok)
        floor = rows.get("c")
        by_repeat: Dict[Any, Dict[str, float]] = {}
        for r in runs:
            if r["count"] == count and r["derived"]["ok"]:
                by_repeat.setdefault(r.get("repeat"), {})[r["server"]] = \
                    r["derived"]["cpu_us_per_send"]
        for kind, row in rows.items():
            for key in ("cpu_us_per_send", "rss_per_conn"):
                base = floor[key] if floor else None
                row[key + "_vs_c"] = row[key] / base if base and base > 0 else None
            pairs = [v[kind] / v["c"] for v in by_repeat.values() if kind in v and v.get("c")]
            row["cpu_vs_c_per_repeat"] = median(pairs) if pairs else None
            out.append(row)
    return out


def poller_lines(runs: List[Dict[str, Any]], servers: Sequence[str]) -> List[str]:
    """For each netcore kind on another poller: its CPU per send and RSS per connection
    against netcore on the default poller, the median of the per-repeat ratios."""
    lines = []
    for kind in servers:
        if not kind.startswith("netcore-") or "netcore" not in servers:
            continue
        for count in sorted({r["count"] for r in runs}):
            pairs: Dict[Any, Dict[str, Dict[str, Any]]] = {}
            for r in runs:
                if r["count"] == count and r["derived"]["ok"] and r["server"] in (kind, "netcore"):
                    pairs.setdefault(r.get("repeat"), {})[r["server"]] = r["derived"]
            cpu = [p[kind]["cpu_us_per_send"] / p["netcore"]["cpu_us_per_send"]
                   for p in pairs.values() if len(p) == 2 and p["netcore"]["cpu_us_per_send"]]
            rss = [p[kind]["rss_per_conn"] / p["netcore"]["rss_per_conn"]
                   for p in pairs.values() if len(p) == 2 and p["netcore"]["rss_per_conn"]]
            lines.append(f"{count} connections, {LABELS[kind]} / {LABELS['netcore']}: "
                         f"CPU per send {ratio(median(cpu) if cpu else None, '.3f')}, "
                         f"RSS per connection {ratio(median(rss) if rss else None, '.3f')} "
                         f"(medians of {len(cpu)} per-repeat ratios)")
    return lines


def ratio(v: Optional[float], spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) + "x"


def table(summary: List[Dict[str, Any]]) -> str:
    rows = [[str(s["count"]), LABELS[s["server"]],
             f"{s['cpu_us_per_send']:.2f} ({fmt(s['cpu_user_us_per_send'], '.2f')})",
             f"{ratio(s['cpu_us_per_send_vs_c'])} ({ratio(s.get('cpu_vs_c_per_repeat'))})",
             f"{s['rss_per_conn']:.0f}", ratio(s["rss_per_conn_vs_c"], ".1f"),
             f"{s['rss_empty_mb']:.1f} -> {s['rss_mb']:.1f}", f"{s['server_cpu_pct']:.1f}",
             f"{100 * s['delivered']:.1f} %", str(s["repeats"])]
            for s in summary]
    return fmt_table(["connections", "server", "CPU us / send (user)",
                      "CPU vs C (median of per-repeat ratios)",
                      "RSS B / conn", "RSS vs C", "RSS MB empty -> loaded", "server CPU %",
                      "frames delivered", "runs"], rows)


def parse_counts(text: str) -> List[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--count wants numbers like 8000,15000: {text!r}")
    if not counts or any(n < 1 or n > 19_000 for n in counts):
        raise argparse.ArgumentTypeError("connections must be 1..19000 (the open-files limit "
                                         "of the server process is 20,000)")
    return counts


def parse_servers(text: str) -> List[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in SERVERS:
            raise argparse.ArgumentTypeError(f"unknown server {s!r} (c, netcore, node)")
    return names


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="role")
    srv = sub.add_parser("serve-netcore", help="(internal) the netcore server")
    srv.add_argument("--period", type=float, default=PERIOD_S)
    srv.add_argument("--poller", choices=POLLERS, default=None)
    gen = sub.add_parser("load", help="(internal) one load generator process")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--count", type=int, required=True)
    ap.add_argument("--count", type=parse_counts, default=[8000, 15000],
                    help="connections, or a comma list (default 8000,15000)")
    ap.add_argument("--hold", type=float, default=15.0,
                    help="seconds measured per run (default 15)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per server and count, order rotating (default 3)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between the last connection and the first mark")
    ap.add_argument("--per-proc", type=int, default=5000,
                    help="connections per load-generator process (default 5000)")
    ap.add_argument("--servers", type=parse_servers, default=list(SERVERS),
                    help="c, netcore, node, or a comma list of them (default all three)")
    ap.add_argument("--pollers", default="", metavar="POLLER,...",
                    help="run the netcore server once per poller of its loop, side by side "
                         "in the rotation (e.g. epoll,selectors; default: epoll only)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "floor.json"))
    ap.add_argument("--summarize", metavar="JSON", nargs="+",
                    help="run nothing: print the table of earlier runs (one or more --json files)")
    args = ap.parse_args(argv)
    if args.role == "serve-netcore":
        return serve_netcore(args.period, args.poller)
    if args.role == "load":
        return load(args.port, args.count)

    def log(text: str) -> None:
        print(text, flush=True)

    if args.summarize:
        for path in args.summarize:
            with open(path) as f:
                saved = json.load(f)
            log(table(summarize(saved["runs"], saved["servers"])))
            for line in poller_lines(saved["runs"], saved["servers"]):
                log(line)
            log(f"({path}: {saved['started']} to {saved.get('finished')}; {saved['command']})")
        return 0
    if args.hold <= 0 or args.repeats < 1 or args.per_proc < 1:
        ap.error("--hold, --repeats and --per-proc must be positive")
    if args.pollers:
        pollers = [p.strip() for p in args.pollers.split(",") if p.strip()]
        if any(p not in POLLERS for p in pollers) or "netcore" not in args.servers:
            ap.error(f"--pollers takes {', '.join(POLLERS)} and needs the netcore server")
        at = args.servers.index("netcore")
        args.servers[at:at + 1] = [netcore_kind(p) for p in dict.fromkeys(pollers)]
        if any(p != DEFAULT_POLLER for p in pollers):
            LABELS["netcore"] = f"netcore TCPServer ({DEFAULT_POLLER})"
    _server_cpus, load_cpus = cpu_sets()
    if load_cpus:
        os.sched_setaffinity(0, set(load_cpus))  # keep the driver off the server's CPU
    command = shlex.join(["python3", "bench/floor.py",
                          *(argv if argv is not None else sys.argv[1:])])
    result: Dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M"), "command": command,
        "python": sys.version.split()[0], "machine": machine(), "counts": args.count,
        "hold_s": args.hold, "repeats": args.repeats, "runs": [], "interrupted": None,
    }
    children = Children(os.path.join(os.path.dirname(os.path.abspath(args.json)), "floor-logs"))
    with tempfile.TemporaryDirectory(prefix="floor-") as build_dir:
        cmds = server_commands(list(dict.fromkeys(args.servers)), build_dir, log)
        servers = list(cmds)
        result["servers"] = servers
        if not servers:
            log("no server to measure")
            return 2
        if "node" in cmds:
            result["node"] = subprocess.run([cmds["node"][0], "--version"], capture_output=True,
                                            text=True).stdout.strip()
        total = len(args.count) * args.repeats * len(servers)
        done = 0
        def interrupted(what: str) -> None:
            result["interrupted"] = what
            log(f"\ninterrupted ({what}): stopping what this run started")

        with stoppable(children, interrupted):
            for count in args.count:
                for rep in range(args.repeats):
                    order = servers[rep % len(servers):] + servers[:rep % len(servers)]
                    for kind in order:
                        done += 1
                        log(f"run {done}/{total}: {LABELS[kind]}, {count} connections, "
                            f"repeat {rep + 1}, hold {args.hold:g} s (load {load_average()})")
                        r = run_one(children, kind, cmds[kind], count, args.hold,
                                    args.settle, args.per_proc, log)
                        r["repeat"] = rep
                        result["runs"].append(r)
                        d = r["derived"]
                        if d["ok"]:
                            log(f"  -> {d['cpu_us_per_send']:.2f} us/send, "
                                f"{d['rss_per_conn']:.0f} B/conn, server CPU "
                                f"{d['server_cpu_pct']:.1f} %, delivered "
                                f"{100 * d['delivered']:.1f} %, min "
                                f"{d['per_conn_min']} frames/conn")
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    result["summary"] = summarize(result["runs"], servers)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    m = result["machine"]
    loads = ", ".join(f"{r['loadavg_before']}" for r in result["runs"])
    log("")
    log(table(result["summary"]))
    for line in poller_lines(result["runs"], servers):
        log(line)
    log("")
    log(f"Medians of {args.repeats} run(s) per row, {args.hold:g} s holds, servers' order "
        f"rotating; CPU per send = server utime + stime / frames received; RSS per conn = "
        f"(loaded - empty) / N. Measured {result['started']} to {result['finished']}, "
        f"{m['cpus']} x {m['cpu_model']}, Linux {m['kernel']}, Python {result['python']}"
        + (f", Node {result['node']}" if result.get("node") else "")
        + f"; server on CPU 0, load on the others. Load average (1/5/15 min) before each "
          f"run: {loads}. Command: {command}")
    log(f"runs: {os.path.relpath(args.json)}")
    if result["interrupted"]:
        return 130
    return 0 if result["runs"] and all(r["derived"]["ok"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
