"""One port, two protocols: the first byte says which.

An HTTP request line starts with a method, which is an uppercase ASCII
token in practice (``GET``, ``HEAD``, ``POST``...). A u16-length-prefixed
frame starting with such a byte would declare a length of at least
``0x4100`` (16,640) bytes, which a server whose largest accepted frame is
smaller than that refuses anyway. So the first byte of a connection decides,
with no ambiguity and no waiting for more: ``A``-``Z`` is HTTP, anything
else is the binary protocol.

TLS comes before either, on a server given a TLS context: a TLS connection
starts with a handshake record, whose first byte is 0x16 (:func:`is_tls`).
A frame of 0x1600-0x16FF bytes would start with it too, so a server that
takes TLS and plain clients on one port needs a binary codec whose largest
frame is at most :data:`MAX_BINARY_FRAME_WITH_TLS` (0x15FF, 5,631 bytes);
the server checks. What is inside the TLS is sniffed again, as above.

:class:`ProtocolSniffer` is the codec a connection starts with; it makes
the decision on the first bytes, installs the real codec in the connection
and hands those bytes on to it.
"""

from __future__ import annotations

from .codec import Codec
from .connection import Connection
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, List, Optional

    from .ringbuffer import BytesLike

__all__ = ["BINARY", "HTTP", "MAX_BINARY_FRAME", "MAX_BINARY_FRAME_WITH_TLS", "TLS_RECORD",
           "WEBSOCKET", "ProtocolSniffer", "is_tls", "sniff"]

BINARY, HTTP, WEBSOCKET = "binary", "http", "websocket"

# The largest frame a binary codec may accept for sniffing to be sound:
# "A" (0x41) as the first length byte already means 0x4100.
MAX_BINARY_FRAME = 0x40FF

_HTTP_FIRST = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: The first byte of a TLS connection: a handshake record (its ClientHello).
TLS_RECORD = 0x16

# The largest frame a binary codec may accept on a port that also takes
# TLS: 0x16 as the first length byte already means 0x1600.
MAX_BINARY_FRAME_WITH_TLS = 0x15FF


def is_tls(first_byte: int) -> bool:
    """Whether a stream starting with ``first_byte`` is TLS (a handshake record)."""
    return first_byte == TLS_RECORD


def sniff(first_byte: int) -> str:
    """``HTTP`` if a stream starting with ``first_byte`` is HTTP, else ``BINARY``."""
    return HTTP if first_byte in _HTTP_FIRST else BINARY


class ProtocolSniffer:
    """The codec of ``conn`` while it has sent nothing yet.

    ``http_codec(conn)`` and ``binary_codec()`` make the codec for each
    outcome; ``decided(conn, protocol)`` is told which it was (after the
    new codec is in place, before it reads the bytes).
    """

    __slots__ = ("conn", "http_codec", "binary_codec", "decided")

    def __init__(
        self,
        conn: Connection,
        http_codec: Callable[[Connection], Codec],
        binary_codec: Callable[[], Codec],
        decided: Callable[[Connection, str], None],
    ) -> None:
        self.conn: Optional[Connection] = conn  # dropped once decided
        self.http_codec = http_codec
        self.binary_codec = binary_codec
        self.decided = decided

    def feed(self, data: BytesLike) -> List[bytes]:
        conn = self.conn
        assert conn is not None, "a ProtocolSniffer decides once"
        self.conn = None
        protocol = sniff(data[0])
        codec = self.http_codec(conn) if protocol == HTTP else self.binary_codec()
        conn.codec = codec
        self.decided(conn, protocol)
        if not conn.is_open:
            return []
        return codec.feed(data)

    # Until the peer speaks, the connection is treated as binary: a server
    # that must say something (a timeout, a shutdown) says it in frames.

    def frame(self, payload: BytesLike) -> bytes:
        return self.binary_codec().frame(payload)

    def wrap(self, stream: bytes) -> bytes:
        return stream

    def closing(self, stream: bytes, code: int, reason: str) -> bytes:
        return stream
