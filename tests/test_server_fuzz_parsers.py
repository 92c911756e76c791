"""Fuzzing netcore's sans-IO parsers: any input, any chunking, only ProtocolError.

Issue 11: a parser must raise only its own ``ProtocolError`` for any input;
anything else (ValueError from ``int()``, IndexError, an assertion) escapes
the connection's error handling and drops the connection without a
response, with a traceback in the log. The drivers and the seed corpus are
in tests/fuzzkit.py; ``bench/fuzz.py`` runs a million inputs per parser.
Examples are bounded so the suite stays quick.
"""

import pytest

from conftest import require_module

require_module("hypothesis")  # skips outside CI with the install line; fails in CI

from hypothesis import HealthCheck, given, settings, strategies as hs  # noqa: E402

import spelltraction as st
from fuzzkit import CORPUS, DRIVERS, INTERESTING, TRICKY_LENGTHS, TRICKY_VALID
from netcore import http

_SETTINGS = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def EXAMPLES(test):
    """300 examples, and a slow test: seconds of CPU each, run by tox's slow env and CI."""
    return pytest.mark.slow(_SETTINGS(test))


CUTS = hs.lists(hs.integers(0, 1 << 16), max_size=6)


def mutated(corpus):
    """A corpus item with up to four edits: a byte string put in, replaced or cut out."""
    edit = hs.tuples(hs.integers(0, 1 << 16), hs.integers(0, 16),
                     hs.one_of(hs.binary(max_size=8), hs.sampled_from(INTERESTING)))

    def apply(args):
        data, edits = args
        buf = bytearray(data)
        for at, cut, new in edits:
            at %= len(buf) + 1
            buf[at:at + cut] = new
        return bytes(buf)

    return hs.tuples(hs.sampled_from(corpus), hs.lists(edit, max_size=4)).map(apply)


def inputs(name):
    return hs.one_of(hs.binary(max_size=512), mutated(CORPUS[name]),
                     hs.lists(hs.sampled_from(CORPUS[name]), min_size=2, max_size=4)
                     .map(b"".join))


@pytest.mark.parametrize("name", ["framing", "http", "websocket-server", "websocket-client",
                                  "bus", "bus-authority", "bus-gateway"])
@EXAMPLES
@given(data=hs.data(), cuts=CUTS)
def test_parsers_raise_only_protocol_errors(name, data, cuts):
    """Any bytes, any split: each parser raises only its own ProtocolError."""
    DRIVERS[name](data.draw(inputs(name), label="input"), cuts)


FIELD_NAME = hs.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection",
                              "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "X-A"])
FIELD_VALUE = hs.one_of(hs.sampled_from(TRICKY_LENGTHS), hs.binary(max_size=24),
                        hs.sampled_from([b"websocket", b"Upgrade", b"13", b"close", b"chunked"]))


@EXAMPLES
@given(hs.sampled_from([b"GET", b"HEAD", b"POST", b"G"]),
       hs.lists(hs.tuples(FIELD_NAME, FIELD_VALUE), max_size=8), CUTS)
