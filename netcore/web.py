"""HTTP and WebSocket on a :class:`~netcore.server.TCPServer`'s own port.

Give a server a :class:`WebFront` as its codec factory
(``TCPServer(..., codec_factory=WebFront(config, binary=...))``) and each new
connection starts with a :class:`~netcore.sniff.ProtocolSniffer`. Its first
byte decides:

- binary: the front's ``binary()`` codec takes over, as if there were no front;
- HTTP: an :class:`HttpCodec` answers requests (static files, ``/healthz``)
  with keep-alive, and a valid upgrade on ``ws_path`` swaps in a
  :class:`WebSocketCodec`, which carries the server's usual byte stream in
  binary WebSocket messages.

The handler hears ``on_protocol(conn, "binary" | "http" | "websocket")``
at each decision, and ``on_message`` only from binary and WebSocket
connections: HTTP traffic never reaches it. Every connection, whatever it
speaks, is the same :class:`~netcore.connection.Connection` with the same
output queue, backpressure, limits and counters.

Slowloris: an HTTP connection must complete a request within
``handshake_timeout`` of being recognised as HTTP (and of each response,
when kept alive), or it is closed (``408`` if a request was under way). A
handful of connections that trickle bytes cannot hold the server's memory
either: a request head is capped at 16 KiB.
"""

from __future__ import annotations

import logging

from .codec import Codec, SilentCodec
from .connection import CloseReason, Connection
from .framing import DEFAULT_MAX_FRAME, StreamFrames
from .http import HttpError, Request, RequestParser, error_response, response
from .loop import EventLoop, Readiness, Timer
from .sniff import BINARY, HTTP, MAX_BINARY_FRAME, WEBSOCKET, ProtocolSniffer
from .static import StaticFiles
from .websocket import (
    DEFAULT_CONTROL_BURST,
    DEFAULT_CONTROL_RATE,
    DEFAULT_MAX_MESSAGE,
    PING,
    CloseCode,
    frame_header,
    handshake_response,
)
from .wscodec import WebSocketCodec
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import (
        Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple, Union,
    )

    from .ringbuffer import BytesLike

__all__ = ["BINARY", "HTTP", "SAME_ORIGIN", "WEBSOCKET", "HttpCodec", "Upgrade", "WebConfig",
           "WebFront", "WebSocketCodec", "WebStats", "origin_allowed"]

log = logging.getLogger(__name__)

#: In ``WebConfig.allowed_origins``: a page of the host the request names
#: (its ``Host`` header) may upgrade, whatever its scheme.
SAME_ORIGIN = "same-origin"


class Upgrade(NamedTuple):
    """How to serve one WebSocket upgrade: what a ``ws_accept`` hook returns."""

    inner: Optional[Codec] = None  # None: raw messages (text and binary)
    subprotocol: str = ""  # "" for none; else one the client offered


#: A route's answer: ``() -> (content type, body)``, or ``(content type, body,
#: status)`` for a route whose answer is not always 200 (a readiness probe).
if TYPE_CHECKING:
    Route = Callable[[], Union[Tuple[str, bytes], Tuple[str, bytes, int]]]


