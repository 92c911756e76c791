#!/usr/bin/env python3
"""Floods against a server with 200 players, and what the players felt.

By default each attack gets a fresh server of its own (``spelltraction.py
serve``, pinned to CPU 0, with ``--exempt ''`` where the server has it, so
no address is exempt from the per-address limits; ``--max-clients 300`` for
the refuse storm, the default 15,000 for the others so that their
connections get in), and 200 players (180 TCP, 20 WebSocket, each from its
own loopback address 127.0.2.N, moving every 1-4 s: tests/hostilekit.py's
crowd). The attack runs from separate processes (niced, on the other CPUs),
its connections spread over loopback addresses 127.0.6.N, four to each:

=============  ===========================================================
none           nothing: the measurement's own floor, on this machine, now
ping           20 WebSocket connections sending pings as fast as they can
fragments      200 WebSocket connections, each an unfinished message of
               4,000 one-byte fragments
continuations  one WebSocket connection: a message start, then empty
               continuation frames (up to 4.2 million)
refuse         the server filled to --max-clients, then 5,000 connects/s,
               each sending a HELLO, refused or not
never-read     1,000 players that send HELLO and never read (small receive
               buffers, so a backlog reaches the server within seconds)
slowloris      300 connections trickling an HTTP request head, a byte a second
metrics        3,000 players joined (so a scrape costs what it does on a
               full server), then 20 connections sending 99 pipelined
               ``GET /metrics`` each, again and again; the server runs with
               ``--public-stats``, so the scrapes reach the figures
hello-close    a version-2 HELLO, then close, from one address, as fast as
               it goes: the server runs with a store (``--data``), and the
               row shows the players' rows it holds after
=============  ===========================================================

For each it prints the players' longest wait for a TICK, the TICKs' delivery
lateness p99 (tests/hostilekit.py ``Crowd.lateness``), the server's RSS
before / peak / after and fds before / after (after: once back to the
baseline, or 10 s after the attacker left), ticks the server skipped, players
dropped, and what the attacker got. Targets: max gap < 500 ms, lateness p99
< 50 ms, RSS back within 15 %, fds back to the baseline.

    python3 bench/attack.py                          # everything, ~3 minutes
    python3 bench/attack.py --attacks ping,refuse --json results.json
    python3 bench/attack.py --host 127.0.0.1 --port 12150 --pid 1234  # a running server

Loopback only; every attack is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hostilekit import (  # type: ignore[import-not-found]  # noqa: E402
    GAME, Crowd, HostileServer, Resources, connect, http_get, open_fds, rss_bytes,
)
from procstat import child_setup, machine  # noqa: E402
from report import fmt_table  # noqa: E402

import spelltraction as st  # noqa: E402
from netcore import websocket as ws  # noqa: E402

ATTACKS = ("none", "ping", "fragments", "continuations", "refuse", "never-read", "slowloris",
           "metrics", "hello-close")
TARGETS = {"max_gap_ms": 500, "lateness_p99_ms": 50, "rss_back_pct": 15}
LOOPBACK = ("127.", "::1", "localhost")
FDS_PER_PROCESS = 10_000
SERVE_HELP = subprocess.run([sys.executable, GAME, "serve", "--help"], capture_output=True,
                            text=True).stdout
SERVER_HAS_EXEMPT = "--exempt" in SERVE_HELP  # attackers per process: well under the 20,000 open-files limit


# =============================================================================
# The attackers: each runs in its own process (``attack.py --run NAME``), is
# bounded in time and count, and prints one JSON line of what it saw.
# =============================================================================


def ws_open(host: str, port: int, source: Optional[str] = None) -> Tuple[socket.socket, str]:
    """A WebSocket connection after its 101, or the refusal as a short string."""
    sock = connect(port, host, source)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(ws.client_handshake(f"{host}:{port}", st.WS_PATH, key))
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError as exc:
        return sock, f"refused: {exc.__class__.__name__}"
    if not head.startswith(b"HTTP/1.1 101"):
        return sock, f"refused: {describe(head)}"
    return sock, ""


def describe(data: bytes) -> str:
    """What a server said before closing: an HTTP status, an ERROR frame, a Close."""
    if data.startswith(b"HTTP/"):
        return data.split(b"\r\n", 1)[0].decode("latin-1")
    if len(data) >= 3 and data[2] == st.ERROR:
        try:
            err = st.decode(data[2:2 + int.from_bytes(data[:2], "big")])
            return f"ERROR {err.code}"  # type: ignore[union-attr]
        except (ValueError, AttributeError):
            pass
    if not data:
        return "closed, nothing said"
    return f"{len(data)} bytes"


def ws_close_code(tail: bytes) -> str:
    """The close code of the last Close frame in ``tail`` (the end of a stream)."""
    i = tail.rfind(b"\x88")
    while i >= 0:
        n = tail[i + 1] if i + 1 < len(tail) else 0
        if 2 <= n <= 125 and i + 4 <= len(tail):
            return f"close {int.from_bytes(tail[i + 2:i + 4], 'big')}"
        i = tail.rfind(b"\x88", 0, i)
    return "no close frame"


def ready(read: List[socket.socket], write: List[socket.socket],
          timeout: float) -> Tuple[List[socket.socket], List[socket.socket]]:
    """``select`` for any number of descriptors (select.select stops at 1024)."""
    poller = select.poll()
    by_fd = {}
    for s in read:
        poller.register(s, select.POLLIN)
        by_fd[s.fileno()] = s
    for s in write:
        poller.register(s, select.POLLOUT | (select.POLLIN if s.fileno() in by_fd else 0))
        by_fd[s.fileno()] = s
    r, w = [], []
    for fd, ev in poller.poll(timeout * 1000):
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            r.append(by_fd[fd])
        if ev & select.POLLOUT:
            w.append(by_fd[fd])
    return r, w


class Flood:
    """Nonblocking sockets that each send a byte blob again and again, and read.

    Stops at ``deadline`` or when every socket is closed; counts bytes out and
    in and keeps each socket's last bytes in, to say how it ended.
    """

    def __init__(self, socks: List[socket.socket], blob: Callable[[int], bytes],
                 limit: int = 0) -> None:
        self.socks = socks
        self.blob = blob
        self.limit = limit  # bytes to send per socket at most (0: no limit)
        self.sent = [0] * len(socks)
        self.received = 0
        self.tails = [b""] * len(socks)
        self.open = set(range(len(socks)))
        self.pending = [b""] * len(socks)
        for s in socks:
            s.setblocking(False)

    def run(self, deadline: float) -> None:
        index = {s.fileno(): i for i, s in enumerate(self.socks)}
        while self.open and time.monotonic() < deadline:
            live = [self.socks[i] for i in self.open]
            writers = [s for s in live if not self.limit or self.sent[index[s.fileno()]] < self.limit]
            r, w = ready(live, writers, 0.05)
            for s in r:
                i = index[s.fileno()]
                try:
                    data = s.recv(262144)
                except OSError:
                    data = b""
                self.received += len(data)
                if data:
                    self.tails[i] = (self.tails[i] + data)[-512:]
                else:
                    self.open.discard(i)
            for s in w:
                i = index[s.fileno()]
                if i not in self.open:
                    continue
                out = self.pending[i] or self.blob(i)
                try:
                    n = s.send(out)
                except BlockingIOError:
                    continue
                except OSError:
                    self.open.discard(i)
                    continue
                self.sent[i] += n
                self.pending[i] = out[n:]

    def endings(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for i, tail in enumerate(self.tails):
            what = "still open" if i in self.open else ws_close_code(tail)
            out[what] = out.get(what, 0) + 1
        return out


def attack_source(i: int) -> str:
    """Attackers come from many loopback addresses, 4 connections each (a botnet),
    so what stops them is the defence under test, not the per-address limit."""
    return f"127.0.6.{1 + (i // 4) % 250}"


def _ws_crowd(host: str, port: int, count: int) -> Tuple[List[socket.socket], Dict[str, int]]:
    socks, refused = [], {}  # type: Tuple[List[socket.socket], Dict[str, int]]
    for i in range(count):
        try:
            sock, why = ws_open(host, port, attack_source(i))
        except OSError as exc:
            refused[f"refused: {exc.__class__.__name__}"] = refused.get(
                f"refused: {exc.__class__.__name__}", 0) + 1
            continue
        if why:
            refused[why] = refused.get(why, 0) + 1
            sock.close()
        else:
            socks.append(sock)
    return socks, refused


def masked(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    return ws.frame(payload, opcode, fin, mask_key=os.urandom(4))


def attack_ping(host: str, port: int, seconds: float, n: int = 20) -> Dict[str, Any]:
    socks, refused = _ws_crowd(host, port, n)
    ping = masked(b"x" * 125, ws.PING)
    blob = ping * (65536 // len(ping))
    flood = Flood(socks, lambda i: blob)
    flood.run(time.monotonic() + seconds)
    return {"connections": len(socks), "refused": refused, "mb_sent": sum(flood.sent) / 1e6,
            "mb_received": flood.received / 1e6, "endings": flood.endings()}


def attack_fragments(host: str, port: int, seconds: float, n: int = 200,
                     fragments: int = 4000) -> Dict[str, Any]:
    socks, refused = _ws_crowd(host, port, n)
    one = masked(b"x", ws.BINARY, fin=False) + \
        b"".join(masked(b"x", ws.CONTINUATION, fin=False) for _ in range(fragments - 1))
    flood = Flood(socks, lambda i: one, limit=len(one))
    flood.run(time.monotonic() + seconds)  # sends each its message, then holds them
    return {"connections": len(socks), "refused": refused, "mb_sent": sum(flood.sent) / 1e6,
            "all_sent": sum(s >= len(one) for s in flood.sent), "endings": flood.endings()}


def attack_continuations(host: str, port: int, seconds: float,
                         frames: int = 4_200_000) -> Dict[str, Any]:
    socks, refused = _ws_crowd(host, port, 1)
    empty = ws.frame(b"", ws.CONTINUATION, fin=False, mask_key=b"\x01\x02\x03\x04")
    chunk = empty * 10_000
    start = masked(b"x", ws.BINARY, fin=False)
    flood = Flood(socks, lambda i: chunk, limit=len(start) + frames * len(empty))
    flood.pending[0] = start
    flood.run(time.monotonic() + seconds)
    sent = max(0, sum(flood.sent) - len(start))
    return {"connections": len(socks), "refused": refused, "frames_sent": sent // len(empty),
            "mb_sent": sum(flood.sent) / 1e6, "endings": flood.endings()}


def attack_refuse(host: str, port: int, seconds: float, fill: int = 0,
                  rate: float = 5000.0, ready_file: str = "") -> Dict[str, Any]:
    """Fill the server with ``fill`` reading players, then connect at ``rate``/s.

    The process that fills creates the file ``ready_file`` once its players are
    in; every storming process starts when that file exists (at most 30 s on).
    """
    fillers = []
    welcomed = 0
    filler_said: Dict[str, int] = {}
    for i in range(fill):
        try:
            s = connect(port, host, f"127.0.4.{1 + i % 250}" if i < 250 else None)
            s.sendall(st.frame(st.Hello()))
            first = s.recv(4096)
            if first[2:3] == bytes([st.WELCOME]):
                welcomed += 1
            else:
                filler_said[describe(first)] = filler_said.get(describe(first), 0) + 1
        except OSError:
            continue
        s.setblocking(False)
        fillers.append(s)
    if fill:
        open(ready_file, "w").close()
    give_up = time.monotonic() + 30
    while not os.path.exists(ready_file) and time.monotonic() < give_up:
        time.sleep(0.01)
    outcomes: Dict[str, int] = {}
    live: Dict[socket.socket, bytes] = {}
    attempts = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    sources = ["127.0.0.1"] + [f"127.0.3.{i}" for i in range(1, 16)]
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = int((now - t0) * rate)
        while attempts < due and len(live) < 3000:
            s = socket.socket()
            s.setblocking(False)
            try:
                s.bind((sources[attempts % len(sources)], 0))
            except OSError:
                pass
            attempts += 1
            err = s.connect_ex((host, port))
            if err not in (0, 115):  # EINPROGRESS
                outcomes["connect failed"] = outcomes.get("connect failed", 0) + 1
                s.close()
                continue
            live[s] = b""
        r, w = ready(list(live), [s for s, v in live.items() if v == b""], 0.002)
        for s in w:
            try:
                s.send(st.frame(st.Hello()))
                live[s] = b"?"  # sent; now wait for what the server says
            except OSError:
                outcomes["reset"] = outcomes.get("reset", 0) + 1
                live.pop(s, None)
                s.close()
        for s in r:
            if s not in live:
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            said = describe(data) if data else "closed, nothing said"
            if data[2:3] == bytes([st.WELCOME]):
                said = "joined"
            outcomes[said] = outcomes.get(said, 0) + 1
            live.pop(s)
            s.close()  # and at once try again: the next due connect
        for f in fillers:  # the fillers are players: read their ticks
            try:
                f.recv(65536)
            except OSError:
                pass
    for s in live:
        s.close()
    for f in fillers:
        f.close()
    elapsed = time.monotonic() - t0
    return {"fillers": len(fillers), "fillers_welcomed": welcomed, "fillers_refused": filler_said, "attempts": attempts, "rate_per_s": attempts / elapsed,
            "outcomes": outcomes}


def attack_never_read(host: str, port: int, seconds: float, n: int = 1000,
                      rcvbuf: int = 4096) -> Dict[str, Any]:
    """``n`` players that never read, with small receive buffers; who was cut."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            s.bind((f"127.0.5.{1 + i % 250}", 0))
        except OSError:
            pass
        try:
            s.connect((host, port))
            s.sendall(st.frame(st.Hello()))
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(seconds)
    states: Dict[str, int] = {}
    for s in socks:
        state = tcp_state(s)
        states[state] = states.get(state, 0) + 1
        s.close()
    return {"connections": len(socks), "states_at_end": states}


