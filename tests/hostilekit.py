"""The hostile tests' kit: a real server, a watching crowd, the server's resources.

A hostile test attacks a real ``python3 spelltraction.py serve`` process and
checks what the issue promises the other players: **every watcher got a TICK
at least once a second during the attack and for at least 2 s after it
reached the server (``MIN_WINDOW``), and after the attacker left the
server's RSS came back within max(4 MiB, 15 %) and its open descriptors to
the baseline.** (Functional bounds with wide margins against a 250 ms tick,
not speed measurements.) Typical use::

    pytestmark = pytest.mark.slow   # a subprocess server running seconds

    def test_something_hostile():
        with HostileServer("--max-clients", "100") as server, Crowd(server.port) as crowd:
            before = server.resources()     # crowd connected, server settled
            crowd.mark()                    # the attack starts now
            ...attack, assert what the attacker got...
            crowd.assert_ticking()          # since mark(): no watcher went 1 s without a TICK
            server.assert_recovered(before) # waits (bounded) for RSS and fds to come back

Pieces:

- :class:`HostileServer`: the server as a subprocess on a loopback port it binds itself,
  with any ``serve`` flags; its stdout and stderr go to files (a pipe nobody
  reads would stall a server that logs under attack), readable with
  :meth:`HostileServer.log`.
- :class:`Crowd`: 10-20 well-behaved players, TCP and WebSocket, on one
  background thread; each records the arrival time (``time.monotonic``, the
  system-wide clock) and number of every TICK, answers pings, and moves
  every 1-4 s. Each binds its own loopback source address (127.0.2.N) where
  the OS allows, so per-address limits with no exemptions see a crowd of
  distinct, polite addresses.
- :func:`rss_bytes` / :func:`open_fds`: /proc/PID/statm and /proc/PID/fd.

``bench/attack.py`` runs the same crowd (200 players) to measure the floods.
"""

from __future__ import annotations

import base64
import bisect
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # bench/attack.py imports this file from outside pytest
    sys.path.insert(0, ROOT)

import spelltraction as st  # noqa: E402
from netcore import FrameParser  # noqa: E402
from helpers import read_until_closed  # noqa: E402
from serverproc import LISTENING  # noqa: E402
from netcore import websocket as ws  # noqa: E402

GAME = os.path.join(ROOT, "spelltraction.py")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
TICK_TYPE = st.TICK
# A hostile check watches the players at least this long after the attack
# reached the server (its mark), so a stall of a second after it shows.
MIN_WINDOW = 2.0


