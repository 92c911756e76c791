"""RESP2, the Redis serialisation protocol: sans-IO, both directions.

Commands go out as arrays of bulk strings (:func:`encode_command`); replies
come back through :class:`RespParser`, fed bytes as they arrive in chunks of
any size. The parser never touches a socket, so it is tested at every byte
boundary and fuzzed.

Replies are plain values (:data:`Reply`):

====================  ==========================================
wire                  value
====================  ==========================================
``+OK``               ``str`` (a simple string, decoded UTF-8)
``-ERR ...``          :class:`ReplyError` (a value, never raised)
``:42``               ``int`` (signed 64-bit)
``$3 abc``            ``bytes``
``$-1`` / ``*-1``     ``None``
``*2 ...``            ``list`` of replies (nested to ``max_depth``)
====================  ==========================================

Malformed input raises :class:`RespProtocolError` (a
:class:`~netcore.codec.ProtocolError`) with the stream offset of the fault,
and nothing else: a bad type byte, a bad or oversize length, a line without
CRLF, a bulk string longer than ``max_bulk``, nesting deeper than
``max_depth``. After an error the parser stays failed: the connection's
byte stream is no longer in step and must be closed.

RESP3 is not spoken (the client never sends ``HELLO 3``); its type bytes
are reported as an error naming the type.

A :class:`Script` is a Lua script as Redis names it: its source and the
SHA-1 that ``EVALSHA`` sends.
"""

from __future__ import annotations

from .codec import ProtocolError
from .digest import sha1
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Union

    from .ringbuffer import BytesLike

__all__ = [
    "DEFAULT_MAX_BULK",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_LINE",
    "ReplyError",
    "RespParser",
    "RespProtocolError",
    "Script",
    "encode_command",
    "encode_commands",
    "encode_reply",
]

DEFAULT_MAX_BULK = 512 * 1024 * 1024  # Redis' own proto-max-bulk-len
DEFAULT_MAX_ARRAY = 1 << 32
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_LINE = 64 * 1024  # a simple string, error or length line

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_DIGITS = 19  # len(str(2**63 - 1)); longer is an error before int() runs

_TYPES = frozenset(b"+-:$*")
_RESP3_TYPES = {
    ord("_"): "null",
    ord(","): "double",
    ord("#"): "boolean",
    ord("!"): "blob error",
    ord("="): "verbatim string",
    ord("("): "big number",
    ord("%"): "map",
    ord("~"): "set",
    ord(">"): "push",
    ord("|"): "attribute",
}


class RespProtocolError(ProtocolError):
    """The server's byte stream is not RESP2; the connection must close.

    ``offset`` is the stream offset of the first byte of the faulty element
    (counted from the parser's first byte). ``replies`` holds the whole
    replies the same ``feed`` completed before the fault, in order, so a
    client can still hand them to the commands that wait for them.
    """

    reason = "bad-resp"

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at stream offset {offset}")
        self.offset = offset
        self.replies: List[Reply] = []


class ReplyError:
    """An error reply (``-WRONGTYPE Operation against ...``): a value.

    ``kind`` is the leading upper-case word Redis uses as an error code
    (``ERR``, ``WRONGTYPE``, ``NOAUTH``, ``WRONGPASS``, ...), or ``""``.
    """

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def kind(self) -> str:
        word = self.message.split(" ", 1)[0]
        return word if word and word.isupper() else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyError) and other.message == self.message

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((ReplyError, self.message))

    def __repr__(self) -> str:
        return f"ReplyError({self.message!r})"

    def __str__(self) -> str:
        return self.message


if TYPE_CHECKING:
    Reply = Union[str, bytes, int, None, ReplyError, List["Reply"]]
    """One parsed reply; see the module docstring for the mapping."""

    Arg = Union[bytes, bytearray, memoryview, str, int, float]
    """One command argument: bytes as they are, str as UTF-8, numbers in decimal."""


# -- encoding ----------------------------------------------------------------


