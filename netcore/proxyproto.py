"""The PROXY protocol, v1 and v2, sans-IO: who the client behind a proxy is.

A TCP proxy (nginx's ``proxy_protocol on;``, HAProxy's ``send-proxy``)
connects to us from its own address; every client would then look like the
proxy, and per-address limits would see one client. The proxy says, before
the client's first byte, who the client is, in one of two forms
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):

- v1, text: ``PROXY TCP4 203.0.113.7 192.0.2.1 51234 7777\\r\\n`` (or
  ``TCP6``, or ``UNKNOWN`` when the proxy does not know), at most 107 bytes;
- v2, binary: a 12-byte signature, version/command, family, a u16 length,
  then the addresses and optional TLVs (ignored here).

:class:`ProxyHeaderReader` is fed a connection's first bytes in chunks of any
size and returns a :class:`ProxyHeader` plus the bytes that followed it (the
client's own stream), or raises :class:`ProxyError` as soon as the input
cannot be a valid header. Accept a header only from a proxy you trust: from
anyone else it is a lie about their address. It never holds more than
``max_header`` bytes (v2 TLVs included; 4 KiB by default).
"""

from __future__ import annotations

import socket

from .codec import ProtocolError
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Optional, Tuple

    from .ringbuffer import BytesLike

__all__ = [
    "MAX_HEADER",
    "MAX_V1",
    "V2_SIGNATURE",
    "ProxyError",
    "ProxyHeader",
    "ProxyHeaderReader",
    "UntrustedProxyHeader",
    "parse_proxy_header",
    "starts_proxy_header",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107  # the spec's bound for a v1 line, CRLF included
MAX_HEADER = 4096

if TYPE_CHECKING:
    Address = Tuple[str, int]


class ProxyError(ProtocolError):
    """Not a valid PROXY protocol header; the connection must close."""

    reason = "bad-proxy-header"


class UntrustedProxyHeader(ProtocolError):
    """A PROXY header from a peer that is not a trusted proxy: not believed, closed.

    Either a proxy the server was not told to trust (a configuration error,
    logged and counted) or someone claiming another address.
    """

    reason = "untrusted-proxy-header"


class ProxyHeader(NamedTuple):
    """What the proxy said. ``source`` is None for LOCAL/UNKNOWN (health checks:
    the connection is the proxy's own, keep its address)."""

    version: int
    source: Optional[Address]
    dest: Optional[Address]


def _port(raw: bytes) -> int:
    if not raw or len(raw) > 5 or not raw.isdigit() or (raw[:1] == b"0" and len(raw) > 1):
        raise ProxyError(f"bad port {raw[:8]!r} in PROXY header")
    port = int(raw)
    if port > 65535:
        raise ProxyError(f"port {port} out of range in PROXY header")
    return port


def _address(family: int, raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
        socket.inet_pton(family, text)  # strict: no hostnames, no odd forms
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProxyError(f"bad address {raw[:40]!r} in PROXY header") from None
    return text


def _parse_v1(line: bytes) -> ProxyHeader:
    """``line`` is the header without its CRLF."""
    parts = line.split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        raise ProxyError("malformed PROXY v1 header")
    proto = parts[1]
    if proto == b"UNKNOWN":
        return ProxyHeader(1, None, None)
    families = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}
    if proto not in families or len(parts) != 6:
        raise ProxyError(f"malformed PROXY v1 header {line[:60]!r}")
    family = families[proto]
    src = _address(family, parts[2])
    dst = _address(family, parts[3])
    return ProxyHeader(1, (src, _port(parts[4])), (dst, _port(parts[5])))


def _parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    ver_cmd = head[12]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"PROXY v2 header with unknown command {command}")
    family, transport = head[13] >> 4, head[13] & 0x0F
    if command == 0 or family == 0:  # LOCAL, or UNSPEC: the proxy's own connection
        return ProxyHeader(2, None, None)
    if transport not in (1, 2):
        raise ProxyError(f"PROXY v2 header with unknown transport {transport}")
    if family == 1:
        size, af = 4, socket.AF_INET
    elif family == 2:
        size, af = 16, socket.AF_INET6
    elif family == 3:  # AF_UNIX: no address we can limit by
        if len(body) < 216:
            raise ProxyError("PROXY v2 UNIX header too short")
        return ProxyHeader(2, None, None)
    else:
        raise ProxyError(f"PROXY v2 header with unknown family {family}")
    if len(body) < 2 * size + 4:
        raise ProxyError(f"PROXY v2 header too short for its family ({len(body)} bytes)")
    src = socket.inet_ntop(af, body[:size])
    dst = socket.inet_ntop(af, body[size : 2 * size])
    ports = body[2 * size : 2 * size + 4]
    return ProxyHeader(2, (src, int.from_bytes(ports[:2], "big")),
                       (dst, int.from_bytes(ports[2:], "big")))


