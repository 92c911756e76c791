"""A world on a real redis-server for tests: authority, gateways, players. Killed by pid.

``World(tmpdir)`` starts redis-server; ``game()`` an authority
(``spelltraction.py game``, its admin port read from its first line),
``gateway()`` a gateway (its port read from its "listening on" line).
``Player`` is one protocol-2 (or 1) client on a blocking socket read with
timeouts, keeping every frame it got, the raw TICK payloads by number, its
WELCOME and the last score a YOU showed it.
"""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

import spelltraction as st
from netcore import FrameParser
from redisproc import RedisServer
from serverproc import GAME, Spawned, stop_process

ADMIN = re.compile(r"admin listening on (\S+):(\d+)")


class Authority:
    """``spelltraction.py game``: started, read for its admin port, stopped by pid."""

    def __init__(self, argv: List[str], env: Optional[dict] = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        found = ADMIN.search(line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"authority did not start: {line!r} {self.proc.stderr.read()}")
        self.admin = int(found[2])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.proc, sig)


def http_get(port: int, path: str, timeout: float = 5.0) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(what, timeout: float = 20.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class World:
    """``password``: Redis asks for one, and every role gives it. ``tls=(cert, key,
    ca)``: Redis on a TLS port too, and every role reaches it by ``rediss://``
    with ``--redis-ca ca``."""

    def __init__(self, directory: str, name: str = "test", password: Optional[str] = None,
                 tls: Optional[Tuple[str, str, str]] = None) -> None:
        self.directory = directory
        self.name = name
        self.redis = RedisServer(directory, password=password,
                                 tls=tls[:2] if tls else None).start()
        self.redis_args = ["--redis", self.redis.url] if tls is None else \
            ["--redis", self.redis.tls_url, "--redis-ca", tls[2]]
        self.procs: List[object] = []

    def game(self, *extra: str, data: Optional[str] = "data") -> Authority:
        """An authority; ``data=None``: without a data directory (``--no-data``)."""
        store = ["--data", os.path.join(self.directory, data)] if data is not None \
            else ["--no-data"]
        a = Authority([sys.executable, GAME, "game", *self.redis_args, "--world",
                       self.name, "--admin-port", "0", *store, *extra])
        self.procs.append(a)
        return a

    def gateway(self, *extra: str, port: int = 0) -> Spawned:
        g = Spawned([sys.executable, GAME, "gateway", *self.redis_args, "--world",
                     self.name, "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0",
                     *extra])
        line = g.proc.stdout.readline()  # the admin line
        found = re.search(r"http://\S+:(\d+)/", line)
        assert found, line
        g.admin = int(found[1])  # type: ignore[attr-defined]
        self.procs.append(g)
        return g

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop(signal.SIGKILL)  # type: ignore[attr-defined]
            if isinstance(p, Spawned):
                p.close_pipes()
        self.redis.kill()


@pytest.fixture
def world(tmp_path: "os.PathLike[str]") -> Iterator[World]:
    """A world on its own redis-server, closed after the test (import it as a fixture)."""
    w = World(str(tmp_path))
    yield w
    w.close()


class Player:
    """One client on a blocking socket; ``pump()`` reads what has come."""

    def __init__(self, port: int, version: int = st.PROTOCOL_V2, token: bytes = b"",
                 name: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.parser = FrameParser(65535)
        self.frames: List[bytes] = []
        self.ticks: Dict[int, bytes] = {}  # TICK number -> its payload
        self.welcome: Optional[st.Welcome] = None
        self.welcomes = 0
        self.score = -1
        self.paused_stats = 0
        self.stat: Optional[st.Stats] = None  # the last STATS, and the last "paused" one
        self.paused_stat: Optional[st.Stats] = None
        self.errors: List[st.Error] = []
        self.closed = False
        if version == st.PROTOCOL_V2:
            hello = st.Hello(st.PROTOCOL_V2, token=token, name=name)
        else:
            hello = st.Hello(st.PROTOCOL_VERSION)
        self.sock.sendall(st.frame(hello))

    def pump(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while not self.closed:
            left = max(end - time.monotonic(), 0)
            ready, _, _ = select.select([self.sock], [], [], min(left, 0.05))
            if not ready:
                if time.monotonic() >= end:
                    return
                continue
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                data = b""
            if not data:
                self.closed = True
                return
            for payload in self.parser.feed(data):
                self.frames.append(payload)
                msg = st.decode(payload)
                if isinstance(msg, st.TickMsg):
                    self.ticks[msg.number] = payload
                elif isinstance(msg, st.Welcome):
                    self.welcome = msg
                    self.welcomes += 1
                elif isinstance(msg, st.You):
                    self.score = msg.score
                elif isinstance(msg, st.Stats) and msg.tick_p99_us == st.PAUSED_P99:
                    self.paused_stats += 1
                    self.paused_stat = msg
                elif isinstance(msg, st.Stats):
                    self.stat = msg
                elif isinstance(msg, st.Error):
                    self.errors.append(msg)

    def until(self, what, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; closed={self.closed} "
                                     f"errors={self.errors}")
            self.pump(0.05)

    def move(self, seq: int, x: int, y: int) -> None:
        self.sock.sendall(st.frame(st.Move(seq, x, y)))

    def last_tick(self) -> int:
        return max(self.ticks) if self.ticks else -1

    def close(self) -> None:
        self.sock.close()