def _arg_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):  # an int, but "True" is never what was meant
        raise TypeError("a bool is not a Redis argument; pass 0/1 or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode("ascii")
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise TypeError(f"a Redis argument must be bytes, str, int or float, not {type(arg).__name__}")


def encode_command(*args: Arg) -> bytes:
    """One command as RESP: ``*N`` then each argument as a bulk string.

    >>> encode_command("SET", "k", 1)
    b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\n1\\r\\n'
    """
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data: bytes = arg  # type: ignore[assignment]
        elif kind is str:
            data = arg.encode("utf-8")  # type: ignore[union-attr]
        else:
            data = _arg_bytes(arg)
        if len(data) <= 1024:  # one small copy beats three list items
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        else:
            parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def encode_commands(commands: Sequence[Sequence[Arg]]) -> bytes:
    """Several commands back to back: one write for a pipeline."""
    return b"".join(encode_command(*command) for command in commands)


def encode_reply(reply: Reply) -> bytes:
    """The wire form of a reply (what a server sends): for tests and fakes.

    A ``str`` becomes a simple string, so it must not contain CR or LF.
    """
    if isinstance(reply, str):
        if "\r" in reply or "\n" in reply:
            raise ValueError("a simple string cannot hold CR or LF")
        return b"+" + reply.encode("utf-8", "surrogateescape") + b"\r\n"
    if isinstance(reply, ReplyError):
        if "\r" in reply.message or "\n" in reply.message:
            raise ValueError("an error reply cannot hold CR or LF")
        return b"-" + reply.message.encode("utf-8", "surrogateescape") + b"\r\n"
    if isinstance(reply, bool):
        raise TypeError("a bool is not a RESP2 reply")
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)
    raise TypeError(f"not a RESP2 reply: {type(reply).__name__}")


# -- parsing -----------------------------------------------------------------


class _Array:
    """An array being filled: its items so far and how many it declared."""

    __slots__ = ("items", "count")

    def __init__(self, count: int) -> None:
        self.items: List[Reply] = []
        self.count = count


