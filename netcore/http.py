"""HTTP/1.1 requests, sans-IO: bytes in, :class:`Request` heads out.

Enough HTTP to serve static files and WebSocket upgrades, and no more: the
parser reads request heads (request line and header fields) and refuses
request bodies, which such a server never needs. It is fed bytes in chunks
of any size and hands out whole requests, or raises :class:`HttpError`
carrying the status to answer with, as soon as the input is certainly bad
or over a limit: it never buffers past ``max_head`` bytes, so a peer cannot
make it hold more than that however it trickles its bytes in.

Hard limits (the usual web-server defaults):

- ``max_line``: the request line, 8 KiB -> 414 URI Too Long;
- ``max_headers``: header fields, 64 -> 431;
- ``max_head``: the whole head, 16 KiB -> 431;
- ``Content-Length``: ASCII digits only, at most 18 of them -> 400.

Line endings must be CRLF (RFC 9112 lets a server refuse bare LF; allowing
it is what request smuggling feeds on). ``Content-Length`` follows RFC 9112
6.3 and RFC 9110 8.6: repeated fields (or a list in one field) holding the
same value are merged; differing values, anything but ASCII digits (Python's
``int()`` would take ``²`` or ``٥``), or a number too long to be sane are a
400. Every bad input raises :class:`HttpError`, never another exception.

Like h11, the parser knows nothing
of sockets or time: slow peers are the caller's deadline to enforce.
"""

from __future__ import annotations

from .codec import ProtocolError
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import List, NoReturn, Optional, Sequence, Tuple

    from .ringbuffer import BytesLike

__all__ = [
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "REASONS",
    "HttpError",
    "Request",
    "RequestParser",
    "content_length",
    "error_response",
    "response",
]

MAX_LINE = 8 * 1024
MAX_HEAD = 16 * 1024
MAX_HEADERS = 64
MAX_CONTENT_LENGTH_DIGITS = 18  # < 10**18: no body anyone sends us is bigger

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# RFC 9110 token characters: method and header names.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Field values: visible ASCII, obs-text, space and tab; no other controls.
_BAD_VALUE = frozenset(range(0x20)) - {0x09} | {0x7F}
_BAD_TARGET = frozenset(range(0x21)) | {0x7F}
_ASCII_DIGITS = frozenset("0123456789")


class HttpError(ProtocolError):
    """The request is bad or over a limit; answer ``status``, then close."""

    reason = "bad-http"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        # 414 and 431 are the head's size limits.
        self.limit_name = {414: "http-line", 431: "http-head"}.get(status, "")


