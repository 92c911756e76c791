"""A nonblocking TCP server: listeners, accept, limits, broadcast.

Listeners accept in batches until EAGAIN. Past ``max_connections`` a new
connection is still accepted, sent ``full_message`` and closed, so the peer
learns why instead of hanging in the backlog. When the process runs out of
file descriptors (EMFILE/ENFILE), a reserved spare descriptor is released to
accept-and-refuse what is waiting, and the listener rests for a back-off
interval if that is not enough: a level-triggered selector never spins on an
accept it cannot complete.

All connections share one receive buffer (reads are copied out as whole
frames by each connection's codec), so reading costs no allocation per
``recv`` and idle connections hold no buffers.

TLS (``ServerConfig.tls``, a context from :func:`netcore.tls.server_context`)
shares the port with plain clients: the first byte of a connection says
which (0x16, a TLS handshake record; see :mod:`netcore.sniff`), after the
PROXY header of a trusted proxy. ``tls_required`` refuses plain clients
(except from trusted proxies, which may terminate TLS themselves). The
:mod:`ssl` module is imported only when a context is given.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import _socket
import sys

from .addrlimit import DEFAULT_EXEMPT, AddressLimits, Key, address_key, parse_networks
from .codec import Codec, ProtocolError, SilentCodec
from .connection import CloseReason, Connection, OwnerBase
from .framing import DEFAULT_MAX_FRAME, StreamFrames, encode_frame
from .handler import Handler
from .loop import EventLoop, Readiness, Timer
from .proxyproto import (
    ProxyHeader, ProxyHeaderReader, UntrustedProxyHeader, starts_proxy_header,
)
from .sniff import HTTP, MAX_BINARY_FRAME_WITH_TLS, is_tls, sniff
from .stats import NetStats
from .websocket import CloseCode
from .typing_shim import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from typing import (
        Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union,
    )

    import ssl

    from .connection import CodecFactory
    from .ringbuffer import BytesLike
    from .tls import TLSSide

__all__ = ["Handler", "Listener", "ServerConfig", "TCPServer", "bind_listeners"]

log = logging.getLogger(__name__)

EVENT_READ = selectors.EVENT_READ

_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}

RECV_BUFFER_SIZE = 64 * 1024
_BACKLOG_SLICE = 2048  # connections checked for a send backlog per loop turn
# ...or fewer: a slice that has cut slow consumers for this long stops there.
# A cut costs ~100 times a check (the handler's on_close: a player leaving),
# and a soak's attack once cut hundreds in one slice, holding the loop 40 ms.
_BACKLOG_SLICE_TIME = 0.005
# A peer that is not a trusted proxy but sends X-Forwarded-For or a PROXY
# header (a proxy nobody told us to trust, usually) is named in the log at
# most once per this many seconds per kind; the rest are only counted
# (NetStats.untrusted, summarised by logs.ChurnReporter).
UNTRUSTED_LOG_EVERY = 60.0

# What a plain HTTP client gets from a server that requires TLS.
_TLS_ONLY_BODY = b"This port speaks TLS only: use https:// (or wss://).\n"
_TLS_ONLY_HTTP = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_TLS_ONLY_BODY)
                  + _TLS_ONLY_BODY)

try:  # the unsent bytes in a socket's send queue (SIOCOUTQ is TIOCOUTQ on Linux)
    import fcntl
    import termios

    _SIOCOUTQ: Optional[int] = termios.TIOCOUTQ if sys.platform.startswith("linux") else None
    _FIONREAD: Optional[int] = termios.FIONREAD  # the unread bytes of a receive queue
except ImportError:  # pragma: no cover - not POSIX
    _SIOCOUTQ = _FIONREAD = None



def _queue_counter(request: Optional[int]) -> Callable[[int], int]:
    """The byte count the ioctl ``request`` reads, by descriptor (0 where unknown).

    The ioctl fills the counter's own 4-byte buffer in place instead of
    returning a new bytes object to convert: ~0.5 us a socket against ~1 us,
    which for a sweep of 15,000 players is a few percent of the loop's CPU.
    """
    if request is None:
        return lambda fd: 0
    buf = bytearray(4)
    count = memoryview(buf).cast("i")
    ioctl = fcntl.ioctl

    def queued(fd: int) -> int:
        try:
            ioctl(fd, request, buf, True)
        except OSError:
            return 0
        return int(count[0])

    return queued


def _queue_bytes(sock: socket.socket, request: Optional[int]) -> int:
    """The byte count the ioctl ``request`` reads for ``sock`` (0 where unknown)."""
    return _queue_counter(request)(sock.fileno())


def unread_bytes(sock: socket.socket) -> int:
    """Bytes that arrived on ``sock`` and wait unread in its receive queue (0 where unknown).

    Non-zero for a peer that did send while this process was too busy to read
    it: a timeout for the peer's silence must not fire then.
    """
    return _queue_bytes(sock, _FIONREAD)


def accept_lean(lsock: socket.socket) -> Tuple[socket.socket, Any]:
    """``lsock.accept()``, but the new socket a plain ``_socket.socket``.

    The ``socket.socket`` subclass adds what a connection never uses
    (``makefile``/``sendfile`` bookkeeping, a ``__weakref__`` slot): 88 bytes
    against 48, 40 bytes a player. Everything netcore calls (``send``,
    ``recv_into``, ``setsockopt``, ``getpeername``, ``close``) is the base's.
    """
    fd, addr = lsock._accept()  # type: ignore[attr-defined]
    try:
        sock = _socket.socket(lsock.family, lsock.type, lsock.proto, fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    return cast(socket.socket, sock), addr


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in ``sock``'s kernel send queue not yet acknowledged (0 where unknown)."""
    return _queue_bytes(sock, _SIOCOUTQ)


