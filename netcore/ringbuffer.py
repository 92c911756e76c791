"""A capped byte FIFO over one wrapping ``bytearray``.

Why a ring and not ``bytes`` concatenation: consuming the front of a ring is
an index move, not a copy, so a slow reader that drains a few bytes at a time
costs O(bytes) overall instead of O(bytes**2).

Why lazy: tens of thousands of idle connections must hold no buffer at all.
The storage is allocated on the first write and released as soon as the ring
drains, so ``RingBuffer`` on its own is a few machine words.
"""

from __future__ import annotations

from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Optional, Union

    BytesLike = Union[bytes, bytearray, memoryview]

__all__ = ["BufferFull", "RingBuffer"]


class BufferFull(Exception):
    """A write would take the ring past its limit; nothing was written."""

    def __init__(self, size: int, incoming: int, limit: int) -> None:
        super().__init__(
            f"buffer full: {size} bytes held + {incoming} incoming > limit {limit}"
        )
        self.size = size
        self.incoming = incoming
        self.limit = limit


class RingBuffer:
    """Bytes in, bytes out, in order, never more than ``limit`` held.

    Storage starts at ``initial`` bytes and doubles (up to ``limit``) when a
    write does not fit. ``peek()`` hands out a zero-copy ``memoryview`` of the
    longest contiguous readable run, which is what ``socket.send`` wants.
    """

    __slots__ = ("_buf", "_head", "_size", "limit", "initial")

    def __init__(self, limit: int, initial: int = 4096) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self._buf: Optional[bytearray] = None
        self._head = 0
        self._size = 0
        self.limit = limit
        self.initial = max(1, min(initial, limit))

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size != 0

    @property
    def capacity(self) -> int:
        """Bytes of storage currently allocated (0 while released)."""
        buf = self._buf
        return 0 if buf is None else len(buf)

    @property
    def free(self) -> int:
        """Bytes that can still be written before hitting ``limit``."""
        return self.limit - self._size

    def write(self, data: BytesLike) -> None:
        """Append all of ``data`` or raise :class:`BufferFull` and append none."""
        n = len(data)
        if n == 0:
            return
        size = self._size
        if size + n > self.limit:
            raise BufferFull(size, n, self.limit)
        buf = self._buf
        if buf is None or size + n > len(buf):
            buf = self._grow(size + n)
        cap = len(buf)
        tail = self._head + size
        if tail >= cap:
            tail -= cap
        first = cap - tail
        if n <= first:
            buf[tail : tail + n] = data
        else:
            view = data if isinstance(data, memoryview) else memoryview(data)
            buf[tail:cap] = view[:first]
            buf[0 : n - first] = view[first:]
        self._size = size + n

    def peek(self) -> memoryview:
        """The longest contiguous run of readable bytes, without copying.

        The view is only valid until the next ``write``/``consume``.
        """
        buf = self._buf
        if buf is None:
            return memoryview(b"")
        head = self._head
        end = min(head + self._size, len(buf))
        return memoryview(buf)[head:end]

    def peek_bytes(self, n: int) -> bytes:
        """A copy of the first ``n`` readable bytes (fewer if fewer are held)."""
        buf = self._buf
        n = min(n, self._size)
        if buf is None or n == 0:
            return b""
        head = self._head
        cap = len(buf)
        if head + n <= cap:
            return bytes(buf[head : head + n])
        return bytes(buf[head:cap]) + bytes(buf[0 : n - (cap - head)])

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front; release storage once empty."""
        if n < 0 or n > self._size:
            raise ValueError(f"cannot consume {n} of {self._size} bytes")
        self._size -= n
        if self._size == 0:
            self.release()
            return
        buf = self._buf
        assert buf is not None
        head = self._head + n
        cap = len(buf)
        self._head = head - cap if head >= cap else head

    def read(self, n: int) -> bytes:
        """Copy out and consume up to ``n`` bytes."""
        out = self.peek_bytes(n)
        self.consume(len(out))
        return out

    def release(self) -> None:
        """Forget all content and free the storage."""
        self._buf = None
        self._head = 0
        self._size = 0

    def _grow(self, needed: int) -> bytearray:
        old = self._buf
        cap = self.initial if old is None else len(old) * 2
        while cap < needed:
            cap *= 2
        cap = min(cap, self.limit)
        new = bytearray(cap)
        size = self._size
        if old is not None and size:
            head = self._head
            first = min(size, len(old) - head)
            new[0:first] = old[head : head + first]
            if first < size:
                new[first:size] = old[0 : size - first]
        self._buf = new
        self._head = 0
        return new
