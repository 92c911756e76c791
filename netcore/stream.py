"""The byte stream a client protocol (Redis) rides on: the one seam to the socket.

:func:`dial` opens an outbound TCP connection on the loop and reports
through three callbacks: ``on_connected(transport)`` once, then
``on_data(bytes)`` per read, and ``on_closed(reason)`` exactly once, also
when the connection never came up (refused, timed out). The protocol
writes with ``transport.write(bytes)`` and hangs up with
``transport.close()`` (after which no callback comes).

Interim implementation: a small nonblocking socket of its own, to be
replaced by netcore's outbound connections; the interface above is what
:mod:`netcore.redis` depends on.
"""

from __future__ import annotations

import errno
import selectors
import socket
from typing import Callable, Optional, Protocol

from .loop import EventLoop, Readiness, Timer

__all__ = ["StreamTransport", "dial"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class StreamTransport(Protocol):
    def write(self, data: bytes) -> bool:
        """Send ``data`` (queueing what the kernel won't take); False if closed."""

    def close(self) -> None:
        """Hang up; no callback follows."""


def dial(
    loop: EventLoop,
    host: str,
    port: int,
    timeout: float,
    on_connected: Callable[[StreamTransport], None],
    on_data: Callable[[bytes], None],
    on_closed: Callable[[str], None],
) -> None:
    """Connect to ``host:port`` in the background; see the module docstring."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        message = f"{host}:{port}: {exc}"
        loop.call_soon(lambda: on_closed(message))
        return
    stream = _Stream(loop, sock, on_connected, on_data, on_closed)
    stream.start(addr, timeout)


class _Stream(Readiness):
    __slots__ = ("loop", "sock", "on_connected", "on_data", "on_closed", "out", "connecting", "closed", "timer", "events")

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        on_connected: Callable[[StreamTransport], None],
        on_data: Callable[[bytes], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.on_connected = on_connected
        self.on_data = on_data
        self.on_closed = on_closed
        self.out = bytearray()
        self.connecting = True
        self.closed = False
        self.timer: Optional[Timer] = None
        self.events = EVENT_WRITE

    def start(self, addr: object, timeout: float) -> None:
        sock = self.sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(addr)  # type: ignore[arg-type]
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.loop.call_soon(lambda: self._fail(f"connect: {errno.errorcode.get(err, err)}"))
            return
        self.loop.register(sock, EVENT_WRITE, self)
        self.timer = self.loop.call_later(timeout, lambda: self._fail("connect timed out"))

    def on_ready(self, mask: int) -> None:
        if self.closed:
            return
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(f"connect: {errno.errorcode.get(err, err)}")
                return
            self.connecting = False
            if self.timer is not None:
                self.timer.cancel()
            self._set_events(EVENT_READ)
            self.on_connected(self)
            return
        if mask & EVENT_READ:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self._fail(f"recv: {exc}")
                return
            if data is not None:
                if not data:
                    self._fail("closed by the server")
                    return
                self.on_data(data)
        if mask & EVENT_WRITE and not self.closed:
            self._flush()

    def write(self, data: bytes) -> bool:
        if self.closed or self.connecting:
            return False
        if self.out:
            self.out += data
            return True
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._fail(f"send: {exc}")
            return False
        if n < len(data):
            self.out += data[n:]
            self._set_events(EVENT_READ | EVENT_WRITE)
        return True

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"send: {exc}")
            return
        del self.out[:n]
        if not self.out:
            self._set_events(EVENT_READ)

    def _set_events(self, events: int) -> None:
        if events != self.events:
            self.events = events
            self.loop.modify(self.sock, events, self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        try:
            self.loop.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.close()
        self.on_closed(reason)