def unsent_counter() -> Callable[[int], int]:
    """:func:`unsent_bytes` by descriptor, for a sweep of many sockets in a row.

    One counter per sweep: its buffer is its own, so no thread shares it.
    """
    return _queue_counter(_SIOCOUTQ)


class ServerConfig:
    """Limits and socket options. Defaults suit a small-message game server.

    A plain class rather than a dataclass: importing ``dataclasses`` (and
    with it ``inspect``) costs a server ~1 MB of RSS for nothing.
    """

    __slots__ = (
        "hosts", "port", "backlog", "max_connections", "max_frame", "max_output",
        "high_water", "low_water", "accept_batch", "close_linger", "nodelay", "full_message",
        "sndbuf", "send_backlog_limit", "send_backlog_grace", "max_per_address",
        "max_pending_per_address", "max_pending", "exempt", "trusted_proxies",
        "limit_message", "read_budget", "reuse_port", "refuse_rate",
        "tls", "tls_required", "tls_handshake_timeout", "tls_handshake_budget",
    )

    def __init__(
        self,
        hosts: Sequence[Optional[str]] = ("0.0.0.0",),
        port: int = 0,
        backlog: int = 4096,
        max_connections: int = 10_000,
        max_frame: int = DEFAULT_MAX_FRAME,  # largest inbound frame payload
        max_output: int = 1 << 20,  # queued output past this: slow consumer, closed
        high_water: int = 64 << 10,
        low_water: int = 16 << 10,
        # Connections accepted per listener wake-up: the loop checks for a due
        # tick between wake-ups, so a connect flood cannot hold the tick up.
        accept_batch: int = 64,
        close_linger: float = 2.0,  # seconds a closing connection may take to flush
        nodelay: bool = True,
        full_message: bytes = encode_frame(b"server full"),
        # SO_SNDBUF of accepted sockets (the kernel doubles it); None: the
        # kernel's autotuning, up to net.ipv4.tcp_wmem's max (~4 MB) each.
        sndbuf: Optional[int] = None,
        # The slow-consumer rule: a peer whose unsent backlog at the server
        # (netcore's queue + its socket's own, SIOCOUTQ on Linux) stays over
        # send_backlog_limit bytes for send_backlog_grace seconds is cut.
        # None: off (the max_output cap still applies).
        send_backlog_limit: Optional[int] = None,
        send_backlog_grace: float = 4.0,
        # Per client address (IPv6 by /64; see netcore.addrlimit). None: off.
        max_per_address: Optional[int] = None,
        max_pending_per_address: Optional[int] = None,  # not yet settle()d
        max_pending: Optional[int] = None,  # all addresses together
        exempt: Union[str, Sequence[str]] = DEFAULT_EXEMPT,  # CIDRs never limited
        # Peers whose connections start with a PROXY protocol header (v1 or
        # v2) naming the real client; they must send one. Empty: none.
        trusted_proxies: Union[str, Sequence[str]] = (),
        # What a peer refused by a per-address limit gets: limit_message(limit
        # name, client address); None: full_message.
        limit_message: Optional[Callable[[str, str], bytes]] = None,
        # Bytes read from one connection per wake-up (the shared read
        # buffer's size): what one flooding peer can make the loop parse
        # before others, and a due tick, get their turn.
        read_budget: int = RECV_BUFFER_SIZE,
        # SO_REUSEPORT on the listeners: processes that share the port share
        # its connections (only where that is meant: gateways of one world).
        reuse_port: bool = False,
        # At max_connections, refusals per second at most (in bursts of a
        # quarter second's worth); past it the listeners rest and connects
        # wait in the kernel's queue (then its SYN retries), costing the loop
        # nothing: a connect storm at a full server cannot take the tick's
        # CPU. None: every connect is accepted and refused at once.
        refuse_rate: Optional[float] = 1000.0,
        # TLS on the same port as plain clients (the first byte tells them
        # apart): a context from netcore.tls.server_context. None: plain only,
        # and the ssl module is never imported.
        tls: Optional[ssl.SSLContext] = None,
        # Refuse plain clients (closed, counted as the limit "tls-required";
        # an HTTP one is told to use https first). Trusted proxies are exempt.
        tls_required: bool = False,
        # Seconds a TLS handshake may take from its first byte; then closed.
        tls_handshake_timeout: float = 10.0,
        # TLS handshake steps per loop wake-up (each may cost a signature, ~1 ms
        # with RSA); past it connections wait for the next turn.
        tls_handshake_budget: int = 16,
    ) -> None:
        if not 0 <= low_water <= high_water <= max_output:
            raise ValueError("need 0 <= low_water <= high_water <= max_output")
        if max_connections < 0:
            raise ValueError("max_connections must be >= 0")
        self.hosts = tuple(hosts)
        self.port = port
        self.backlog = backlog
        self.max_connections = max_connections
        self.max_frame = max_frame
        self.max_output, self.high_water, self.low_water = max_output, high_water, low_water
        self.accept_batch = accept_batch
        self.close_linger = close_linger
        self.nodelay = nodelay
        self.full_message = full_message
        self.reuse_port = reuse_port
        self.sndbuf = sndbuf
        self.send_backlog_limit = send_backlog_limit
        self.send_backlog_grace = send_backlog_grace
        self.max_per_address = max_per_address
        self.max_pending_per_address = max_pending_per_address
        self.max_pending = max_pending
        self.exempt = parse_networks(exempt)  # ValueError for a bad CIDR
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.limit_message = limit_message
        if read_budget < 1:
            raise ValueError("read_budget must be positive")
        self.read_budget = read_budget
        if refuse_rate is not None and refuse_rate <= 0:
            raise ValueError("refuse_rate must be positive (None: no limit)")
        self.refuse_rate = refuse_rate
        if tls_required and tls is None:
            raise ValueError("tls_required needs a tls context")
        if tls_handshake_timeout <= 0:
            raise ValueError("tls_handshake_timeout must be positive")
        if tls_handshake_budget < 1:
            raise ValueError("tls_handshake_budget must be at least 1")
        self.tls = tls
        self.tls_required = tls_required
        self.tls_handshake_timeout = tls_handshake_timeout
        self.tls_handshake_budget = tls_handshake_budget

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ServerConfig({fields})"


