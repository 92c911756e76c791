"""Length-prefixed frames: a u16 big-endian length, then that many bytes.

This is the framing of Flash's ``Socket.writeUTF``/``readUTF``, which the
original SpellTraction client spoke. The parser is sans-IO: feed it bytes as
they arrive, in chunks of any size, and it returns every whole frame they
complete. It never touches a socket, so it can be tested at every byte
boundary and fuzzed.

Only a partial frame is ever buffered, in a lazily allocated
:class:`~netcore.ringbuffer.RingBuffer` capped at one maximum frame, so a
connection that sends whole frames holds no input buffer between reads.
:class:`StreamFrames` goes one step further: one instance parses for every
connection until a read ends inside a frame, and only that connection then
gets a :class:`FrameParser` of its own.
"""

from __future__ import annotations

from .codec import CodecHandoff, PlainOutput, ProtocolError
from .ringbuffer import RingBuffer
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import List, NoReturn, Optional

    from .ringbuffer import BytesLike

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "FrameError",
    "FrameParser",
    "OversizeFrame",
    "SplitFrame",
    "StreamFrames",
    "WholeFrames",
    "ZeroLengthFrame",
    "encode_frame",
]

HEADER_SIZE = 2
MAX_FRAME_LIMIT = 0xFFFF
# Small enough that no HTTP method ("GE" = 18245, "PO", "HE", ...) read as a
# length fits, so one port can carry both protocols.
DEFAULT_MAX_FRAME = 4096


class FrameError(ProtocolError):
    """The byte stream is not valid framing; the connection must close."""

    reason = "bad-frame"


class ZeroLengthFrame(FrameError):
    """A frame declared a length of 0 (every message has at least one byte)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"zero-length frame at stream offset {offset}")
        self.offset = offset


class OversizeFrame(FrameError):
    """A frame declared a length over the parser's ``max_frame``."""

    limit_name = "frame-size"

    def __init__(self, length: int, limit: int, offset: int) -> None:
        super().__init__(f"frame length {length} exceeds limit {limit} at stream offset {offset}")
        self.length = length
        self.limit = limit
        self.offset = offset


def bad_length(length: int, limit: int, offset: int) -> FrameError:
    """The error for a frame that declared ``length`` (0, or over ``limit``)."""
    return ZeroLengthFrame(offset) if length == 0 else OversizeFrame(length, limit, offset)


def whole_frames(view: memoryview, pos: int, limit: int, frames: List[bytes],
                 base: int = 0) -> int:
    """Append the payloads of the whole frames in ``view`` from ``pos`` to
    ``frames``; return where the first incomplete one starts (``len(view)``:
    none). A bad length raises :func:`bad_length`'s error, its offset
    counted from ``base`` (the stream offset of ``view[0]``).

    Every codec here parses with this loop (a read of several frames; a
    read of one whole frame takes each ``feed``'s shortcut instead).
    """
    end = len(view)
    while end - pos >= 2:
        length = (view[pos] << 8) | view[pos + 1]
        if not 0 < length <= limit:
            raise bad_length(length, limit, base + pos)
        stop = pos + 2 + length
        if stop > end:
            break
        frames.append(view[pos + 2 : stop].tobytes())
        pos = stop
    return pos


class SplitFrame(FrameError):
    """A message (of a transport with messages) ended inside a frame."""

    def __init__(self, held: int, size: int) -> None:
        super().__init__(f"message ends inside a frame ({held} of {size} bytes)")
        self.held = held
        self.size = size


def encode_frame(payload: BytesLike) -> bytes:
    """Prefix ``payload`` with its u16 big-endian length."""
    n = len(payload)
    if n == 0 or n > MAX_FRAME_LIMIT:
        raise ValueError(f"frame payload must be 1..{MAX_FRAME_LIMIT} bytes, got {n}")
    return n.to_bytes(2, "big") + bytes(payload)


class LengthPrefixedOutput(PlainOutput):
    """What the length-prefixed codecs share: ``feed`` around each one's
    ``_feed``, and the writing half (frames go out as they are)."""

    __slots__ = ()

    def feed(self, data: BytesLike) -> List[bytes]:
        """Payloads completed by ``data``.

        Raises :class:`FrameError` for bad framing, carrying the frames
        that came before it in ``data`` (``exc.messages``): they are the
        peer's, and the connection delivers them before it closes.
        """
        frames: List[bytes] = []
        try:
            return self._feed(data, frames)
        except FrameError as exc:
            exc.messages = frames
            raise

    def _feed(self, data: BytesLike, frames: List[bytes]) -> List[bytes]:
        raise NotImplementedError

    def frame(self, payload: BytesLike) -> bytes:
        """Encode one outgoing message the way these parsers read them."""
        return encode_frame(payload)


