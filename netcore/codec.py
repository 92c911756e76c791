"""What a connection speaks: bytes in, messages out, and messages framed.

A codec is the sans-IO half of a protocol. The connection reads bytes from
its socket and hands them to ``codec.feed``; the codec returns whole message
payloads or raises :class:`ProtocolError`. ``codec.frame`` turns one payload
into the bytes to send. Because framing is a pure function of the payload,
a broadcast frames once and shares the bytes with every connection that
speaks the same codec.
"""

from __future__ import annotations

from .typing_shim import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing import List, Sequence

    from .ringbuffer import BytesLike

__all__ = [
    "CLOSED_CODEC", "ClosedCodec", "Codec", "CodecHandoff", "ProtocolError", "SilentCodec", "Text",
]


class ProtocolError(ValueError):
    """The peer broke the protocol; its connection must close.

    ``reason`` is a short stable category (used as a close reason and a
    metrics label); the message says exactly what was wrong.
    """

    reason = "bad-input"
    # When the error is a limit the input went over (a size, a rate), the
    # limit's name: servers count it in NetStats.limits.
    limit_name = ""
    # Payloads completed before the error from the same input: the
    # connection delivers them before it reports the error.
    messages: Sequence[bytes] = ()


class CodecHandoff(Exception):
    """A shared codec's ``feed``: this connection needs a codec of its own.

    A codec that keeps no state between reads can be one instance for every
    connection (:class:`~netcore.framing.StreamFrames`), which saves an
    object per connection. When a read leaves part of a message behind, the
    connection that read it must hold that part: the shared codec raises
    this with ``codec``, a codec of its own already holding the part, and
    ``messages``, the payloads the read completed. The connection takes
    ``codec`` as its codec and delivers ``messages``; the application sees
    nothing of it. Not a :class:`ProtocolError`: nothing is wrong.
    """

    def __init__(self, codec: "Codec", messages: List[bytes]) -> None:
        super().__init__("the connection takes a codec of its own")
        self.codec = codec
        self.messages = messages


class Text(bytes):
    """A payload that is text: its UTF-8 bytes, marked as text.

    WebSocket codecs deliver a text message as a ``Text`` (so
    ``isinstance(payload, Text)`` tells text from binary, and
    ``payload.decode()`` is the string) and send a ``Text`` as a text
    message, so an echo is ``conn.send(payload)``. Codecs without a text
    kind carry its bytes. ``Text(string, "utf-8")`` makes one from a str.
    """

    __slots__ = ()


class Codec(Protocol):
    """What a :class:`~netcore.connection.Connection` reads and writes through.

    The application's messages travel as a *stream*: the bytes ``frame()``
    makes, back to back. A plain TCP codec puts that stream on the wire as
    it is; a carrying codec (WebSocket) wraps chunks of it in its own
    messages. ``wrap`` and ``closing`` let an application write
    already-framed bytes (several frames at once, a shared broadcast) and
    say goodbye without knowing which kind of codec a connection has.
    """

    def feed(self, data: BytesLike) -> List[bytes]:
        """Payloads completed by ``data``; raises :class:`ProtocolError`."""

    def frame(self, payload: BytesLike) -> bytes:
        """The bytes that carry ``payload`` to the peer."""

    def wrap(self, stream: bytes) -> bytes:
        """The wire bytes for ``stream``: one or more ``frame()`` results."""

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        """Last words before closing: ``stream`` wrapped, then the transport's
        own goodbye if it has one (``code`` and ``reason`` are WebSocket close
        fields; codecs without a close message ignore them). Empty when
        nothing may be said (an HTTP connection mid-request)."""


class PlainOutput:
    """The writing half of a codec whose stream goes on the wire as it is.

    No transport of its own around the messages and no goodbye: the
    length-prefixed codecs (which override ``frame``) and Redis's RESP
    (commands are written already encoded).
    """

    __slots__ = ()

    def frame(self, payload: BytesLike) -> bytes:
        return bytes(payload)

    def wrap(self, stream: bytes) -> bytes:
        """Framed bytes go on the wire as they are."""
        return stream

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        """No goodbye of its own: the stream, then the connection closes."""
        return stream


class SilentCodec:
    """The writing half of a codec that carries no application messages.

    Nothing framed may be said to its peer, not even a goodbye: an HTTP
    connection, which only gets responses, or a closed one.
    """

    __slots__ = ()

    def frame(self, payload: BytesLike) -> bytes:
        return b""

    def wrap(self, stream: bytes) -> bytes:
        return b""

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        return b""


class ClosedCodec(SilentCodec):
    """The codec of a closed connection: reads nothing, writes nothing.

    A closing :class:`~netcore.connection.Connection` swaps its codec for
    this one, which breaks the reference cycle of codecs that hold their
    connection (so refcounting frees both at once) and drops any partial
    input.
    """

    __slots__ = ()

    def feed(self, data: BytesLike) -> List[bytes]:
        raise ProtocolError("connection closed")


CLOSED_CODEC = ClosedCodec()