class Listener(Readiness):
    """A listening socket of a server; ready means connections wait to be accepted."""

    __slots__ = ("sock", "server", "paused")

    def __init__(self, sock: socket.socket, server: "TCPServer") -> None:
        self.sock = sock
        self.server = server
        self.paused = False

    def on_ready(self, mask: int) -> None:
        self.server._accept_ready(self)


def bind_listeners(
    hosts: Sequence[Optional[str]], port: int, backlog: int, reuse_port: bool = False
) -> List[socket.socket]:
    """Bound, listening, nonblocking sockets for every address of ``hosts``.

    ``None`` or ``""`` means every local address, IPv4 and IPv6. IPv6 sockets
    are v6-only so that ``0.0.0.0`` and ``::`` can be bound side by side. With
    ``port`` 0 every listener gets the port the first one was given.
    ``reuse_port``: SO_REUSEPORT, so several processes (of one user) can
    listen on the same port and the kernel spreads connections over them.
    """
    socks: List[socket.socket] = []
    seen = set()
    try:
        for host in hosts:
            # An ASCII host goes as bytes: given a str, getaddrinfo encodes it
            # with the "idna" codec, whose import (stringprep, unicodedata)
            # costs a server ~1.8 MB of RSS for the life of the process.
            name: Union[str, bytes, None] = host or None
            if host and host.isascii():
                name = host.encode("ascii")
            infos = socket.getaddrinfo(
                name, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE,
            )
            for family, type_, proto, _, addr in infos:
                if (family, addr[0]) in seen:
                    continue
                seen.add((family, addr[0]))
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_REUSEPORT"), 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                bind_to: Tuple[object, ...] = tuple(addr)
                if port == 0 and len(socks) > 1:
                    bind_to = (addr[0], socks[0].getsockname()[1]) + bind_to[2:]
                sock.bind(bind_to)
                sock.listen(backlog)
                sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class TCPServer(OwnerBase):
    """Listens on every address of ``config.hosts`` and serves what connects.

    Each accepted socket becomes a :class:`~netcore.connection.Connection`
    owned by this server, with the codec ``codec_factory(conn)`` makes (by
    default u16 frames of ``config.max_frame``: one
    :class:`~netcore.framing.StreamFrames` for all, a connection getting a
    parser of its own only for a split frame; a :class:`~netcore.web.WebFront` adds HTTP and
    WebSocket on the same port), and ``handler`` hears its events (see
    :mod:`netcore.handler` for the order). The server enforces
    ``config``'s limits, counts everything in ``stats`` and can
    ``broadcast`` one bytes object to many connections. Nothing happens
    until ``listen()``, and then only while ``loop`` runs.
    """

    handler: Handler  # all the callbacks, not only those a connection makes

    def __init__(
        self,
        loop: EventLoop,
        handler: Handler,
        config: Optional[ServerConfig] = None,
        codec_factory: Optional[CodecFactory] = None,
    ) -> None:
        self.loop = loop
        self.handler = handler
        self.config = config if config is not None else ServerConfig()
        frames = StreamFrames(self.config.max_frame)
        self.codec_factory: CodecFactory = (
            codec_factory if codec_factory is not None else (lambda conn: frames)
        )
        self._default_codec = codec_factory is None
        self.stats = NetStats()
        self.connections: Dict[int, Connection] = {}
        self.listeners: List[Listener] = []
        self.accepting = False
        self.recv_view = memoryview(bytearray(self.config.read_budget))
        self._spare_fd: Optional[int] = None
        self._backoff = 0.0
        self._last_fd_warning = -1e9
        # The refusal token bucket (see _may_refuse): full at the start.
        self._refuse_tokens = (self.config.refuse_rate or 0.0) / 4
        self._refuse_at = loop.time()
        self._on_drained: Optional[Callable[[], None]] = None  # while shutting down
        self._drain_timer: Optional[Timer] = None
        cfg = self.config
        self.address_limits = AddressLimits(cfg.max_per_address, cfg.max_pending_per_address,
                                            cfg.max_pending, cfg.exempt)
        # Connections counted by address_limits, by their key: pending (no
        # settle() yet) or settled. Two dicts, not one of (key, pending) tuples:
        # a tuple per player is 56 bytes for one bit.
        self._counted: Dict[Connection, Key] = {}
        self._counted_pending: Dict[Connection, Key] = {}
        # The real client of a connection from a trusted proxy (PROXY header).
        self.proxied: Dict[Connection, str] = {}
        self._by_xff: Set[Connection] = set()  # ...named by X-Forwarded-For
        self._over_backlog: Dict[Connection, float] = {}  # over the limit since
        self._backlog_timer: Optional[Timer] = None
        self._untrusted_logged: Dict[str, float] = {}  # kind -> when last logged
        # The handshake budget and timeouts of TLS connections; None until TLS is configured.
        self._tls: Optional[TLSSide] = None
        if cfg.tls is not None:
            self._setup_tls()

    # -- lifecycle ----------------------------------------------------------

    def listen(self, sockets: Optional[Sequence[socket.socket]] = None) -> List[Tuple[str, int]]:
        """Bind every configured address and start accepting.

        ``sockets``: listen on these already bound, listening sockets instead
        (inherited from a supervisor, or :func:`netcore.testing.bound_socket`);
        the server owns and closes them.
        """
        cfg = self.config
        if sockets is None:
            sockets = bind_listeners(cfg.hosts, cfg.port, cfg.backlog, cfg.reuse_port)
        for sock in sockets:
            sock.setblocking(False)
            listener = Listener(sock, self)
            self.listeners.append(listener)
            self.loop.register(sock, EVENT_READ, listener)
        self._reserve_spare_fd()
        self.accepting = True
        return self.addresses

    @property
    def addresses(self) -> List[Tuple[str, int]]:
        return [l.sock.getsockname()[:2] for l in self.listeners]

    @property
    def port(self) -> int:
        return int(self.addresses[0][1])

    def stop_accepting(self) -> None:
        """Close the listeners; existing connections carry on."""
        self.accepting = False
        for listener in self.listeners:
            if not listener.paused:
                self.loop.unregister(listener.sock)
            listener.sock.close()
        self.listeners.clear()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None

    def shutdown(self, grace: float = 2.0, last_words: bytes = b"",
                 code: int = CloseCode.GOING_AWAY, text: str = "server shutting down",
                 on_done: Optional[Callable[[], None]] = None) -> None:
        """Drain: stop accepting, say goodbye to everyone, close within ``grace`` s.

        Every connection gets :meth:`Connection.goodbye` (``last_words``, a
        stream of already-framed messages, then over WebSocket a Close frame
        with ``code``, 1001 going away by default; an HTTP response under
        way is just finished) and closes once that is sent. Whoever has not
        read it after ``grace`` seconds is closed anyway. ``on_done()`` runs
        once, from the loop, when the last connection has closed (at once if
        there are none): stop the loop there.
        """
        self.stop_accepting()
        self._on_drained = on_done if on_done is not None else (lambda: None)
        for conn in list(self.connections.values()):
            conn.goodbye(code, text, last_words, CloseReason.SHUTDOWN)
        self._drain_timer = self.loop.call_later(grace, lambda: self.close(CloseReason.SHUTDOWN))
        self._check_drained()

    def _check_drained(self) -> None:
        done = self._on_drained
        if done is not None and not self.connections:
            self._on_drained = None
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            self.loop.call_soon(done)

    def close(self, reason: str = CloseReason.SERVER_CLOSE) -> None:
        """Stop accepting and close every connection now."""
        self.stop_accepting()
        for conn in list(self.connections.values()):
            conn.close(reason)

    # -- TLS ------------------------------------------------------------------

    def set_tls(self, context: Optional[ssl.SSLContext]) -> None:
        """Serve TLS connections accepted from now on with ``context``.

        Open connections keep the context they began with, so a renewed
        certificate goes in without dropping anyone: build the new context
        first (:func:`netcore.tls.server_context` raises on a bad file, and
        this is then never called: the old context stays). None stops
        offering TLS to new connections (ValueError with ``tls_required``).
        Sets ``config.tls``.
        """
        if context is None:
            if self.config.tls_required:
                raise ValueError("tls_required needs a tls context")
        else:
            self._setup_tls()
        self.config.tls = context

    def _setup_tls(self) -> None:
        if self._tls is not None:
            return
        max_frame: int = self.config.max_frame if self._default_codec else 0
        binary = getattr(self.codec_factory, "binary", None)  # a WebFront's
        if not self._default_codec and callable(binary):
            max_frame = getattr(binary(), "max_frame", 0)
        if max_frame > MAX_BINARY_FRAME_WITH_TLS:
            raise ValueError(
                f"max_frame {max_frame} > {MAX_BINARY_FRAME_WITH_TLS}: a binary frame could "
                "then start like a TLS record (0x16), and one port cannot carry both")
        from .tls import TLSSide  # imports ssl: only servers that serve TLS load it

        cfg = self.config
        self._tls = TLSSide(self.loop, self.stats, budget=cfg.tls_handshake_budget,
                            timeout=cfg.tls_handshake_timeout)

    def _start_tls(self, conn: Connection, first: BytesLike) -> None:
        """``conn`` began with a TLS record: put TLS under its codec."""
        from .tls import TLSLayer

        context = self.config.tls
        side = self._tls
        assert context is not None and side is not None, "only sniffed while TLS is on"
        TLSLayer(context, side, server_side=True).start(conn, first)

    def _refuse_plain(self, conn: Connection, first_byte: int) -> None:
        """A plain client where TLS is required: an HTTP one is told, then closed."""
        self.stats.limit("tls-required")
        detail = "plain connection, TLS required"
        if sniff(first_byte) == HTTP and conn.write(_TLS_ONLY_HTTP):
            conn.close_after_flush(CloseReason.TLS_REQUIRED, detail)
        else:
            conn.close(CloseReason.TLS_REQUIRED, detail)

    def _served_codec(self, conn: Connection, trusted: bool) -> Codec:
        """The codec a connection starts with once any PROXY header is read:
        the server's, behind the TLS sniff when TLS is on."""
        codec = self.codec_factory(conn) if trusted else _UntrustedStart(
            conn, self, self.codec_factory(conn))
        if self.config.tls is not None:
            return _TLSStart(conn, self, codec, trusted)
        return codec

    # -- sending ------------------------------------------------------------

    def broadcast(
        self,
        data: bytes,
        conns: Iterable[Connection],
        frames: int = 1,
        overrides: Optional[Mapping[Connection, bytes]] = None,
        override_frames: int = 1,
    ) -> int:
        """Send the same bytes object to each of ``conns``.

        One ``send`` per connection and no per-connection copy; a connection
        that already has output queued gets ``data`` queued behind it (in
        order), and a short send queues only the remainder. A connection in
        ``overrides`` gets its own bytes instead (e.g. ``data`` plus a
        private message), in its place in the order, still in one send.
        Returns how many connections it was handed to.

        A failed send closes its connection, which calls ``on_close`` in the
        middle of this loop: pass a list, not a dict or set that ``on_close``
        removes from.
        """
        size = len(data)
        sent = 0
        count = 0
        special = 0
        # Connection.write(), inline: a method call per connection would be
        # a tenth of what a loopback send costs.
        for conn in conns:
            buf = data
            if overrides:
                own = overrides.get(conn)
                if own is not None:
                    buf = own
                    special += 1
            tls = conn.tls
            if tls is not None:  # encrypted for this connection alone
                if not conn.is_open:
                    continue
                buf = tls.encrypt(conn, buf)
                if not buf:  # held until its handshake is done (or refused, closed)
                    count += 1
                    continue
            if conn.out is None:
                try:
                    n = conn.sock.send(buf)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as exc:
                    conn._send_failed(exc)  # also reached by closed conns: a no-op
                    continue
                sent += n
                if n != (size if buf is data else len(buf)):
                    conn._enqueue(memoryview(buf)[n:])
            else:
                conn._enqueue(buf)
            count += 1
        stats = self.stats
        stats.bytes_out += sent
        stats.sends += count
        stats.frames_out += (count - special) * frames + special * override_frames
        return count

    # -- accepting ----------------------------------------------------------

    def _accept_ready(self, listener: Listener) -> None:
        lsock = listener.sock
        cfg = self.config
        stats = self.stats
        for _ in range(cfg.accept_batch):
            if stats.connections >= cfg.max_connections and not self._may_refuse(listener):
                return
            try:
                sock, _addr = accept_lean(lsock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._fds_exhausted(listener, exc)
                    return
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                self.stats.accept_errors += 1
                log.warning("accept failed: %s", exc)
                return
            self.adopt(sock, _addr)

    def adopt(self, sock: socket.socket, address: object = None) -> Optional[Connection]:
        """Serve an already-connected socket (accepted here or handed in).

        Over ``max_connections`` the socket is refused with ``full_message``,
        over a per-address limit with ``limit_message``, and None is returned.
        ``address`` is what ``accept()`` said (else the socket is asked).
        """
        stats = self.stats
        cfg = self.config
        if stats.connections >= cfg.max_connections:
            stats.refused_full += 1
            stats.limit("max-connections")
            self._refuse(sock, cfg.full_message)
            return None
        peer = _host(address) if address is not None else _peer_host(sock)
        from_proxy = bool(cfg.trusted_proxies) and peer in cfg.trusted_proxies
        key: Optional[Key] = None
        if not from_proxy and self.address_limits.active:
            key, limit = self.address_limits.admit(peer)
            if limit is not None:
                stats.limit(limit)
                self._refuse(sock, self._limit_message(limit, peer))
                return None
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if cfg.nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if cfg.sndbuf is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.sndbuf)
        except OSError:  # the peer is already gone
            self.address_limits.release(key, pending=True)
            sock.close()
            return None
        conn = Connection(sock, self)
        if key is not None:
            self._counted_pending[conn] = key
        conn.codec = (_ProxyHeaderCodec(conn, self) if from_proxy
                      else self._served_codec(conn, trusted=False))
        self.loop.register(conn.fd, EVENT_READ, conn)  # the int conn holds: no copy
        self.connections[conn.fd] = conn
        stats.accepted += 1
        stats.connections += 1
        if cfg.send_backlog_limit is not None and self._backlog_timer is None:
            self._backlog_timer = self.loop.call_later(self._backlog_period, self._check_backlogs)
        self.handler.on_connect(conn)
        return conn

    def _refuse(self, sock: socket.socket, message: bytes) -> None:
        """Tell the peer why, then close: a few syscalls, whatever the peer does.

        What the peer already sent is read once first: closing a socket with
        unread input makes the kernel send RST, which can destroy our
        message before the peer reads it. A peer that keeps sending gets
        the RST anyway; it is not worth a second read.
        """
        try:
            sock.setblocking(False)
            sock.send(message)
            sock.shutdown(socket.SHUT_WR)
            sock.recv_into(self.recv_view)
        except OSError:
            pass
        finally:
            sock.close()

    def _limit_message(self, limit: str, address: str) -> bytes:
        make = self.config.limit_message
        return make(limit, address) if make is not None else self.config.full_message

    # -- per-address limits and proxies ---------------------------------------

    def client_address(self, conn: Connection) -> str:
        """The client's IP address: what a trusted proxy said, else the peer's."""
        proxied = self.proxied.get(conn)
        return proxied if proxied is not None else _peer_host(conn.sock)

    def forwarded_for(self, conn: Connection, forwarded: Optional[str]) -> Optional[str]:
        """An HTTP request on ``conn`` came with ``X-Forwarded-For: forwarded``.

        Believed only from a trusted proxy that sent no PROXY header: the
        last address in it (the one the proxy added) becomes ``conn``'s
        client, counted as :meth:`rekey` does; returns the name of a limit
        that refuses it, else None. Anyone else's header is ignored, and
        counted (:meth:`untrusted_forwarding`).
        """
        if not forwarded:
            return None
        trusted = self.config.trusted_proxies
        current = self.proxied.get(conn)
        if current is not None and conn not in self._by_xff:
            return None  # a PROXY header named the client: that is the truth
        if not trusted or _peer_host(conn.sock) not in trusted:
            self.untrusted_forwarding(conn, "x-forwarded-for")
            return None
        client = forwarded.rsplit(",", 1)[-1].strip()
        try:
            address_key(client)
        except ValueError:
            return None
        if client == current:
            return None
        self._by_xff.add(conn)
        return self.rekey(conn, client)

    def untrusted_forwarding(self, conn: Connection, kind: str) -> None:
        """``conn``'s peer, not a trusted proxy, sent what only one may send:
        ``kind`` is ``"x-forwarded-for"`` (ignored) or ``"proxy-header"``
        (the connection is closed). Counted in ``stats.untrusted``; the
        first of each kind in ``UNTRUSTED_LOG_EVERY`` seconds is logged with
        the peer's address (usually a proxy that should be in
        ``trusted_proxies``), the rest only in the churn summary.
        """
        untrusted = self.stats.untrusted
        untrusted[kind] = untrusted.get(kind, 0) + 1
        now = self.loop.time()
        last = self._untrusted_logged.get(kind)
        if last is not None and now - last < UNTRUSTED_LOG_EVERY:
            return
        self._untrusted_logged[kind] = now
        what = "a PROXY header (closed)" if kind == "proxy-header" else \
            "X-Forwarded-For (ignored)"
        trusted = self.config.trusted_proxies.text or "none"
        log.warning("%s from %s, which is not a trusted proxy (trusted_proxies: %s): if it is "
                    "your proxy, trust its address, or every client behind it counts as it; "
                    "more of these in the next %.0f s are only counted", what,
                    _peer_host(conn.sock) or "?", trusted, UNTRUSTED_LOG_EVERY,
                    extra={"untrusted": kind})

    def settle(self, conn: Connection) -> None:
        """``conn`` is no longer pending (a player said HELLO): it stops counting
        against the pending limits. Idempotent; a no-op for uncounted peers."""
        key = self._counted_pending.pop(conn, None)
        if key is not None:
            self._counted[conn] = key
            self.address_limits.settle(key)

    def _uncount(self, conn: Connection) -> Optional[Key]:
        """Forget ``conn``'s address-limit key (pending or not); None if uncounted."""
        key = self._counted.pop(conn, None)
        return self._counted_pending.pop(conn, None) if key is None else key

    def rekey(self, conn: Connection, address: str) -> Optional[str]:
        """Count ``conn`` as coming from ``address`` (a trusted proxy named the
        client, e.g. in X-Forwarded-For). Returns the name of the limit that
        refuses it (the caller answers and closes), else None."""
        limits = self.address_limits
        self.proxied[conn] = address
        pending = conn not in self._counted
        old = self._uncount(conn)
        if old is not None:
            limits.release(old, pending)
        if not limits.active:
            return None
        key, limit = limits.admit(address)
        if limit is not None:
            self.stats.limit(limit)
            return limit
        if key is not None:
            self._counted_pending[conn] = key
            if not pending:
                self.settle(conn)
        return None

    def _proxy_header(self, conn: Connection, header: ProxyHeader, rest: bytes) -> List[bytes]:
        """A trusted proxy said who the client is: count it, then serve it."""
        if header.source is not None:
            limit = self.rekey(conn, header.source[0])
            if limit is not None:
                conn.write(self._limit_message(limit, header.source[0]))
                conn.close_after_flush(limit, f"refused: {limit}")
                return []
        codec = conn.codec = self._served_codec(conn, trusted=True)
        if rest and conn.is_open:
            return codec.feed(rest)
        return []

    # -- the slow-consumer rule -------------------------------------------------

    @property
    def _backlog_period(self) -> float:
        return max(0.05, min(1.0, self.config.send_backlog_grace / 4))

    def _check_backlogs(self, pending: Optional[List[Connection]] = None) -> None:
        """Cut peers whose unsent backlog stayed over the limit for the grace time.

        A sweep runs every second at most (a quarter of the grace), while
        there are connections: one ioctl each (~0.8 us), in slices of
        ``_BACKLOG_SLICE`` connections with the loop (and a due tick) between
        them, so 15,000 connections never hold the loop for 30 ms at once. A
        slice that cuts many (each close runs the handler's ``on_close``)
        ends early, after ``_BACKLOG_SLICE_TIME``, and the next goes on.
        """
        self._backlog_timer = None
        limit = self.config.send_backlog_limit
        if limit is None or not self.connections:
            self._over_backlog.clear()
            return
        if pending is None:
            pending = list(self.connections.values())
        now = self.loop.time()
        grace = self.config.send_backlog_grace
        over = self._over_backlog
        unsent = unsent_counter()
        todo = pending[:_BACKLOG_SLICE]
        done = 0
        for conn in todo:
            done += 1
            if conn.closed:
                continue
            out = conn.out
            backlog = (0 if out is None else len(out)) + unsent(conn.fd)
            if backlog <= limit:
                if over:
                    over.pop(conn, None)
                continue
            since = over.setdefault(conn, now)
            if now - since >= grace:
                del over[conn]
                self.stats.slow_consumers += 1
                self.stats.limit("send-backlog")
                _abort(conn.sock)
                conn.close(CloseReason.SLOW_CONSUMER,
                           f"{backlog} bytes unsent for {now - since:.1f} s (limit {limit})")
                if self.loop.time() - now >= _BACKLOG_SLICE_TIME:
                    break
        rest = pending[done:]
        if rest:
            self._backlog_timer = self.loop.call_later(0.0, lambda: self._check_backlogs(rest))
        else:
            self._backlog_timer = self.loop.call_later(self._backlog_period,
                                                       self._check_backlogs)

    def _reserve_spare_fd(self) -> None:
        if self._spare_fd is None:
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self._spare_fd = None

    def _fds_exhausted(self, listener: Listener, exc: OSError) -> None:
        """Out of descriptors: refuse what waits, then rest the listener."""
        now = self.loop.time()
        if now - self._last_fd_warning >= 10.0:
            self._last_fd_warning = now
            log.warning(
                "accept: %s; refusing new connections (%d open)",
                os.strerror(exc.errno or 0), self.stats.connections,
            )
        drained = False
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            drained = self._refuse_waiting(listener.sock)
            self._reserve_spare_fd()
        if drained and self._spare_fd is not None:
            self._backoff = 0.0
            return
        # Could not drain the backlog: stop watching the listener for a while
        # rather than be woken for it on every loop iteration.
        self._backoff = min(1.0, max(0.05, self._backoff * 2))
        self._pause(listener, self._backoff)

    def _refuse_waiting(self, lsock: socket.socket) -> bool:
        """Accept and refuse queued connections; True once the queue is empty."""
        for _ in range(self.config.accept_batch):
            try:
                sock, _addr = accept_lean(lsock)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            self.stats.refused_fd_limit += 1
            self.stats.limit("fd-limit")
            self._refuse(sock, self.config.full_message)
        return False

    def _may_refuse(self, listener: Listener) -> bool:
        """Full: whether one more connect may be accepted and refused now.

        A token bucket of ``config.refuse_rate`` a second (a quarter second's
        worth at most). When it is empty the listener rests until a token
        is due (20 ms at least, so a storm costs a few epoll_ctl calls a
        second, not one each): what connects meanwhile waits in the
        kernel's queue, and past its length the kernel drops the SYNs and
        the clients retry. Counted as ``refuse-rate`` in ``stats.limits``.
        """
        rate = self.config.refuse_rate
        if rate is None:
            return True
        now = self.loop.time()
        tokens = min(rate / 4, self._refuse_tokens + (now - self._refuse_at) * rate)
        self._refuse_at = now
        if tokens >= 1.0:
            self._refuse_tokens = tokens - 1.0
            return True
        self._refuse_tokens = tokens
        self.stats.limit("refuse-rate")
        self._pause(listener, max(0.02, (1.0 - tokens) / rate))
        return False

    def _pause(self, listener: Listener, seconds: float) -> None:
        if listener.paused:
            return
        listener.paused = True
        self.loop.unregister(listener.sock)

        def resume() -> None:
            if listener.paused and listener in self.listeners:
                listener.paused = False
                self.loop.register(listener.sock, EVENT_READ, listener)

        self.loop.call_later(seconds, resume)

    # -- called by connections (the Owner protocol) --------------------------

    def _forget(self, conn: Connection, reason: str, detail: str) -> None:
        self._release(conn, reason)
        pending = conn not in self._counted
        key = self._uncount(conn)
        if key is not None:
            self.address_limits.release(key, pending)
        if self.proxied:
            self.proxied.pop(conn, None)
            self._by_xff.discard(conn)
        if self._over_backlog:
            self._over_backlog.pop(conn, None)
        # Per-connection lines stay at DEBUG: 15,000 peers would flood the log.
        # Churn, by reason, is summarised every few seconds (logs.ChurnReporter).
        if detail:
            log.debug("fd=%d closed: %s: %s", conn.fd, reason, detail)
        else:
            log.debug("fd=%d closed: %s", conn.fd, reason)
        self.handler.on_close(conn, reason)
        if self._on_drained is not None:
            self._check_drained()


