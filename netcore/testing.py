"""Helpers for testing code built on netcore (they ship with it).

- :func:`run_until`: run a loop until a condition holds, or fail with a
  message after a timeout (a test must never hang);
- :func:`bound_socket`: a listening socket already bound to a free port,
  so no "find a free port, then bind it" race; pass it to
  ``TCPServer.listen(sockets=[...])`` or read its port for a subprocess;
- :func:`loopback_hosts`: the loopback addresses this machine can bind
  (``::1`` may be missing in containers);
- :func:`serve` and :class:`Echo`: a listening echo ``TCPServer`` in one
  line; :class:`LoopClient`: a plain client socket read in the loop's
  thread; :func:`refusing_socket`: a port where connections are refused;
  :class:`FakeClock`: a clock that moves only when told (``EventLoop(clock=)``);
- :func:`spawn_listening`: start a server script that prints ``listening on
  HOST:PORT`` (as netcore's examples do) and return it with its address;
  :func:`stop_process`: signal it, wait, kill it if it does not go.

Nothing here is needed at run time; no test framework is imported.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import time

from .connection import Connection
from .handler import Handler
from .loop import EventLoop
from .server import ServerConfig, TCPServer
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

__all__ = ["Echo", "FakeClock", "LoopClient", "bound_socket", "loopback_hosts", "port_of",
           "refusing_socket", "run_until", "serve", "spawn_listening", "stop_process"]


def run_until(loop: EventLoop, condition: Callable[[], object], timeout: float = 5.0,
              what: Union[str, Callable[[], str]] = "", step: float = 0.05) -> None:
    """Run ``loop`` until ``condition()`` is true; AssertionError after ``timeout`` s.

    Returns as soon as the condition holds (it is checked before each loop
    iteration, so it may already hold). ``what`` names it in the failure (a
    callable is asked only then, so it can show state gathered while waiting).
    Each iteration waits at most ``step`` s for the loop's own events: make it
    short when the condition depends on sockets the loop does not watch (a
    test's client read in the same thread).
    """
    if not loop.run_until(condition, timeout, step):
        named = what() if callable(what) else what
        raise AssertionError(f"not within {timeout:g} s: {named or condition!r}")


def bound_socket(host: str = "127.0.0.1", backlog: int = 128,
                 family: Optional[int] = None) -> socket.socket:
    """A nonblocking socket listening on ``host`` at a port the kernel chose."""
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, 0))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def loopback_hosts() -> List[str]:
    """``127.0.0.1``, and ``::1`` where IPv6 loopback can be bound."""
    hosts = ["127.0.0.1"]
    if socket.has_ipv6:
        try:
            bound_socket("::1").close()
        except OSError:
            pass
        else:
            hosts.append("::1")
    return hosts


class Echo(Handler):
    """Sends every message back with ``prefix`` in front; records why connections closed."""

    def __init__(self, prefix: bytes = b"echo:") -> None:
        self.prefix = prefix
        self.closed: List[str] = []

    def on_message(self, conn: Connection, payload: bytes) -> None:
        # With no prefix the message goes back as it came: a WebSocket text
        # message (a ``Text``) stays text.
        conn.send(self.prefix + payload if self.prefix else payload)

    def on_close(self, conn: Connection, reason: str) -> None:
        self.closed.append(reason)


def serve(handler: Optional[Handler] = None, loop: Optional[EventLoop] = None,
          **config: Any) -> Tuple[EventLoop, TCPServer, Handler]:
    """A listening ``TCPServer`` on 127.0.0.1 (an ephemeral port), ``Echo`` by default."""
    loop = loop or EventLoop()
    handler = handler or Echo()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], **config))
    server.listen()
    return loop, server, handler


def refusing_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to an ephemeral port of ``host`` but not listening: connections
    to that port are refused ("nobody listens there") and no other program can take
    the port while it is open. (``bound_socket`` is the listening kind.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


class LoopClient:
    """A nonblocking client socket read in the same thread as the server's loop.

    ``read_available()`` returns what has arrived without blocking and sets ``eof`` when
    the peer closes (or resets); subclasses parse it.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setblocking(False)
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_available(self) -> bytes:
        out = bytearray()
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                break
            out += data
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


class FakeClock:
    """A monotonic clock that moves only when told: ``clock()`` reads it, ``advance`` moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spawn_listening(argv: Sequence[str], timeout: float = 15.0,
                    **popen: Any) -> Tuple["subprocess.Popen[str]", str, int]:
    """Start ``argv`` and wait for its ``listening on HOST:PORT`` line.

    Returns (process, host, port); stdout and stderr are pipes (text). On a
    timeout or an early exit the process is killed and AssertionError says
    what it printed. Stop it with :func:`stop_process`.
    """
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while True:
        left = deadline - time.monotonic()
        ready = select.select([proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
        line = proc.stdout.readline() if ready else ""
        seen += line
        found = re.search(r"listening on (\S+):(\d+)", line)
        if found:
            return proc, found.group(1), int(found.group(2))
        if not ready or not line:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"{' '.join(argv)} did not say 'listening on' in {timeout:g} s "
                                 f"(exit {proc.returncode}): {seen!r} {err[-2000:]!r}")


def stop_process(proc: "subprocess.Popen[Any]", sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> int:
    """Send ``sig`` (if it still runs), wait up to ``timeout`` s, then kill; its exit status.

    Its pipes stay open for the caller to read what is left.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
