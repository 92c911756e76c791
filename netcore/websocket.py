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
- 1008 policy violation: a message in more than ``max_fragments`` frames
  (empty ones count), or control frames faster than the token bucket of
  ``control_burst`` and ``control_rate`` allows;
- 1009 too big: a message over ``max_message``, refused from its frame
  header, before its bytes are buffered.

Between ``parse`` calls only a partial header and an unfinished message are
held, the payload already unmasked into one buffer that never grows past
``max_message``, so a connection that sends whole frames holds no input
buffer and one that cuts a message into tiny or empty frames holds no more
than the message cap. The builder never masks unless given a key: servers
must not mask; clients (tests, bots) must.

Extensions and subprotocols are not negotiated, so every RSV bit is an error.
"""

from __future__ import annotations

import base64
import codecs
import struct
import time

from .codec import ProtocolError
from .digest import sha1
from .http import HttpError, Request, response
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple, Union

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
    "Message",
    "Ping",
    "Pong",
    "WebSocketError",
    "WebSocketParser",
    "accept_key",
    "default_max_fragments",
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
    # The whole events parsed before the error from the same input, which
    # the owner delivers before it closes (see WebSocketParser.parse).
    events: Sequence["Event"] = ()

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


if TYPE_CHECKING:
    Event = Union[Message, Ping, Pong, Close]


# -- handshake -----------------------------------------------------------------


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    digest = sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def handshake_response(request: Request, headers: Sequence[Tuple[str, str]] = ()) -> bytes:
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
            *headers,  # e.g. the chosen Sec-WebSocket-Protocol
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


_MASK_STEP = 1 << 16  # bytes unmasked per big-int XOR (a multiple of 4)


def mask(data: BytesLike, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` (masking and unmasking alike).

    Pure Python, as one big-integer XOR per 64 KiB: little-endian (the
    ints' own digit order, so no byte reversal) and in steps that stay in
    the CPU cache, about twice as fast as one XOR over a 16 MiB message
    (bench/netcore_bench.py --only large).
    """
    n = len(data)
    if n <= _MASK_STEP:
        if n == 0:
            return b""
        q, r = divmod(n, 4)
        stream = key * q + key[:r] if r else key * q
        return (int.from_bytes(data, "little")
                ^ int.from_bytes(stream, "little")).to_bytes(n, "little")
    view = data if isinstance(data, memoryview) else memoryview(data)
    step = _MASK_STEP
    key_int = int.from_bytes(key * (step // 4), "little")
    from_bytes = int.from_bytes
    whole = n - n % step
    parts = [(from_bytes(view[pos:pos + step], "little") ^ key_int).to_bytes(step, "little")
             for pos in range(0, whole, step)]
    if whole < n:
        parts.append(mask(view[whole:], key))
    return b"".join(parts)


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

# The largest frame header: 2 bytes, a 64-bit length and a masking key.
MAX_HEADER = 14
DEFAULT_MAX_MESSAGE = 1 << 20
DEFAULT_CONTROL_BURST = 32
DEFAULT_CONTROL_RATE = 16.0


def default_max_fragments(max_message: int) -> int:
    """Frames one message may take unless told: a 64-byte average, 16 at least.

    A 1 MiB cap allows 16,384 frames; 4 MiB in 64-byte fragments (65,536
    frames) fits under a 4 MiB cap. What it stops is a message that never
    ends, or that costs a frame header and a parser round per byte.
    """
    return max(16, max_message // 64)


class WebSocketParser:
    """Events from a stream of WebSocket frames; see the module docstring.

    ``client=False`` (a server) requires every frame to be masked;
    ``client=True`` requires none to be. After a Close frame the parser
    returns nothing more: the RFC allows no data after Close.

    Limits, each counted on the wire (a peer cannot dodge one by sending
    its bytes in smaller or emptier frames):

    - ``max_message``: payload bytes in one message, 1 MiB -> 1009, refused
      from a frame's header before its payload is read;
    - ``max_fragments``: frames in one message, empty ones included
      (default :func:`default_max_fragments`) -> 1008;
    - ``control_burst`` and ``control_rate``: Ping and Pong frames, a token
      bucket of ``control_burst`` (32) refilled at ``control_rate`` (16) a
      second -> 1008. The owner answers each Ping it is given, so pongs
      are bounded by the same rate.

    Memory: a payload is unmasked into the message as it arrives, so the
    parser holds at most a partial header (13 bytes), a control frame's
    payload (125) and one buffer for the unfinished message, which never
    grows past ``max_message`` however the message is cut up.

    When the input is bad after some whole events, the :class:`WebSocketError`
    raised carries them in ``events`` (its owner delivers them before closing).
    """

    __slots__ = ("max_message", "max_fragments", "control_burst", "control_rate", "client",
                 "clock", "_head", "_frame", "_msg", "_state", "_tokens", "_refilled")

    def __init__(
        self,
        max_message: int = DEFAULT_MAX_MESSAGE,
        client: bool = False,
        max_fragments: Optional[int] = None,
        control_burst: int = DEFAULT_CONTROL_BURST,
        control_rate: float = DEFAULT_CONTROL_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_message < 0 or control_burst < 1 or control_rate < 0:
            raise ValueError("need max_message >= 0, control_burst >= 1, control_rate >= 0")
        self.max_message = max_message
        self.max_fragments = (default_max_fragments(max_message) if max_fragments is None
                              else max(1, max_fragments))
        self.control_burst = control_burst
        self.control_rate = control_rate
        self.client = client
        self.clock = clock
        self._head: Optional[bytes] = None  # a partial frame header, if any
        self._frame: Optional[_Frame] = None  # a frame whose payload is arriving
        self._msg: Optional[_Message] = None  # an unfinished message
        self._state: Optional[WebSocketError] = None  # the failure, or _CLOSED
        # An int until the first control frame: a small int is shared, a float
        # would be one more object (24 B) per idle connection.
        self._tokens: float = control_burst
        self._refilled = -1.0  # when the token bucket was last refilled; -1: never

    @property
    def buffered(self) -> int:
        """Payload bytes held: a partial header, control frame and message."""
        held = len(self._head) if self._head is not None else 0
        if self._frame is not None and self._frame.ctrl is not None:
            held += len(self._frame.ctrl)
        if self._msg is not None:
            held += self._msg.size
        return held

    @property
    def allocated(self) -> int:
        """Bytes of buffer the parser holds (capacity, not just contents)."""
        held = len(self._head) if self._head is not None else 0
        if self._frame is not None and self._frame.ctrl is not None:
            held += MAX_CONTROL_PAYLOAD
        if self._msg is not None:
            held += len(self._msg.buf)
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
            state.events = ()
            raise state
        view = data if isinstance(data, memoryview) else memoryview(data)
        events: List[Event] = []
        try:
            self._parse(view, events)
        except WebSocketError as exc:
            exc.events = events
            raise
        return events

    def _parse(self, view: memoryview, events: List[Event]) -> None:
        pos = 0
        head = self._head
        if head is not None:
            # Finish the partial header from a small copy, then go on in ``view``.
            self._head = None
            take = min(MAX_HEADER - len(head), len(view))
            chunk = head + view[:take].tobytes()
            self._run(memoryview(chunk), events)
            if self._state is not None:
                return
            left = self._head
            pos = take
            if left is not None:
                if len(left) == len(chunk):
                    return  # still one partial header, and ``view`` is all in it
                # ``chunk`` ended inside a later header, which began in ``view``.
                self._head = None
                pos -= len(left)
        if pos < len(view):
            self._run(view[pos:] if pos else view, events)

    def _run(self, view: memoryview, events: List[Event]) -> None:
        """Frames and payloads from ``view``; a partial header is kept in ``_head``."""
        end = len(view)
        pos = 0
        while True:
            if self._frame is not None:
                pos = self._payload(view, pos, events)
                if self._frame is not None or self._state is not None:
                    return
            if pos >= end:
                return
            pos = self._frames(view, pos, events)
            if self._state is not None:
                return
            if self._frame is None:
                if pos < end:
                    self._head = view[pos:].tobytes()
                return

    def _frames(self, view: memoryview, pos: int, events: List[Event]) -> int:
        """Whole frames from ``view[pos:]``; stops at a partial header (returning
        where it starts) or at a partial payload (with ``_frame`` set, returning
        where the payload starts)."""
        end = len(view)
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
            msg = self._msg
            if opcode >= CLOSE:
                if not fin:
                    self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    self._fail(CloseCode.PROTOCOL_ERROR,
                               f"control frame of {length} bytes (max {MAX_CONTROL_PAYLOAD})")
            else:
                if opcode == CONTINUATION:
                    if msg is None:
                        self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame with no message")
                elif msg is not None:
                    self._fail(CloseCode.PROTOCOL_ERROR,
                               "new data frame before the fragmented message ended")
                have = msg.size if msg is not None else 0
                if have + length > self.max_message:
                    self._fail(CloseCode.TOO_BIG,
                               f"message of {have + length}+ bytes (max {self.max_message})",
                               "ws-message-size")
            key: Optional[bytes] = None
            if want_mask:
                head += 4
                if end - pos < head:
                    break
                key = view[pos + head - 4 : pos + head].tobytes()
            # The header is whole: count the frame.
            if opcode < CLOSE and msg is not None:
                msg.frames += 1
                if msg.frames > self.max_fragments:
                    self._fail(CloseCode.POLICY_VIOLATION,
                               f"message in more than {self.max_fragments} frames",
                               "ws-fragments")
            start = pos + head
            stop = start + length
            if stop > end:  # the payload is still arriving
                self._begin(opcode, bool(fin), length, key)
                return start
            payload = mask(view[start:stop], key) if key is not None else view[start:stop].tobytes()
            pos = stop
            if opcode >= CLOSE:
                if self._control(opcode, payload, events):
                    return pos
            elif fin and msg is None:
                if opcode == TEXT:
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._fail(CloseCode.INVALID_DATA,
                                   f"text message is not UTF-8: {exc.reason}")
                events.append(Message(payload, opcode == TEXT))
            else:
                if msg is None:
                    msg = self._msg = _Message(opcode == TEXT)
                self._add(msg, payload, self.max_message)
                if fin:
                    events.append(self._finish(msg))
        return pos

    def _begin(self, opcode: int, fin: bool, length: int, key: Optional[bytes]) -> None:
        """A frame whose payload will come in pieces."""
        frame = self._frame = _Frame(opcode, fin, length, key)
        if opcode >= CLOSE:
            frame.ctrl = bytearray()
            return
        if self._msg is None:
            self._msg = _Message(opcode == TEXT)
        # An unfragmented message's size is known: its buffer grows to just that.
        frame.limit = length if fin and self._msg.frames == 1 else self.max_message

    def _payload(self, view: memoryview, pos: int, events: List[Event]) -> int:
        """More of the current frame's payload; returns where it stopped."""
        frame = self._frame
        assert frame is not None
        take = min(frame.left, len(view) - pos)
        chunk = view[pos : pos + take]
        key = frame.key
        if key is not None:
            turn = frame.done & 3
            data = mask(chunk, key[turn:] + key[:turn] if turn else key)
        else:
            data = chunk.tobytes()
        frame.done += take
        frame.left -= take
        if frame.ctrl is not None:
            frame.ctrl += data
        else:
            msg = self._msg
            assert msg is not None
            self._add(msg, data, frame.limit)
        if frame.left == 0:
            self._frame = None
            if frame.ctrl is not None:
                self._control(frame.opcode, bytes(frame.ctrl), events)
            elif frame.fin:
                msg = self._msg
                assert msg is not None
                events.append(self._finish(msg))
        return pos + take

    def _add(self, msg: "_Message", data: bytes, limit: int) -> None:
        try:
            msg.add(data, limit)
        except UnicodeDecodeError as exc:
            self._fail(CloseCode.INVALID_DATA, f"text message is not UTF-8: {exc.reason}")

    def _finish(self, msg: "_Message") -> Message:
        self._msg = None
        try:
            return msg.finish()
        except UnicodeDecodeError as exc:
            self._fail(CloseCode.INVALID_DATA, f"text message is not UTF-8: {exc.reason}")

    def _control(self, opcode: int, payload: bytes, events: List[Event]) -> bool:
        """A whole control frame; True if it was the Close."""
        if opcode == CLOSE:
            events.append(self._close(payload))
            return True
        # The token bucket: control_burst at once, control_rate a second.
        now = self.clock()
        tokens = self._tokens
        if self._refilled >= 0:
            tokens = min(float(self.control_burst),
                         tokens + (now - self._refilled) * self.control_rate)
        self._refilled = now
        if tokens < 1.0:
            self._tokens = tokens
            self._fail(CloseCode.POLICY_VIOLATION,
                       f"control frame flood (more than {self.control_burst} at once or "
                       f"{self.control_rate:g} a second)", "ws-control-rate")
        self._tokens = tokens - 1.0
        events.append(Ping(payload) if opcode == PING else Pong(payload))
        return False

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
        self._release()
        return event

    def _fail(self, code: int, message: str, limit: str = "") -> NoReturn:
        err = WebSocketError(code, message)
        err.limit_name = limit
        self._state = err
        self._release()
        raise err

    def _release(self) -> None:
        self._head = None
        self._frame = None
        self._msg = None


class _Frame:
    """A frame whose payload has not all arrived."""

    __slots__ = ("opcode", "fin", "left", "done", "key", "ctrl", "limit")

    def __init__(self, opcode: int, fin: bool, length: int, key: Optional[bytes]) -> None:
        self.opcode = opcode
        self.fin = fin
        self.left = length  # payload bytes still to come
        self.done = 0  # payload bytes seen (the masking key turns with them)
        self.key = key
        self.ctrl: Optional[bytearray] = None  # a control frame's payload so far
        self.limit = 0  # how far the message buffer may grow for this frame


class _Message:
    """An unfinished message: one buffer that never grows past its limit.

    A list of fragments cost ~40 bytes of object per fragment (4,000
    one-byte fragments held 34 times the 4 KiB cap); this buffer doubles
    as needed, but never past the message cap, and holds nothing per frame.
    A text message's UTF-8 is checked as its bytes come, by an incremental
    decoder, so a bad byte fails before the message (or even its frame) ends.
    """

    __slots__ = ("buf", "size", "frames", "utf8")

    def __init__(self, text: bool) -> None:
        self.buf = bytearray()
        self.size = 0
        self.frames = 1
        self.utf8: Any = codecs.getincrementaldecoder("utf-8")() if text else None

    def add(self, data: bytes, limit: int) -> None:
        """Append ``data``; raises UnicodeDecodeError for bad text."""
        if self.utf8 is not None:
            self.utf8.decode(data, False)
        n = len(data)
        if not n:
            return
        size = self.size
        need = size + n
        buf = self.buf
        if need > len(buf):
            grown = bytearray(min(max(limit, need), max(need, 2 * len(buf), 64)))
            if size:
                memoryview(grown)[:size] = memoryview(buf)[:size]
            self.buf = buf = grown
        buf[size:need] = data
        self.size = need

    def finish(self) -> Message:
        if self.utf8 is not None:
            self.utf8.decode(b"", True)
        buf = self.buf
        data = bytes(buf) if self.size == len(buf) else bytes(memoryview(buf)[: self.size])
        self.buf = bytearray()
        return Message(data, self.utf8 is not None)


_CLOSED = WebSocketError(CloseCode.NORMAL, "closed")


def close_code_for(exc: ProtocolError) -> int:
    """The close code that answers ``exc``: its own, or 1002 for framing errors."""
    if isinstance(exc, WebSocketError):
        return exc.code
    return CloseCode.PROTOCOL_ERROR
