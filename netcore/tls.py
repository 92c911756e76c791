"""TLS under a connection's codec: an ``ssl.SSLObject`` over two ``MemoryBIO``\\ s.

The loop reads ciphertext from the socket into the *incoming* BIO; the
``SSLObject`` turns it into plaintext, which goes to the connection's codec
exactly as a plain connection's bytes do, so HTTP, WebSocket, u16 frames and
RESP run unchanged over it. What the connection writes is encrypted into the
*outgoing* BIO and from there sent, or queued in the connection's usual
output queue (whose cap, high water and slow-consumer rules then apply to
the ciphertext). Nothing blocks: no ``wrap_socket``, no blocking handshake;
the handshake is driven by the loop's reads like everything else.

This module imports :mod:`ssl` (about 4.5 MB of RSS with OpenSSL): netcore
imports it only when a server is given a TLS context or a client asks for
TLS, so a plain server never loads it.

- :func:`server_context`: a server's context from the PEM files certbot
  writes (``fullchain.pem``, ``privkey.pem``): TLS 1.2 or newer, the ``ssl``
  module's secure defaults, no renegotiation, ALPN ``http/1.1``. A file
  that is missing, unreadable or wrong raises :class:`CertificateError`
  naming it; swap the new context in with ``TCPServer.set_tls(context)``
  (new connections get it, open ones keep theirs), so a reload that fails
  leaves the old one serving.
- :func:`client_context`: a client's, verifying the server against the
  system's CAs or ``cafile`` (``insecure=True``: no verification at all).
- :class:`TLSLayer`: one connection's TLS state (``conn.tls``);
  :class:`TLSSide`: what the TLS connections of one owner share (the
  handshake budget per loop turn, the handshake timeout).

Limits. Handshakes are what costs: each handshake step (a ``do_handshake``
on new input) counts against ``budget`` per loop turn, and connections past
it wait for the next turn (``loop.ready_again``), so a flood of ClientHellos
cannot hold the tick or the players' input. A handshake not finished within
``timeout`` seconds is closed (a ClientHello dribbled a byte a second). The
incoming BIO holds at most one read (the read budget) plus a partial record:
everything readable is decrypted and handed to the codec at once. The
outgoing BIO is emptied into the connection's output queue after every
operation. What the application writes during the handshake waits,
at most ``max_output`` bytes of it (more: closed, a slow consumer). Every
TLS error closes the connection (after sending the alert OpenSSL made, if
any) with reason ``tls-error``, counted by OpenSSL's name for it in
``NetStats.tls_errors`` (``wrong-version-number``, ``http-request``,
``certificate-verify-failed``...).
"""

from __future__ import annotations

import logging
import ssl

from .connection import CLOSED, EVENT_READ, EVENT_WRITE, OPEN, CloseReason, Connection
from .typing_shim import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple

    from .loop import EventLoop, Timer
    from .ringbuffer import BytesLike
    from .stats import NetStats

__all__ = ["CertificateError", "TLSLayer", "TLSSide", "client_context", "error_name",
           "read_plaintext", "server_context"]

log = logging.getLogger(__name__)

DEFAULT_ALPN = ("http/1.1",)

HANDSHAKING, READY, SHUT, FAILED = 0, 1, 2, 3

_NO_RENEGOTIATION = getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # Python 3.7+ with OpenSSL 1.1.0h+


class CertificateError(ValueError):
    """A certificate or key file could not be used; the message names it and says why."""


