"""Outbound TCP connections on the loop: the client side of netcore.

:class:`TCPClient` opens nonblocking connections and owns them as a
:class:`~netcore.server.TCPServer` owns the ones it accepts: each is the
same :class:`~netcore.connection.Connection`, with a codec, the same output
queue, backpressure and limits, and the same :class:`~netcore.handler.Handler`
callbacks (``on_connect`` once connected, then ``on_message*``,
``on_close``)::

    client = TCPClient(loop, handler)                  # u16 frames by default
    client.connect("127.0.0.1", 9000, on_failed=print)  # -> a Connecting
    loop.run()

A connect that fails (refused, unreachable, past ``timeout``) is reported
once, to ``on_failed(exc)`` (or logged at WARNING when there is none), and
never from inside ``connect()`` itself: always later, from the loop. A
connect that succeeds calls ``handler.on_connect(conn)``; ``data`` given to
``connect`` is already in ``conn.data`` then.

Addresses are **numeric only** (``127.0.0.1``, ``::1``; ``localhost`` is
taken as 127.0.0.1 then ::1): name resolution (``getaddrinfo``) blocks, and
a loop must not. Resolve names before the loop runs with :func:`resolve`,
or in a thread with :class:`Lookup`. Where several addresses are given or implied, they are
tried in turn within the one timeout.

TLS: ``connect(..., tls=context, server_hostname="game.example.org")``
(a context from :func:`netcore.tls.client_context`; the name is sent as SNI
and checked against the certificate; it defaults to ``host``). The
handshake runs on the loop within the connect ``timeout``; ``on_connect``
comes once it is done, and a handshake that fails (a certificate that does
not verify, a wrong name, a peer that is not TLS) is a connect that fails:
``on_failed(exc)`` with the ``ssl.SSLError`` (an ``OSError``), no
``on_connect``, no ``on_close``. :mod:`ssl` is imported only then.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket

from .connection import CloseReason, Connection, OwnerBase
from .framing import DEFAULT_MAX_FRAME, FrameParser
from .handler import Handler
from .loop import EventLoop, Readiness, Timer
from .stats import NetStats
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

    from .connection import CodecFactory
    from .tls import TLSSide

__all__ = ["ClientConfig", "Connecting", "Lookup", "TCPClient", "resolve"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Address = Tuple[Any, ...]
_LOCALHOST = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


class ClientConfig:
    """Limits of a client's connections; the same meaning as in ServerConfig."""

    __slots__ = ("max_output", "high_water", "low_water", "close_linger", "nodelay",
                 "connect_timeout", "recv_buffer")

    def __init__(
        self,
        max_output: int = 1 << 20,  # queued output past this (before a write): closed
        high_water: int = 64 << 10,
        low_water: int = 16 << 10,
        close_linger: float = 2.0,
        nodelay: bool = True,
        connect_timeout: float = 10.0,  # default for connect(); the whole attempt
        recv_buffer: int = 64 << 10,  # one shared read buffer per client
    ) -> None:
        if not 0 <= low_water <= high_water <= max_output:
            raise ValueError("need 0 <= low_water <= high_water <= max_output")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.max_output, self.high_water, self.low_water = max_output, high_water, low_water
        self.close_linger = close_linger
        self.nodelay = nodelay
        self.connect_timeout = connect_timeout
        self.recv_buffer = recv_buffer


def resolve(host: str, port: int, family: int = socket.AF_UNSPEC) -> List[Address]:
    """The numeric addresses of ``host`` (BLOCKS: call it off the loop).

    ``connect()`` accepts the result as its ``host`` argument.
    """
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    seen: List[Address] = []
    for _family, _type, _proto, _name, addr in infos:
        if addr not in seen:
            seen.append(addr)
    return seen


class Lookup:
    """:func:`resolve` in a thread of its own, so a loop (or a window) never waits on it.

    Poll ``done`` (a ``threading.Event``); then ``addresses`` holds the
    numeric addresses (``connect()`` takes them as its ``host``), or is empty
    and ``error`` says why.
    """

    def __init__(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> None:
        import threading

        self.addresses: List[Address] = []
        self.error = ""
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(host, port, family), daemon=True,
                         name=f"netcore-resolve-{host}").start()

    def _run(self, host: str, port: int, family: int) -> None:
        try:
            self.addresses = resolve(host, port, family)
        except (OSError, UnicodeError) as exc:
            self.error = str(exc)
        self.done.set()


def _candidates(host: Union[str, Sequence[Address]], port: int) -> List[Tuple[int, Address]]:
    """(family, sockaddr) pairs to try, without any name lookup."""
    if not isinstance(host, str):
        return [(socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET, tuple(addr))
                for addr in host]
    if host == "localhost":
        return [(family, (ip, port)) for ip, family in _LOCALHOST]
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except socket.gaierror:
        raise ValueError(
            f"{host!r} is not a numeric address: resolve it first (netcore.client.resolve "
            "blocks, so call it before the loop runs or in a thread)") from None
    return [(family, tuple(addr)) for family, _t, _p, _n, addr in infos]


