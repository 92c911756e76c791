"""What a connection speaks: bytes in, messages out, and messages framed.

A codec is the sans-IO half of a protocol. The connection reads bytes from
its socket and hands them to ``codec.feed``; the codec returns whole message
payloads or raises :class:`ProtocolError`. ``codec.frame`` turns one payload
into the bytes to send. Because framing is a pure function of the payload,
a broadcast frames once and shares the bytes with every connection that
speaks the same codec.
"""

from __future__ import annotations

from typing import List, Protocol

from .ringbuffer import BytesLike

__all__ = ["Codec", "ProtocolError"]


class ProtocolError(ValueError):
    """The peer broke the protocol; its connection must close.

    ``reason`` is a short stable category (used as a close reason and a
    metrics label); the message says exactly what was wrong.
    """

    reason = "bad-input"


class Codec(Protocol):
    def feed(self, data: BytesLike) -> List[bytes]:
        """Payloads completed by ``data``; raises :class:`ProtocolError`."""

    def frame(self, payload: BytesLike) -> bytes:
        """The bytes that carry ``payload`` to the peer."""