TCP_STATES = {1: "established", 7: "closed (reset)", 8: "cut (FIN received)"}


def tcp_state(sock: socket.socket) -> str:
    """The kernel's TCP state of ``sock`` (Linux TCP_INFO), to see who was cut."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        return "closed (reset)"
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), 8)
    except OSError:
        return "unknown"
    return TCP_STATES.get(info[0], f"state {info[0]}")


def attack_slowloris(host: str, port: int, seconds: float, n: int = 300) -> Dict[str, Any]:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1000
    socks: List[socket.socket] = []
    refused = 0
    for i in range(n):
        try:
            s = connect(port, host, attack_source(i))
        except OSError:
            refused += 1
            continue
        s.setblocking(False)
        socks.append(s)
    pos = [0] * len(socks)
    said = [b""] * len(socks)
    open_ = set(range(len(socks)))
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            s = socks[i]
            try:
                data = s.recv(4096)
                if not data:
                    open_.discard(i)
                said[i] += data
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(i)
                continue
            if i in open_:
                try:
                    s.send(head[pos[i]:pos[i] + 1])
                    pos[i] += 1
                except OSError:
                    open_.discard(i)
        time.sleep(1.0)
    endings: Dict[str, int] = {}
    for i, s in enumerate(socks):
        what = "still open" if i in open_ else describe(said[i])
        endings[what] = endings.get(what, 0) + 1
        s.close()
    return {"connections": len(socks), "connect_failed": refused, "endings": endings}


def attack_metrics(host: str, port: int, seconds: float, fill: int = 3000, n: int = 20,
                   pipelined: int = 99, ready_file: str = "") -> Dict[str, Any]:
    """``fill`` players (open files: a scrape lists them), then ``n`` connections that
    each send ``pipelined`` GET /metrics at once, read the answers, and do it again.
    ``ready_file`` is created once the players are in: the driver's "before"."""
    fillers = []
    for i in range(fill):
        try:
            s = connect(port, host, f"127.0.7.{1 + i % 250}")
            s.sendall(st.frame(st.Hello()))
            s.setblocking(False)
            fillers.append(s)
        except OSError:
            continue
    time.sleep(1.0)  # their WELCOMEs, and a tick or two
    if ready_file:
        open(ready_file, "w").close()
        time.sleep(1.0)  # the driver's "before"
    burst = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * pipelined
    answers: Dict[str, int] = {}
    bursts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        socks = []
        for i in range(n):
            try:
                s = connect(port, host, attack_source(i))
                s.sendall(burst)
                s.setblocking(False)
                socks.append(s)
            except OSError:
                answers["connect failed"] = answers.get("connect failed", 0) + 1
        got = {s: b"" for s in socks}
        live = set(socks)
        while live and time.monotonic() < deadline + 5:
            r, _ = ready(list(live) + fillers, [], 0.05)
            for s in r:
                try:
                    data = s.recv(1 << 20)
                except OSError:
                    data = b""
                if s in live:
                    got[s] += data
                    if not data or got[s].count(b"HTTP/1.1 ") >= pipelined:
                        live.discard(s)
        for s, data in got.items():
            for status in data.split(b"HTTP/1.1 ")[1:]:
                key = f"HTTP {status[:3].decode('latin-1')}"
                answers[key] = answers.get(key, 0) + 1
            s.close()
        bursts += 1
    for f in fillers:
        f.close()
    return {"fillers": len(fillers), "bursts": bursts, "outcomes": answers}


