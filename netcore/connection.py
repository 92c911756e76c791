"""One accepted socket: nonblocking reads into a codec, writes with backpressure.

The write path follows asyncio's selector transport: ``write()`` calls
``send`` at once and queues only what the kernel did not take, in a capped
:class:`~netcore.ringbuffer.RingBuffer` that exists only while bytes are
waiting. Write interest is registered with the selector only while that
queue is non-empty, so the steady state of an up-to-date client is a single
``send`` per message and no selector traffic.

Crossing ``high_water`` queued bytes calls the handler's ``on_high_water``;
falling back to ``low_water`` calls ``on_drain``. A write to a connection
whose queue already holds ``max_output`` bytes disconnects it as a slow
consumer, with the reason logged at DEBUG and counted, rather than letting
it grow the server's memory. Below that, one write may take the queue past
``max_output``: a message of any size can always be sent, and the queue
peaks at ``max_output`` plus one message.
"""

from __future__ import annotations

import logging
import selectors
import socket

from .codec import CLOSED_CODEC, Codec, CodecHandoff, ProtocolError, Text
from .loop import EventLoop, Readiness
from .ringbuffer import BufferFull, RingBuffer
from .stats import NetStats
from .typing_shim import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, Sequence, Set

    from .ringbuffer import BytesLike

__all__ = ["CloseReason", "Connection", "ConnectionEvents", "Limits", "Owner", "OwnerBase",
           "TLSState"]

log = logging.getLogger(__name__)

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

OPEN, CLOSING, CLOSED = 0, 1, 2

_QUIET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

COMPACT_AFTER = 256  # removals from a table of connections before compact() rebuilds it


def churned(removed: int, size: int) -> bool:
    """Whether a table now ``size`` long, ``removed`` removals since it was last
    built, is worth copying (see :meth:`OwnerBase.compact`): after a quarter of
    its size in removals, and at least ``COMPACT_AFTER``. A copy sized afresh
    has room for up to a third more, so this rebuilds it well before churn
    would grow it, without copying 15,000 entries for every few closes.
    """
    return removed >= COMPACT_AFTER and removed >= size // 4


class CloseReason:
    """Stable close categories: log fields and metric labels."""

    PEER_CLOSED = "peer-closed"
    RESET = "reset"
    BAD_INPUT = "bad-input"
    SLOW_CONSUMER = "slow-consumer"
    ERROR = "error"
    SERVER_CLOSE = "server-close"
    SHUTDOWN = "shutdown"
    LINGER_TIMEOUT = "linger-timeout"
    HANDSHAKE_TIMEOUT = "handshake-timeout"  # an HTTP request or upgrade took too long
    TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"  # the TLS handshake took too long
    TLS_ERROR = "tls-error"  # a TLS error (counted by name in NetStats.tls_errors)
    TLS_REQUIRED = "tls-required"  # a plain connection to a server that requires TLS
    DONE = "done"  # an HTTP exchange finished (not kept alive)


class ConnectionEvents(Protocol):
    """The callbacks a :class:`Connection`, its codecs and its owner make.

    :class:`netcore.handler.Handler` has them all (with defaults); declaring
    them here keeps this module below the handler in the import order.
    """

    def on_protocol(self, conn: "Connection", protocol: str) -> None: ...

    def on_bad_input(self, conn: "Connection", exc: ProtocolError) -> None: ...

    def on_close(self, conn: "Connection", reason: str) -> None: ...

    def on_message(self, conn: "Connection", payload: bytes) -> None: ...

    def on_high_water(self, conn: "Connection") -> None: ...

    def on_drain(self, conn: "Connection") -> None: ...


class Limits(Protocol):
    """The output limits a :class:`Connection` obeys (``ServerConfig`` has them)."""

    max_output: int  # queued bytes past this: closed as a slow consumer
    high_water: int  # on_high_water when the queue reaches it
    low_water: int  # on_drain when it falls back to this
    close_linger: float  # seconds close_after_flush waits for the peer to read