class _ProxyHeaderCodec(SilentCodec):
    """The first codec of a connection from a trusted proxy: its PROXY header.

    Then the server's own codec takes over with the bytes that followed. A
    connection that does not start with a header (an HTTP proxy's, whose
    client is in X-Forwarded-For) goes to the server's codec as it is.
    Nothing is said to the proxy meanwhile (a timeout closes it silently).
    """

    __slots__ = ("conn", "server", "reader", "start")

    def __init__(self, conn: Connection, server: TCPServer) -> None:
        self.conn = conn
        self.server = server
        self.reader = ProxyHeaderReader()
        self.start: Optional[bytes] = b""  # the first bytes, until they tell header or not

    def feed(self, data: BytesLike) -> List[bytes]:
        if self.start is not None:
            start = self.start + bytes(data)
            header = starts_proxy_header(start)
            if header is None:
                self.start = start
                return []
            self.start = None
            if not header:
                codec = self.conn.codec = self.server._served_codec(self.conn, trusted=True)
                return codec.feed(start)
            data = start
        found = self.reader.feed(data)  # ProxyError: bad input, closed
        if found is None:
            return []
        return self.server._proxy_header(self.conn, found[0], found[1])


class _FirstCodec:
    """A codec that looks at a connection's first bytes, then hands it to ``inner``;
    until then ``inner`` says what the server says (frames, goodbyes)."""

    __slots__ = ()
    inner: Codec

    def frame(self, payload: BytesLike) -> bytes:
        return self.inner.frame(payload)

    def wrap(self, stream: bytes) -> bytes:
        return self.inner.wrap(stream)

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        return self.inner.closing(stream, code, reason)