def attack_hello_close(host: str, port: int, seconds: float) -> Dict[str, Any]:
    """Version-2 HELLOs, each on a new connection closed at once, from one address."""
    hello = st.frame(st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, b"", b""))
    sent = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s = connect(port, host, "127.0.8.1")
            s.sendall(hello)
            s.close()
            sent += 1
        except OSError:
            failed += 1
            time.sleep(0.001)
    return {"hellos": sent, "rate_per_s": sent / seconds, "attempts": sent,
            "outcomes": {"connect failed": failed} if failed else {}}


def attack_none(host: str, port: int, seconds: float) -> Dict[str, Any]:
    """No attack: the measurement's own floor on this machine, right now."""
    time.sleep(seconds)
    return {}


RUNNERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "none": attack_none,
    "ping": attack_ping,
    "fragments": attack_fragments,
    "continuations": attack_continuations,
    "refuse": attack_refuse,
    "never-read": attack_never_read,
    "slowloris": attack_slowloris,
    "metrics": attack_metrics,
    "hello-close": attack_hello_close,
}


# =============================================================================
# The driver: server, players, one attack at a time, figures.
# =============================================================================


class Target:
    """The server under attack: ours (a fresh subprocess per attack) or one at --host/--port."""

    def __init__(self, args: argparse.Namespace, attack: str) -> None:
        self.server: Optional[HostileServer] = None
        self.flags: List[str] = []
        self.max_clients = args.max_clients
        self.admin_port = args.admin_port  # figures from here: it answers even when full
        self.data = ""  # our server's store, for the attacks that need one
        if args.port:
            self.host, self.port, self.pid = args.host, args.port, args.pid
            return
        # The refuse storm is measured at --max-clients 300, a full server;
        # the other floods at the default, so that their connections get in.
        if attack != "refuse":
            self.max_clients = 15_000
        flags = ["--max-clients", str(self.max_clients), "--log-level", "warning",
                 "--tick-ms", str(args.tick_ms)]
        if SERVER_HAS_EXEMPT:
            flags += ["--exempt", ""]  # nobody exempt from the per-address limits
        if "--admin-port" in SERVE_HELP:
            flags += ["--admin-port", "0"]
        if attack == "metrics" and "--public-stats" in SERVE_HELP:
            flags += ["--public-stats"]  # the scrapes reach the figures, as a careless setup's
        if attack == "hello-close":
            self.data = tempfile.mkdtemp(prefix="attack-data-")
            flags += ["--data", self.data]
        self.flags = flags + list(args.server_flag)
        self.server = HostileServer(*self.flags)
        self.host, self.port, self.pid = "127.0.0.1", self.server.port, self.server.pid
        if "--admin-port" in flags:
            self.admin_port = self.server.admin_port()
        if args.pin and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(self.pid, {0})
            os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))

    def resources(self) -> Optional[Resources]:
        """RSS and fds, if we know the pid and it is alive."""
        try:
            return Resources(rss_bytes(self.pid), open_fds(self.pid)) if self.pid else None
        except OSError:
            return None

    def get(self, path: str) -> bytes:
        """The body of ``GET path`` from the admin port if any, else the game port."""
        return bytes(http_get(self.host, self.admin_port or self.port, path, timeout=3)[2])

    def tick_figures(self) -> Dict[str, Any]:
        """The server's tick counters from /stats.json (empty if it won't say)."""
        try:
            return dict(json.loads(self.get("/stats.json")).get("tick", {}))
        except (OSError, ValueError):
            return {}

    def connections(self) -> Optional[int]:
        """Connections the server holds now, from /stats.json (None if it won't say)."""
        try:
            return int(json.loads(self.get("/stats.json"))["connections"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def lateness_buckets(self) -> Dict[float, float]:
        """The server's own tick lateness histogram from /metrics: {le: cumulative count}."""
        out: Dict[float, float] = {}
        try:
            text = self.get("/metrics").decode()
        except (OSError, UnicodeDecodeError):
            return out
        for line in text.splitlines():
            if line.startswith("spelltraction_tick_lateness_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[float(le)] = float(line.rsplit(" ", 1)[1])
        return out

    def stored_players(self) -> Optional[Tuple[int, int]]:
        """(rows, of which online) in our server's store, if it has one."""
        if not self.data:
            return None
        import sqlite3

        db = sqlite3.connect(f"file:{os.path.join(self.data, st.DATA_FILE)}?mode=ro", uri=True)
        try:
            rows, online = db.execute("SELECT count(*), coalesce(sum(online), 0) "
                                      "FROM players").fetchone()
        finally:
            db.close()
        return int(rows), int(online)

    def close(self) -> None:
        if self.server is not None:
            self.server.__exit__()
        if self.data:
            import shutil

            shutil.rmtree(self.data, ignore_errors=True)


def server_socket_memory(port: int) -> Optional[Tuple[int, int]]:
    """(Send-Q bytes, skmem wmem_queued bytes) summed over the server's sockets on ``port``.

    ``ss -tmn``: the server's own side of each connection (source port =
    the game port), not host-wide TCP memory. None if ``ss`` is missing.
    """
    try:
        out = subprocess.run(["ss", "-tmnH", "state", "established",
                              f"( sport = :{port} )"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    send_q = queued = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            send_q += int(fields[1])
        if "skmem:(" in line:
            for item in line.split("skmem:(", 1)[1].split(")", 1)[0].split(","):
                if item.startswith("w") and item[1:].isdigit():
                    queued += int(item[1:])
    return send_q, queued


def bucket_p99(before: Dict[float, float], after: Dict[float, float]) -> Optional[float]:
    """The histogram bucket (its upper bound, s) holding the p99 of what came in between."""
    if not before or not after:
        return None
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1]
    if total <= 0:
        return None
    for le, count in delta:
        if count >= 0.99 * total:
            return le
    return None


# Attacker processes still running: a driver stopped early (Ctrl-C, a soak's
# end) kills them by pid with stop_attackers(); they also die with the driver.
LIVE_ATTACKERS: List["subprocess.Popen[str]"] = []


def _attacker_setup() -> None:
    """In the attacker before exec: niced, and killed if the driver dies."""
    os.nice(5)
    child_setup(())()


def run_attacker(name: str, target: Target, seconds: float,
                 params: List[Dict[str, Any]]) -> List["subprocess.Popen[str]"]:
    """Start attack ``name`` in one niced process per ``params`` (each prints a JSON report)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--run", name, "--host", target.host,
           "--port", str(target.port), "--seconds", str(seconds), "--params"]
    procs = [subprocess.Popen(cmd + [json.dumps(p)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=_attacker_setup) for p in params]
    LIVE_ATTACKERS.extend(procs)
    return procs


def stop_attackers() -> None:
    """Kill every attacker process still running (ours, by pid) and reap it."""
    for proc in list(LIVE_ATTACKERS):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        LIVE_ATTACKERS.remove(proc)


def percentile(values: List[float], pct: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, max(0, math.ceil(pct / 100 * len(data)) - 1))]


def one_attack(name: str, target: Target, crowd: Crowd, args: argparse.Namespace,
               period: float) -> Dict[str, Any]:
    time.sleep(args.quiet)
    before = target.resources()
    ticks_before = target.tick_figures()
    dropped_before = len(crowd.dropped())
    seconds = {"never-read": args.never_read_hold, "slowloris": args.slowloris_hold}.get(
        name, args.seconds)
    params: List[Dict[str, Any]] = [{}]
    if name == "refuse":  # two processes storm (one also fills the server first)
        players = target.connections()  # the crowd and whoever else is connected
        if players is None:
            players = sum(not w.closed for w in crowd.watchers)
        half = args.connect_rate / 2
        ready = os.path.join(tempfile.mkdtemp(prefix="attack-"), "filled")
        params = [{"fill": max(0, target.max_clients - players), "rate": half,
                   "ready_file": ready}, {"rate": half, "ready_file": ready}]
    elif name == "never-read":
        procs = max(1, math.ceil(args.never_readers / FDS_PER_PROCESS))
        params = [{"n": math.ceil(args.never_readers / procs)}] * procs
    setup = ""
    if name == "metrics":  # its players join first: "before" is with them in
        setup = os.path.join(tempfile.mkdtemp(prefix="attack-"), "ready")
        params = [{"ready_file": setup}]
    buckets_before = target.lateness_buckets()
    start = crowd.mark()
    children = run_attacker(name, target, seconds, params)
    if setup:
        give_up = time.monotonic() + 60
        while not os.path.exists(setup) and time.monotonic() < give_up \
                and any(c.poll() is None for c in children):
            time.sleep(0.05)
        before = target.resources()
        ticks_before = target.tick_figures()
        buckets_before = target.lateness_buckets()
        start = crowd.mark()
    peak = before.rss if before else 0
    sock_peak = (0, 0)
    next_ss = time.monotonic() + 1.0
    while any(c.poll() is None for c in children):
        now = target.resources()
        peak = max(peak, now.rss if now is not None else 0)
        if target.server is not None and time.monotonic() >= next_ss:
            mem = server_socket_memory(target.port)
            if mem is not None:
                sock_peak = (max(sock_peak[0], mem[0]), max(sock_peak[1], mem[1]))
            next_ss = time.monotonic() + 1.0
        time.sleep(0.05)
    attacked_until = time.monotonic()
    reports = [json.loads((c.stdout.read() if c.stdout else "") or "{}") for c in children]
    for c in children:
        if c in LIVE_ATTACKERS:
            LIVE_ATTACKERS.remove(c)
            if c.stdout is not None:
                c.stdout.close()
    after = before
    if before is not None:
        deadline = time.monotonic() + args.recovery
        while True:
            after = target.resources()
            if after is None:  # the server died
                break
            peak = max(peak, after.rss)
            if after.recovered_from(before) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    time.sleep(max(0.0, attacked_until + 1.0 - time.monotonic()))
    until = attacked_until + 1.0
    late = crowd.lateness(period, since=start, until=until)
    ticks_after = target.tick_figures()
    server_p99 = bucket_p99(buckets_before, target.lateness_buckets())
    row: Dict[str, Any] = {
        "attack": name,
        "seconds": round(attacked_until - start, 2),
        "max_gap_ms": round(crowd.max_gap(since=start, until=until) * 1000, 1),
        "lateness_p99_ms": round(percentile(late, 99) * 1000, 1),
        "lateness_max_ms": round(max(late) * 1000, 1) if late else None,
        # The server's own tick lateness (its scheduler, not the players'
        # view), as the /metrics histogram bucket that holds the p99.
        "server_lateness_p99_le_ms": None if server_p99 is None else server_p99 * 1000,
        "players_dropped": len(crowd.dropped()) - dropped_before,
        "skipped_ticks": (ticks_after.get("skipped", 0) - ticks_before.get("skipped", 0))
        if ticks_after and ticks_before else None,
        "attacker": merge_reports(reports),
        # The server's own sockets (ss -tm), sampled each second: the kernel
        # memory its clients' unsent bytes hold.
        "server_send_q_peak_bytes": sock_peak[0], "server_wmem_queued_peak_bytes": sock_peak[1],
    }
    if before is not None and after is not None:
        row.update({
            "rss_before_mb": round(before.rss / 1e6, 1), "rss_peak_mb": round(peak / 1e6, 1),
            "rss_after_mb": round(after.rss / 1e6, 1),
            "rss_back_pct": round(100 * (after.rss - before.rss) / before.rss, 1),
            "fds_before": before.fds, "fds_after": after.fds,
        })
    stored = target.stored_players()
    if stored is not None:
        row["store_rows"], row["store_rows_online"] = stored
    row["meets_targets"] = meets(row)
    return row


def meets(row: Dict[str, Any]) -> bool:
    ok: bool = row["max_gap_ms"] < TARGETS["max_gap_ms"] and \
        row["lateness_p99_ms"] < TARGETS["lateness_p99_ms"] and row["players_dropped"] == 0
    if "rss_back_pct" in row:
        ok = ok and row["rss_back_pct"] <= TARGETS["rss_back_pct"] and \
            row["fds_after"] <= row["fds_before"]
    return ok


def merge_reports(reports: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The attacker processes' reports as one: counts and tallies added up."""
    out: Dict[str, Any] = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, dict):
                tally = out.setdefault(key, {})
                for k, v in value.items():
                    tally[k] = tally.get(k, 0) + v
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
    return out


def attacker_summary(report: Dict[str, Any]) -> str:
    keys = ("endings", "outcomes", "states_at_end", "refused")
    parts = []
    for key in keys:
        if report.get(key):
            parts.append(", ".join(f"{v} {k}" for k, v in sorted(report[key].items(),
                                                                 key=lambda kv: -kv[1])))
    if "rate_per_s" in report:
        parts.insert(0, f"{report['attempts']} connects ({report['rate_per_s']:.0f}/s)")
    if "bursts" in report:
        parts.insert(0, f"{report['bursts']} rounds of 20 x 99 pipelined scrapes")
    if "mb_sent" in report:
        parts.insert(0, f"{report['mb_sent']:.1f} MB sent")
    return "; ".join(parts)


def table(rows: List[Dict[str, Any]]) -> str:
    headers = ["attack", "max gap ms", "lateness p99 ms", "server lateness p99",
               "RSS MB before / peak / after",
               "fds before / after", "skipped ticks", "players dropped", "targets",
               "the attacker got"]
    out = []
    for r in rows:
        rss = f"{r['rss_before_mb']} / {r['rss_peak_mb']} / {r['rss_after_mb']}" \
            if "rss_before_mb" in r else "-"
        fds = f"{r['fds_before']} / {r['fds_after']}" if "fds_before" in r else "-"
        le = r.get("server_lateness_p99_le_ms")
        attacker = attacker_summary(r["attacker"])
        if "store_rows" in r:
            attacker += f"; the store holds {r['store_rows']} rows ({r['store_rows_online']} online)"
        out.append([r["attack"], r["max_gap_ms"], r["lateness_p99_ms"],
                    "-" if le is None else f"≤ {le:g} ms", rss, fds,
                    "-" if r["skipped_ticks"] is None else r["skipped_ticks"],
                    r["players_dropped"], "met" if r["meets_targets"] else "**missed**",
                    attacker])
    return fmt_table(headers, out)


def add_attack_options(ap: argparse.ArgumentParser) -> None:
    """The options :func:`one_attack` reads (bench/soak.py offers them too)."""
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each flood (default 5)")
    ap.add_argument("--never-readers", type=int, default=1000)
    ap.add_argument("--never-read-hold", type=float, default=20.0,
                    help="seconds the never-readers stay (default 20)")
    ap.add_argument("--slowloris-hold", type=float, default=15.0,
                    help="seconds the slowloris connections trickle (default 15)")
    ap.add_argument("--connect-rate", type=float, default=5000.0,
                    help="connects per second in the refuse storm (default 5000)")
    ap.add_argument("--quiet", type=float, default=2.0, help="calm seconds before each attack")
    ap.add_argument("--recovery", type=float, default=10.0,
                    help="seconds to wait for RSS and fds to come back (default 10)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--host", default="127.0.0.1", help="with --port: attack this server")
    ap.add_argument("--port", type=int, default=0, help="attack a running server on this port "
                    "(default: start our own)")
    ap.add_argument("--pid", type=int, default=0,
                    help="with --port: the server's pid, for RSS and fds (else not shown)")
    ap.add_argument("--admin-port", type=int, default=0,
                    help="with --port: its admin port, for the server's figures while full")
    ap.add_argument("--attacks", default=",".join(ATTACKS),
                    help=f"comma-separated, in order (default: all: {','.join(ATTACKS)})")
    ap.add_argument("--players", type=int, default=200, help="watching players (default 200)")
    ap.add_argument("--ws-players", type=int, default=20,
                    help="of which over WebSocket (default 20)")
    ap.add_argument("--max-clients", type=int, default=300,
                    help="our server's --max-clients; the refuse attack fills it (default 300)")
    add_attack_options(ap)
    ap.add_argument("--tick-ms", type=int, default=250, help="the server's tick (default 250)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="don't pin the server to CPU 0 and the rest to the other CPUs")
    ap.add_argument("--server-flag", action="append", default=[],
                    help="extra flag for our server (repeatable), e.g. --server-flag=--no-web")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every attack this many times, round by round, and report "
                         "the median of each figure (default 1)")
    ap.add_argument("--json", default="", metavar="FILE", help="write all figures to FILE")
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)  # an attacker process
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.host.startswith(LOOPBACK):
        ap.error("loopback targets only (127.0.0.0/8, ::1)")
    if args.run:
        report = RUNNERS[args.run](args.host, args.port, args.seconds, **json.loads(args.params))
        print(json.dumps(report), flush=True)
        return 0
    names = [a for a in args.attacks.split(",") if a]
    for name in names:
        if name not in RUNNERS:
            ap.error(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    rows: List[Dict[str, Any]] = []
    tcp = args.players - args.ws_players
    for name in [n for _ in range(args.rounds) for n in names]:  # round by round
        target = Target(args, name)
        try:
            with Crowd(target.port, tcp=tcp, ws_count=args.ws_players, host=target.host,
                       join_timeout=60) as crowd:
                row = one_attack(name, target, crowd, args, args.tick_ms / 1000)
            row["server_flags"] = target.flags
            if target.server is not None:
                row["server_alive"] = target.server.alive()
                row["server_log_tail"] = target.server.log()[-2000:]
        finally:
            target.close()
        rows.append(row)
        print(f"{name}: max gap {row['max_gap_ms']} ms, lateness p99 {row['lateness_p99_ms']} "
              f"ms, RSS {row.get('rss_before_mb')} / {row.get('rss_peak_mb')} / "
              f"{row.get('rss_after_mb')} MB, fds {row.get('fds_before')} / "
              f"{row.get('fds_after')}; {attacker_summary(row['attacker'])}", flush=True)
    runs = rows
    if args.rounds > 1:
        rows = [medians([r for r in runs if r["attack"] == name]) for name in names]
        print(f"\nmedians of {args.rounds} rounds:")
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "runs": runs, "targets": TARGETS, "machine": machine(),
                       "command": " ".join(sys.argv)}, f, indent=1)
    return 0 if rows and all(r["meets_targets"] for r in rows) else 1


def medians(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row from several rounds of an attack: the median of each figure
    (with an even count, the higher of the middle two: a figure some round saw).

    What the attacker got is the first round's; every round's gap and
    lateness stay in ``rounds``, so a noisy round shows.
    """
    row = dict(runs[0])
    for key, value in runs[0].items():
        values: List[float] = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and len(values) == len(runs):
            row[key] = statistics.median_high(values)  # an observed value, never a mean
    row["rounds"] = [{k: r.get(k) for k in ("max_gap_ms", "lateness_p99_ms",
                                             "server_lateness_p99_le_ms", "skipped_ticks")}
                     for r in runs]
    row["meets_targets"] = meets(row)
    return row


if __name__ == "__main__":
    sys.exit(main())
