"""Static files over HTTP: content types, ETags, HEAD, and nothing outside the root.

A request path maps to a file under ``root`` after percent-decoding; a
``..`` segment is refused (403), as is any path that resolves (through a
symlink) outside the root; dot-files are not served (404). Files are read
whole and kept in memory, keyed by path and checked against the file's
size and mtime on every request, so an edited file is served at once; they
are meant to be small (a web client's HTML, JS and CSS), and one bigger
than ``max_size`` is refused with 500 rather than sent.

Every file gets a strong ``ETag`` (a hash of its bytes) and
``Cache-Control: no-cache``: browsers keep the file and revalidate it with
``If-None-Match``, which costs a 304 with no body.
"""

from __future__ import annotations

import logging
import os

from .digest import sha1
from .http import Request, error_response, response
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["CONTENT_TYPES", "StaticFiles", "percent_decode"]

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}
DEFAULT_TYPE = "application/octet-stream"


class _File(NamedTuple):
    body: bytes
    etag: str
    content_type: str
    size: int
    mtime_ns: int


class StaticFiles:
    """Answers GET and HEAD for the files under ``root``.

    Or, with ``reader`` instead of a directory, for whatever ``reader(name)``
    returns for a relative name such as ``"app.js"`` (raising
    ``FileNotFoundError`` for none): files packed inside a zipapp, say. Such
    files cannot change while the process runs, so each is read once.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        index: str = "index.html",
        max_size: int = 1 << 20,
        cache_control: str = "no-cache",
        headers: Sequence[Tuple[str, str]] = (),
        reader: Optional[Callable[[str], bytes]] = None,
    ) -> None:
        if (root is None) == (reader is None):
            raise ValueError("give either a root directory or a reader")
        self.root = os.path.realpath(root) if root is not None else ""
        self.reader = reader
        self.index = index
        self.max_size = max_size
        self.cache_control = cache_control
        self.headers = list(headers)  # sent with every file (e.g. a CSP)
        self._cache: Dict[str, _File] = {}
        self._too_large: Dict[str, Tuple[int, int]] = {}  # name -> (size, mtime) warned of

    def respond(self, request: Request, keep_alive: bool = True) -> Tuple[int, bytes]:
        """``(status, response bytes)`` for a GET or HEAD of ``request.path``."""
        close = not keep_alive
        status, where = self.resolve(request.path)
        if where is None:
            messages = {400: "bad path", 403: "forbidden path", 404: "no such file"}
            return status, error_response(status, messages[status], close=close)
        try:
            f = self._load(where)
        except OSError as exc:
            log.warning("static: cannot read %s: %s", where, exc)
            return 404, error_response(404, "no such file", close=close)
        if isinstance(f, int):
            return 413, error_response(
                413, f"file of {f} bytes is over the {self.max_size}-byte limit for static "
                "files", close=close)
        headers: List[Tuple[str, str]] = [
            ("Content-Type", f.content_type),
            ("ETag", f.etag),
            ("Cache-Control", self.cache_control),
            ("X-Content-Type-Options", "nosniff"),
        ]
        headers += self.headers
        if _etag_matches(request.header("if-none-match"), f.etag):
            return 304, response(304, headers, close=close)
        head_only = request.method == "HEAD"
        return 200, response(200, headers, f.body, head_only=head_only, close=close)

    def resolve(self, path: str) -> Tuple[int, Optional[str]]:
        """``(200, filename)``, or ``(status, None)`` when it must not be served."""
        try:
            decoded = percent_decode(path)
        except UnicodeDecodeError:
            return 400, None
        if "\x00" in decoded or "\\" in decoded or not decoded.startswith("/"):
            return 400, None
        # "." segments go (RFC 3986 5.2.4); "/a/./" still names a directory.
        segments = [s for s in decoded.split("/")[1:] if s != "."]
        if decoded.endswith("/.") or not segments:
            segments.append("")
        if any(s == ".." for s in segments):
            return 403, None
        if any(s.startswith(".") for s in segments):
            return 404, None
        if not segments or segments[-1] == "":
            segments = [s for s in segments if s] + [self.index]
        if self.reader is not None:
            return 200, "/".join(s for s in segments if s)
        full = os.path.realpath(os.path.join(self.root, *[s for s in segments if s]))
        if not full.startswith(self.root + os.sep):
            return 403, None
        if not os.path.isfile(full):
            return 404, None
        return 200, full

    def _load(self, filename: str) -> Union[_File, int]:
        """The file, or its size if it is over ``max_size``."""
        if self.reader is not None:
            return self._read(filename)
        st = os.stat(filename)
        cached = self._cache.get(filename)
        if cached is not None and (cached.size, cached.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return cached
        if st.st_size > self.max_size:
            return self._refuse(filename, st.st_size, st.st_mtime_ns)
        with open(filename, "rb") as fh:
            body = fh.read(self.max_size + 1)
        if len(body) > self.max_size:  # it grew since the stat
            return self._refuse(filename, len(body), st.st_mtime_ns)
        f = _file(filename, body, st.st_size, st.st_mtime_ns)
        self._cache[filename] = f
        return f

    def _read(self, name: str) -> Union[_File, int]:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        if name in self._too_large:
            return self._too_large[name][0]
        assert self.reader is not None
        try:
            body = self.reader(name)
        except (FileNotFoundError, ValueError) as exc:
            raise FileNotFoundError(name) from exc
        if len(body) > self.max_size:
            return self._refuse(name, len(body), 0)
        f = self._cache[name] = _file(name, body, len(body), 0)
        return f

    def _refuse(self, name: str, size: int, mtime_ns: int) -> int:
        """A file over the limit: say so in the log, once per version of it."""
        if self._too_large.get(name) != (size, mtime_ns):
            self._too_large[name] = (size, mtime_ns)
            log.warning("static: %s is %d bytes, over the %d-byte limit: answering 413 "
                        "(raise StaticFiles max_size to serve it)", name, size, self.max_size)
        self._cache.pop(name, None)
        return size


def _file(name: str, body: bytes, size: int, mtime_ns: int) -> _File:
    etag = '"' + sha1(body).hexdigest()[:20] + '"'
    ext = os.path.splitext(name)[1].lower()
    return _File(body, etag, CONTENT_TYPES.get(ext, DEFAULT_TYPE), size, mtime_ns)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def percent_decode(path: str) -> str:
    """A path's ``%XX`` escapes decoded as UTF-8, as ``urllib.parse.unquote(path,
    errors="strict")`` decodes them: a ``%`` without two hex digits after it
    stays as it is, and bytes that are not UTF-8 raise ``UnicodeDecodeError``.

    Here rather than ``urllib.parse``, which imports ``ipaddress``: the two
    cost a server 0.45 MB of RSS for this one function.
    """
    if "%" not in path:
        return path
    first, *rest = path.split("%")
    out = bytearray(first.encode())
    for part in rest:
        if part[:1] in _HEX_DIGITS and part[1:2] in _HEX_DIGITS:
            out.append(int(part[:2], 16))
            out += part[2:].encode()
        else:
            out += b"%"
            out += part.encode()
    return out.decode()


def _etag_matches(header: Optional[str], etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison (RFC 9110 13.1.2)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False