class Request(NamedTuple):
    """One request head. Header names are lower-cased, in arrival order."""

    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Tuple[Tuple[str, str], ...]

    def header(self, name: str) -> Optional[str]:
        """The field's value (repeated fields joined by ", "), or None."""
        name = name.lower()
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> List[str]:
        """A comma-separated field as lower-cased tokens (``Connection``...)."""
        value = self.header(name)
        if value is None:
            return []
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    @property
    def path(self) -> str:
        """The target's path, still percent-encoded, without the query."""
        target = self.target
        if not target.startswith("/"):
            # absolute-form (RFC 9112 3.2.2): drop scheme and authority
            rest = target.split("://", 1)[-1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        return target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def content_length(self) -> Optional[int]:
        """The body's declared length, or None; :class:`HttpError` if invalid.

        Never raises for a request the parser produced: it checked this.
        """
        return content_length([v for k, v in self.headers if k == "content-length"])

    @property
    def has_body(self) -> bool:
        if self.header("transfer-encoding") is not None:
            return True
        length = self.content_length
        return length is not None and length > 0


class RequestParser:
    """Request heads from a byte stream.

    ``feed(data)`` stores bytes and checks the limits at once;
    ``next_request()`` returns the next whole request head, or None until
    more bytes come. Each byte is scanned once, however the stream is split.
    A request with a body ends the stream (bodies are not read: the caller
    answers and closes). After an upgrade, ``take_rest()`` hands over
    whatever followed the head, which belongs to the new protocol: bytes
    after a request are looked at only by the next ``next_request()``.
    """

    __slots__ = (
        "max_line", "max_head", "max_headers", "_buf", "_scan", "_line_start", "_lines",
        "_head_end", "_done", "_error",
    )

    def __init__(
        self, max_line: int = MAX_LINE, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS
    ) -> None:
        self.max_line = max_line
        self.max_head = max(max_head, max_line)
        self.max_headers = max_headers
        self._buf = bytearray()
        self._done = False
        self._error: Optional[HttpError] = None
        self._reset_scan()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed into a request."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> None:
        if self._error is not None:
            raise self._error
        if self._done:
            return  # the stream ended at a request with a body; ignore the rest
        self._buf += data
        self._advance()

    def next_request(self) -> Optional[Request]:
        if self._error is not None:
            raise self._error
        if self._done:
            return None
        if self._head_end < 0:
            self._advance()  # bytes that came with the last request, scanned only now
            if self._head_end < 0:
                return None
        buf = self._buf
        head = bytes(buf[: self._head_end - 4])
        del buf[: self._head_end]
        self._reset_scan()
        try:
            request = self._parse(head)
        except HttpError as exc:
            self._fail(exc)
        if request.has_body:
            self._done = True
        # A pipelined request may be waiting, but the bytes after this one are
        # not scanned until asked for: after an upgrade they are the new
        # protocol's (take_rest), and must reach it untouched.
        return request

    def take_rest(self) -> bytes:
        """Everything after the last request; the parser is finished."""
        rest = bytes(self._buf)
        self._buf = bytearray()
        self._done = True
        return rest

    # -- internals --------------------------------------------------------

    def _reset_scan(self) -> None:
        self._scan = 0  # next offset to look for LF from
        self._line_start = 0  # offset where the current line starts
        self._lines = 0  # complete lines seen in this head
        self._head_end = -1  # offset just past the blank line, once seen

    def _advance(self) -> None:
        """Scan new bytes for line ends; enforce the limits as they arrive."""
        if self._head_end >= 0:
            return
        buf = self._buf
        if self._lines == 0 and self._line_start == 0:
            # RFC 9112 2.2: ignore empty lines before a request line.
            skip = 0
            while buf[skip : skip + 2] == b"\r\n":
                skip += 2
            if skip:
                del buf[:skip]
                self._scan = 0
        pos = self._scan
        while True:
            lf = buf.find(b"\n", pos)
            if lf < 0:
                break
            if lf == 0 or buf[lf - 1] != 13:
                self._fail(HttpError(400, "bare LF line ending; HTTP needs CRLF"))
            line_len = lf - 1 - self._line_start
            if self._lines == 0 and line_len > self.max_line:
                self._fail(HttpError(414, f"request line longer than {self.max_line} bytes"))
            pos = lf + 1
            if line_len == 0:
                self._head_end = pos
                break
            self._lines += 1
            self._line_start = pos
            if self._lines > self.max_headers + 1:
                self._fail(HttpError(431, f"more than {self.max_headers} header fields"))
        self._scan = pos
        end = self._head_end if self._head_end >= 0 else len(buf)
        if self._lines == 0 and self._head_end < 0 and end - self._line_start > self.max_line:
            self._fail(HttpError(414, f"request line longer than {self.max_line} bytes"))
        if end > self.max_head + 4:
            self._fail(HttpError(431, f"request head longer than {self.max_head} bytes"))

    def _fail(self, exc: HttpError) -> NoReturn:
        self._error = exc
        self._buf = bytearray()
        raise exc

    def _parse(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        if any(b"\r" in line for line in lines):
            raise HttpError(400, "bare CR in the request head")
        method, target, version = _request_line(lines[0], self.max_line)
        headers = tuple(_header_field(line) for line in lines[1:])
        request = Request(method, target, version, headers)
        _check_framing(request)
        return request


def _request_line(line: bytes, max_line: int) -> Tuple[str, str, str]:
    if len(line) > max_line:
        raise HttpError(414, f"request line longer than {max_line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not all(c in _TOKEN for c in method):
        raise HttpError(400, f"bad method {method[:20]!r}")
    if any(c in _BAD_TARGET or c >= 0x80 for c in target):
        raise HttpError(400, "bad characters in the request target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise HttpError(505, f"unsupported version {version[:20]!r}")
        raise HttpError(400, f"malformed request line {line[:80]!r}")
    if not (target.startswith(b"/") or target.startswith(b"http://")
            or target.startswith(b"https://") or target == b"*"):
        raise HttpError(400, f"bad request target {target[:80]!r}")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _header_field(line: bytes) -> Tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obsolete line folding in a header field")
    colon = line.find(b":")
    if colon <= 0:
        raise HttpError(400, f"malformed header field {line[:80]!r}")
    name = line[:colon]
    if not all(c in _TOKEN for c in name):
        raise HttpError(400, f"bad header name {name[:40]!r}")
    value = line[colon + 1 :].strip(b" \t")
    if any(c in _BAD_VALUE for c in value):
        raise HttpError(400, f"control character in header {name.decode('ascii')}")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _check_framing(request: Request) -> None:
    hosts = [v for k, v in request.headers if k == "host"]
    if request.version == "HTTP/1.1" and len(hosts) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if request.content_length is not None and request.header("transfer-encoding") is not None:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")


def content_length(values: Sequence[str]) -> Optional[int]:
    """The one length that ``Content-Length`` field values declare, or None.

    RFC 9110 8.6: a list of identical values (repeated fields, or ``5, 5``
    in one) is that value; differing values are an error, and so is
    anything but 1 to ``MAX_CONTENT_LENGTH_DIGITS`` ASCII digits.
    """
    if not values:
        return None
    found: Optional[str] = None
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if not item or not _ASCII_DIGITS.issuperset(item):
                raise HttpError(400, f"bad Content-Length {item[:24]!r}: ASCII digits only")
            if len(item) > MAX_CONTENT_LENGTH_DIGITS:
                raise HttpError(400, f"Content-Length of {len(item)} digits "
                                     f"(max {MAX_CONTENT_LENGTH_DIGITS})")
            item = item.lstrip("0") or "0"
            if found is None:
                found = item
            elif item != found:
                raise HttpError(400, f"differing Content-Length values {found} and {item}")
    assert found is not None
    return int(found)


def response(
    status: int,
    headers: Sequence[Tuple[str, str]] = (),
    body: bytes = b"",
    head_only: bool = False,
    close: bool = False,
) -> bytes:
    """A whole HTTP/1.1 response: status line, headers, Content-Length, body.

    ``head_only`` (for HEAD) keeps the Content-Length of ``body`` but sends
    no body; ``close`` adds ``Connection: close``.
    """
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status >= 200 and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or status in (101, 204, 304):
        return head
    return head + body


def error_response(status: int, message: str, close: bool = True,
                   headers: Sequence[Tuple[str, str]] = (), head_only: bool = False) -> bytes:
    """A short plain-text error response."""
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode("utf-8", "replace")
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    return response(status, fields + list(headers), body, head_only=head_only, close=close)
