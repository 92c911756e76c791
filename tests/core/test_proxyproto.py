"""The sans-IO PROXY protocol parser, v1 and v2: valid headers at every split, and refusals."""

import random
import socket
import struct

import pytest

from netcore.codec import ProtocolError
from netcore.proxyproto import (
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    ProxyHeaderReader,
    parse_proxy_header,
    starts_proxy_header,
)


def v2(command=1, family=0x11, body=None, version=2):
    if body is None:
        body = (socket.inet_pton(socket.AF_INET, "203.0.113.7")
                + socket.inet_pton(socket.AF_INET, "192.0.2.1") + struct.pack(">HH", 51234, 7777))
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack(">H", len(body)) + body


V6_BODY = (socket.inet_pton(socket.AF_INET6, "2001:db8::7")
           + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack(">HH", 1, 65535))

VALID = [
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 7777\r\n",
     ProxyHeader(1, ("203.0.113.7", 51234), ("192.0.2.1", 7777))),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n",
     ProxyHeader(1, ("2001:db8::7", 1), ("2001:db8::1", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", ProxyHeader(1, None, None)),
    (v2(), ProxyHeader(2, ("203.0.113.7", 51234), ("192.0.2.1", 7777))),
    (v2(family=0x21, body=V6_BODY), ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::1", 65535))),
    (v2(body=v2()[16:] + b"\x03\x00\x04abcd"),  # a TLV after the addresses: skipped
     ProxyHeader(2, ("203.0.113.7", 51234), ("192.0.2.1", 7777))),
    (v2(command=0, family=0, body=b""), ProxyHeader(2, None, None)),  # LOCAL: a health check
]


@pytest.mark.parametrize("data, header", VALID)
def test_valid_headers_at_every_split(data, header):
    rest = b"\x00\x08client bytes\r\n"
    stream = data + rest
    for split in range(len(stream) + 1):
        reader = ProxyHeaderReader()
        got = reader.feed(stream[:split])
        if got is None:
            got = reader.feed(stream[split:])
        else:  # the rest of the stream is the client's, after what came with the header
            got = (got[0], got[1] + stream[split:])
        assert got == (header, rest), split


@pytest.mark.parametrize("data, words", [
    (b"GET / HTTP/1.1\r\n", "no PROXY header"),
    (b"\x00\x08", "no PROXY header"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.999 192.0.2.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 example.com 192.0.2.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa5 2\r\n", "bad port"),  # an Arabic-Indic digit
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY " + b"x" * 200, "longer than 107"),
    (v2(version=1), "version 1"),
    (v2(command=2), "unknown command"),
    (v2(family=0x41), "unknown family"),
    (v2(family=0x13), "unknown transport"),
    (v2(family=0x21), "too short"),  # an IPv6 family with IPv4-sized addresses
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "max 4096"),
])
def test_bad_headers_are_proxy_errors_as_early_as_possible(data, words):
    with pytest.raises(ProxyError) as info:
        ProxyHeaderReader().feed(data)
    assert words in str(info.value)
    assert isinstance(info.value, ProtocolError)
    # Byte by byte: refused by the time all of it is in, never anything else.
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyError):
        for i in range(len(data)):
            reader.feed(data[i : i + 1])


def test_an_incomplete_header_waits_and_holds_little():
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY TCP4 1.2.3.4") is None
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(V2_SIGNATURE[:5]) is None


def test_random_bytes_raise_only_proxy_error():
    rnd = random.Random(7)
    seeds = [d for d, _ in VALID]
    for _ in range(20000):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.4:
                data[pos:pos] = bytes([rnd.randrange(256)])
            elif op < 0.7:
                del data[pos : pos + rnd.randint(1, 3)]
            elif pos < len(data):
                data[pos] = rnd.randrange(256)
        try:
            parse_proxy_header(bytes(data))
        except ProxyError:
            pass


def test_starts_proxy_header_decides_on_the_first_bytes():
    assert starts_proxy_header(b"") is None
    assert starts_proxy_header(b"PRO") is None
    assert starts_proxy_header(b"PROXY ") is True
    assert starts_proxy_header(b"POST /") is False
    assert starts_proxy_header(b"\x00\x08") is False
    assert starts_proxy_header(V2_SIGNATURE[:5]) is None
    assert starts_proxy_header(V2_SIGNATURE + b"!") is True
    assert starts_proxy_header(b"\r\n\r\nGET") is False
