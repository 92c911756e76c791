"""RFC 6455 WebSocket, sans-IO: the handshake, and a frame parser and builder.

The parser's ``parse(data)`` is fed bytes as they arrive and returns whole events:
:class:`Message` (a data message, its fragments joined), :class:`Ping`,
:class:`Pong` and :class:`Close`. Control frames may arrive between the
fragments of a message, as the RFC allows; they are returned at once, in
stream order. Anything the RFC says to fail the connection for raises
:class:`WebSocketError`, whose ``code`` is the close code to send:

- 1002 protocol error: an unmasked client frame (or a masked server frame),
  reserved bits set, an unknown opcode, a fragmented or oversize control
  frame, a continuation with no message or a message inside another, a bad
  close code;
- 1007 invalid data: a text message (checked fragment by fragment) or a
  close reason that is not UTF-8;
- 1009 too big: a message over ``max_message``, refused from its frame
  header, before its bytes are buffered.

Only a partial frame (and the fragments of an unfinished message) is held
between ``parse`` calls, so a connection that sends whole frames holds no
input buffer. The builder never masks unless given a key: servers must not
mask; clients (tests, bots) must.

Extensions and subprotocols are not negotiated, so every RSV bit is an error.
"""

from __future__ import annotations

import base64
import codecs
import struct
from typing import Any, List, NamedTuple, NoReturn, Optional, Sequence, Tuple, Union

from .codec import ProtocolError
from .digest import sha1
from .http import HttpError, Request, response
from .ringbuffer import BytesLike

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "GUID",
    "PING",
    "PONG",
    "TEXT",
    "Close",
    "CloseCode",
    "Event",
    "Message",
    "Ping",
    "Pong",
    "WebSocketError",
    "WebSocketParser",
    "accept_key",
    "client_handshake",
    "close_frame",
    "close_payload",
    "frame",
    "frame_header",
    "handshake_response",
    "mask",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_KNOWN_OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = 123  # a close payload is at most 125 bytes: 2 for the code


class CloseCode:
    """RFC 6455 section 7.4.1 close codes."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: "the Close frame had no code"
    ABNORMAL = 1006  # never sent: "closed without a Close frame"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


def _valid_close_code(code: int) -> bool:
    """Codes a peer may send in a Close frame (RFC 6455 7.4, IANA registry)."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


class WebSocketError(ProtocolError):
    """The peer broke RFC 6455; close with ``code``."""

    reason = "bad-websocket"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Message(NamedTuple):
    data: bytes
    text: bool = False  # a text message: ``data`` is valid UTF-8


class Ping(NamedTuple):
    data: bytes


class Pong(NamedTuple):
    data: bytes


class Close(NamedTuple):
    code: int  # CloseCode.NO_STATUS if the frame carried none
    reason: str = ""


Event = Union[Message, Ping, Pong, Close]


# -- handshake -----------------------------------------------------------------


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    digest = sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def handshake_response(request: Request) -> bytes:
    """The 101 response accepting ``request`` as a WebSocket opening handshake.

    Raises :class:`HttpError` (400, or 426 with the version we speak) when
    the request is not a valid RFC 6455 client handshake.
    """
    if request.method != "GET":
        raise HttpError(405, "a WebSocket handshake must be a GET")
    if request.version != "HTTP/1.1":
        raise HttpError(400, "a WebSocket handshake needs HTTP/1.1")
    if "websocket" not in request.tokens("upgrade"):
        raise HttpError(426, "this resource speaks WebSocket only (Upgrade: websocket)")
    if "upgrade" not in request.tokens("connection"):
        raise HttpError(400, "a WebSocket handshake needs Connection: Upgrade")
    version = request.header("sec-websocket-version")
    if version is None or version.strip() != "13":
        raise HttpError(426, "WebSocket version 13 only (Sec-WebSocket-Version: 13)")
    key = (request.header("sec-websocket-key") or "").strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return response(
        101,
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ],
    )


