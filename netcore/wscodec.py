"""WebSocket codecs for connections: the server end and the client end.

Both ends read with :class:`~netcore.websocket.WebSocketParser` and answer
the protocol's own frames themselves: a Ping gets its Pong, a Close gets a
Close back and the connection closes once that is sent. What the
application gets depends on ``inner``:

- ``inner=None`` (raw messages, what a WebSocket application wants): every
  message is one ``on_message``; a text message arrives as a
  :class:`~netcore.codec.Text` (a bytes subclass, ``payload.decode()`` is the
  string), a binary one as ``bytes``; ``conn.send(Text(...))`` or
  ``conn.send_text(str)`` sends text, anything else goes as binary;
- ``inner=codec`` (a byte stream carried in binary messages, as the game
  does with its u16 frames): binary messages are fed to ``inner``, whose
  frames become the messages; text messages are refused with 1003.

Closes the codec starts say why with a Close frame: ``closing(stream, code,
reason)`` gives the last words to write (the handler's ``on_bad_input``
default uses it with :func:`~netcore.websocket.close_code_for`).

The client end (:func:`websocket_client`) sends its opening handshake as
soon as it is connected, checks the server's answer
(``Sec-WebSocket-Accept``), then calls ``on_protocol(conn, "websocket")``:
the connection is open. Messages sent before that wait in the codec, as the
RFC wants, and go out right after the handshake. Client frames are masked
with a fresh random key each.
"""

from __future__ import annotations

import base64
import os

from .codec import Codec, ProtocolError, Text
from .connection import CloseReason, Connection
from .sniff import WEBSOCKET
from .websocket import (
    BINARY,
    CLOSE,
    DEFAULT_MAX_MESSAGE,
    PONG,
    TEXT,
    Close,
    CloseCode,
    Message,
    Ping,
    WebSocketError,
    WebSocketParser,
    accept_key,
    client_handshake,
    close_frame,
    frame,
    frame_header,
    mask,
)
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    from typing import Any, Dict, List, Optional, Sequence, Tuple

    from .ringbuffer import BytesLike
    from .websocket import Event

__all__ = ["HandshakeError", "WebSocketClient", "WebSocketClientCodec", "WebSocketCodec",
           "websocket_client"]

MAX_RESPONSE_HEAD = 16 << 10


class _WebSocketEnd(WebSocketParser):
    """What both ends share: events to messages, Ping, Close."""

    __slots__ = ("conn", "inner", "close_sent", "peer_close")

    def __init__(self, conn: Connection, inner: Optional[Codec], max_message: int,
                 client: bool, **limits: Any) -> None:
        super().__init__(max_message=max_message, client=client, **limits)
        self.conn = conn
        self.inner = inner
        self.close_sent = False
        self.peer_close: Optional[Close] = None  # the peer's Close (code, reason), once read

    def _mask_key(self) -> Optional[bytes]:
        return None

    def _out(self, payload: BytesLike, opcode: int) -> bytes:
        key = self._mask_key()
        if key is None:
            return frame_header(len(payload), opcode) + bytes(payload)
        return frame(payload, opcode, mask_key=key)

    def _messages(self, data: BytesLike) -> List[bytes]:
        try:
            events = self.parse(data)
        except WebSocketError as exc:
            if exc.events:  # deliver what came before the error, then fail
                exc.messages = self._handle(exc.events)
            raise
        if not events:
            return []
        return self._handle(events)

    def _handle(self, events: Sequence[Event]) -> List[bytes]:
        conn = self.conn
        inner = self.inner
        out: List[bytes] = []
        for event in events:
            if isinstance(event, Message):
                if inner is None:
                    out.append(Text(event.data) if event.text else event.data)
                    continue
                try:
                    if event.text:
                        raise WebSocketError(CloseCode.UNSUPPORTED_DATA,
                                             "text messages are not accepted; send binary")
                    out += inner.feed(event.data)
                except ProtocolError as exc:  # what came before it is still delivered
                    exc.messages = out + list(exc.messages)
                    raise
            elif isinstance(event, Ping):
                conn.write(self._out(event.data, PONG))
            elif isinstance(event, Close):
                self.peer_close = event
                if out:
                    # Deliver what came before the Close first; answer after.
                    conn.owner.loop.call_soon(lambda: self._answer_close(event))
                else:
                    self._answer_close(event)
                return out
        return out

    def _answer_close(self, event: Close) -> None:
        conn = self.conn
        if not conn.is_open:
            return
        if self.close_sent:  # the answer to ours: done
            conn.close(CloseReason.PEER_CLOSED, f"WebSocket close {event.code}")
            return
        code = CloseCode.NORMAL if event.code == CloseCode.NO_STATUS else event.code
        self.close_sent = True
        conn.write(self._out(code.to_bytes(2, "big"), CLOSE))
        conn.close_after_flush(CloseReason.PEER_CLOSED, f"WebSocket close {event.code}")

    # -- the writing half ---------------------------------------------------

    def frame(self, payload: BytesLike) -> bytes:
        inner = self.inner
        if inner is not None:
            return self.wrap(inner.frame(payload))
        return self._out(payload, TEXT if isinstance(payload, Text) else BINARY)

    def wrap(self, stream: bytes) -> bytes:
        return self._out(stream, BINARY)

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        if self.close_sent:
            return self.wrap(stream) if stream else b""
        self.close_sent = True
        key = self._mask_key()
        bye = close_frame(code, reason, mask_key=key)
        return self.wrap(stream) + bye if stream else bye