def _tls12_or_newer(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2


def server_context(cert_file: str, key_file: str, *, password: Optional[str] = None,
                   alpn: Sequence[str] = DEFAULT_ALPN) -> ssl.SSLContext:
    """A server's TLS context from a certificate chain and its private key (PEM).

    ``cert_file`` is the chain, leaf first (certbot's ``fullchain.pem``);
    ``key_file`` its key (``privkey.pem``). TLS 1.2 and 1.3 only, with the
    ``ssl`` module's secure defaults (no compression, the server's cipher
    preference, fresh (EC)DH keys), renegotiation refused, ALPN ``alpn``
    (``http/1.1``: browsers then never try HTTP/2 here). No client
    certificates are asked for, and no CA store is loaded (it would cost
    memory for nothing).

    Raises :class:`CertificateError` naming the file and the problem (missing,
    unreadable, not PEM, the key not the certificate's): nothing is changed,
    so a reload that fails leaves the server on its old context.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _tls12_or_newer(ctx)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE | _NO_RENEGOTIATION)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    for path, what in ((cert_file, "certificate chain"), (key_file, "private key")):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CertificateError(f"TLS {what} {path}: {exc.strerror or exc}") from None
    try:
        ctx.load_cert_chain(cert_file, key_file, password=password)
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            why = f"the key in {key_file} is not the key of the certificate in {cert_file}"
        elif "PEM" in str(exc) or reason in ("NO_START_LINE", "BAD_END_LINE"):
            why = (f"{cert_file} or {key_file} is not a PEM certificate chain and key "
                   f"({exc.reason or exc})")
        else:
            why = f"{cert_file} / {key_file}: {exc}"
        raise CertificateError(f"TLS: {why}") from None
    except OSError as exc:  # pragma: no cover - checked above, but the file may go meanwhile
        raise CertificateError(f"TLS: {cert_file} / {key_file}: {exc}") from None
    return ctx


def client_context(cafile: Optional[str] = None, *, insecure: bool = False,
                   alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A client's TLS context: TLS 1.2+, the server's chain and name verified.

    ``cafile``: the CA certificates (PEM) to trust instead of the system's
    (a test CA, a private one). ``insecure``: verify nothing (no chain, no
    name), for a server whose certificate you cannot check: the traffic is
    encrypted, but anyone in the middle can read it. ``alpn``: protocols to
    offer (none by default).
    """
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(f"TLS: CA file {cafile}: {exc}") from None
    _tls12_or_newer(ctx)
    ctx.options |= _NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def read_plaintext(obj: ssl.SSLObject) -> Tuple[bytes, Optional[str]]:
    """All ``obj`` can decrypt from what its incoming BIO holds now, and why the
    session is over (None: it is not): ``"closed"`` for the peer's
    ``close_notify``, else ``"TLS: "`` and the error. For clients that drive an
    ``SSLObject`` themselves (a load generator's thousands, say)."""
    plain: List[bytes] = []
    while True:
        try:
            chunk = obj.read(65536)
        except ssl.SSLWantReadError:
            break
        except ssl.SSLZeroReturnError:
            return b"".join(plain), "closed"
        except ssl.SSLError as exc:
            return b"".join(plain), f"TLS: {exc.reason or exc}"
        if not chunk:
            break
        plain.append(chunk)
    return b"".join(plain), None


def error_name(exc: BaseException) -> str:
    """A TLS error's name for counting: OpenSSL's reason (``WRONG_VERSION_NUMBER``)
    as a label (``wrong-version-number``), else the exception's class."""
    reason = getattr(exc, "reason", None)
    name = reason if isinstance(reason, str) and reason else type(exc).__name__
    return name.lower().replace("_", "-")


class TLSSide:
    """What the TLS connections of one owner (a server, a client) share.

    ``budget``: handshake steps per loop turn (None: no limit); past it a
    connection waits for the next turn. ``timeout``: seconds a handshake
    may take (None: the owner times it, as a client's connect timeout does).
    ``opened(conn)`` runs when a handshake completes, ``failed(conn, exc)``
    when it fails (before the connection closes).
    """

    __slots__ = ("loop", "stats", "budget", "timeout", "opened", "failed", "handshaking",
                 "_turn", "_used", "_timer")

    def __init__(self, loop: EventLoop, stats: NetStats, budget: Optional[int] = None,
                 timeout: Optional[float] = None,
                 opened: Optional[Callable[[Connection], None]] = None,
                 failed: Optional[Callable[[Connection, BaseException], None]] = None) -> None:
        self.loop = loop
        self.stats = stats
        self.budget = budget
        self.timeout = timeout
        self.opened = opened
        self.failed = failed
        # Connections whose handshake is under way, by when it started
        # (insertion order is start order: the sweep stops at the first young one).
        self.handshaking: Dict[Connection, float] = {}
        self._turn = -1
        self._used = 0
        self._timer: Optional[Timer] = None

    def may_handshake(self) -> bool:
        """Whether one more handshake step fits in this loop turn (and count it)."""
        budget = self.budget
        if budget is None:
            return True
        turn = self.loop.iterations
        if turn != self._turn:
            self._turn = turn
            self._used = 0
        if self._used >= budget:
            self.stats.limit("tls-handshake-budget")
            return False
        self._used += 1
        return True

    def started(self, conn: Connection) -> None:
        if self.timeout is None:
            return
        self.handshaking[conn] = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(self._period(), self._sweep)

    def _period(self) -> float:
        assert self.timeout is not None
        return max(0.05, min(1.0, self.timeout / 4))

    def _sweep(self) -> None:
        """Close the handshakes older than the timeout (a sweep a quarter of it apart)."""
        self._timer = None
        timeout = self.timeout
        if timeout is None:
            return
        now = self.loop.time()
        late = []
        for conn, since in self.handshaking.items():
            if now - since < timeout:
                break
            late.append(conn)
        for conn in late:
            self.handshaking.pop(conn, None)
            self.stats.limit("tls-handshake-timeout")
            conn.close(CloseReason.TLS_HANDSHAKE_TIMEOUT,
                       f"TLS handshake not done in {timeout:g} s")
        if self.handshaking:
            self._timer = self.loop.call_later(self._period(), self._sweep)


class TLSLayer:
    """One connection's TLS: the ``SSLObject``, its two BIOs, the handshake's state.

    Held in ``conn.tls``; the connection calls it for its reads
    (:meth:`on_ready`), for what it writes (:meth:`encrypt`), to say
    goodbye (:meth:`goodbye`: a ``close_notify``) and when it closes
    (:meth:`closed`). It holds no reference to the connection (each call
    passes it), so the two make no reference cycle.
    """

    __slots__ = ("obj", "incoming", "outgoing", "side", "state", "early")

    def __init__(self, context: ssl.SSLContext, side: TLSSide, server_side: bool,
                 server_hostname: Optional[str] = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=server_hostname)
        self.side = side
        self.state = HANDSHAKING
        # What the application wrote before the handshake was done.
        self.early: Optional[bytearray] = None

    def __repr__(self) -> str:
        state = ("handshaking", "ready", "shut", "failed")[self.state]
        return f"<TLSLayer {state} {self.version() or ''}>".replace(" >", ">")

    # -- what applications may ask --------------------------------------------

    @property
    def ready(self) -> bool:
        """The handshake is done and the connection carries data."""
        return self.state == READY

    def version(self) -> Optional[str]:
        """``"TLSv1.3"``, ``"TLSv1.2"``; None before the handshake."""
        return self.obj.version()

    def alpn(self) -> Optional[str]:
        """The protocol ALPN chose (``"http/1.1"``), or None."""
        return self.obj.selected_alpn_protocol()

    def cipher(self) -> Optional[str]:
        found = self.obj.cipher()
        return found[0] if found else None

    # -- starting -------------------------------------------------------------

    def start(self, conn: Connection, first: Optional[BytesLike] = None) -> None:
        """Become ``conn``'s TLS and begin: a server with the ``first`` bytes the
        peer sent (its ClientHello, or part of it), a client by sending its own."""
        conn.tls = self
        self.side.started(conn)
        if first:
            self.incoming.write(first)
        if self.side.may_handshake():
            self._process(conn)
        else:
            conn.owner.loop.ready_again(conn)

    # -- reading --------------------------------------------------------------

    def on_ready(self, conn: Connection, mask: int) -> None:
        """The loop says ``conn``'s socket is ready (``Connection.on_ready`` passes it on)."""
        if mask & EVENT_READ and conn.state == OPEN:
            self._read(conn)
        if mask & EVENT_WRITE and conn.out is not None and conn.state != CLOSED:
            conn._flush()

    def _read(self, conn: Connection) -> None:
        owner = conn.owner
        if self.state == HANDSHAKING and not self.side.may_handshake():
            # Past this turn's budget: read nothing (the kernel holds it) and
            # come back next turn.
            owner.loop.ready_again(conn)
            return
        view = owner.recv_view
        n = conn._recv(view)
        if n == 0:
            return
        if n > 0:
            owner.stats.bytes_in += n
            self.incoming.write(view[:n])
        elif not self.incoming.pending:
            return  # woken for nothing new (another turn asked for), nothing held
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        """Run the handshake on what came in, then decrypt it all into the codec."""
        obj = self.obj
        if self.state == HANDSHAKING:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                self._send(conn)
                return
            except (ssl.SSLError, ValueError) as exc:  # ValueError: a bad server_hostname
                self._fail(conn, exc)
                return
            self._handshake_done(conn)
            if conn.state != OPEN:
                return
        view = conn.owner.recv_view
        size = len(view)
        while True:
            try:
                # Into the buffer, so its count (typeshed says bytes).
                n = cast(int, obj.read(size, view))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self._peer_shut(conn)
                return
            except ssl.SSLError as exc:
                self._fail(conn, exc)
                return
            if not n:
                break
            conn._feed(view[:n])
            if conn.state != OPEN:
                return
        if self.outgoing.pending:  # a KeyUpdate answered, session tickets
            self._send(conn)

    def _handshake_done(self, conn: Connection) -> None:
        side = self.side
        self.state = READY
        side.handshaking.pop(conn, None)
        side.stats.tls_handshakes += 1
        self._send(conn)  # the last flight (a client's Finished; a server's tickets)
        early = self.early
        if early is not None:
            self.early = None
            conn._write_raw(self.encrypt(conn, early))
        if side.opened is not None and conn.state == OPEN:
            side.opened(conn)

    # -- writing --------------------------------------------------------------

    def encrypt(self, conn: Connection, data: BytesLike) -> bytes:
        """The ciphertext of ``data`` ("" while the handshake runs: then it waits)."""
        state = self.state
        if state == READY:
            if not len(data):
                return b""
            self.obj.write(data)
            return self.outgoing.read()
        if state == HANDSHAKING and len(data):
            early = self.early
            if early is None:
                early = self.early = bytearray()
            cap = conn.owner.config.max_output
            if len(early) >= cap:
                owner = conn.owner
                owner.stats.slow_consumers += 1
                owner.stats.limit("output-queue")
                conn.close(CloseReason.SLOW_CONSUMER,
                           f"{len(early)} bytes written during the TLS handshake >= cap {cap}")
                return b""
            early += data
        return b""

    def _send(self, conn: Connection) -> None:
        """Send (or queue) what OpenSSL wrote to the outgoing BIO."""
        if self.outgoing.pending:
            conn._write_raw(self.outgoing.read())

    # -- ending ---------------------------------------------------------------

    def goodbye(self, conn: Connection) -> None:
        """Send a ``close_notify`` (the connection is about to close on purpose).

        Nothing more is encrypted after it; the peer's answer is not waited for.
        """
        if self.state != READY:
            return
        self.state = SHUT
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass  # SSLWantReadError: ours is written, theirs not read (not waited for)
        self._send(conn)

    def _peer_shut(self, conn: Connection) -> None:
        """The peer sent its ``close_notify``: answer it, send what is queued, close."""
        self.goodbye(conn)
        conn.close_after_flush(CloseReason.PEER_CLOSED, "TLS close_notify")

    def _fail(self, conn: Connection, exc: BaseException) -> None:
        """A TLS error: count it by name, send OpenSSL's alert if it made one, close."""
        name = error_name(exc)
        errors = self.side.stats.tls_errors
        errors[name] = errors.get(name, 0) + 1
        self.state = FAILED
        self.side.handshaking.pop(conn, None)
        if self.side.failed is not None:
            self.side.failed(conn, exc)
        if conn.state != OPEN:
            return
        detail = f"{name}: {exc}"
        alert = self.outgoing.read() if self.outgoing.pending else b""
        if alert:
            conn._write_raw(alert)
            conn.close_after_flush(CloseReason.TLS_ERROR, detail)
        else:
            conn.close(CloseReason.TLS_ERROR, detail)

    def closed(self, conn: Connection) -> None:
        """``conn`` closed: it no longer counts as handshaking."""
        if self.state == HANDSHAKING:
            self.side.handshaking.pop(conn, None)
        self.early = None
