#!/usr/bin/env python3
"""TLS, side by side in one run: native (``serve --tls-cert``), nginx terminating TLS
in front of the plain server (etc/nginx/spelltraction-stream.conf, as shipped but
for its ports and certificate), and the plain server.

Per mode, each with a fresh server (and nginx), loopback only:

- **RSS per idle connection**: ``--rss-count`` bot players (``spelltraction.py
  bots``, TLS through ``SSLObject`` on memory BIOs, never moving) join; the
  server's RSS (and nginx's: master and workers) after they settled, less
  before they came, divided by the players in.
- **CPU per player-tick**: ``--cpu-count`` players ticking every ``--tick-ms``;
  the server's CPU (and nginx's) over ``--window`` seconds, divided by players
  x ticks.

Then, native only: a **handshake flood**, ``--flooders`` connections (threads
over up to 4 processes) doing full TLS handshakes back to back for
``--flood-seconds``, while ``--crowd`` plain players watch their ticks
(tests/hostilekit.py): the handshakes per second the server made, per second
of its CPU (what one core sustains), and the watchers' tick lateness p99
during the flood (and the server's own).

The server and nginx share CPU 0 ("one core"); the load generators run on the
others, in processes of at most ``--per-proc`` connections each (an fd limit
of 20,000 per process is plenty). Everything is bounded: counts by the flags,
every wait by a timeout. ``--json`` writes the figures (default
bench/results/tls.json).

    python3 bench/tls.py                                  # 10,000 / 8,000 / 20 flooders
    python3 bench/tls.py --modes native,plain --rss-count 2000 --cpu-count 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import procstat  # noqa: E402
from procstat import Children, cpu_sets  # noqa: E402

GAME = os.path.join(ROOT, "spelltraction.py")
NGINX_STREAM = os.path.join(ROOT, "etc", "nginx", "spelltraction-stream.conf")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
MODES = ("native", "nginx", "plain")
PROXY_SOURCE = "127.0.0.2"  # the shipped stream config's proxy_bind


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


_HELD: Dict[int, bytes] = {}  # pid -> what was read from its stdout past the last line


def next_line(proc: "subprocess.Popen[str]", timeout: float) -> str:
    """The next line ``proc`` printed, or "" if none came within ``timeout`` s.

    Reads its stdout's descriptor itself: a child that prints several lines
    at once would leave the later ones in the text wrapper's buffer, where a
    select() on the descriptor cannot see them (procstat.read_line's case).
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    held = _HELD.get(proc.pid, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in held:
        left = deadline - time.monotonic()
        if left <= 0:
            _HELD[proc.pid] = held
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                _HELD[proc.pid] = held
                return ""
            held += chunk
    line, _, rest = held.partition(b"\n")
    _HELD[proc.pid] = rest
    return line.decode("utf-8", "replace") + "\n"


class Tracked(Children):
    """Children that remember every process group they started (the smoke test
    checks that none is left running)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.started: List[int] = []

    def start(self, cmd: List[str], cpus: Sequence[int], name: str,
              stdin_pipe: bool = False, nice: int = 0) -> "subprocess.Popen[str]":
        proc = super().start(cmd, cpus, name, stdin_pipe, nice)
        self.started.append(proc.pid)
        return proc


# -- a certificate ----------------------------------------------------------------


def make_certificate(directory: str) -> Tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (fullchain.pem, privkey.pem)."""
    cert, key = os.path.join(directory, "fullchain.pem"), os.path.join(directory, "privkey.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


# -- the processes measured --------------------------------------------------------


def group_rss(pgid: int) -> int:
    """Resident bytes of the live processes of process group ``pgid`` (nginx's master
    and workers; a server alone in its group)."""
    return sum(int(f[21]) * procstat.PAGE for _pid, f in procstat.all_proc_stats()
               if int(f[2]) == pgid)


class Target:
    """A server (and for ``nginx`` mode nginx in front of it) on CPU 0: where players go,
    what they cost (RSS and CPU of every process measured, summed)."""

    def __init__(self, children: Children, mode: str, args: argparse.Namespace,
                 cert: str, key: str, players: int, workdir: str) -> None:
        self.children = children
        self.mode = mode
        server_cpus, _ = cpu_sets()
        flags = ["serve", "--host", "127.0.0.1", "--port", "0", "--no-data", "--admin-port", "0",
                 "--tick-ms", str(args.tick_ms), "--max-clients", str(players + 1000),
                 "--trusted-proxies", PROXY_SOURCE, "--log-level", "warning"]
        if mode == "native":
            flags += ["--tls-cert", cert, "--tls-key", key]
        self.server = children.start([sys.executable, GAME, *flags], server_cpus, f"{mode}-server")
        self.port = self.admin = 0
        deadline = time.monotonic() + 30
        while not (self.port and self.admin):
            line = next_line(self.server, 1.0)
            if "listening on" in line:
                self.port = int(line.rsplit(":", 1)[1])
            elif line.startswith("admin ") and "http://" in line:
                self.admin = int(line.rsplit(":", 1)[1].strip("/ \n"))
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError(f"{mode} server did not start: "
                                   + children.log_tail(f"{mode}-server"))
        self.nginx: Optional["subprocess.Popen[str]"] = None
        self.player_port = self.port
        if mode == "nginx":
            self.nginx, self.player_port = start_nginx(children, workdir, cert, key, self.port,
                                                       players, server_cpus)
        self.pgids = [self.server.pid] + ([self.nginx.pid] if self.nginx is not None else [])

    def rss(self) -> int:
        return sum(group_rss(pgid) for pgid in self.pgids)

    def cpu(self) -> float:
        """CPU seconds used so far, to the nanosecond (schedstat), every process summed."""
        total = 0.0
        for pid, fields in procstat.all_proc_stats():
            if int(fields[2]) in self.pgids:
                try:
                    total += procstat.cpu_runtime(pid)
                except OSError:
                    pass  # gone meanwhile
        return total

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats.json", timeout=10) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        if self.nginx is not None:
            self.children.stop(self.nginx)
        self.children.stop(self.server)


def start_nginx(children: Children, workdir: str, cert: str, key: str, game_port: int,
                players: int, cpus: Sequence[int]) -> Tuple["subprocess.Popen[str]", int]:
    """etc/nginx/spelltraction-stream.conf as shipped, on a free loopback port in front
    of ``game_port``, with this run's certificate; on one core (one worker per
    9,000 players, for the open-files limit)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) or not os.path.exists(STREAM_MODULE):
        raise RuntimeError("nginx mode needs nginx and its stream module: "
                           "apt-get install nginx-light libnginx-mod-stream")
    port = procstat.free_port()
    text = open(NGINX_STREAM).read()
    for old, new in [("/etc/ssl/spelltraction/fullchain.pem", cert),
                     ("/etc/ssl/spelltraction/privkey.pem", key),
                     ("listen 12151 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("listen [::]:12151 ssl;", ""),
                     ("127.0.0.1:12150;", f"127.0.0.1:{game_port};")]:
        assert old in text, f"{old!r} is no longer in {NGINX_STREAM}"
        text = text.replace(old, new)
    directory = os.path.join(workdir, f"nginx-{port}")
    os.makedirs(directory)
    with open(os.path.join(directory, "stream.conf"), "w") as f:
        f.write(text)
    # A client and an upstream socket per player: past ~9,000 players one worker
    # would pass this machine's hard limit of open files (20,000), so more
    # workers, all on the same core as before.
    workers = max(1, math.ceil(players / 9_000))
    fds = min(2 * math.ceil(players / workers) + 1000, 19_500)
    with open(os.path.join(directory, "nginx.conf"), "w") as f:
        f.write(f"load_module {STREAM_MODULE};\npid {directory}/nginx.pid;\n"
                f"error_log {directory}/error.log;\ndaemon off;\n"
                f"worker_processes {workers};\nworker_rlimit_nofile {fds};\n"
                f"events {{ worker_connections {fds}; }}\ninclude {directory}/stream.conf;\n")
    proc = children.start([nginx, "-c", os.path.join(directory, "nginx.conf"), "-p", directory,
                           "-e", os.path.join(directory, "error.log")], cpus, f"nginx-{port}")
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not listen: " + children.log_tail(f"nginx-{port}"))
            time.sleep(0.05)


# -- the players ---------------------------------------------------------------------


def start_bots(children: Children, target: Target, count: int, args: argparse.Namespace,
               hold: float, name: str) -> Tuple["subprocess.Popen[str]", Dict[str, Any]]:
    """``count`` bot players on the load CPUs; returns once all are in (or the ramp
    timed out): the process and {"connected", "ramp_s"}."""
    _, load_cpus = cpu_sets()
    procs = max(1, math.ceil(count / args.per_proc))
    tls = [] if target.mode == "plain" else ["--tls", "--insecure"]
    cmd = [sys.executable, GAME, "bots", "--host", "127.0.0.1", "--port",
           str(target.player_port), "--count", str(count), "--procs", str(procs),
           "--move-every", str(args.move_every), "--probes", "0", "--duration", str(hold),
           "--ramp-timeout", str(args.ramp_timeout), "--source-addresses", "none", *tls]
    bots = children.start(cmd, load_cpus, name)
    started = time.monotonic()
    while True:
        line = next_line(bots, 5.0)
        if line.startswith("ramp:"):
            connected = int(line.split()[1].split("/")[0])
            return bots, {"connected": connected, "ramp_s": time.monotonic() - started}
        if line.startswith("ramp timed out"):
            raise RuntimeError(f"{name}: {line.strip()}")
        if bots.poll() is not None or time.monotonic() - started > args.ramp_timeout + 30:
            raise RuntimeError(f"{name}: the bots ended before all were in: "
                               + children.log_tail(name))


def measure_rss(children: Children, mode: str, args: argparse.Namespace, cert: str, key: str,
                workdir: str) -> Dict[str, Any]:
    target = Target(children, mode, args, cert, key, args.rss_count, workdir)
    try:
        time.sleep(args.settle)
        before = target.rss()
        bots, ramp = start_bots(children, target, args.rss_count, args, args.settle * 2 + 30,
                                f"{mode}-rss-bots")
        try:
            time.sleep(args.settle)
            after = target.rss()
            players = target.stats()["connections"]
        finally:
            children.stop(bots)
    finally:
        target.stop()
    per = (after - before) / max(1, ramp["connected"])
    log(f"{mode:7s} RSS: {ramp['connected']} connections in {ramp['ramp_s']:.1f} s, "
        f"{before / 1e6:.1f} -> {after / 1e6:.1f} MB: {per:,.0f} B per connection")
    return {"connections": ramp["connected"], "server_connections": players,
            "rss_before": before, "rss_after": after, "bytes_per_connection": per,
            "ramp_s": ramp["ramp_s"]}


def measure_cpu(children: Children, mode: str, args: argparse.Namespace, cert: str, key: str,
                workdir: str) -> Dict[str, Any]:
    target = Target(children, mode, args, cert, key, args.cpu_count, workdir)
    try:
        bots, ramp = start_bots(children, target, args.cpu_count, args,
                                args.settle + args.window + 30, f"{mode}-cpu-bots")
        try:
            time.sleep(args.settle)
            ticks0, cpu0, t0 = target.stats()["tick"].get("fired", 0), target.cpu(), \
                time.monotonic()
            time.sleep(args.window)
            ticks1, cpu1, t1 = target.stats()["tick"].get("fired", 0), target.cpu(), \
                time.monotonic()
            players = target.stats()["connections"]
        finally:
            children.stop(bots)
    finally:
        target.stop()
    ticks = max(1, ticks1 - ticks0)
    us = (cpu1 - cpu0) / (max(1, players) * ticks) * 1e6
    log(f"{mode:7s} CPU: {players} players x {ticks} ticks in {t1 - t0:.1f} s, "
        f"{cpu1 - cpu0:.2f} CPU s: {us:.2f} us per player-tick")
    return {"players": players, "ticks": ticks, "seconds": t1 - t0, "cpu_s": cpu1 - cpu0,
            "us_per_player_tick": us, "ramp_s": ramp["ramp_s"]}


# -- the handshake flood --------------------------------------------------------------


def flood_worker(port: int, threads: int, seconds: float) -> None:
    """Full TLS handshakes back to back from ``threads`` threads for ``seconds`` (the
    handshake releases the GIL); prints {"handshakes", "errors"} as JSON."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    counts = [0] * threads
    errors = [0] * threads
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        while time.monotonic() < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="localhost"):
                        counts[k] += 1
            except OSError:
                errors[k] += 1
                time.sleep(0.01)

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    print(json.dumps({"handshakes": sum(counts), "errors": sum(errors)}), flush=True)


def measure_flood(children: Children, args: argparse.Namespace, cert: str, key: str,
                  workdir: str) -> Dict[str, Any]:
    from hostilekit import Crowd, lateness_by_window

    target = Target(children, "native", args, cert, key, args.crowd + args.flooders, workdir)
    _, load_cpus = cpu_sets()
    try:
        tcp = args.crowd - args.crowd // 4
        with Crowd(target.port, tcp=tcp, ws_count=args.crowd - tcp, move_every=None) as crowd:
            time.sleep(args.settle)
            procs = min(4, args.flooders)
            shares = procstat.spread(args.flooders, math.ceil(args.flooders / procs))
            before, cpu0 = target.stats()["tls"]["handshakes"], target.cpu()
            t0 = crowd.mark()
            flooders = [children.start([sys.executable, __file__, "--flood-worker", "--port",
                                        str(target.port), "--threads", str(n), "--flood-seconds",
                                        str(args.flood_seconds)], load_cpus, f"flood-{k}")
                        for k, n in enumerate(shares)]
            made = errors = 0
            for k, proc in enumerate(flooders):
                line = next_line(proc, args.flood_seconds + 60)
                if line.strip():
                    got = json.loads(line)
                    made, errors = made + got["handshakes"], errors + got["errors"]
                children.stop(proc)
            t1 = time.monotonic()
            after, cpu1 = target.stats()["tls"]["handshakes"], target.cpu()
            server_p99 = target.stats()["tick"].get("lateness_p99_s", 0.0) * 1000
            late = sorted(x for window in lateness_by_window(
                crowd.watchers, args.tick_ms / 1000, t0, [0.0, args.flood_seconds])
                for x in window)
            dropped = len(crowd.dropped())
    finally:
        target.stop()
    p99 = late[max(0, math.ceil(len(late) * 0.99) - 1)] * 1000 if late else float("nan")
    handshakes = after - before
    seconds = t1 - t0
    cpu = cpu1 - cpu0
    log(f"flood: {args.flooders} connections, {handshakes} handshakes in {seconds:.1f} s "
        f"({handshakes / seconds:,.0f}/s, {handshakes / max(cpu, 1e-9):,.0f} per server CPU s); "
        f"watchers' tick lateness p99 {p99:.1f} ms, {dropped} dropped")
    return {"flooders": args.flooders, "handshakes": handshakes, "client_handshakes": made,
            "client_errors": errors, "seconds": seconds, "server_cpu_s": cpu,
            "handshakes_per_s": handshakes / seconds,
            "handshakes_per_cpu_s": handshakes / max(cpu, 1e-9),
            "watchers": len(crowd.watchers), "watchers_dropped": dropped,
            "tick_lateness_p99_ms": p99, "server_tick_lateness_p99_ms": server_p99}


# -- the run ------------------------------------------------------------------------------


def table(result: Dict[str, Any]) -> str:
    from report import fmt_table

    rows = []
    for mode in result["modes"]:
        rss, cpu = result["rss"].get(mode, {}), result["cpu"].get(mode, {})
        rows.append([mode, rss.get("connections", "-"),
                     f"{rss['bytes_per_connection']:,.0f}" if rss else "-",
                     cpu.get("players", "-"),
                     f"{cpu['us_per_player_tick']:.2f}" if cpu else "-"])
    text = fmt_table(["mode", "idle conns", "RSS B/conn", "players", "CPU us/player-tick"], rows)
    flood = result.get("flood")
    if flood:
        text += (f"\nhandshake flood ({flood['flooders']} connections, native): "
                 f"{flood['handshakes_per_s']:,.0f} handshakes/s, "
                 f"{flood['handshakes_per_cpu_s']:,.0f} per server CPU second; watchers' tick "
                 f"lateness p99 {flood['tick_lateness_p99_ms']:.1f} ms\n")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES),
                    help="which of native,nginx,plain (default all three)")
    ap.add_argument("--rss-count", type=int, default=10_000, help="idle connections (RSS)")
    ap.add_argument("--cpu-count", type=int, default=8_000, help="players ticking (CPU)")
    ap.add_argument("--tick-ms", type=int, default=250)
    ap.add_argument("--move-every", type=float, default=0.0,
                    help="seconds between each player's moves (0: idle, the default)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of CPU measured")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to settle before reading")
    ap.add_argument("--per-proc", type=int, default=5_000, help="players per load process")
    ap.add_argument("--ramp-timeout", type=float, default=300.0)
    ap.add_argument("--flooders", type=int, default=20, help="handshake-flood connections")
    ap.add_argument("--flood-seconds", type=float, default=10.0)
    ap.add_argument("--crowd", type=int, default=40, help="players watching during the flood")
    ap.add_argument("--no-flood", action="store_true", help="skip the handshake flood")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "tls.json"))
    ap.add_argument("--flood-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.flood_worker:
        flood_worker(args.port, args.threads, args.flood_seconds)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}: choose from {','.join(MODES)}")
    procstat.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="bench-tls-")
    children = Tracked(os.path.join(workdir, "logs"))
    result: Dict[str, Any] = {"machine": procstat.machine(), "modes": modes, "rss": {}, "cpu": {},
                              "args": {k: v for k, v in vars(args).items()
                                       if k not in ("flood_worker", "port", "threads")}}
    try:
        with procstat.stoppable(children, lambda why: log(f"stopped: {why}")):
            cert, key = make_certificate(workdir)
            for mode in modes:
                result["rss"][mode] = measure_rss(children, mode, args, cert, key, workdir)
            for mode in modes:
                result["cpu"][mode] = measure_cpu(children, mode, args, cert, key, workdir)
            if not args.no_flood and "native" in modes:
                result["flood"] = measure_flood(children, args, cert, key, workdir)
    finally:
        children.kill_all()
    result["pgids"] = children.started
    print(table(result), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