class Owner(Protocol):
    """What a :class:`Connection` needs from whatever owns it.

    A :class:`~netcore.server.TCPServer` owns the connections it accepts and
    a :class:`~netcore.client.TCPClient` the ones it opens; a test can own
    one with a few attributes (see :mod:`netcore.testing`). The two methods
    are private: a connection calls them, applications never do.
    """

    # Read-only here (properties), so that an owner's own, richer types fit.
    @property
    def loop(self) -> EventLoop: ...

    @property
    def stats(self) -> NetStats: ...

    @property
    def handler(self) -> ConnectionEvents: ...

    @property
    def config(self) -> Limits: ...

    @property
    def recv_view(self) -> memoryview:
        """A shared read buffer: one ``recv_into`` per read, no allocation."""

    def _bad_input(self, conn: "Connection", exc: ProtocolError) -> None:
        """``conn``'s codec raised ``exc``; tell the application, close ``conn``."""

    def _forget(self, conn: "Connection", reason: str, detail: str) -> None:
        """``conn`` closed: unregister it, count it, call ``on_close``."""


class TLSState(Protocol):
    """What a :class:`Connection` asks of its TLS layer (``conn.tls``).

    :class:`netcore.tls.TLSLayer` is the one there is; declared here so that
    this module needs neither it nor :mod:`ssl`.
    """

    def on_ready(self, conn: "Connection", mask: int) -> None:
        """The socket is ready: read through TLS into ``conn._feed``, flush."""

    def encrypt(self, conn: "Connection", data: BytesLike) -> bytes:
        """The wire bytes for ``data`` (empty: held, or ``conn`` was closed)."""

    def goodbye(self, conn: "Connection") -> None:
        """Queue a ``close_notify``: ``conn`` closes on purpose."""

    def closed(self, conn: "Connection") -> None:
        """``conn`` closed."""

    def version(self) -> Optional[str]:
        """What the handshake agreed on (``"TLSv1.3"``); None before it is done."""


# State that few connections have at once, kept here rather than in a slot
# every connection would carry (8 bytes each, for tens of thousands):
# why each closing connection (close_after_flush, still flushing) will close,
# and the connections whose output queue went over high water and has not
# yet drained to low water. close() takes a connection out of both.
_CLOSING: Dict["Connection", str] = {}
_ABOVE_HIGH_WATER: Set["Connection"] = set()