def client_handshake(host: str, path: str, key: str,
                     headers: Sequence[Tuple[str, str]] = ()) -> bytes:
    """A client's opening handshake (for bots and tests)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- building frames -------------------------------------------------------------

_H16 = struct.Struct(">BBH")
_H64 = struct.Struct(">BBQ")


def frame_header(length: int, opcode: int = BINARY, fin: bool = True,
                 mask_key: Optional[bytes] = None) -> bytes:
    """The header of one frame carrying ``length`` payload bytes.

    A server sends ``header + payload``; building the header alone lets a
    broadcast frame its payload once for every client.
    """
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask_key is not None else 0
    if length < 126:
        head = bytes((b0, m | length))
    elif length < 0x10000:
        head = _H16.pack(b0, m | 126, length)
    else:
        head = _H64.pack(b0, m | 127, length)
    return head + mask_key if mask_key is not None else head


def mask(data: BytesLike, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` (masking and unmasking alike)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(payload: BytesLike, opcode: int = BINARY, fin: bool = True,
          mask_key: Optional[bytes] = None) -> bytes:
    """One whole frame. Pass ``mask_key`` (4 random bytes) from a client."""
    head = frame_header(len(payload), opcode, fin, mask_key)
    body = mask(payload, mask_key) if mask_key is not None else bytes(payload)
    return head + body


def close_payload(code: int, reason: str = "") -> bytes:
    """A Close frame's payload; ``reason`` is cut to 123 bytes on a character."""
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON]
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + raw


def close_frame(code: int, reason: str = "", mask_key: Optional[bytes] = None) -> bytes:
    return frame(close_payload(code, reason), CLOSE, mask_key=mask_key)


# -- parsing frames ----------------------------------------------------------------