class WebConfig:
    """What the front serves. A plain class, for the same reason as ServerConfig.

    WebSocket upgrades: a GET on ``ws_path`` (``"*"``: on any path, when it
    asks to upgrade) from an allowed ``Origin`` (``allowed_origins``: None,
    any; else these origins, and the request's own host if the list holds
    :data:`SAME_ORIGIN`; others get 403, and a request without an Origin is
    allowed, see :func:`origin_allowed`) is served with ``message_codec`` as its inner codec
    (None: raw messages, what applications want; a framing codec: a byte
    stream in binary messages, as the game does) and the first of
    ``subprotocols`` the client offered. ``ws_accept(request)`` replaces
    that last choice per upgrade: it returns an :class:`Upgrade`, or an
    HTTP status (403, 404...) to refuse with. The WebSocket limits
    (``max_message``, ``max_fragments``, ``control_burst``,
    ``control_rate``) are :class:`~netcore.websocket.WebSocketParser`'s.
    """

    __slots__ = ("static_root", "static_reader", "routes", "ws_path", "health_path",
                 "handshake_timeout", "max_requests", "max_message", "message_codec", "headers",
                 "max_fragments", "control_burst", "control_rate", "allowed_origins",
                 "subprotocols", "ws_accept", "ping_interval", "idle_timeout")

    def __init__(
        self,
        static_root: Optional[str] = None,  # None: no files, only /healthz and upgrades
        # Instead of a directory: read("app.js") -> bytes, e.g. from a zipapp.
        static_reader: Optional[Callable[[str], bytes]] = None,
        # Dynamic GET/HEAD endpoints: path -> () -> (content type, body),
        # answered with Cache-Control: no-store (metrics, live figures).
        routes: Optional[Mapping[str, Route]] = None,
        ws_path: Optional[str] = "/ws",  # None: no WebSocket; "*": any path
        health_path: Optional[str] = "/healthz",
        handshake_timeout: float = 10.0,
        max_requests: int = 100,  # per kept-alive connection
        max_message: int = DEFAULT_MAX_MESSAGE,  # largest WebSocket message accepted
        # What reads the application's frames inside WebSocket messages.
        # None: nothing; each message is one on_message (text as a Text).
        # A stateless codec such as framing.WholeFrames (each message holds
        # whole frames) is shared by every connection and costs none of
        # them any memory.
        message_codec: Optional[Codec] = None,
        headers: Sequence[Tuple[str, str]] = (),  # added to every static file response
        max_fragments: Optional[int] = None,  # frames per message; None: max_message // 64
        control_burst: int = DEFAULT_CONTROL_BURST,  # pings/pongs at once...
        control_rate: float = DEFAULT_CONTROL_RATE,  # ...and per second after that
        allowed_origins: Optional[Sequence[str]] = None,  # None: any; may hold SAME_ORIGIN
        subprotocols: Sequence[str] = (),  # ours, in order of preference
        ws_accept: Optional[Callable[[Request], Union[Upgrade, int]]] = None,
        # A WebSocket peer that sent nothing for ping_interval seconds gets a
        # Ping; one that sent nothing (not even the Pong) for idle_timeout is
        # closed with 1011: a peer gone without a FIN is otherwise held until
        # TCP gives up (~15 min). None: off.
        ping_interval: Optional[float] = 20.0,
        idle_timeout: Optional[float] = 60.0,
    ) -> None:
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        if static_root is not None and static_reader is not None:
            raise ValueError("give static_root or static_reader, not both")
        self.static_root = static_root
        self.static_reader = static_reader
        self.routes: Dict[str, Route] = dict(routes or {})
        self.ws_path = ws_path
        self.health_path = health_path
        self.handshake_timeout = handshake_timeout
        self.max_requests = max_requests
        self.max_message = max_message
        self.message_codec = message_codec
        self.headers = tuple(headers)
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.max_fragments = max_fragments
        self.control_burst = control_burst
        self.control_rate = control_rate
        self.allowed_origins = (None if allowed_origins is None
                                else frozenset(o.lower().rstrip("/") for o in allowed_origins))
        self.subprotocols = tuple(subprotocols)
        self.ws_accept = ws_accept


def origin_allowed(request: Request, allowed: FrozenSet[str]) -> bool:
    """Whether a WebSocket upgrade's ``Origin`` is one of ``allowed``.

    ``allowed`` holds lower-case origins (``https://play.example.org``) and
    may hold :data:`SAME_ORIGIN`: an Origin whose host[:port] is the
    request's ``Host`` (the scheme is not compared, so a page served over
    https by a proxy that passes ``Host`` on still matches). A request with
    no Origin at all is not a browser's (bots, native clients, scripts, which
    could send any Origin they liked): it is allowed. Origins guard players'
    browsers against other sites' pages, not the server against programs.
    """
    origin = request.header("origin")
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if origin in allowed:
        return True
    if SAME_ORIGIN in allowed:
        host = (request.header("host") or "").strip().lower()
        scheme, sep, rest = origin.partition("://")
        return bool(sep and scheme and host and rest == host)
    return False


class WebStats:
    __slots__ = ("requests", "by_status", "upgrades", "handshake_timeouts", "bad_requests")

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: Dict[int, int] = {}
        self.upgrades = 0
        self.handshake_timeouts = 0
        self.bad_requests = 0

    def snapshot(self) -> Dict[str, object]:
        return {"requests": self.requests, "by_status": dict(self.by_status),
                "upgrades": self.upgrades, "handshake_timeouts": self.handshake_timeouts,
                "bad_requests": self.bad_requests}