class FrameParser(LengthPrefixedOutput):
    """Turns a byte stream into frame payloads.

    ``feed()`` returns the payloads completed by the bytes given, as ``bytes``
    copies, so the caller may reuse its receive buffer at once. A zero or
    over-``max_frame`` length raises a :class:`FrameError` as soon as its
    two header bytes are seen, without waiting for the body; after that the
    parser stays failed.
    """

    __slots__ = ("max_frame", "_partial", "_offset", "_error")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be 1..{MAX_FRAME_LIMIT}")
        self.max_frame = max_frame
        self._partial: Optional[RingBuffer] = None
        self._offset = 0  # stream offset of the next byte to be fed
        self._error: Optional[FrameError] = None

    def feed(self, data: BytesLike) -> List[bytes]:
        """Payloads completed by ``data`` (see :meth:`LengthPrefixedOutput.feed`)."""
        # The common case, checked before anything else: nothing held back
        # and ``data`` exactly one whole frame (a player's move per read).
        if self._error is None:
            partial = self._partial
            if partial is None or not partial:
                n = len(data)
                if n > 2:
                    length = (data[0] << 8) | data[1]
                    if length == n - 2 and length <= self.max_frame:
                        self._offset += n
                        return [bytes(data[2:])]
        return LengthPrefixedOutput.feed(self, data)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next ``feed``."""
        partial = self._partial
        return 0 if partial is None else len(partial)

    def _feed(self, data: BytesLike, frames: List[bytes]) -> List[bytes]:
        if self._error is not None:
            raise self._error  # feed() empties its messages: delivered once
        view = data if isinstance(data, memoryview) else memoryview(data)
        end = len(view)
        pos = 0
        base = self._offset
        self._offset = base + end
        partial = self._partial
        if partial is not None and partial:
            pos = self._complete_partial(partial, view, base, frames)
            if pos < 0:
                return frames
        limit = self.max_frame
        try:
            pos = whole_frames(view, pos, limit, frames, base)
        except FrameError as exc:
            self._failed(exc)
        if pos < end:
            if partial is None:
                partial = self._partial = RingBuffer(limit + 2, initial=min(limit + 2, 512))
            partial.write(view[pos:])
        return frames

    def _complete_partial(
        self, partial: RingBuffer, view: memoryview, base: int, frames: List[bytes]
    ) -> int:
        """Finish the held frame from ``view`` (which starts at offset ``base``).

        Returns how many bytes of ``view`` were used, or -1 if all of it was
        used and the frame is still incomplete.
        """
        end = len(view)
        pos = 0
        held = len(partial)
        frame_start = base - held
        if held < 2:
            take = min(2 - held, end)
            partial.write(view[:take])
            pos = take
            held += take
            if held < 2:
                return -1
        header = partial.peek_bytes(2)
        length = (header[0] << 8) | header[1]
        if not 0 < length <= self.max_frame:
            self._failed(bad_length(length, self.max_frame, frame_start))
        take = min(2 + length - held, end - pos)
        partial.write(view[pos : pos + take])
        pos += take
        if len(partial) < 2 + length:
            return -1
        partial.consume(2)
        frames.append(partial.read(length))
        return pos

    def _failed(self, err: FrameError) -> NoReturn:
        """Raise ``err``, now and at every later ``feed``: the stream is lost."""
        self._error = err
        if self._partial is not None:
            self._partial.release()
        raise err


class _StatelessFrames(LengthPrefixedOutput):
    """A length-prefixed codec that holds nothing between feeds: one
    instance can serve every connection."""

    __slots__ = ("max_frame",)

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be 1..{MAX_FRAME_LIMIT}")
        self.max_frame = max_frame


class StreamFrames(_StatelessFrames):
    """:class:`FrameParser`'s frames, one instance shared by every connection.

    Most reads hold whole frames (a client writes one message at a time),
    and between them a :class:`FrameParser` holds nothing but its settings,
    yet costs an object per connection (64 bytes; a server with tens of
    thousands of players keeps one each). This codec keeps no state: it
    parses the whole frames of a read, and when the read ends inside a
    frame it makes a :class:`FrameParser` holding the rest and raises
    :class:`~netcore.codec.CodecHandoff`, and the connection keeps that
    parser from then on. Same frames, same errors (as soon as a bad header
    is seen), but an error's offset counts from the start of the read, not
    of the stream. For streams only: inside a carrying codec (WebSocket
    messages) use :class:`WholeFrames`, which has no handoff.
    """

    __slots__ = ()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (as a FrameParser says): never any."""
        return 0

    def feed(self, data: BytesLike) -> List[bytes]:
        """Payloads completed by ``data`` (see :meth:`LengthPrefixedOutput.feed`)."""
        # The common case first: ``data`` is exactly one whole frame (a move).
        n = len(data)
        if n > 2:
            length = (data[0] << 8) | data[1]
            if length == n - 2 and length <= self.max_frame:
                return [bytes(data[2:])]
        return LengthPrefixedOutput.feed(self, data)

    def _feed(self, data: BytesLike, frames: List[bytes]) -> List[bytes]:
        view = data if isinstance(data, memoryview) else memoryview(data)
        limit = self.max_frame
        pos = whole_frames(view, 0, limit, frames)
        if pos < len(view):
            own = FrameParser(limit)
            own.feed(view[pos:])  # a part of a frame (its header checked, if whole)
            raise CodecHandoff(own, frames)
        return frames


class WholeFrames(_StatelessFrames):
    """Frames from messages that each hold whole frames: a stateless codec.

    Where a transport has message boundaries of its own (WebSocket), each
    message carries one or more whole frames, so nothing is held between
    messages and one instance serves every connection. A message that
    ends inside a frame, or holds none (empty), raises :class:`SplitFrame`.
    """

    __slots__ = ()

    def _feed(self, data: BytesLike, frames: List[bytes]) -> List[bytes]:
        view = data if isinstance(data, memoryview) else memoryview(data)
        end = len(view)
        if end == 0:
            # Not a message of frames; and 10,000 of them in one read would
            # cost the server a parse each and the flood count nothing.
            raise SplitFrame(0, 2)
        pos = whole_frames(view, 0, self.max_frame, frames)
        if pos < end:  # a frame begun and not ended: its size, if its header came
            held = end - pos
            raise SplitFrame(held, 2 if held < 2 else 2 + ((view[pos] << 8) | view[pos + 1]))
        return frames