def starts_proxy_header(data: BytesLike) -> Optional[bool]:
    """Whether a stream starting with ``data`` starts with a PROXY header:
    True, False, or None while ``data`` is too short to tell (at most 11
    bytes: "PROXY " and the v2 signature share no first byte)."""
    n = len(data)
    if n == 0:
        return None
    sig = V1_PREFIX if data[0] == 0x50 else V2_SIGNATURE if data[0] == 0x0D else b""
    if not sig:
        return False
    head = bytes(data[: len(sig)])
    if head != sig[: len(head)]:
        return False
    return True if len(head) == len(sig) else None


def parse_proxy_header(data: bytes, max_header: int = MAX_HEADER
                       ) -> Optional[Tuple[ProxyHeader, int]]:
    """``(header, bytes it took)`` from the start of ``data``, or None if more
    bytes are needed; raises :class:`ProxyError` as soon as ``data`` cannot
    begin a valid header."""
    n = len(data)
    if data[:1] == b"P":
        if data[: len(V1_PREFIX)] != V1_PREFIX[:n]:
            raise ProxyError("no PROXY header from a trusted proxy")
        end = data.find(b"\r\n", 0, MAX_V1)
        if end < 0:
            if n >= MAX_V1:
                raise ProxyError(f"PROXY v1 header longer than {MAX_V1} bytes")
            if b"\n" in data or b"\r" in data[:-1]:
                raise ProxyError("PROXY v1 header must end with CRLF")
            return None
        return _parse_v1(bytes(data[:end])), end + 2
    if data[: len(V2_SIGNATURE)] != V2_SIGNATURE[:n] or n == 0:
        if n == 0:
            return None
        raise ProxyError("no PROXY header from a trusted proxy")
    if n < 16:
        return None
    length = int.from_bytes(data[14:16], "big")
    if 16 + length > max_header:
        raise ProxyError(f"PROXY v2 header of {16 + length} bytes (max {max_header})")
    if n < 16 + length:
        if data[12] >> 4 != 2:
            raise ProxyError(f"PROXY v2 header with version {data[12] >> 4}")
        return None
    return _parse_v2(bytes(data[:16]), bytes(data[16 : 16 + length])), 16 + length


class ProxyHeaderReader:
    """The start of a connection from a trusted proxy, until its header is whole.

    ``feed(data)`` returns None while the header is incomplete, then
    ``(header, rest)``: ``rest`` is what followed the header, the client's
    own bytes. Raises :class:`ProxyError`; holds at most ``max_header`` bytes.
    """

    __slots__ = ("max_header", "_buf")

    def __init__(self, max_header: int = MAX_HEADER) -> None:
        self.max_header = max_header
        self._buf = b""

    def feed(self, data: BytesLike) -> Optional[Tuple[ProxyHeader, bytes]]:
        buf = self._buf + bytes(data)
        found = parse_proxy_header(buf, self.max_header)
        if found is None:
            self._buf = buf
            return None
        header, used = found
        self._buf = b""
        return header, buf[used:]