class WebFront:
    """The HTTP side of a port: routing, deadlines, upgrades.

    A codec factory: ``TCPServer(loop, handler, config, codec_factory=front)``
    gives each new connection ``front(conn)``, a sniffer whose first byte
    decides between ``binary()`` (default: u16 frames of
    ``DEFAULT_MAX_FRAME``, one :class:`StreamFrames` for all) and HTTP. One front may serve several servers
    on one loop.
    """

    def __init__(self, config: Optional[WebConfig] = None,
                 binary: Optional[Callable[[], Codec]] = None) -> None:
        self.config = cfg = config if config is not None else WebConfig()
        self.static: Optional[StaticFiles] = None
        if cfg.static_root is not None or cfg.static_reader is not None:
            self.static = StaticFiles(cfg.static_root, headers=cfg.headers,
                                      reader=cfg.static_reader)
        self.stats = WebStats()
        frames = StreamFrames(DEFAULT_MAX_FRAME)
        self.binary: Callable[[], Codec] = lambda: frames
        if binary is not None:
            self.set_binary(binary)
        # HTTP connections and when their current deadline started.
        self._watched: Dict[Connection, float] = {}
        self._timer: Optional[Timer] = None
        # Upgraded connections: [their codec's reads when last seen, when
        # they last sent something, pinged since].
        # WebSocket connections kept alive: when each was last heard from (one
        # float shared by all those a sweep saw), and those pinged since.
        self._ws_watched: Dict[Connection, float] = {}
        self._ws_pinged: Set[Connection] = set()
        self._ws_timer: Optional[Timer] = None

    def set_binary(self, binary: Callable[[], Codec]) -> None:
        """Make ``binary()`` the codec of connections that are not HTTP.

        Raises ValueError if its frames could be mistaken for HTTP (a
        ``max_frame`` over :data:`~netcore.sniff.MAX_BINARY_FRAME`).
        """
        max_frame = getattr(binary(), "max_frame", 0)
        if max_frame > MAX_BINARY_FRAME:
            raise ValueError(
                f"max_frame {max_frame} > {MAX_BINARY_FRAME}: a binary frame "
                "could then start like an HTTP request, and one port cannot carry both")
        self.binary = binary

    def __call__(self, conn: Connection) -> Codec:
        """The first codec of a new connection: a sniffer."""
        return ProtocolSniffer(conn, self._http_codec, self.binary, self._decided)

    # -- decisions ----------------------------------------------------------

    def _http_codec(self, conn: Connection) -> Codec:
        return HttpCodec(conn, self)

    def _decided(self, conn: Connection, protocol: str) -> None:
        if protocol == HTTP:
            self._watch(conn)
        conn.owner.handler.on_protocol(conn, protocol)

    # -- HTTP ---------------------------------------------------------------

    def _handle(self, codec: "HttpCodec", request: Request) -> Optional[List[bytes]]:
        """Answer one request. Returns messages (maybe none) if it upgraded."""
        conn = codec.conn
        cfg = self.config
        self.stats.requests += 1
        codec.served += 1
        keep = request.keep_alive and codec.served < cfg.max_requests and not request.has_body
        method = request.method
        head_only = method == "HEAD"
        path = request.path
        forwarded_for = getattr(conn.owner, "forwarded_for", None)  # a TCPServer's
        if forwarded_for is not None:
            refused = forwarded_for(conn, request.header("x-forwarded-for"))
            if refused is not None:
                client = request.header("x-forwarded-for") or ""
                self._reply(conn, 503, error_response(
                    503, f"too many connections from {client.rsplit(',', 1)[-1].strip()} "
                    f"({refused}); try later"), False, refused)
                return None
        if method not in ("GET", "HEAD"):
            self._reply(conn, 405, error_response(405, f"{method} is not supported", not keep,
                                                 [("Allow", "GET, HEAD")]), keep)
        elif request.has_body:
            self._reply(conn, 413, error_response(413, "request bodies are not accepted"), False)
        elif cfg.ws_path is not None and (
                path == cfg.ws_path
                or (cfg.ws_path == "*" and "websocket" in request.tokens("upgrade"))):
            return self._upgrade(codec, request)
        elif cfg.health_path is not None and path == cfg.health_path:
            self._reply(conn, 200, response(
                200, [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")],
                b"ok\n", head_only=head_only, close=not keep), keep)
        elif path in cfg.routes:
            answer = cfg.routes[path]()
            content_type, body = answer[0], answer[1]
            status = answer[2] if len(answer) > 2 else 200
            self._reply(conn, status, response(
                status, [("Content-Type", content_type), ("Cache-Control", "no-store")],
                body, head_only=head_only, close=not keep), keep)
        elif self.static is not None:
            status, data = self.static.respond(request, keep)
            self._reply(conn, status, data, keep)
        else:
            self._reply(conn, 404, error_response(404, "no such resource", not keep), keep)
        return None

    def _reply(self, conn: Connection, status: int, data: bytes, keep_alive: bool,
              reason: str = CloseReason.DONE) -> None:
        by_status = self.stats.by_status
        by_status[status] = by_status.get(status, 0) + 1
        conn.write(data)
        if keep_alive:
            self._watch(conn)  # a fresh deadline for the next request
        else:
            conn.close_after_flush(reason)

    def _bad_request(self, conn: Connection, exc: HttpError) -> None:
        """The parser refused the input: answer its status, then close."""
        self.stats.bad_requests += 1
        if exc.limit_name:
            conn.owner.stats.limit(exc.limit_name)
        # DEBUG: a thousand bad requests must not write a thousand lines; the
        # churn summary counts them (closed by reason bad-http, limits hit).
        log.debug("fd=%d %s: bad HTTP request: %s", conn.fd, conn.peername(), exc)
        self._reply(conn, exc.status, error_response(exc.status, str(exc)), False, exc.reason)

    def _upgrade(self, codec: "HttpCodec", request: Request) -> Optional[List[bytes]]:
        conn = codec.conn
        cfg = self.config
        choice = self._choose(request)
        try:
            if isinstance(choice, int):
                raise HttpError(choice, "WebSocket upgrade refused" if choice != 403
                                else "Origin not allowed")
            extra = [("Sec-WebSocket-Protocol", choice.subprotocol)] if choice.subprotocol else []
            accept = handshake_response(request, extra)
        except HttpError as exc:
            extra = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            keep = exc.status != 400 and request.keep_alive
            self._reply(conn, exc.status, error_response(
                exc.status, str(exc), not keep, extra if exc.status == 426 else [],
                head_only=request.method == "HEAD"), keep)
            return None
        rest = codec.parser.take_rest()
        self.stats.by_status[101] = self.stats.by_status.get(101, 0) + 1
        self.stats.upgrades += 1
        self._watched.pop(conn, None)
        conn.write(accept)
        ws = WebSocketCodec(conn, choice.inner, cfg.max_message, choice.subprotocol,
                            max_fragments=cfg.max_fragments, control_burst=cfg.control_burst,
                            control_rate=cfg.control_rate)
        conn.codec = ws
        if cfg.ping_interval is not None or cfg.idle_timeout is not None:
            self._watch_ws(conn)
        conn.owner.handler.on_protocol(conn, WEBSOCKET)
        if rest and conn.is_open:
            return ws.feed(rest)
        return []

    def _choose(self, request: Request) -> Union[Upgrade, int]:
        """The Origin check, then the hook or the configured choice."""
        cfg = self.config
        if cfg.allowed_origins is not None and not origin_allowed(request, cfg.allowed_origins):
            return 403
        if cfg.ws_accept is not None:
            return cfg.ws_accept(request)
        offered = request.tokens("sec-websocket-protocol")
        chosen = next((p for p in cfg.subprotocols if p.lower() in offered), "")
        return Upgrade(cfg.message_codec, chosen)

    # -- deadlines ----------------------------------------------------------

    def _watch(self, conn: Connection) -> None:
        loop = conn.owner.loop
        self._watched[conn] = loop.time()
        if self._timer is None:
            period = min(1.0, self.config.handshake_timeout / 4)
            self._timer = loop.call_later(period, lambda: self._sweep(loop))

    def _sweep(self, loop: EventLoop) -> None:
        """Close HTTP connections past their deadline (runs while any are watched)."""
        self._timer = None
        limit = loop.time() - self.config.handshake_timeout
        watched = self._watched
        for conn, since in list(watched.items()):
            if not conn.is_open or not isinstance(conn.codec, HttpCodec):
                del watched[conn]
            elif since <= limit:
                del watched[conn]
                self.stats.handshake_timeouts += 1
                conn.owner.stats.limit("http-deadline")
                if conn.codec.parser.buffered:
                    self._reply(conn, 408, error_response(
                        408, f"request not complete within {self.config.handshake_timeout:g} s"),
                        False, CloseReason.HANDSHAKE_TIMEOUT)
                else:
                    conn.close(CloseReason.HANDSHAKE_TIMEOUT, "idle HTTP connection")
        if watched:
            period = min(1.0, self.config.handshake_timeout / 4)
            self._timer = loop.call_later(period, lambda: self._sweep(loop))


    # -- WebSocket keepalive ----------------------------------------------------

    def _ws_period(self) -> float:
        cfg = self.config
        spans = [t for t in (cfg.ping_interval, cfg.idle_timeout) if t is not None]
        return max(0.05, min(5.0, min(spans) / 4))

    def _watch_ws(self, conn: Connection) -> None:
        loop = conn.owner.loop
        self._ws_watched[conn] = loop.time()
        if self._ws_timer is None:
            self._ws_timer = loop.call_later(self._ws_period(), lambda: self._ws_sweep(loop))

    def _ws_sweep(self, loop: EventLoop) -> None:
        """Ping quiet WebSocket peers; close those quiet past the idle timeout."""
        self._ws_timer = None
        cfg = self.config
        now = loop.time()
        watched, pinged = self._ws_watched, self._ws_pinged
        for conn, since in list(watched.items()):
            codec = conn.codec
            if not conn.is_open or not isinstance(codec, WebSocketCodec):
                del watched[conn]
                pinged.discard(conn)
                continue
            if codec.reads:  # heard from since the last sweep
                codec.reads = 0
                watched[conn] = now
                pinged.discard(conn)
                continue
            idle = now - since
            if cfg.idle_timeout is not None and idle >= cfg.idle_timeout:
                del watched[conn]
                pinged.discard(conn)
                conn.owner.stats.limit("ws-idle")
                text = f"nothing received for {idle:.0f} s, not even a pong"
                bye = codec.closing(b"", CloseCode.INTERNAL_ERROR, text)
                if bye and conn.write(bye):
                    conn.close_after_flush("ws-idle", text)
                else:
                    conn.close("ws-idle", text)
            elif cfg.ping_interval is not None and conn not in pinged and idle >= cfg.ping_interval:
                pinged.add(conn)
                conn.write(_PING)
        if watched:
            self._ws_timer = loop.call_later(self._ws_period(), lambda: self._ws_sweep(loop))


_PING = frame_header(0, PING)  # a server's Ping: unmasked, empty

#: Requests of one connection answered per turn of the loop. The rest of a
#: pipelined burst waits its turn after the other ready connections (and a
#: due tick): a hundred pipelined requests cost the loop four at a time.
REQUESTS_PER_TURN = 4
#: Input waiting behind the request being answered, at most (then 429, close):
#: a client that pipelines faster than it is answered cannot grow our memory.
MAX_PIPELINED = 64 * 1024


class _Resume(Readiness):
    """Answers the next requests of a pipelined burst, a turn of the loop later."""

    __slots__ = ("codec",)

    def __init__(self, codec: "HttpCodec") -> None:
        self.codec = codec

    def on_ready(self, mask: int) -> None:
        codec = self.codec
        codec.resume = None
        conn = codec.conn
        if conn.codec is codec and conn.is_open:
            messages = codec.serve()
            if messages:  # the burst ended in an upgrade, with messages behind it
                conn._deliver(messages)

    def on_error(self, exc: BaseException) -> None:
        self.codec.conn.on_error(exc)


class HttpCodec(SilentCodec):
    """An HTTP/1.1 connection's codec: requests in, responses written.

    It never returns messages of its own (the handler does not see HTTP),
    only those of the WebSocket codec it may hand over to; and it carries
    none out: there is nothing to say to it but its responses (SilentCodec).
    """

    __slots__ = ("conn", "front", "parser", "served", "resume", "paused")

    def __init__(self, conn: Connection, front: WebFront) -> None:
        self.conn = conn
        self.front = front
        self.parser = RequestParser()
        self.served = 0
        self.resume: Optional[_Resume] = None  # scheduled: the rest of a pipelined burst
        self.paused = False  # answers wait for the peer to read them (above high water)

    def on_drain(self) -> None:
        """The peer read our answers down to the low water mark: go on with its burst."""
        if self.paused and self.resume is None and self.conn.is_open:
            self.paused = False
            self.resume = _Resume(self)
            self.conn.owner.loop.ready_again(self.resume)

    def feed(self, data: BytesLike) -> List[bytes]:
        parser = self.parser
        try:
            parser.feed(data)
            if parser.buffered > MAX_PIPELINED:
                raise HttpError(429, f"more than {MAX_PIPELINED} bytes of requests "
                                "pipelined ahead of their answers")
        except HttpError as exc:
            self.front._bad_request(self.conn, exc)
            return []
        if self.resume is not None or self.paused:
            return []  # a burst is being answered a turn at a time: these wait in order
        return self.serve()

    def serve(self) -> List[bytes]:
        """Answer up to REQUESTS_PER_TURN parsed requests; schedule the rest."""
        parser = self.parser
        conn = self.conn
        try:
            for _ in range(REQUESTS_PER_TURN):
                if not conn.is_open:
                    return []
                if conn.above_high_water:  # answers pile up unread: wait until it reads
                    self.paused = True
                    return []
                request = parser.next_request()
                if request is None:
                    return []
                upgraded = self.front._handle(self, request)
                if upgraded is not None:
                    return upgraded
            if conn.is_open and parser.buffered:
                self.resume = _Resume(self)
                conn.owner.loop.ready_again(self.resume)
        except HttpError as exc:
            self.front._bad_request(conn, exc)
        return []