class Connection(Readiness):
    """A connected peer. Slots only: tens of thousands of these stay idle.

    Polled edge-triggered where the loop can (``Readiness.edge_triggered``):
    a read that fills the owner's whole read buffer may have left input in
    the kernel, so it asks the loop for another turn (``ready_again``).

    ``tls`` is None on a plain connection: the plain path tests it once per
    read and once per write, and does nothing else for TLS. On a TLS one it
    is the :class:`~netcore.tls.TLSLayer`: reads go through it before the
    codec, writes are encrypted before they are sent or queued (``out``
    then holds ciphertext), and a polite close sends a ``close_notify``.
    """

    edge_triggered = True

    __slots__ = (
        "sock",
        "fd",
        "owner",
        "codec",
        "out",
        "state",
        "data",
        "tls",
    )

    def __init__(self, sock: socket.socket, owner: Owner, codec: Codec = CLOSED_CODEC) -> None:
        """``codec`` may be set after construction, for codecs that hold
        their connection (the owner sets it before registering the socket)."""
        self.sock = sock
        self.fd = sock.fileno()
        self.owner = owner
        self.codec = codec
        # Output queue; None exactly when nothing is waiting to be sent.
        self.out: Optional[RingBuffer] = None
        self.state = OPEN
        self.data: Any = None  # the application's per-connection object
        self.tls: Optional[TLSState] = None  # a netcore.tls.TLSLayer; None: plain

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {('open', 'closing', 'closed')[self.state]}>"

    @property
    def events(self) -> int:
        """What the poller watches for: kept by the state, not in a slot.

        Open: reading, and writing while output is queued; closing: writing
        only (the queue is never empty then); closed: nothing. Each change
        of state or queue below makes exactly the poller change it implies.
        """
        if self.state == OPEN:
            return EVENT_READ if self.out is None else EVENT_READ | EVENT_WRITE
        return EVENT_WRITE if self.state == CLOSING else 0

    @property
    def above_high_water(self) -> bool:
        """Whether ``on_high_water`` was called and ``on_drain`` not yet since."""
        return self in _ABOVE_HIGH_WATER

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @property
    def queued(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        out = self.out
        return 0 if out is None else len(out)

    def peername(self) -> str:
        try:
            addr = self.sock.getpeername()
        except OSError:
            return "?"
        if isinstance(addr, tuple):
            return f"{addr[0]}:{addr[1]}"
        return str(addr)

    # -- writing ------------------------------------------------------------

    def send(self, payload: BytesLike) -> bool:
        """Frame ``payload`` with this connection's codec and write it.

        A :class:`~netcore.codec.Text` goes as a text message where the codec
        has them (WebSocket), anything else as binary. Returns what
        :meth:`write` returns.
        """
        return self.write(self.codec.frame(payload))

    def send_text(self, text: str) -> bool:
        """Send ``text`` as one text message (its UTF-8 bytes where the
        codec has no text messages)."""
        return self.write(self.codec.frame(Text(text, "utf-8")))

    def send_binary(self, data: BytesLike) -> bool:
        """Send ``data`` as one binary message, even if it is a Text."""
        if type(data) is not bytes:
            data = bytes(data)
        return self.write(self.codec.frame(data))

    def write(self, data: BytesLike, frames: int = 1) -> bool:
        """Send ``data`` now, queueing what the kernel does not take.

        Returns False if the connection is (or just became) not open; the
        data is then dropped. ``frames`` is only for the frames-out counter.
        """
        if self.state != OPEN:
            return False
        stats = self.owner.stats
        stats.sends += 1
        stats.frames_out += frames
        if self.tls is not None:
            data = self.tls.encrypt(self, data)
            if not data:  # held until the handshake is done, or refused (and closed)
                return self.state == OPEN
        self._write_raw(data)
        return self.state == OPEN

    def _write_raw(self, data: BytesLike) -> None:
        """Send now, queueing what the kernel does not take: bytes that are what
        goes on the wire (after TLS, if any), not counted as a message."""
        if self.state != OPEN or not data:
            return
        if self.out is not None:  # behind what waits, in order
            self._enqueue(data)
            return
        n = self._send_now(data)
        if 0 <= n < len(data):
            self._enqueue(memoryview(data)[n:])

    def _send_now(self, data: BytesLike) -> int:
        """One ``send``: the bytes the kernel took (0: none now), -1 if it failed
        (the connection is then closed). ``Server.broadcast`` has it inline."""
        try:
            n: int = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._send_failed(exc)
            return -1
        self.owner.stats.bytes_out += n
        return n

    def enqueue(self, data: BytesLike) -> None:
        """Queue ``data`` behind what is already waiting (no send attempt).

        On a TLS connection ``data`` is encrypted first (the queue holds
        what goes on the wire).
        """
        if self.state != OPEN:
            return
        if self.tls is not None:
            data = self.tls.encrypt(self, data)
            if not data:
                return
        self._enqueue(data)

    def _enqueue(self, data: BytesLike) -> None:
        """Queue wire bytes behind what is already waiting."""
        if self.state != OPEN:
            return
        owner = self.owner
        out = self.out
        if out is None:
            out = self.out = RingBuffer(owner.config.max_output, initial=4096)
            owner.loop.modify(self.fd, EVENT_READ | EVENT_WRITE, self)
        try:
            out.write(data)
        except BufferFull as full:
            cap = owner.config.max_output
            if full.size >= cap:
                owner.stats.slow_consumers += 1
                owner.stats.limit("output-queue")
                self.close(
                    CloseReason.SLOW_CONSUMER,
                    f"{full.size} bytes queued >= cap {cap}, {full.incoming} more written",
                )
                return
            # Under the cap, one write may take the queue past it: a message
            # of any size can be sent (the queue peaks at cap + one message).
            out.limit = full.size + full.incoming
            out.write(data)
        owner.stats.queued_out_bytes += len(data)
        if len(out) >= owner.config.high_water and self not in _ABOVE_HIGH_WATER:
            _ABOVE_HIGH_WATER.add(self)
            owner.handler.on_high_water(self)

    def _send_failed(self, exc: OSError) -> None:
        if isinstance(exc, _QUIET_ERRORS):
            self.close(CloseReason.RESET)
        else:
            self.close(CloseReason.ERROR, f"send: {exc}")

    def _flush(self) -> None:
        out = self.out
        if out is None:
            return
        stats = self.owner.stats
        sock = self.sock
        while out:
            view = out.peek()
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                view.release()
                self._send_failed(exc)
                return
            size = len(view)
            view.release()
            if n:
                out.consume(n)
                stats.bytes_out += n
                stats.queued_out_bytes -= n
            if n < size:
                break
        left = len(out)
        if left <= self.owner.config.low_water and self in _ABOVE_HIGH_WATER:
            _ABOVE_HIGH_WATER.discard(self)
            self.owner.handler.on_drain(self)
            codec_drained = getattr(self.codec, "on_drain", None)  # e.g. an HTTP codec
            if codec_drained is not None:  # that stopped answering until the peer read
                codec_drained()
            left = len(out)  # what on_drain wrote went into this queue: keep it
        if left == 0 and self.out is out:
            self.out = None
            if self.state == CLOSING:
                self.close(_CLOSING.get(self) or CloseReason.SERVER_CLOSE)
            elif self.state == OPEN:
                self.owner.loop.modify(self.fd, EVENT_READ, self)

    # -- reading ------------------------------------------------------------

    def on_ready(self, mask: int) -> None:
        # The codec and the handler are called from here, not through
        # _feed(): this runs for every message every player sends.
        if self.tls is not None:
            self.tls.on_ready(self, mask)  # reads through TLS, then _feed()
            return
        if mask & EVENT_READ and self.state == OPEN:
            owner = self.owner
            view = owner.recv_view
            n = self._recv(view)
            if n == 0:
                return
            if n > 0:
                stats = owner.stats
                stats.bytes_in += n
                try:
                    messages: Sequence[bytes] = self.codec.feed(view[:n])
                except (ProtocolError, CodecHandoff) as exc:
                    messages = self._codec_raised(exc)
                if messages:  # _deliver(), inline
                    stats.frames_in += len(messages)
                    on_message = owner.handler.on_message
                    for payload in messages:
                        on_message(self, payload)
                        if self.state != OPEN:
                            break
        if mask & EVENT_WRITE and self.out is not None and self.state != CLOSED:
            self._flush()

    def _recv(self, view: memoryview) -> int:
        """``recv_into(view)``: how many bytes came, -1 if none yet, 0 if the
        connection ended (closed here: by the peer, or by an error)."""
        try:
            n: int = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError as exc:
            self._read_failed(exc)
            return 0
        if n == 0:
            self.close(CloseReason.PEER_CLOSED)
        elif n == len(view) and self.owner.loop.edge_triggered:
            self.owner.loop.ready_again(self)  # more may wait, and no event will say so
        return n

    def _feed(self, data: BytesLike) -> None:
        """What ``on_ready`` does with the bytes it read, for bytes read another
        way (the plaintext a TLS layer decrypted): the codec, then the handler."""
        try:
            messages: Sequence[bytes] = self.codec.feed(data)
        except (ProtocolError, CodecHandoff) as exc:
            messages = self._codec_raised(exc)
        if messages:
            self._deliver(messages)

    def _codec_raised(self, exc: Exception) -> Sequence[bytes]:
        """The codec raised: bad input (deliver what came before it, then let the
        owner answer), or a hand-off to another codec. The messages to deliver."""
        if isinstance(exc, CodecHandoff):
            if self.state != CLOSED:
                self.codec = exc.codec
            return exc.messages
        assert isinstance(exc, ProtocolError)
        if exc.messages:
            self._deliver(exc.messages)
        if self.state == OPEN:
            self.owner._bad_input(self, exc)
        return ()

    def _read_failed(self, exc: OSError) -> None:
        if isinstance(exc, _QUIET_ERRORS):
            self.close(CloseReason.RESET)
        else:
            self.close(CloseReason.ERROR, f"recv: {exc}")

    def _deliver(self, messages: Sequence[bytes]) -> None:
        """Hand ``messages`` to the handler until one of them closes us."""
        owner = self.owner
        owner.stats.frames_in += len(messages)
        on_message = owner.handler.on_message
        for payload in messages:
            on_message(self, payload)
            if self.state != OPEN:
                break

    def on_error(self, exc: BaseException) -> None:
        log.error("connection fd=%d: handler failed", self.fd, exc_info=exc)
        self.close(CloseReason.ERROR, f"internal: {exc!r}")

    # -- closing ------------------------------------------------------------

    def goodbye(self, code: int = 1000, text: str = "", last_words: bytes = b"",
                reason: str = CloseReason.SERVER_CLOSE) -> None:
        """Close the polite way: say why as the codec can, flush, then close.

        Writes ``codec.closing(last_words, code, text)``: over WebSocket the
        ``last_words`` stream in a message and a Close frame with ``code``
        (a :class:`~netcore.websocket.CloseCode`) and ``text``; over plain
        frames just ``last_words``; nothing on an HTTP connection. Then
        :meth:`close_after_flush` with ``reason``. A no-op unless open.
        """
        if self.state != OPEN:
            return
        bye = self.codec.closing(last_words, code, text)
        if bye and not self.write(bye):
            return  # the write failed and closed the connection
        self.close_after_flush(reason, text)

    def close_after_flush(self, reason: str, detail: str = "") -> None:
        """Stop reading, send what is queued, then close.

        Gives up after the server's ``close_linger`` seconds, so a peer that
        never reads cannot hold the connection open.
        """
        if self.state != OPEN:
            return
        if self.tls is not None:
            self.tls.goodbye(self)  # a close_notify, queued last
            if self.state != OPEN:
                return
        if self.out is None:
            self.close(reason, detail)
            return
        self.state = CLOSING
        _CLOSING[self] = reason
        if detail:
            log.debug("fd=%d closing: %s: %s", self.fd, reason, detail)
        self.owner.loop.modify(self.fd, EVENT_WRITE, self)
        # Fires once; by then the connection has usually closed and ignores it.
        self.owner.loop.call_later(self.owner.config.close_linger, self._linger_expired)

    def _linger_expired(self) -> None:
        if self.state == CLOSING:
            self.close(_CLOSING.get(self) or CloseReason.LINGER_TIMEOUT, "linger timeout")

    def close(self, reason: str = CloseReason.SERVER_CLOSE, detail: str = "") -> None:
        """Close now, dropping anything still queued. Idempotent."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        _CLOSING.pop(self, None)
        _ABOVE_HIGH_WATER.discard(self)
        self.codec = CLOSED_CODEC  # a codec may hold this connection: break the cycle
        out = self.out
        if out is not None:
            self.owner.stats.queued_out_bytes -= len(out)
            self.out = None
        self.owner._forget(self, reason, detail)
        tls = self.tls
        if tls is not None:  # after on_close, which may still look at it
            tls.closed(self)
            self.tls = None  # frees OpenSSL's state now
        sock = self.sock
        if reason != CloseReason.PEER_CLOSED and reason != CloseReason.RESET:
            # Closing with unread input makes the kernel answer RST, which
            # can destroy what we just sent (an error, a goodbye) before the
            # peer reads it. Read what is waiting so close() sends FIN.
            view = self.owner.recv_view
            try:
                for _ in range(4):
                    if not sock.recv_into(view):
                        break
            except OSError:
                pass
        try:
            sock.close()
        except OSError:  # pragma: no cover - close() on Linux does not fail here
            pass



# Makes the codec of a new connection. It gets the connection, so a codec
# that needs it (a protocol sniffer, a WebSocket front) can hold it; most
# ignore it: ``lambda conn: FrameParser(1024)``.
if TYPE_CHECKING:
    CodecFactory = Callable[[Connection], Codec]


class OwnerBase:
    """What every owner does the same way (TCPServer and TCPClient subclass it).

    Subclasses set ``loop``, ``stats``, ``handler`` and ``connections`` (open
    connections by file descriptor) and implement ``_forget``, starting with
    :meth:`_release`.
    """

    loop: EventLoop
    stats: NetStats
    handler: ConnectionEvents
    connections: Dict[int, Connection]
    removed = 0  # connections forgotten since ``connections`` was last rebuilt (compact)

    def compact(self) -> bool:
        """Rebuild ``connections`` if enough have closed since the last time; True if it did.

        A dict keeps a slot for every key deleted from it until it next
        grows, and then sizes the new table for three times what it holds:
        under churn, 15,000 connections' table goes from 0.6 to 1.3 MB after
        ~7,000 closes, and stays there. A copy is sized for what it holds
        now (~1 ms for 15,000). Call it now and then (once a minute), not
        per close.
        """
        if not churned(self.removed, len(self.connections)):
            return False
        self.connections = dict(self.connections)
        self.removed = 0
        return True

    def _bad_input(self, conn: Connection, exc: ProtocolError) -> None:
        if exc.limit_name:
            self.stats.limit(exc.limit_name)
        log.debug("fd=%d %s: bad input: %s", conn.fd, conn.peername(), exc)
        self.handler.on_bad_input(conn, exc)
        if conn.is_open:  # the handler neither closed it nor began to
            conn.close(exc.reason, str(exc))

    def _release(self, conn: Connection, reason: str) -> None:
        """Stop watching ``conn`` and count its close (once)."""
        try:
            self.loop.unregister(conn.fd)  # by fd: the poller's key, whoever registered it
        except (KeyError, ValueError):
            pass
        if self.connections.pop(conn.fd, None) is conn:
            self.removed += 1
            self.stats.count_close(reason)
