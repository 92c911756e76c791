"""A nonblocking Redis connection on netcore's loop: commands, pipelining, pub/sub.

No thread, no blocking call, no dependency: the RESP codec is
:mod:`netcore.resp`, the socket is an outbound connection on the same
:class:`~netcore.loop.EventLoop` as everything else.

Two kinds of connection, as Redis itself requires (a subscribed connection
can do nothing else):

Both take a :class:`RedisConfig` (a name, timeouts, backoff, limits,
keepalive), as every netcore server and client takes its ``*Config``.

- :class:`Redis` sends commands. ``execute()`` returns a :class:`Pending`
  at once and calls its callback when the reply comes; commands issued in
  one loop iteration leave in one write (pipelining for free), and replies
  are matched first-in first-out.
- :class:`RedisSubscriber` holds ``SUBSCRIBE``/``PSUBSCRIBE`` and calls
  ``on_message(channel, data)`` (``on_pmessage(pattern, channel, data)``).

Both ride on a :class:`~netcore.client.TCPClient` of their own (one
:class:`~netcore.connection.Connection` at a time, whose codec parses RESP)
and connect in the background and never give up: a refused, failed or
lost connection is retried with exponential backoff (with jitter) up to
``RedisConfig.backoff_max`` seconds, forever, until ``close()``. Each (re)connection
does ``AUTH`` (with the ACL username if there is one), ``SELECT`` and, for a
subscriber, re-subscribes to everything (at the least a ``PING``: ready
means the server answered), and only then calls ``on_ready()``:
that is where the owner resynchronises whatever it keeps in Redis. Commands
issued while not ready fail at once with :class:`NotConnected`; commands in
flight when a connection drops fail with :class:`ConnectionLost` (they may
or may not have run). A Redis error reply is a :class:`~netcore.resp.ReplyError`
value in the pending's ``reply``; ``result()`` raises it as :class:`CommandError`.

A server that stops answering without closing (a frozen process, a
machine gone from the network) is noticed with ``RedisConfig.ping_interval``: a PING
every so often, and a connection whose previous PING is still unanswered
is dropped and retried. Leave it off (the default) on a connection that
runs blocking commands (``BLPOP``) longer than the interval.

Lua scripts (:meth:`Redis.script`, :meth:`Redis.run`) run by SHA-1 and are
loaded again on every connection; :class:`~netcore.lease.RedisLease`
(imported here too) builds on them a lease with a fencing epoch (one holder
at a time, e.g. one game authority per world).

Addresses come from :meth:`RedisAddress.from_url`
(``redis://[user:password@]host:port[/db]``); the password may come from a
file or an environment variable instead, so it never has to be on a command
line. The host must be numeric (or ``localhost``), as for every netcore
outbound connection, because name resolution blocks:
:meth:`RedisAddress.resolve` looks a name up once, before the loop runs.
TLS: ``rediss://`` (Redis 6+'s ``tls-port``) speaks TLS through
:class:`~netcore.client.TCPClient` (:mod:`netcore.tls`), the server's
certificate checked against the system's CAs or ``ca_file`` and against the
host named in the URL (kept through :meth:`RedisAddress.resolve`).
:mod:`ssl` is imported only for a ``rediss://`` address.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections import deque
from urllib.parse import unquote, urlsplit

from .client import ClientConfig, TCPClient
from .codec import PlainOutput, ProtocolError
from .connection import CloseReason, Connection
from .handler import Handler
from .loop import EventLoop, Timer
from .lease import FENCE, RedisLease  # re-exported: they were defined here
from .resp import ReplyError, RespParser, RespProtocolError, Script, encode_command
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import ssl
    from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

    from .resp import Arg, Reply
    from .ringbuffer import BytesLike

__all__ = [
    "DEFAULT_PORT",
    "FENCE",
    "CommandError",
    "ConnectionLost",
    "HandshakeError",
    "NotConnected",
    "Pending",
    "Redis",
    "RedisAddress",
    "RedisError",
    "RedisConfig",
    "RedisLease",
    "RedisSubscriber",
    "Script",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 6379


# -- errors ------------------------------------------------------------------


class RedisError(Exception):
    """Anything that kept a command from getting its reply."""


class CommandError(RedisError):
    """Redis answered with an error reply (``reply`` holds it)."""

    def __init__(self, reply: ReplyError, command: str = "") -> None:
        super().__init__(f"{command}: {reply.message}" if command else reply.message)
        self.reply = reply
        self.command = command


class NotConnected(RedisError):
    """The command was never sent: the connection is not ready."""


class ConnectionLost(RedisError):
    """The connection closed before the reply came; the command may have run."""


class HandshakeError(RedisError):
    """AUTH, SELECT or CLIENT SETNAME failed; the connection is retried."""

    def __init__(self, command: str, reply: ReplyError) -> None:
        super().__init__(f"{command} failed: {reply.message}")
        self.command = command
        self.reply = reply


# -- addresses ---------------------------------------------------------------


class RedisAddress:
    """Where a Redis server is and how to log in. ``repr`` hides the password.

    ``tls``: speak TLS (``rediss://``), checking the server's certificate
    against the system's CAs or ``ca_file`` (PEM), and against
    ``server_name`` (default: ``host``; :meth:`resolve` keeps the name).
    """

    __slots__ = ("host", "port", "db", "username", "password", "tls", "ca_file", "server_name")

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        db: int = 0,
        username: Optional[str] = None,
        password: Optional[str] = None,
        *,
        tls: bool = False,
        ca_file: Optional[str] = None,
        server_name: Optional[str] = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not 1..65535")
        if db < 0:
            raise ValueError(f"database {db} is negative")
        if username is not None and password is None:
            raise ValueError("a username needs a password")
        if ca_file is not None and not tls:
            raise ValueError("a CA file is for a TLS connection: use a rediss:// URL")
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls
        self.ca_file = ca_file
        self.server_name = server_name if server_name is not None else (host if tls else None)

    def tls_context(self) -> Optional[ssl.SSLContext]:
        """The client TLS context for this address (None: plain ``redis://``).

        Imports :mod:`ssl`. Raises :class:`~netcore.tls.CertificateError`
        (a ValueError) naming a CA file that cannot be read.
        """
        if not self.tls:
            return None
        from .tls import client_context

        return client_context(self.ca_file)

    @classmethod
    def from_url(
        cls,
        url: str,
        password_file: Optional[str] = None,
        password_env: Optional[str] = None,
        ca_file: Optional[str] = None,
    ) -> "RedisAddress":
        """Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://``: TLS).

        ``ca_file``: for ``rediss://``, the CA certificates (PEM) that sign
        the server's certificate, instead of the system's.

        ``password_file`` (its first line) or ``password_env`` (the named
        environment variable, which must be set) replace a password in the
        URL, so that none has to be written on a command line. Percent
        escapes in the user and password are decoded. Raises ``ValueError``
        with what is wrong.
        """
        shown = _redacted(url)  # what an error may echo: never the password
        try:
            parts = urlsplit(url)
        except ValueError:  # its message may quote the netloc, password and all
            raise ValueError(f"not a URL: {shown!r}") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {shown!r}")
        tls = parts.scheme == "rediss"
        if ca_file is not None and not tls:
            raise ValueError("a CA file is for TLS: use a rediss:// URL")
        if parts.query or parts.fragment:
            raise ValueError("a redis:// URL takes no query or fragment here")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {shown!r}") from None
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in {shown!r}")
        path = parts.path.strip("/")
        if path and not (path.isascii() and path.isdigit()):
            raise ValueError(f"the path must be a database number, in {shown!r}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password_file is not None:
            password = read_password_file(password_file)
        elif password_env is not None:
            value = os.environ.get(password_env)
            if value is None:
                raise ValueError(f"environment variable {password_env} is not set")
            password = value
        if password == "":
            password = None
        if username is not None and password is None:
            raise ValueError("a username in the URL needs a password (URL, file or environment)")
        return cls(host, DEFAULT_PORT if port is None else port, int(path or 0), username, password,
                   tls=tls, ca_file=ca_file)

    def resolve(self) -> "RedisAddress":
        """This address with ``host`` looked up (BLOCKS: call before the loop runs).

        A numeric host or ``localhost`` is returned as it is.
        """
        if _is_numeric(self.host):
            return self
        family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )[0]
        return RedisAddress(str(sockaddr[0]), self.port, self.db, self.username, self.password,
                            tls=self.tls, ca_file=self.ca_file, server_name=self.server_name)

    def url(self) -> str:
        """The URL again, with the password shown as ``***``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        db = f"/{self.db}" if self.db else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{host}:{self.port}{db}"

    def __repr__(self) -> str:
        return f"RedisAddress({self.url()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedisAddress) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.db, self.username, self.tls))


def _redacted(url: str) -> str:
    """``url`` as an error message may show it: everything between the scheme
    and the last ``@`` (the user and password, however malformed the rest)
    becomes ``***``."""
    if "@" not in url:
        return url
    scheme, sep, _ = url.partition("://")
    head = scheme + sep if sep else ""
    return head + "***@" + url.rsplit("@", 1)[1]


def _is_numeric(host: str) -> bool:
    if host == "localhost":
        return True
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def read_password_file(path: str) -> str:
    """The first line of ``path``, without its line ending."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


# -- pending replies -----------------------------------------------------------


class Pending:
    """A command's reply to come: futures-like, without a thread to wait in.

    ``callback(pending)`` runs once when it is done (on the loop). Then
    exactly one of ``reply`` (any :data:`~netcore.resp.Reply`, including a
    :class:`~netcore.resp.ReplyError` value) and ``error`` (a
    :class:`RedisError`: not sent, or connection lost) is set.
    """

    __slots__ = ("_name", "done", "reply", "error", "callback")

    def __init__(self, name: Arg, callback: Optional[Callable[["Pending"], None]]) -> None:
        self._name = name  # the command's first argument; named only when asked
        self.done = False
        self.reply: Reply = None
        self.error: Optional[RedisError] = None
        self.callback = callback

    def __repr__(self) -> str:
        state = "pending" if not self.done else f"error={self.error!r}" if self.error else f"reply={self.reply!r}"
        return f"<Pending {self.command} {state}>"

    @property
    def command(self) -> str:
        """The command's name (upper case), for messages."""
        name = self._name
        if isinstance(name, str):
            return name.upper()
        if isinstance(name, (bytes, bytearray, memoryview)):
            return bytes(name).decode("ascii", "replace").upper()
        return repr(name)

    @property
    def ok(self) -> bool:
        """Done, with a reply that is not an error."""
        return self.done and self.error is None and not isinstance(self.reply, ReplyError)

    def result(self) -> Reply:
        """The reply; raises the error, or :class:`CommandError` for an error reply."""
        if not self.done:
            raise RedisError(f"{self.command}: no reply yet")
        if self.error is not None:
            raise self.error
        if isinstance(self.reply, ReplyError):
            raise CommandError(self.reply, self.command)
        return self.reply

    def _finish(self, reply: Reply, error: Optional[RedisError]) -> None:
        self.done = True
        self.reply = reply
        self.error = error
        callback = self.callback
        if callback is not None:
            self.callback = None
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - one callback must not break reply matching
                log.exception("redis: callback for %s failed", self.command)


if TYPE_CHECKING:
    Callback = Callable[[Pending], None]


# -- settings ------------------------------------------------------------------


class RedisConfig(NamedTuple):
    """How a :class:`Redis` or :class:`RedisSubscriber` connects, waits and reconnects.

    ``name``: sent as ``CLIENT SETNAME`` (what ``CLIENT LIST`` shows);
    ``connect_timeout``: seconds for one connection attempt; a failed or
    lost connection is retried after ``backoff_min`` seconds, doubling up
    to ``backoff_max`` (with jitter), forever; ``max_bulk``: the largest
    bulk reply accepted (None: Redis' own 512 MB); ``max_output``: commands
    queued unsent past which the connection is dropped; ``ping_interval``:
    a PING every so many seconds, the link dropped when the previous one is
    still unanswered (None: off; leave it off for blocking commands).
    Checked when a link takes it (ValueError).
    """

    name: Optional[str] = None
    connect_timeout: float = 5.0
    backoff_min: float = 0.05
    backoff_max: float = 5.0
    max_bulk: Optional[int] = None
    max_output: int = 64 << 20
    ping_interval: Optional[float] = None

    def checked(self) -> "RedisConfig":
        """This config, if its values make sense; else ValueError saying which does not."""
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be positive (None: off)")
        return self


def _config(cls: str, config: Optional[RedisConfig], deprecated: Dict[str, Any],
            stacklevel: int = 3) -> RedisConfig:
    """``config``, or one made of the keywords the links took before RedisConfig (warned)."""
    if not deprecated:
        return (config if config is not None else RedisConfig()).checked()
    if config is not None:
        raise TypeError(f"{cls}: give config=RedisConfig(...) or the old keywords, not both")
    import warnings

    warnings.warn(f"{cls}(..., {', '.join(f'{k}=' for k in deprecated)}) is deprecated and "
                  f"goes in the next release: pass config=RedisConfig(...)",
                  DeprecationWarning, stacklevel=stacklevel)
    return RedisConfig(**deprecated).checked()  # an unknown keyword: TypeError, as before


# -- the shared connection machinery -----------------------------------------

IDLE, CONNECTING, HANDSHAKE, READY, WAITING, CLOSED = range(6)
_STATE_NAMES = ("idle", "connecting", "handshake", "ready", "waiting", "closed")


class _Link:
    """Connect, log in, reconnect with backoff; match replies FIFO.

    Subclasses say what else a (re)connection sends (``_after_login``) and
    what a reply that no command waits for means (``_unsolicited``).
    """

    def __init__(
        self,
        loop: EventLoop,
        address: RedisAddress,
        config: Optional[RedisConfig] = None,
        *,
        on_ready: Optional[Callable[[], None]] = None,
        on_lost: Optional[Callable[[str], None]] = None,
        on_error: Optional[Callable[[RedisError], None]] = None,
        **deprecated: Any,
    ) -> None:
        if not _is_numeric(address.host):
            raise ValueError(
                f"{address.host!r} is not a numeric address: use address.resolve() "
                "before the loop runs (name resolution blocks)"
            )
        config = _config(type(self).__name__, config, deprecated)
        self.loop = loop
        self.address = address
        self.config = config
        self.name = config.name
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_error = on_error
        self._ping: Optional[Pending] = None
        self._scripts: Dict[str, Script] = {}  # by SHA-1; loaded on every connection
        self.state = IDLE
        self._client = TCPClient(
            loop,
            _LinkEvents(self),
            ClientConfig(
                max_output=config.max_output,
                high_water=config.max_output // 2,
                low_water=config.max_output // 4,
                connect_timeout=config.connect_timeout,
                recv_buffer=256 << 10,
            ),
        )
        # rediss://: one context for every (re)connection (ssl imported only then).
        self._tls = address.tls_context()
        self._transport: Optional[Connection] = None
        self._pending: Deque[Pending] = deque()
        self._out: List[bytes] = []
        self._flush_scheduled = False
        self._timer: Optional[Timer] = None
        self._failures = 0  # consecutive failed attempts: the backoff exponent
        self._generation = 0  # bumps per attempt, so a stale transport is ignored
        # Counters for an owner's /metrics (see stats()).
        self.connects = 0
        self.losses = 0  # ready connections lost
        self.commands_sent = 0
        self.replies = 0
        self.last_error: Optional[RedisError] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address.url()} {_STATE_NAMES[self.state]}>"

    def stats(self) -> Dict[str, Union[int, str]]:
        """The link's figures for an owner's ``/metrics`` and ``/stats``."""
        net = self._client.stats
        return {
            "state": _STATE_NAMES[self.state],
            "connects": self.connects,
            "losses": self.losses,
            "commands_sent": self.commands_sent,
            "replies": self.replies,
            "in_flight": len(self._pending),
            "bytes_out": net.bytes_out,
            "bytes_in": net.bytes_in,
        }

    @property
    def ready(self) -> bool:
        """Connected, logged in (and subscribed): commands may be sent."""
        return self.state == READY

    @property
    def in_flight(self) -> int:
        """Commands sent (or about to be) whose replies have not come."""
        return len(self._pending)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (in the background; ``on_ready`` says when)."""
        if self.state == IDLE:
            self._connect()

    def close(self) -> None:
        """Disconnect for good: no more reconnects; what is in flight fails."""
        if self.state == CLOSED:
            return
        was_ready = self.state == READY
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        self._transport = None
        self._generation += 1
        if transport is not None:
            self._flush_to(transport)
            transport.close_after_flush(CloseReason.SERVER_CLOSE, "closed by the client")
        else:
            self._client.close()  # cancels a connect under way
        self._fail_pending(ConnectionLost("closed by the client"))
        if was_ready and self.on_lost is not None:
            self._call(self.on_lost, "closed by the client")

    def _connect(self) -> None:
        self._timer = None
        if self.state == CLOSED:
            return
        self.state = CONNECTING
        self._generation += 1
        generation = self._generation
        self._out = []
        max_bulk = self.config.max_bulk
        parser = RespParser(max_bulk=max_bulk) if max_bulk else RespParser()
        self._client.connect(
            self.address.host,
            self.address.port,
            data=generation,
            codec_factory=lambda conn: _RespCodec(self, generation, parser),
            on_failed=lambda exc: self._disconnected(generation, str(exc)),
            tls=self._tls,
            server_hostname=self.address.server_name,
        )

    def _connected(self, generation: int, transport: Connection) -> None:
        if generation != self._generation or self.state != CONNECTING:
            transport.close()
            return
        self._transport = transport
        self.state = HANDSHAKE
        self.connects += 1
        login: List[Tuple[Arg, ...]] = []
        address = self.address
        if address.password is not None:
            if address.username is not None:
                login.append(("AUTH", address.username, address.password))
            else:
                login.append(("AUTH", address.password))
        if self.name:
            login.append(("CLIENT", "SETNAME", self.name))
        login += self._login_extra()
        if not login:
            login.append(("PING",))  # ready means the server answered, not just the kernel
        last = len(login) - 1
        for i, args in enumerate(login):
            self._send(args, self._handshake_step(generation, i == last))

    def _login_extra(self) -> List[Tuple[Arg, ...]]:
        return []

    def _handshake_step(self, generation: int, last: bool) -> Callback:
        def step(pending: Pending) -> None:
            if generation != self._generation or self.state != HANDSHAKE:
                return
            if isinstance(pending.reply, ReplyError):
                error = HandshakeError(pending.command, pending.reply)
                self._report(error)
                self._drop(f"handshake: {error}")
            elif last and pending.error is None:
                self._logged_in()

        return step

    def _logged_in(self) -> None:
        """Login done; subclasses may have more to do before ``_became_ready``."""
        self._became_ready()

    def _became_ready(self) -> None:
        self.state = READY
        if self._failures:
            log.info("redis %s: connected again", self.address.url())
        self._failures = 0
        interval = self.config.ping_interval
        if interval:
            self._ping = None
            generation = self._generation
            self.loop.call_later(interval, lambda: self._keepalive(generation))
        if self.on_ready is not None:
            self._call(self.on_ready)

    def _keepalive(self, generation: int, judging: bool = False) -> None:
        """Every ``ping_interval``: PING; the last one still unanswered means a dead link."""
        interval = self.config.ping_interval
        if generation != self._generation or self.state != READY or not interval:
            return
        if self._ping is not None and not self._ping.done:
            if not judging:
                # Timers fire before a turn's ready sockets are read: after a
                # long turn (a busy or starved loop) the reply may be waiting
                # unread in the socket. Judge once this turn's reading is done.
                self.loop.call_soon(lambda: self._keepalive(generation, True))
                return
            error = RedisError(f"no reply to PING within {interval:g}s")
            self._report(error)
            self._drop(str(error))
            return
        self._ping = self._send(("PING",), None)
        self.loop.call_later(interval, lambda: self._keepalive(generation))

    def _bad_reply(self, generation: int, exc: ProtocolError) -> None:
        if generation == self._generation:
            self._report(RedisError(f"bad reply from the server: {exc}"))
            self._drop(f"protocol error: {exc}")

    def _dispatch(self, generation: int, replies: List[Reply]) -> None:
        if generation != self._generation:
            return
        pending = self._pending
        for reply in replies:
            if generation != self._generation:
                return  # a callback closed or dropped the connection
            self.replies += 1
            if self._is_push(reply) or not pending:
                self._unsolicited(reply)
            else:
                pending.popleft()._finish(reply, None)

    def _is_push(self, reply: Reply) -> bool:
        return False

    def _unsolicited(self, reply: Reply) -> None:
        self._report(RedisError(f"a reply no command waits for: {reply!r:.200}"))
        self._drop("unexpected reply")

    def _disconnected(self, generation: int, reason: str) -> None:
        if generation != self._generation:
            return
        self._lost(reason)

    def _drop(self, reason: str) -> None:
        """Close the current connection ourselves and go on as if it were lost."""
        transport = self._transport
        self._generation += 1  # its late events are stale from here on
        if transport is not None:
            transport.close()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        was_ready = self.state == READY
        if self.state == CONNECTING:
            self._report(NotConnected(f"connect to {self.address.url()}: {reason}"))
        self._transport = None
        self._generation += 1
        self._out = []
        self._fail_pending(ConnectionLost(f"connection lost: {reason}"))
        self.losses += was_ready
        self.state = WAITING
        delay = self._next_delay()
        level = logging.WARNING if was_ready or self._failures == 1 else logging.DEBUG
        log.log(level, "redis %s: %s; retrying in %.2fs", self.address.url(), reason, delay)
        self._timer = self.loop.call_later(delay, self._connect)
        if was_ready and self.on_lost is not None:
            self._call(self.on_lost, reason)

    def _next_delay(self) -> float:
        self._failures += 1
        config = self.config
        ceiling = min(config.backoff_max,
                      config.backoff_min * float(1 << min(self._failures - 1, 30)))
        return ceiling * (0.5 + 0.5 * random.random())

    def _fail_pending(self, error: RedisError) -> None:
        pending = self._pending
        self._pending = deque()
        for item in pending:
            item._finish(None, error)

    def _report(self, error: RedisError) -> None:
        self.last_error = error
        if self.on_error is not None:
            self._call(self.on_error, error)

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - the owner's bug must not stop the link
            log.exception("redis: callback %r failed", callback)

    # -- writing ----------------------------------------------------------------

    def _send(self, args: Sequence[Arg], callback: Optional[Callback]) -> Pending:
        """Queue ``args`` (the connection is up) and expect one reply."""
        pending = Pending(args[0], callback)
        self._out.append(encode_command(*args))
        self._pending.append(pending)
        self.commands_sent += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return pending

    def _send_unanswered(self, args: Sequence[Arg]) -> None:
        """Queue a command whose replies come as pushes (SUBSCRIBE and kin)."""
        self._out.append(encode_command(*args))
        self.commands_sent += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One write for every command queued since the last one."""
        self._flush_scheduled = False
        if self._transport is not None:
            self._flush_to(self._transport)

    def _flush_to(self, transport: Connection) -> None:
        out = self._out
        if out:
            self._out = []
            # A failed write closes the connection, which reports the loss.
            transport.write(out[0] if len(out) == 1 else b"".join(out), len(out))

    def _not_ready(self, args: Sequence[Arg], callback: Optional[Callback]) -> Pending:
        pending = Pending(args[0], callback)
        error = NotConnected(f"{pending.command}: not connected to {self.address.url()}")
        self.loop.call_soon(lambda: pending._finish(None, error))
        return pending


# -- the link's connection: a RESP codec and the handler -----------------------


class _RespCodec(PlainOutput):
    """A Redis connection's codec: replies go straight to the link.

    Replies are not byte messages, so ``feed`` hands them to the link itself
    and returns none; a malformed reply first delivers the whole replies
    before it, then raises, and the connection's owner closes it as bad
    input. Commands are written already encoded, so framing is identity.
    """

    __slots__ = ("link", "generation", "parser")

    def __init__(self, link: _Link, generation: int, parser: RespParser) -> None:
        self.link = link
        self.generation = generation
        self.parser = parser

    def feed(self, data: BytesLike) -> List[bytes]:
        try:
            replies = self.parser.feed(data)
        except RespProtocolError as exc:
            self.link._dispatch(self.generation, exc.replies)
            raise
        self.link._dispatch(self.generation, replies)
        return []


_LOST = {CloseReason.PEER_CLOSED: "closed by the server", CloseReason.RESET: "reset by the server"}


class _LinkEvents(Handler):
    """The link's TCPClient handler; ``conn.data`` is the attempt's generation."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def on_connect(self, conn: Connection) -> None:
        self.link._connected(conn.data, conn)

    def on_close(self, conn: Connection, reason: str) -> None:
        self.link._disconnected(conn.data, _LOST.get(reason, reason))

    def on_bad_input(self, conn: Connection, exc: ProtocolError) -> None:
        self.link._bad_reply(conn.data, exc)
        conn.close(exc.reason, str(exc))


# -- commands ------------------------------------------------------------------


class Redis(_Link):
    """A command connection; see the module docstring.

    ``execute("SET", "k", 1, callback=cb)`` -> :class:`Pending`. Every
    command issued in one loop iteration leaves in one write.
    """

    def _login_extra(self) -> List[Tuple[Arg, ...]]:
        return [("SELECT", self.address.db)] if self.address.db else []

    def _logged_in(self) -> None:
        # Scripts go first on every connection (a restarted Redis has none),
        # ahead of anything on_ready sends, so EVALSHA finds them.
        for script in self._scripts.values():
            self._send(("SCRIPT", "LOAD", script.source), self._script_loaded)
        self._became_ready()

    def _script_loaded(self, pending: Pending) -> None:
        if isinstance(pending.reply, ReplyError):
            self._report(CommandError(pending.reply, "SCRIPT LOAD"))

    def script(self, source: str) -> Script:
        """Register a Lua script: loaded now (if ready) and on every reconnection."""
        script = Script(source)
        if script.sha not in self._scripts:
            self._scripts[script.sha] = script
            if self.state == READY:
                self._send(("SCRIPT", "LOAD", source), self._script_loaded)
        return script

    def run(
        self,
        script: Script,
        keys: Sequence[Arg] = (),
        args: Sequence[Arg] = (),
        callback: Optional[Callback] = None,
    ) -> Pending:
        """``EVALSHA`` ``script``; if Redis lost it (``SCRIPT FLUSH``), ``EVAL`` it.

        One pending, for whichever answered. A script Redis had to be sent
        again runs after the commands issued meanwhile.
        """
        if script.sha not in self._scripts:
            self._scripts[script.sha] = script
        if self.state != READY:
            return self._not_ready(("EVALSHA",), callback)
        outer = Pending("EVALSHA", callback)
        tail = (len(keys), *keys, *args)

        def answered(pending: Pending) -> None:
            reply = pending.reply
            if isinstance(reply, ReplyError) and reply.kind == "NOSCRIPT" and self.state == READY:
                self._send(("EVAL", script.source, *tail), lambda again: outer._finish(again.reply, again.error))
            else:
                outer._finish(reply, pending.error)

        self._send(("EVALSHA", script.sha, *tail), answered)
        return outer

    def execute(self, *args: Arg, callback: Optional[Callback] = None) -> Pending:
        """Send one command; ``callback(pending)`` when its reply comes.

        Not ready: fails (``NotConnected``, on the next loop iteration)
        without sending anything.
        """
        if not args:
            raise ValueError("a command needs at least its name")
        if self.state != READY:
            return self._not_ready(args, callback)
        return self._send(args, callback)

    def pipeline(
        self, commands: Sequence[Sequence[Arg]], callback: Optional[Callback] = None
    ) -> List[Pending]:
        """Several commands in one write; ``callback`` gets each pending."""
        return [self.execute(*command, callback=callback) for command in commands]

    def transaction(
        self, commands: Sequence[Sequence[Arg]], callback: Optional[Callback] = None
    ) -> Pending:
        """``MULTI``, the commands, ``EXEC``: one pending, for ``EXEC``.

        Its reply is the list of the commands' replies (error replies
        included as values), or ``None`` if a ``WATCH`` aborted it; an error
        queueing a command makes ``EXEC`` answer ``EXECABORT``.
        """
        if self.state != READY:
            return self._not_ready(("EXEC",), callback)
        self._send(("MULTI",), None)
        for command in commands:
            self._send(command, None)
        return self._send(("EXEC",), callback)


# -- pub/sub --------------------------------------------------------------------

_PUSH_KINDS = {
    b"message",
    b"pmessage",
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
}

if TYPE_CHECKING:
    Name = Union[str, bytes]


def _name(value: Name) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class RedisSubscriber(_Link):
    """A subscribed connection: messages arrive as callbacks.

    ``subscribe()``/``psubscribe()`` may be called at any time: the sets of
    channels and patterns are kept, sent as soon as the connection is ready
    and sent again on every reconnection; ``on_ready`` is called once Redis
    has confirmed all of them, so an owner that then reads the state it
    mirrors cannot miss a message published in between. Pub/sub delivers at
    most once: messages published while disconnected are lost, which is
    what ``on_ready`` (resynchronise) is for.

    A subscription Redis refuses (``NOPERM`` from an ACL) is reported to
    ``on_error`` and stays asked for: while it is, a reconnection fails its
    handshake (``HandshakeError``, retried) until the owner unsubscribes it.
    """

    def __init__(
        self,
        loop: EventLoop,
        address: RedisAddress,
        on_message: Callable[[bytes, bytes], None],
        config: Optional[RedisConfig] = None,
        *,
        on_pmessage: Optional[Callable[[bytes, bytes, bytes], None]] = None,
        on_ready: Optional[Callable[[], None]] = None,
        on_lost: Optional[Callable[[str], None]] = None,
        on_error: Optional[Callable[[RedisError], None]] = None,
        **deprecated: Any,
    ) -> None:
        super().__init__(loop, address, _config("RedisSubscriber", config, deprecated),
                         on_ready=on_ready, on_lost=on_lost, on_error=on_error)
        self.on_message = on_message
        self.on_pmessage = on_pmessage
        self.channels: Set[bytes] = set()
        self.patterns: Set[bytes] = set()
        self.active: Dict[bytes, bool] = {}  # what Redis has confirmed, by kind+name
        self._unconfirmed = 0
        self._subscribing = False  # this connection's (P)SUBSCRIBE are sent
        self.messages = 0

    def subscribe(self, *channels: Name) -> None:
        self._change(self.channels, "SUBSCRIBE", [_name(c) for c in channels], add=True)

    def unsubscribe(self, *channels: Name) -> None:
        self._change(self.channels, "UNSUBSCRIBE", [_name(c) for c in channels], add=False)

    def psubscribe(self, *patterns: Name) -> None:
        self._change(self.patterns, "PSUBSCRIBE", [_name(p) for p in patterns], add=True)

    def punsubscribe(self, *patterns: Name) -> None:
        self._change(self.patterns, "PUNSUBSCRIBE", [_name(p) for p in patterns], add=False)

    def _change(self, names: Set[bytes], command: str, items: List[bytes], add: bool) -> None:
        if not items:
            raise ValueError(f"{command} needs at least one name")
        changed = [n for n in dict.fromkeys(items) if (n in names) != add]
        if add:
            names.update(changed)
        else:
            names.difference_update(changed)
        if changed and self._subscribing:
            self._send_unanswered((command, *changed))

    def _connected(self, generation: int, transport: Connection) -> None:
        self._subscribing = False
        super()._connected(generation, transport)

    def _lost(self, reason: str) -> None:
        self._subscribing = False
        super()._lost(reason)

    def close(self) -> None:
        self._subscribing = False
        super().close()

    def _logged_in(self) -> None:
        self._subscribing = True
        self.active = {}
        self._unconfirmed = len(self.channels) + len(self.patterns)
        if self.channels:
            self._send_unanswered(("SUBSCRIBE", *sorted(self.channels)))
        if self.patterns:
            self._send_unanswered(("PSUBSCRIBE", *sorted(self.patterns)))
        if not self._unconfirmed:
            self._became_ready()

    def stats(self) -> Dict[str, Union[int, str]]:
        figures = super().stats()
        figures["messages"] = self.messages
        figures["channels"] = len(self.channels)
        figures["patterns"] = len(self.patterns)
        return figures

    def _is_push(self, reply: Reply) -> bool:
        return (
            isinstance(reply, list)
            and len(reply) >= 3
            and isinstance(reply[0], bytes)
            and reply[0] in _PUSH_KINDS
        )

    def _unsolicited(self, reply: Reply) -> None:
        if isinstance(reply, ReplyError):
            # (P)SUBSCRIBE refused (an ACL without the channel, say): nothing
            # waits for it, so the owner hears about it here. While
            # resubscribing, the link cannot become ready as asked: that is a
            # failed handshake (retried, like a wrong password).
            if self.state == HANDSHAKE:
                error = HandshakeError("SUBSCRIBE", reply)
                self._report(error)
                self._drop(f"handshake: {error}")
            else:
                self._report(CommandError(reply, "SUBSCRIBE"))
            return
        if not isinstance(reply, list) or not self._is_push(reply):
            super()._unsolicited(reply)
            return
        kind, first, second = reply[0], reply[1], reply[2]
        assert isinstance(kind, bytes)
        if kind == b"message":
            if isinstance(first, bytes) and isinstance(second, bytes):
                self.messages += 1
                self._call(self.on_message, first, second)
                return
        elif kind == b"pmessage":
            third = reply[3] if len(reply) == 4 else None
            if isinstance(first, bytes) and isinstance(second, bytes) and isinstance(third, bytes):
                self.messages += 1
                if self.on_pmessage is not None:
                    self._call(self.on_pmessage, first, second, third)
                return
        elif isinstance(first, bytes) and isinstance(second, int):
            key = (b"p:" if kind.startswith(b"p") else b"c:") + first
            if kind.endswith(b"unsubscribe"):
                self.active.pop(key, None)
            else:
                self.active[key] = True
                if self.state == HANDSHAKE and self._unconfirmed:
                    self._unconfirmed -= 1
                    if not self._unconfirmed:
                        self._became_ready()
            return
        super()._unsolicited(reply)