class RespParser:
    """Turns the bytes a Redis server sends into replies, incrementally.

    ``feed()`` returns every reply completed by the bytes given (possibly
    none); a partial reply is held until the rest arrives. The work is
    linear in the bytes fed however they are chunked: an array's finished
    items are kept between feeds, and a bulk string's body is not looked at
    again until it is all there.

    Limits: ``max_bulk`` bytes in one bulk string, ``max_array`` items in one
    array, ``max_depth`` arrays nested, ``max_line`` bytes in one line. Each
    is checked as soon as its header is seen, before the body is buffered.
    """

    __slots__ = (
        "max_bulk",
        "max_array",
        "max_depth",
        "max_line",
        "_buf",
        "_stack",
        "_need",
        "_offset",
        "_error",
    )

    def __init__(
        self,
        max_bulk: int = DEFAULT_MAX_BULK,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_line: int = DEFAULT_MAX_LINE,
        max_array: int = DEFAULT_MAX_ARRAY,
    ) -> None:
        if max_bulk < 0 or max_array < 0 or max_depth < 0 or max_line < 16:
            raise ValueError("limits must be >= 0 (max_line >= 16)")
        self.max_bulk = max_bulk
        self.max_array = max_array
        self.max_depth = max_depth
        self.max_line = max_line
        self._buf = bytearray()
        self._stack: List[_Array] = []
        self._need = 0  # don't parse again until the buffer holds this many
        self._offset = 0  # stream offset of self._buf[0]
        self._error: Optional[RespProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete element held for the next ``feed``."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """True while a reply has begun and not yet ended."""
        return bool(self._buf) or bool(self._stack)

    def feed(self, data: BytesLike) -> List[Reply]:
        """The replies ``data`` completes; raises :class:`RespProtocolError`.

        Once failed, every later call raises the same error again (with no
        replies: they were handed out with the first raise).
        """
        if self._error is not None:
            self._error.replies = []
            raise self._error
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        out: List[Reply] = []
        try:
            pos = self._parse(buf, out)
        except RespProtocolError as exc:
            exc.replies = out
            self._error = exc
            self._buf = bytearray()
            self._stack = []
            raise
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def _fail(self, message: str, pos: int) -> RespProtocolError:
        return RespProtocolError(message, self._offset + pos)

    def _parse(self, buf: bytearray, out: List[Reply]) -> int:  # noqa: C901 - one hot loop
        """Parse whole elements from ``buf``; return how many bytes were used."""
        stack = self._stack
        end = len(buf)
        pos = 0
        value: Reply
        self._need = 0
        while pos < end:
            kind = buf[pos]
            if kind not in _TYPES:  # known at the first byte: fail without waiting for a line
                if kind in _RESP3_TYPES:
                    raise self._fail(
                        f"RESP3 {_RESP3_TYPES[kind]} ({chr(kind)!r}) on a RESP2 connection", pos
                    )
                raise self._fail(f"bad type byte 0x{kind:02x}", pos)
            nl = buf.find(b"\n", pos, pos + self.max_line + 3)
            if nl < 0:
                if end - pos > self.max_line + 2:
                    raise self._fail(f"line longer than {self.max_line} bytes", pos)
                self._need = end - pos + 1
                break
            if buf[nl - 1] != 13:
                raise self._fail("line not terminated by CRLF", pos)
            line = bytes(buf[pos + 1 : nl - 1])
            if kind == 36:  # $ bulk string
                length = self._number(line, pos, "bulk length")
                if length < 0:
                    if length != -1:
                        raise self._fail(f"bulk length {length}", pos)
                    value = None
                    pos = nl + 1
                else:
                    if length > self.max_bulk:
                        raise self._fail(
                            f"bulk string of {length} bytes exceeds limit {self.max_bulk}", pos
                        )
                    body = nl + 1
                    stop = body + length
                    if stop + 2 > end:
                        self._need = stop + 2 - pos
                        break
                    if buf[stop] != 13 or buf[stop + 1] != 10:
                        raise self._fail(f"bulk string of {length} bytes not followed by CRLF", pos)
                    value = bytes(buf[body:stop])
                    pos = stop + 2
            elif kind == 43:  # + simple string
                if 13 in line:
                    raise self._fail("CR inside a simple string", pos)
                value = line.decode("utf-8", "surrogateescape")
                pos = nl + 1
            elif kind == 58:  # : integer
                value = self._number(line, pos, "integer")
                pos = nl + 1
            elif kind == 42:  # * array
                count = self._number(line, pos, "array length")
                pos_here = pos
                pos = nl + 1
                if count < 0:
                    if count != -1:
                        raise self._fail(f"array length {count}", pos_here)
                    value = None
                elif count == 0:
                    value = []
                else:
                    if count > self.max_array:
                        raise self._fail(
                            f"array of {count} items exceeds limit {self.max_array}", pos_here
                        )
                    if len(stack) >= self.max_depth:
                        raise self._fail(f"arrays nested deeper than {self.max_depth}", pos_here)
                    stack.append(_Array(count))
                    continue
            else:  # 45, - error: the one type left
                if 13 in line:
                    raise self._fail("CR inside an error reply", pos)
                value = ReplyError(line.decode("utf-8", "surrogateescape"))
                pos = nl + 1
            # A whole value: it ends the innermost open array or is a reply.
            while stack:
                top = stack[-1]
                top.items.append(value)
                if len(top.items) < top.count:
                    break
                stack.pop()
                value = top.items
            else:
                out.append(value)
        return pos

    def _number(self, line: bytes, pos: int, what: str) -> int:
        digits = line[1:] if line[:1] == b"-" else line
        if not digits or not digits.isdigit():
            raise self._fail(f"{what} {line[:32]!r} is not a decimal number", pos)
        if len(digits) > _MAX_DIGITS:
            raise self._fail(f"{what} {line[:32]!r} is out of range", pos)
        number = int(line)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise self._fail(f"{what} {number} is out of range", pos)
        return number


class Script:
    """A Lua script that Redis runs by its SHA-1 (``EVALSHA``).

    Make one with :meth:`netcore.redis.Redis.script`, run it with
    :meth:`netcore.redis.Redis.run`.
    """

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = sha1(source.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"<Script {self.sha[:12]}>"