class Connecting(Readiness):
    """One ``connect()`` under way. ``cancel()`` gives up without a report."""

    __slots__ = ("client", "host", "port", "data", "codec_factory", "on_failed",
                 "sock", "_left", "_timer", "_error", "done", "tls", "server_hostname", "conn")

    def __init__(self, client: "TCPClient", host: str, port: int,
                 candidates: List[Tuple[int, Address]], timeout: float, data: Any,
                 codec_factory: CodecFactory,
                 on_failed: Optional[Callable[[OSError], None]],
                 tls: Optional[ssl.SSLContext] = None,
                 server_hostname: Optional[str] = None) -> None:
        self.client = client
        self.tls = tls
        self.server_hostname = server_hostname
        self.conn: Optional[Connection] = None  # connected, TLS handshake under way
        self.host = host
        self.port = port
        self.data = data
        self.codec_factory = codec_factory
        self.on_failed = on_failed
        self.sock: Optional[socket.socket] = None
        self._left = candidates
        self._error: Optional[OSError] = None
        self.done = False  # connected, failed or cancelled
        self._timer: Optional[Timer] = client.loop.call_later(timeout, self._timed_out)

    def __repr__(self) -> str:
        state = "done" if self.done else "connecting"
        return f"<Connecting {self.host}:{self.port} {state}>"

    def cancel(self) -> None:
        """Stop trying; nothing is reported. A no-op once done."""
        if not self.done:
            self._finish()

    def _next(self) -> None:
        """Start a connect to the next candidate, or report the failure."""
        loop = self.client.loop
        while self._left:
            family, addr = self._left.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(addr)
            except (BlockingIOError, InterruptedError):
                pass  # EINPROGRESS: writable once decided
            except OSError as exc:
                sock.close()
                self._error = exc
                continue
            self.sock = sock
            loop.register(sock, selectors.EVENT_WRITE, self)
            return
        self._fail(self._error or OSError(f"no address to connect to for {self.host}"))

    def on_ready(self, mask: int) -> None:
        sock = self.sock
        if self.done or sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.client.loop.unregister(sock)
            sock.close()
            self.sock = None
            self._error = OSError(err, f"{os.strerror(err)} ({self.host}:{self.port})")
            self._next()
            return
        self.sock = None
        if self.tls is not None:
            self.client._handshake(sock, self)  # done (and on_connect) once it is over
            return
        self._finish(keep_socket=True)
        self.client._connected(sock, self)

    def on_error(self, exc: BaseException) -> None:
        log.error("connect to %s:%d: handler failed", self.host, self.port, exc_info=exc)

    def _timed_out(self) -> None:
        self._timer = None
        if not self.done:
            self._fail(socket.timeout(f"connect to {self.host}:{self.port} timed out"))

    def _fail(self, exc: OSError) -> None:
        self._finish()
        self.client.connect_failures += 1
        if self.on_failed is not None:
            self.on_failed(exc)
        else:
            log.warning("connect to %s:%d failed: %s", self.host, self.port, exc)

    def _finish(self, keep_socket: bool = False) -> None:
        self.done = True
        self.client._attempts.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self.sock
        if sock is not None and not keep_socket:
            self.client.loop.unregister(sock)
            sock.close()
            self.sock = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            if not keep_socket:  # a TLS handshake given up: closed, not reported
                conn.close(CloseReason.ERROR, "connect attempt ended")