class WebSocketCodec(_WebSocketEnd):
    """The server end of an upgraded connection (see the module docstring).

    ``inner=None``: raw messages; a codec: a byte stream in binary messages.
    ``subprotocol`` is what the handshake agreed on ("" for none).
    """

    __slots__ = ("subprotocol", "reads")

    def __init__(self, conn: Connection, inner: Optional[Codec] = None,
                 max_message: int = DEFAULT_MAX_MESSAGE, subprotocol: str = "",
                 **limits: Any) -> None:
        """``limits``: ``max_fragments``, ``control_burst``, ``control_rate``
        (see :class:`~netcore.websocket.WebSocketParser`)."""
        super().__init__(conn, inner, max_message, False, **limits)
        self.subprotocol = subprotocol
        self.reads = 0  # reads fed since the front's keepalive last looked (it resets it)

    def feed(self, data: BytesLike) -> List[bytes]:
        self.reads += 1
        return self._messages(data)

    def wrap(self, stream: bytes) -> bytes:
        # The game's hot path (a private tick per player): no indirection.
        return frame_header(len(stream)) + stream


class HandshakeError(ProtocolError):
    """The server did not accept the WebSocket opening handshake."""

    reason = "bad-handshake"


class WebSocketClientCodec(_WebSocketEnd):
    """The client end: handshake first, then masked frames out."""

    __slots__ = ("key", "subprotocols", "subprotocol", "_reply", "_early", "is_open")

    def __init__(self, conn: Connection, host: str, path: str = "/",
                 inner: Optional[Codec] = None, max_message: int = DEFAULT_MAX_MESSAGE,
                 headers: Sequence[Tuple[str, str]] = (),
                 subprotocols: Sequence[str] = (), **limits: Any) -> None:
        super().__init__(conn, inner, max_message, True, **limits)
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.subprotocols = tuple(subprotocols)
        self.subprotocol = ""
        self._reply: Optional[bytearray] = bytearray()  # None once open
        self._early: List[bytes] = []
        self.is_open = False
        extra = list(headers)
        if subprotocols:
            extra.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
        conn.enqueue(client_handshake(host, path, self.key, extra))

    def _mask_key(self) -> Optional[bytes]:
        return os.urandom(4)

    def _out(self, payload: BytesLike, opcode: int) -> bytes:
        data = super()._out(payload, opcode)
        if self.is_open:
            return data
        self._early.append(data)  # the RFC: nothing before the server's answer
        return b""

    def feed(self, data: BytesLike) -> List[bytes]:
        head = self._reply
        if head is None:
            return self._messages(data)
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_RESPONSE_HEAD:
                raise HandshakeError(f"handshake response over {MAX_RESPONSE_HEAD} bytes")
            return []
        rest = bytes(head[end + 4:])
        self._accept(bytes(head[:end]))
        self._reply = None
        self.is_open = True
        conn = self.conn
        if self._early:
            conn.write(b"".join(self._early))
            self._early = []
        conn.owner.handler.on_protocol(conn, WEBSOCKET)
        if rest and conn.is_open:
            return self._messages(rest)
        return []

    def _accept(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[0] != "HTTP/1.1" or status[1] != "101":
            raise HandshakeError(f"server answered {lines[0]!r}, not 101")
        fields: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HandshakeError(f"bad header line {line!r}")
            key = name.strip().lower()
            value = value.strip()
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
        if fields.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("no Upgrade: websocket in the answer")
        if "upgrade" not in [t.strip().lower() for t in fields.get("connection", "").split(",")]:
            raise HandshakeError("no Connection: Upgrade in the answer")
        if fields.get("sec-websocket-accept") != accept_key(self.key):
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        chosen = fields.get("sec-websocket-protocol", "")
        if chosen and chosen not in self.subprotocols:
            raise HandshakeError(f"server chose subprotocol {chosen!r}, not offered")
        if fields.get("sec-websocket-extensions"):
            raise HandshakeError("server chose an extension; none was offered")
        self.subprotocol = chosen


class WebSocketClient:
    """A codec factory for WebSocket clients (what :func:`websocket_client` returns).

    Calling it with a connection gives the connection its
    :class:`WebSocketClientCodec`. ``tls`` and ``server_hostname`` are for
    :meth:`TCPClient.connect <netcore.client.TCPClient.connect>`, which
    takes them from here when it is not given its own: ``wss://``.
    """

    __slots__ = ("host", "path", "inner", "max_message", "headers", "subprotocols", "limits",
                 "tls", "server_hostname")

    def __init__(self, host: str, path: str = "/", inner: Optional[Codec] = None,
                 max_message: int = DEFAULT_MAX_MESSAGE,
                 headers: Sequence[Tuple[str, str]] = (),
                 subprotocols: Sequence[str] = (),
                 tls: Optional[ssl.SSLContext] = None,
                 server_hostname: Optional[str] = None, **limits: Any) -> None:
        self.host = host
        self.path = path
        self.inner = inner
        self.max_message = max_message
        self.headers = tuple(headers)
        self.subprotocols = tuple(subprotocols)
        self.limits = limits
        self.tls = tls
        if tls is not None and server_hostname is None:
            server_hostname = _host_name(host)
        self.server_hostname = server_hostname

    def __call__(self, conn: Connection) -> Codec:
        return WebSocketClientCodec(conn, self.host, self.path, self.inner, self.max_message,
                                    self.headers, self.subprotocols, **self.limits)


def _host_name(host: str) -> str:
    """The name in a ``Host`` header: ``example.org:8443`` -> ``example.org``,
    ``[::1]:8443`` -> ``::1``."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name
    return host


def websocket_client(host: str, path: str = "/", inner: Optional[Codec] = None,
                     max_message: int = DEFAULT_MAX_MESSAGE,
                     headers: Sequence[Tuple[str, str]] = (),
                     subprotocols: Sequence[str] = (),
                     tls: Optional[ssl.SSLContext] = None,
                     server_hostname: Optional[str] = None,
                     **limits: Any) -> WebSocketClient:
    """A codec factory for :meth:`TCPClient.connect <netcore.client.TCPClient.connect>`.

    ``host`` is the ``Host`` header (``"example.org:8080"``); ``path`` the
    resource. Wait for ``on_protocol(conn, "websocket")`` before relying on
    the connection being open (sends before it are held back, not lost).

    ``tls``: ``wss://``, with this context (:func:`netcore.tls.client_context`);
    the certificate is checked against ``server_hostname``, by default the
    name in ``host``. ``connect`` takes both from the factory.
    """
    return WebSocketClient(host, path, inner, max_message, headers, subprotocols, tls,
                           server_hostname, **limits)