class _UntrustedStart(_FirstCodec):
    """The first codec of a connection from anyone but a trusted proxy.

    A stream that starts with a PROXY header is not believed: it is counted
    and logged (:meth:`TCPServer.untrusted_forwarding`) and the connection
    closed (:class:`UntrustedProxyHeader`, reason ``untrusted-proxy-header``).
    Anything else goes to ``inner``, the server's codec, with the bytes read
    so far; until then ``inner`` frames what the server says. It looks at the
    first read only, unless that is a strict prefix of a header (at most 11
    bytes, held).
    """

    __slots__ = ("conn", "server", "inner", "start")

    def __init__(self, conn: Connection, server: TCPServer, inner: Codec) -> None:
        self.conn = conn
        self.server = server
        self.inner = inner
        self.start = b""

    def feed(self, data: BytesLike) -> List[bytes]:
        if self.start:
            data = self.start + bytes(data)
        found = starts_proxy_header(data)
        if found is None:
            self.start = bytes(data)
            return []
        conn = self.conn
        conn.codec = self.inner
        if found:
            self.server.untrusted_forwarding(conn, "proxy-header")
            raise UntrustedProxyHeader("a PROXY header from a peer that is not a trusted proxy")
        return self.inner.feed(data)


class _TLSStart(_FirstCodec):
    """The first codec of a connection to a server with TLS: TLS or plain?

    A first byte of 0x16 (a TLS handshake record) puts a
    :class:`~netcore.tls.TLSLayer` under ``inner``, which then reads the
    plaintext; anything else goes to ``inner`` as it is, or, with
    ``tls_required`` and a peer that is not a trusted proxy, is refused.
    Until the peer speaks, ``inner`` frames what the server says (in plain).
    """

    __slots__ = ("conn", "server", "inner", "trusted")

    def __init__(self, conn: Connection, server: TCPServer, inner: Codec, trusted: bool) -> None:
        self.conn = conn
        self.server = server
        self.inner = inner
        self.trusted = trusted

    def feed(self, data: BytesLike) -> List[bytes]:
        conn = self.conn
        server = self.server
        conn.codec = inner = self.inner
        first = data[0]
        if is_tls(first) and server.config.tls is not None:
            server._start_tls(conn, data)
            return []
        if server.config.tls_required and not self.trusted:
            server._refuse_plain(conn, first)
            return []
        return inner.feed(data)


def _host(address: object) -> str:
    """The host part of an ``accept()`` address ("" for a Unix socket's)."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "")


def _peer_host(sock: socket.socket) -> str:
    try:
        return _host(sock.getpeername())
    except OSError:
        return ""


_LINGER_ABORT = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)


def _abort(sock: socket.socket) -> None:
    """Make close() reset the connection: its unsent data goes at once, not
    after the kernel's retries (a never-reader's queue is what we are freeing)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