# -- the server's resources ------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/statm."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds(pid: int) -> int:
    """Open descriptors of ``pid``: the entries of /proc/PID/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Resources(NamedTuple):
    rss: int  # bytes
    fds: int

    def recovered_from(self, before: "Resources") -> bool:
        """RSS within max(4 MiB, 15 %) of ``before`` and no more fds than it had."""
        return self.rss <= before.rss + max(4 * MIB, before.rss * 15 // 100) \
            and self.fds <= before.fds

    def __str__(self) -> str:
        return f"RSS {self.rss / MIB:.1f} MiB, {self.fds} fds"


def http_get(host: str, port: int, path: str,
             timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """``GET path`` over HTTP/1.1 with ``Connection: close``: (status, headers, body)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                  .encode("ascii"))
        data = read_until_closed(s, timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP response: {data[:200]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


# -- the server ----------------------------------------------------------------------


#: Served on the admin port (on the game port only with --public-stats).
OPERATOR_PATHS = ("/metrics", "/stats", "/stats.json")


class HostileServer:
    """``spelltraction.py serve`` on 127.0.0.1 with ``flags``, on ``port`` or (0) one the
    kernel picks when it binds: ``self.port`` is read from its "listening on" line.
    It has an admin port (``--admin-port 0`` unless ``flags`` name one), where
    :meth:`get` asks for the operator's paths (/metrics, /stats, /stats.json)."""

    def __init__(self, *flags: str, port: int = 0, start_timeout: float = 15.0,
                 settle: float = 0.5) -> None:
        self.port = port
        self._dir = tempfile.TemporaryDirectory(prefix="hostile-")
        self.stdout_path = os.path.join(self._dir.name, "stdout")
        self.stderr_path = os.path.join(self._dir.name, "stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, GAME, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 *(() if "--data" in flags else ("--no-data",)),
                 *(() if "--admin-port" in flags else ("--admin-port", "0")), *flags],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + start_timeout
        while not LISTENING.search(self.output()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"server did not start: {self.output()!r} {self.log()!r}")
            time.sleep(0.05)
        self.port = int(LISTENING.search(self.output())[2])  # type: ignore[index]
        time.sleep(settle)

    def output(self) -> str:
        """Everything the server printed on stdout so far."""
        with open(self.stdout_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log(self) -> str:
        """Everything the server logged on stderr so far."""
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def admin_port(self) -> int:
        """The admin listener's port (started with ``--admin-port``), from its banner."""
        for line in self.output().splitlines():
            if line.startswith("admin ") and "http://" in line:
                return int(line.rsplit(":", 1)[1].strip("/ "))
        raise AssertionError(f"no admin listener in {self.output()!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def resources(self) -> Resources:
        return Resources(rss_bytes(self.pid), open_fds(self.pid))

    def assert_recovered(self, before: Resources, timeout: float = 10.0) -> Resources:
        """Wait up to ``timeout`` for RSS and fds to come back to ``before``; fail if not."""
        assert self.alive(), f"the server died: {self.log()[-2000:]}"
        deadline = time.monotonic() + timeout
        while True:
            now = self.resources()
            if now.recovered_from(before):
                return now
            assert time.monotonic() < deadline, \
                f"server resources did not come back: before {before}, after {now}"
            time.sleep(0.1)

    def get(self, path: str, port: Optional[int] = None,
            timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
        """``GET path`` on the game port, or the admin port for the operator's paths
        (or on ``port``): (status, headers, body)."""
        if port is None:
            port = self.admin_port() if path in OPERATOR_PATHS else self.port
        return http_get("127.0.0.1", port, path, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Signal the server and wait for it (killed if it outlives ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def __enter__(self) -> "HostileServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


# -- the crowd -----------------------------------------------------------------------


def loopback_source(i: int) -> str:
    """A distinct loopback source address for client ``i`` (127.0.2.1 ...)."""
    return f"127.0.{2 + i // 250}.{1 + i % 250}"


def connect(port: int, host: str = "127.0.0.1", source: Optional[str] = None,
            timeout: float = 5.0, rcvbuf: int = 0) -> socket.socket:
    """A blocking TCP connection, from ``source`` if this OS lets us bind it;
    ``rcvbuf``: a receive buffer that small (a never-reader's fills in seconds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        try:
            sock.bind((source, 0))
        except OSError:  # not Linux: only 127.0.0.1 is configured
            pass
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


# Kernel receive timestamps (Linux SO_TIMESTAMPNS): a TICK's arrival is when
# the kernel got it, however late this process gets to read it, so a busy
# test machine doesn't pass for a late server.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")


def stamp_arrivals(sock: socket.socket) -> None:
    """Ask the kernel to timestamp what ``sock`` receives (where it can)."""
    if sys.platform.startswith("linux"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass


def arrival(ancillary: List[Tuple[int, int, bytes]], now: float) -> float:
    """The kernel's receive time from ``recvmsg``'s ancillary data, on the
    ``time.monotonic`` clock; ``now`` if there is none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec / 1e9 - (time.time() - time.monotonic())
    return now


class Watcher:
    """One well-behaved player: HELLO, then reads everything, moves now and then."""

    def __init__(self, index: int, kind: str, sock: socket.socket, rng: random.Random,
                 move_every: Optional[Tuple[float, float]]) -> None:
        self.index = index
        self.kind = kind  # "tcp" or "ws"
        self.sock = sock
        self.rng = rng
        self.move_every = move_every
        self.frames = FrameParser(max_frame=65535)
        self.ws: Optional[ws.WebSocketParser] = None
        self.head = b""  # the WebSocket handshake response, until it is whole
        self.ticks: List[Tuple[float, int]] = []  # (arrival, TICK number)
        self.welcomed = False
        self.closed = ""  # why the connection ended, if it did
        self.seq = 0
        self.next_move = float("inf")

    def start(self, port: int) -> None:
        if self.kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall(ws.client_handshake(f"127.0.0.1:{port}", st.WS_PATH, key))
        else:
            self.send(st.frame(st.Hello()))

    def send(self, stream: bytes) -> None:
        """Send game frames (in one masked binary message over WebSocket)."""
        if self.kind == "ws":
            stream = ws.frame(stream, mask_key=os.urandom(4))
        self.send_raw(stream)

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.end(f"send failed: {exc}")

    def end(self, why: str) -> None:
        """The connection ended (the first reason stays: an ERROR before its Close)."""
        self.closed = self.closed or why

    def on_readable(self, now: float) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, 64)
            now = arrival(ancillary, now)
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(f"recv failed: {exc}")
            return
        if not data:
            self.end("server closed the connection")
            return
        if self.kind == "tcp":
            self.on_frames(now, self.frames.feed(data))
            return
        if self.ws is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.end(f"upgrade refused: {self.head[:80]!r}")
                return
            data = self.head[end + 4:]
            self.ws = ws.WebSocketParser(client=True)
            self.send(st.frame(st.Hello()))
        for event in self.ws.parse(data):
            if isinstance(event, ws.Message):
                self.on_frames(now, self.frames.feed(event.data))
            elif isinstance(event, ws.Ping):
                self.send_raw(ws.frame(event.data, ws.PONG, mask_key=os.urandom(4)))
            elif isinstance(event, ws.Close):
                self.end(f"WebSocket close {event.code} {event.reason}")

    def on_frames(self, now: float, frames: List[bytes]) -> None:
        for payload in frames:
            kind = payload[0]
            if kind == TICK_TYPE:
                self.ticks.append((now, int.from_bytes(payload[1:5], "big")))
            elif kind == st.WELCOME and not self.welcomed:
                self.welcomed = True
                self.plan_move(now)
            elif kind == st.ERROR:
                self.end(f"ERROR {st.decode(payload)}")

    def plan_move(self, now: float) -> None:
        if self.move_every is not None:
            self.next_move = now + self.rng.uniform(*self.move_every)

    def maybe_move(self, now: float) -> None:
        if now >= self.next_move and not self.closed:
            self.seq = (self.seq + 1) & 0xFFFF
            self.send(st.frame(st.Move(self.seq, self.rng.randrange(st.BOARD_W),
                                       self.rng.randrange(st.BOARD_H))))
            self.plan_move(now)


class Crowd:
    """``tcp`` + ``ws`` watching players on a background thread, recording TICKs.

    ``sources``: the source address of each watcher (default: 127.0.2.N, one
    each). ``move_every``: each moves after a random wait in this range of
    seconds, again and again (None: they only watch).
    """

    def __init__(self, port: int, tcp: int = 8, ws_count: int = 4, host: str = "127.0.0.1",
                 sources: Optional[Sequence[Optional[str]]] = None,
                 move_every: Optional[Tuple[float, float]] = (1.0, 4.0),
                 join_timeout: float = 20.0, seed: int = 1) -> None:
        self.port = port
        self.watchers: List[Watcher] = []
        self.sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._marks: List[float] = []
        self._stopped_at: Optional[float] = None  # close(): no TICK is recorded after it
        rng = random.Random(seed)
        count = tcp + ws_count
        if sources is None:
            sources = [loopback_source(i) for i in range(count)]
        try:
            for i in range(count):
                sock = connect(port, host, sources[i % len(sources)])
                sock.setblocking(False)
                stamp_arrivals(sock)
                w = Watcher(i, "tcp" if i < tcp else "ws", sock, random.Random(rng.random()),
                            move_every)
                self.watchers.append(w)
                self.sel.register(sock, selectors.EVENT_READ, w)
                w.start(port)
            self._thread = threading.Thread(target=self._run, name="crowd", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + join_timeout
            while not all(w.welcomed and w.ticks for w in self.watchers):
                bad = [w for w in self.watchers if w.closed]
                if bad or time.monotonic() > deadline:
                    raise RuntimeError(f"crowd did not join: {[(w.index, w.closed) for w in bad]}"
                                       f", {sum(w.welcomed for w in self.watchers)} welcomed")
                time.sleep(0.02)
        except BaseException:
            self.close()
            raise
        self.mark()

    def _run(self) -> None:
        while not self._stop.is_set():
            events = self.sel.select(0.05)
            now = time.monotonic()
            for key, _ in events:
                w: Watcher = key.data
                w.on_readable(now)
                if w.closed:
                    self.sel.unregister(w.sock)
            for w in self.watchers:
                w.maybe_move(now)

    # -- what the crowd saw ------------------------------------------------------

    def mark(self) -> float:
        """Note the time (an attack starts); the assertions look from the last mark on."""
        now = time.monotonic()
        self._marks.append(now)
        return now

    def gaps(self, since: Optional[float] = None,
             until: Optional[float] = None) -> List[Tuple[float, Watcher]]:
        """Each watcher's longest wait for a TICK within [since, until], largest first.

        The waits from ``since`` to the first TICK and from the last to
        ``until`` count, so a watcher that got nothing has the whole window.
        """
        since = self._marks[-1] if since is None else since
        until = time.monotonic() if until is None else until
        out = []
        for w in self.watchers:
            times = [since] + [t for t, _ in list(w.ticks) if since <= t <= until] + [until]
            out.append((max(b - a for a, b in zip(times, times[1:])), w))
        return sorted(out, key=lambda g: -g[0])

    def max_gap(self, since: Optional[float] = None, until: Optional[float] = None) -> float:
        return self.gaps(since, until)[0][0]

    def lateness(self, period: float, since: Optional[float] = None,
                 until: Optional[float] = None) -> List[float]:
        """Delivery lateness of every TICK within [since, until], in seconds.

        A TICK numbered n is due at ``base + n * period``; ``base`` is the
        earliest any watcher was ever served (min of arrival - n * period
        over all ticks before ``until``), so an on-time TICK reads ~0 and a
        late one the delay. TICK numbers count skipped ticks (PROTOCOL.md),
        so a skip shows as lateness of the ticks that replaced it, not as a
        shift of the schedule.
        """
        since = self._marks[-1] if since is None else since
        until = time.monotonic() if until is None else until
        ticks = [(t, n) for w in self.watchers for t, n in list(w.ticks) if t <= until]
        if not ticks:
            return []
        base = min(t - n * period for t, n in ticks)
        return [t - (base + n * period) for t, n in ticks if t >= since]

    def lateness_by_window(self, period: float, t0: float, edges: Sequence[float],
                           due: Optional[Callable[[int], float]] = None) -> List[List[float]]:
        """:func:`lateness_by_window` of every watcher."""
        return lateness_by_window(self.watchers, period, t0, edges, due)

    def dropped(self) -> List[Tuple[int, str]]:
        """(index, why) of every watcher whose connection ended."""
        return [(w.index, w.closed) for w in self.watchers if w.closed]

    def assert_ticking(self, max_gap: float = 1.0, since: Optional[float] = None,
                       until: Optional[float] = None, min_window: float = MIN_WINDOW) -> None:
        """Every watcher is connected and got a TICK at least every ``max_gap`` s,
        watched for at least ``min_window`` s from ``since`` (the last mark).

        An attack rejected in a few ms would otherwise be judged on a window of
        a few ms, and a server that stalls a second right after it would pass:
        this waits until ``since + min_window`` if that is still to come, and
        fails if the window asked for (``until``) or the crowd's data (closed,
        or its thread gone) ends before it.
        """
        since = self._marks[-1] if since is None else since
        end = since + min_window
        if until is None:
            while time.monotonic() < end:
                time.sleep(min(end - time.monotonic(), 0.1) + 0.001)
            until = time.monotonic()
        assert until >= end, (f"watched {until - since:.2f} s after the attack, "
                              f"less than the {min_window} s a stall must show in")
        stopped = self._stopped_at if self._stopped_at is not None else (
            None if self._thread.is_alive() else since)
        assert stopped is None or stopped >= until, \
            f"the crowd stopped watching {until - stopped:.2f} s before the window's end"
        assert not self.dropped(), f"watchers were dropped: {self.dropped()}"
        worst, w = self.gaps(since, until)[0]
        assert worst <= max_gap, \
            f"watcher {w.index} ({w.kind}) went {worst:.2f} s without a TICK (limit {max_gap} s)"

    def close(self) -> None:
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(5)
        for w in self.watchers:
            w.sock.close()
        self.sel.close()

    def __enter__(self) -> "Crowd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lateness_by_window(watchers: Sequence[Watcher], period: float, t0: float,
                       edges: Sequence[float],
                       due: Optional[Callable[[int], float]] = None) -> List[List[float]]:
    """The watchers' TICK lateness (s) in each window [edges[k], edges[k+1]) after ``t0``.

    With ``due`` (TICK number -> when the server's schedule had it due, on the
    ``time.monotonic`` clock) a TICK's lateness is its arrival minus that.
    Without it, TICK n is due at base + n x period, base the earliest any
    watcher was served in the whole run (:meth:`Crowd.lateness`'s rule, one
    base for every window): that hides a delay every TICK has.
    """
    ticks = [(t, n) for w in watchers for t, n in list(w.ticks)]
    out: List[List[float]] = [[] for _ in edges[1:]]
    if not ticks:
        return out
    if due is None:
        base = min(t - n * period for t, n in ticks)
        due = lambda n: base + n * period  # noqa: E731
    for t, n in ticks:
        k = bisect.bisect_right(edges, t - t0) - 1
        if 0 <= k < len(out):
            out[k].append(t - due(n))
    return out


def snapshot(server: HostileServer) -> Dict[str, Any]:
    """The server's /stats.json (over its admin port)."""
    import json

    status, _, body = server.get("/stats.json")
    assert status == 200, (status, body[:200])
    return dict(json.loads(body))