def test_http_requests_built_from_tricky_fields_raise_only_protocol_errors(method, fields, cuts):
    head = method + b" /ws HTTP/1.1\r\n" + b"".join(
        name.encode() + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    DRIVERS["http"](head, cuts)


@pytest.mark.parametrize("value", TRICKY_LENGTHS, ids=lambda v: repr(v[:12]) + f"x{len(v)}")
def test_every_tricky_content_length_is_a_400_or_a_length(value):
    """The issue's cases by name: non-ASCII digits, 4,301 digits, '5, 5' joined,
    a sign, spaces inside: a valid one is its length, every other a 400."""
    expected = TRICKY_VALID.get(value)
    for fields in ([b"Content-Length: " + value], [b"Content-Length: " + value] * 2):
        head = b"POST / HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(fields) + b"\r\n\r\n"
        parser = http.RequestParser(max_line=16384, max_head=32768)
        if expected is None:
            with pytest.raises(http.HttpError) as info:
                parser.feed(head)
                parser.next_request()
            assert info.value.status == 400, info.value
        else:
            parser.feed(head)
            request = parser.next_request()
            assert request is not None
            assert request.content_length == expected and request.has_body == (expected > 0)


@settings(max_examples=500, deadline=None)
@given(hs.text(alphabet="%%%0123456789aAfFgG/.-_~z\u00e9\x7f", max_size=24))
def test_percent_decoding_is_urllib_s_unquote(path):
    """The static files' own decoder (no ``urllib.parse``, which imports
    ``ipaddress``) decodes what ``unquote(path, errors="strict")`` does, and
    refuses what it refuses."""
    from urllib.parse import unquote

    from netcore.static import percent_decode
    try:
        expected = unquote(path, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            percent_decode(path)
    else:
        assert percent_decode(path) == expected


# -- the cluster bus: built from fields, so the checks past the head are reached ------

BUS_KIND = hs.sampled_from([st.BUS_TICK, st.BUS_PRIVATE, st.BUS_BATCH, st.BUS_FULL, 0, 9])
EPOCH = hs.sampled_from([0, 1, 2, 0xFFFFFFFF])
BODY = hs.one_of(hs.binary(max_size=48), hs.sampled_from(CORPUS["bus-gateway"]))


@EXAMPLES
@given(hs.lists(hs.tuples(hs.sampled_from([0, 1, 2, 3, 99]),
                          hs.sampled_from([st.OP_SEND, st.OP_YOU, st.OP_CLOSE, st.OP_RESYNC,
                                           st.OP_HELLO, 0, 200]),
                          hs.one_of(BODY, hs.tuples(hs.integers(0, 255), hs.integers(0, 0xFFFF),
                                                    hs.integers(0, 255), hs.integers(0, 0xFFFF),
                                                    hs.binary(max_size=40))
                                    .map(lambda t: st._BUS_CLOSE.pack(*t[:4]) + t[4]))),
                max_size=5), EPOCH, hs.integers(0, 1))
def test_a_gateway_s_private_entries_raise_only_bad_message(entries, epoch, cut):
    """OP_CLOSE bodies of any length and lengths inside, SENDs cut anywhere, unknown ops."""
    data = st.bus_pack(st.BUS_PRIVATE, epoch, 1, b"".join(st.bus_entry(*e) for e in entries))
    DRIVERS["bus-gateway"](data[:len(data) - cut], [1])


@EXAMPLES
@given(EPOCH, hs.integers(0, 0xFFFF), hs.integers(0, 0xFFFFFFFF), hs.integers(0, 1 << 16),
       hs.binary(max_size=300), hs.sampled_from([b"", st.frame(st.Stats(1, 2, 3, 4, 5, 6))]),
       hs.integers(0, 400))
def test_a_gateway_s_tick_messages_raise_only_bad_message(epoch, nframes, players, n, data, stats,
                                                          cut):
    """The TICK head's declared length against what follows, STATS frames cut
    short, the whole message cut anywhere (its head too)."""
    body = st.frame(st.TickMsg(3, 0, 0, "ABCDEFGHIJKL", 0, (0,) * 12)) + stats + data
    head = st.BUS_TICK_HEAD.pack(3, nframes, players, min(n, len(body) + 3), 0.0)
    message = st.bus_pack(st.BUS_TICK, epoch, 2, head + body)
    DRIVERS["bus-gateway"](message[:max(len(message) - cut, 0)], [0])


@EXAMPLES
@given(BUS_KIND, hs.integers(0, 300), hs.binary(max_size=40),
       hs.lists(hs.tuples(hs.integers(0, 5), hs.sampled_from([st.OP_HELLO, st.OP_MOVE,
                                                                st.OP_LEAVE, 0, 7]),
                          hs.one_of(hs.binary(max_size=30),
                                    hs.sampled_from([st.frame(st.Hello())[2:],
                                                     st.frame(st.Move(1, 2, 3))[2:]]))),
                max_size=5))
def test_the_authority_s_up_messages_raise_only_bad_message(kind, n, name, entries):
    """A gateway's name of any declared length, then any entries."""
    data = st.bus_pack(kind, 1, 1, bytes([n % 256]) + name + b"".join(
        st.bus_entry(*e) for e in entries))
    DRIVERS["bus-authority"](data, [])