class WebSocketParser:
    """Events from a stream of WebSocket frames; see the module docstring.

    ``client=False`` (a server) requires every frame to be masked;
    ``client=True`` requires none to be. After a Close frame the parser
    returns nothing more: the RFC allows no data after Close.
    """

    __slots__ = ("max_message", "client", "_buf", "_frag", "_state")

    def __init__(self, max_message: int = 1 << 20, client: bool = False) -> None:
        self.max_message = max_message
        self.client = client
        self._buf: Optional[bytearray] = None  # a partial frame, if any
        self._frag: Optional[_Fragments] = None  # an unfinished fragmented message
        self._state: Optional[WebSocketError] = None  # the failure, or _CLOSED

    @property
    def buffered(self) -> int:
        """Bytes held: a partial frame plus the fragments received so far."""
        held = len(self._buf) if self._buf is not None else 0
        if self._frag is not None:
            held += self._frag.size
        return held

    @property
    def closed(self) -> bool:
        """A Close frame was received."""
        return self._state is _CLOSED

    def parse(self, data: BytesLike) -> List[Event]:
        """Events completed by ``data``; raises :class:`WebSocketError`."""
        state = self._state
        if state is not None:
            if state is _CLOSED:
                return []
            raise state
        buf = self._buf
        if buf is not None:
            buf += data
            view = memoryview(buf)
        else:
            view = data if isinstance(data, memoryview) else memoryview(data)
        events: List[Event] = []
        size = len(view)
        try:
            used = self._frames(view, events)
        finally:
            if buf is not None:
                view.release()
        if self._state is _CLOSED or used == size:
            self._buf = None
        elif buf is None:
            self._buf = bytearray(view[used:])
        else:
            del buf[:used]
        return events

    def _frames(self, view: memoryview, events: List[Event]) -> int:
        """Parse whole frames from ``view``; returns the bytes used."""
        end = len(view)
        pos = 0
        want_mask = not self.client
        while end - pos >= 2:
            b0 = view[pos]
            b1 = view[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            if opcode not in _KNOWN_OPCODES:
                self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode 0x{opcode:x}")
            if bool(b1 & 0x80) != want_mask:
                self._fail(CloseCode.PROTOCOL_ERROR,
                           "client frames must be masked" if want_mask
                           else "server frames must not be masked")
            fin = b0 & 0x80
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                if length >> 63:
                    self._fail(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit set")
                head = 10
            if opcode >= CLOSE:
                if not fin:
                    self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    self._fail(CloseCode.PROTOCOL_ERROR,
                               f"control frame of {length} bytes (max {MAX_CONTROL_PAYLOAD})")
            else:
                frag = self._frag
                if opcode == CONTINUATION:
                    if frag is None:
                        self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame with no message")
                elif frag is not None:
                    self._fail(CloseCode.PROTOCOL_ERROR,
                               "new data frame before the fragmented message ended")
                have = frag.size if frag is not None else 0
                if have + length > self.max_message:
                    self._fail(CloseCode.TOO_BIG,
                               f"message of {have + length}+ bytes (max {self.max_message})")
            if want_mask:
                head += 4
            stop = pos + head + length
            if stop > end:
                break
            payload: bytes
            if want_mask:
                payload = mask(view[pos + head : stop], bytes(view[pos + head - 4 : pos + head]))
            else:
                payload = view[pos + head : stop].tobytes()
            pos = stop
            if opcode >= CLOSE:
                if opcode == CLOSE:
                    events.append(self._close(payload))
                    return pos
                events.append(Ping(payload) if opcode == PING else Pong(payload))
            else:
                message = self._data(opcode, bool(fin), payload)
                if message is not None:
                    events.append(message)
        return pos

    def _data(self, opcode: int, fin: bool, payload: bytes) -> Optional[Message]:
        if opcode != CONTINUATION:
            if fin:
                if opcode == TEXT:
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._fail(CloseCode.INVALID_DATA,
                                   f"text message is not UTF-8: {exc.reason}")
                return Message(payload, opcode == TEXT)
            frag = self._frag = _Fragments(opcode == TEXT)
        else:
            held = self._frag
            assert held is not None
            frag = held
        try:
            frag.add(payload, fin)
        except UnicodeDecodeError as exc:
            self._fail(CloseCode.INVALID_DATA, f"text message is not UTF-8: {exc.reason}")
        if not fin:
            return None
        self._frag = None
        return Message(b"".join(frag.parts), frag.utf8 is not None)

    def _close(self, payload: bytes) -> Close:
        if len(payload) == 1:
            self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        event = Close(CloseCode.NO_STATUS)
        if payload:
            code = (payload[0] << 8) | payload[1]
            if not _valid_close_code(code):
                self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "close reason is not UTF-8")
            event = Close(code, reason)
        self._state = _CLOSED
        self._frag = None
        return event

    def _fail(self, code: int, message: str) -> NoReturn:
        err = WebSocketError(code, message)
        self._state = err
        self._buf = None
        self._frag = None
        raise err


class _Fragments:
    """The fragments of a message so far (only while one is unfinished).

    A text message's UTF-8 is checked fragment by fragment, by an
    incremental decoder, so a bad byte fails before the message ends.
    """

    __slots__ = ("parts", "size", "utf8")

    def __init__(self, text: bool) -> None:
        self.parts: List[bytes] = []
        self.size = 0
        self.utf8: Any = codecs.getincrementaldecoder("utf-8")() if text else None

    def add(self, payload: bytes, final: bool) -> None:
        """Keep ``payload``; raises UnicodeDecodeError for bad text."""
        if self.utf8 is not None:
            self.utf8.decode(payload, final)
        self.parts.append(payload)
        self.size += len(payload)


_CLOSED = WebSocketError(CloseCode.NORMAL, "closed")


def close_code_for(exc: ProtocolError) -> int:
    """The close code that answers ``exc``: its own, or 1002 for framing errors."""
    if isinstance(exc, WebSocketError):
        return exc.code
    return CloseCode.PROTOCOL_ERROR