class TCPClient(OwnerBase):
    """Opens outbound connections and owns them (the connections' Owner).

    ``codec_factory(conn)`` makes each connection's codec (default: u16
    frames of ``DEFAULT_MAX_FRAME``; ``connect`` may give another per call,
    e.g. :func:`netcore.wscodec.websocket_client`). ``connections`` holds
    the open ones by file descriptor; ``close()`` closes them all and
    cancels the attempts under way.
    """

    handler: Handler  # all the callbacks, not only those a connection makes

    def __init__(self, loop: EventLoop, handler: Handler,
                 config: Optional[ClientConfig] = None,
                 codec_factory: Optional[CodecFactory] = None) -> None:
        self.loop = loop
        self.handler = handler
        self.config = config if config is not None else ClientConfig()
        self.codec_factory: CodecFactory = (
            codec_factory if codec_factory is not None
            else (lambda conn: FrameParser(DEFAULT_MAX_FRAME)))
        self.stats = NetStats()
        self.connections: Dict[int, Connection] = {}
        self.connect_failures = 0
        self.recv_view = memoryview(bytearray(self.config.recv_buffer))
        self._attempts: Set[Connecting] = set()
        # TLS: connections whose handshake is under way, and their attempt.
        self._handshaking: Dict[Connection, Connecting] = {}
        self._tls: Optional[TLSSide] = None

    def connect(
        self,
        host: Union[str, Sequence[Address]],
        port: int,
        *,
        timeout: Optional[float] = None,
        data: Any = None,
        codec_factory: Optional[CodecFactory] = None,
        on_failed: Optional[Callable[[OSError], None]] = None,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> Connecting:
        """Start connecting to ``host`` (numeric, or :func:`resolve`'s list) at ``port``.

        ``tls``: speak TLS with this context, checking the certificate against
        ``server_hostname`` (also sent as SNI; default ``host``). A codec
        factory may carry both (``websocket_client(..., tls=)``); these win.
        Raises ValueError at once for a name that is not numeric, or TLS
        with a hostname check and no name; every network outcome comes
        later, from the loop (see the module docstring).
        """
        candidates = _candidates(host, port)
        name = host if isinstance(host, str) else "/".join(str(a[0]) for a in host)
        factory = codec_factory if codec_factory is not None else self.codec_factory
        if tls is None:
            tls = getattr(factory, "tls", None)
            if server_hostname is None:
                server_hostname = getattr(factory, "server_hostname", None)
        if tls is not None:
            if server_hostname is None and isinstance(host, str):
                server_hostname = host
            if tls.check_hostname and not server_hostname:
                raise ValueError("TLS with a hostname check needs server_hostname")
        attempt = Connecting(
            self, name, port, candidates, self.config.connect_timeout if timeout is None else timeout, data,
            factory, on_failed, tls, server_hostname)
        self._attempts.add(attempt)
        self.loop.call_soon(lambda: attempt._next() if not attempt.done else None)
        return attempt

    def close(self, reason: str = CloseReason.SERVER_CLOSE) -> None:
        """Cancel every attempt under way and close every connection now."""
        for attempt in list(self._attempts):
            attempt.cancel()
        for conn in list(self.connections.values()):
            conn.close(reason)

    # -- the Owner protocol -------------------------------------------------

    def _connection(self, sock: socket.socket, attempt: Connecting) -> Connection:
        """The connected socket of ``attempt`` as a Connection, read by the loop."""
        if self.config.nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = Connection(sock, self)
        conn.data = attempt.data
        # The socket is registered (for write) by the attempt: hand it over.
        self.loop.modify(sock, selectors.EVENT_READ, conn)
        return conn

    def _connected(self, sock: socket.socket, attempt: Connecting) -> None:
        conn = self._connection(sock, attempt)
        self.connections[conn.fd] = conn
        self.stats.accepted += 1
        self.stats.connections += 1
        # A codec that speaks first (a WebSocket handshake) queues its bytes
        # with conn.enqueue(), which cannot fail here, so on_connect comes first.
        conn.codec = attempt.codec_factory(conn)
        self.handler.on_connect(conn)

    def _handshake(self, sock: socket.socket, attempt: Connecting) -> None:
        """Connected: begin TLS; :meth:`_tls_opened` follows, or the attempt fails."""
        from .tls import TLSLayer, TLSSide  # imports ssl: only clients that speak TLS load it

        assert attempt.tls is not None
        conn = self._connection(sock, attempt)
        attempt.conn = conn
        self._handshaking[conn] = attempt
        side = self._tls
        if side is None:  # no budget, no timeout of its own: the connect timeout is it
            side = self._tls = TLSSide(self.loop, self.stats, opened=self._tls_opened,
                                       failed=self._tls_failed)
        try:
            layer = TLSLayer(attempt.tls, side, server_side=False,
                             server_hostname=attempt.server_hostname)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            attempt._error = OSError(f"TLS to {attempt.host}:{attempt.port}: {exc}")
            conn.close(CloseReason.TLS_ERROR, str(exc))
            return
        layer.start(conn)

    def _tls_opened(self, conn: Connection) -> None:
        attempt = self._handshaking.pop(conn, None)
        if attempt is None:  # pragma: no cover - every handshake has its attempt
            return
        attempt.conn = None
        attempt._finish(keep_socket=True)
        self.connections[conn.fd] = conn
        self.stats.accepted += 1
        self.stats.connections += 1
        conn.codec = attempt.codec_factory(conn)
        self.handler.on_connect(conn)

    def _tls_failed(self, conn: Connection, exc: BaseException) -> None:
        attempt = self._handshaking.get(conn)
        if attempt is not None:
            attempt._error = exc if isinstance(exc, OSError) else OSError(str(exc))

    def _forget(self, conn: Connection, reason: str, detail: str) -> None:
        attempt = self._handshaking.pop(conn, None)
        self._release(conn, reason)
        if attempt is not None:  # the handshake did not finish: no on_connect, no on_close
            log.debug("fd=%d TLS handshake ended: %s %s", conn.fd, reason, detail)
            attempt.conn = None
            if not attempt.done:
                error = attempt._error
                if error is None:
                    error = (ConnectionResetError if reason in (CloseReason.RESET,
                             CloseReason.PEER_CLOSED) else OSError)(
                        f"TLS handshake with {attempt.host}:{attempt.port}: {reason}"
                        + (f": {detail}" if detail else ""))
                attempt._fail(error)
            return
        log.debug("fd=%d closed: %s %s", conn.fd, reason, detail)
        self.handler.on_close(conn, reason)
