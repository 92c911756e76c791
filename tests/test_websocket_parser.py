"""The sans-IO WebSocket parser and builder, against RFC 6455."""

import os

import pytest

from netcore.http import HttpError, RequestParser
from netcore.websocket import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Close,
    CloseCode,
    Message,
    Ping,
    Pong,
    WebSocketError,
    WebSocketParser,
    accept_key,
    client_handshake,
    close_frame,
    close_payload,
    frame,
    frame_header,
    handshake_response,
    mask,
)

KEY = b"\x01\x02\x03\x04"


def cframe(payload, opcode=BINARY, fin=True):
    """A client frame: masked, as RFC 6455 requires."""
    return frame(payload, opcode, fin, mask_key=os.urandom(4))


def parse_split(data, split, **kw):
    p = WebSocketParser(**kw)
    return p.parse(data[:split]) + p.parse(data[split:]), p


# The RFC's own examples (section 5.7).
def test_rfc_examples():
    assert frame(b"Hello", TEXT) == bytes.fromhex("810548656c6c6f")
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert frame(b"Hello", TEXT, mask_key=bytes.fromhex("37fa213d")) == masked
    assert WebSocketParser().parse(masked) == [Message(b"Hello", True)]
    frag = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
    assert WebSocketParser(client=True).parse(frag) == [Message(b"Hello", True)]
    assert frame_header(256)[1:] == bytes.fromhex("7e0100")
    assert frame_header(65536)[1:] == bytes.fromhex("7f0000000000010000")
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_mask_round_trips():
    for n in (0, 1, 3, 4, 5, 1000):
        data = os.urandom(n)
        assert mask(mask(data, KEY), KEY) == data
    assert mask(b"\x00\x00\x00\x00\x00", KEY) == b"\x01\x02\x03\x04\x01"


STREAM_PARTS = [
    (cframe(b"one"), [Message(b"one")]),
    (cframe(b"x" * 200), [Message(b"x" * 200)]),  # 16-bit length
    # A fragmented text message with a ping and a pong between its fragments.
    (cframe("héllo ".encode(), TEXT, fin=False), []),
    (cframe(b"are you there", PING), [Ping(b"are you there")]),
    (cframe("wörld".encode()[:2], CONTINUATION, fin=False), []),
    (cframe(b"", PONG), [Pong(b"")]),
    (cframe("wörld".encode()[2:], CONTINUATION, fin=True), [Message("héllo wörld".encode(), True)]),
    (cframe(b"", BINARY), [Message(b"")]),
    (cframe(b"ab", BINARY, fin=False) + cframe(b"", CONTINUATION, fin=False)
     + cframe(b"cd", CONTINUATION), [Message(b"abcd")]),
    (cframe(close_payload(1000, "bye"), CLOSE), [Close(1000, "bye")]),
]
STREAM = b"".join(d for d, _ in STREAM_PARTS)
EVENTS = [e for _, events in STREAM_PARTS for e in events]


def test_stream_in_one_chunk():
    p = WebSocketParser(max_message=100_000)
    assert p.parse(STREAM) == EVENTS
    assert p.closed and p.buffered == 0


def test_stream_split_at_every_byte_boundary():
    for split in range(1, len(STREAM)):
        events, p = parse_split(STREAM, split, max_message=100_000)
        assert events == EVENTS, split
        assert p.closed


def test_64_bit_length_split_around_its_header():
    data = cframe(b"y" * 70000) + cframe(b"z")
    for split in list(range(1, 16)) + [70000, len(data) - 3]:
        events, _ = parse_split(data, split, max_message=100_000)
        assert events == [Message(b"y" * 70000), Message(b"z")], split


def test_one_byte_at_a_time_holds_only_the_partial_frame():
    small = b"".join(d for d, _ in STREAM_PARTS if len(d) < 1000)
    p = WebSocketParser()
    got = []
    for i in range(len(small)):
        got += p.parse(small[i : i + 1])
        assert p.buffered < 300
    assert got == [e for d, ev in STREAM_PARTS if len(d) < 1000 for e in ev]


def test_nothing_after_close_is_parsed():
    p = WebSocketParser()
    assert p.parse(cframe(b"", CLOSE) + cframe(b"late")) == [Close(CloseCode.NO_STATUS)]
    assert p.parse(cframe(b"later")) == []


def fails(data, code, **kw):
    for split in (None, 1):
        p = WebSocketParser(**kw)
        with pytest.raises(WebSocketError) as info:
            if split is None:
                p.parse(data)
            else:
                for i in range(len(data)):
                    p.parse(data[i : i + 1])
        assert info.value.code == code, info.value
        with pytest.raises(WebSocketError):  # and stays failed
            p.parse(cframe(b"ok"))
    return str(info.value)


def test_unmasked_client_frame_is_1002():
    assert "masked" in fails(frame(b"hello"), CloseCode.PROTOCOL_ERROR)


def test_masked_server_frame_is_1002_for_a_client():
    fails(cframe(b"hello"), CloseCode.PROTOCOL_ERROR, client=True)


@pytest.mark.parametrize("bits", [0x40, 0x20, 0x10])
def test_reserved_bits_are_1002(bits):
    data = bytearray(cframe(b"x"))
    data[0] |= bits
    assert "reserved" in fails(bytes(data), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes_are_1002(opcode):
    assert "opcode" in fails(cframe(b"x", opcode), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("data", [
    cframe(b"x", PING, fin=False),  # fragmented control frame
    cframe(b"p" * 126, PING),  # control payload over 125
    cframe(b"x", CONTINUATION),  # continuation without a message
    cframe(b"a", BINARY, fin=False) + cframe(b"b", BINARY),  # message inside a message
    cframe(b"\x03", CLOSE),  # 1-byte close payload
    cframe(close_payload(1005), CLOSE),  # reserved close code
    cframe(close_payload(999), CLOSE),
    cframe(close_payload(2000), CLOSE),
    cframe(close_payload(5000), CLOSE),
    bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + KEY,  # 64-bit length, top bit set
])
def test_protocol_errors_are_1002(data):
    fails(data, CloseCode.PROTOCOL_ERROR)


def test_invalid_utf8_text_is_1007():
    fails(cframe(b"ok \xff", TEXT), CloseCode.INVALID_DATA)
    fails(cframe(b"\xed\xa0\x80", TEXT), CloseCode.INVALID_DATA)  # a UTF-16 surrogate
    fails(cframe(b"\xe2\x82", TEXT), CloseCode.INVALID_DATA)  # truncated in a whole message


def test_invalid_utf8_fails_at_the_bad_fragment_not_the_end():
    p = WebSocketParser()
    p.parse(cframe(b"fine ", TEXT, fin=False))
    p.parse(cframe("\u20ac".encode()[:1], CONTINUATION, fin=False))  # incomplete, so far valid
    with pytest.raises(WebSocketError) as info:
        p.parse(cframe(b"\xff", CONTINUATION, fin=False))  # fin=False: no end yet
    assert info.value.code == CloseCode.INVALID_DATA


def test_utf8_split_across_fragments_is_fine_but_unfinished_at_the_end_is_not():
    euro = "\u20ac".encode()
    p = WebSocketParser()
    p.parse(cframe(euro[:1], TEXT, fin=False))
    assert p.parse(cframe(euro[1:], CONTINUATION)) == [Message(euro, True)]
    fails(cframe(b"a", TEXT, fin=False) + cframe(euro[:2], CONTINUATION), CloseCode.INVALID_DATA)


def test_binary_is_not_checked_for_utf8():
    assert WebSocketParser().parse(cframe(b"\xff\xfe")) == [Message(b"\xff\xfe")]


def test_close_reason_must_be_utf8():
    fails(cframe(b"\x03\xe8\xff", CLOSE), CloseCode.INVALID_DATA)


def test_oversize_is_1009_from_the_header_alone():
    # Only the header of a 1 MB frame is sent: refused without waiting for it.
    head = frame_header(1_000_000, BINARY, mask_key=KEY)
    assert "max 1000" in fails(head, CloseCode.TOO_BIG, max_message=1000)


def test_oversize_counts_all_fragments():
    data = cframe(b"a" * 600, BINARY, fin=False) + cframe(b"b" * 600, CONTINUATION)
    fails(data, CloseCode.TOO_BIG, max_message=1000)
    p = WebSocketParser(max_message=1200)
    assert p.parse(data) == [Message(b"a" * 600 + b"b" * 600)]


def test_close_frame_builder_cuts_reason_on_a_character():
    payload = close_payload(1001, "é" * 100)
    assert len(payload) <= 125
    payload[2:].decode("utf-8")
    assert close_frame(1000) == b"\x88\x02\x03\xe8"


def handshake(extra=b""):
    raw = client_handshake("localhost", "/ws", "dGhlIHNhbXBsZSBub25jZQ==")
    p = RequestParser()
    p.feed(raw[:-2] + extra + b"\r\n")
    return p.next_request()


def test_handshake_response():
    resp = handshake_response(handshake())
    assert resp.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in resp
    assert b"Upgrade: websocket\r\n" in resp and b"Connection: Upgrade\r\n" in resp


@pytest.mark.parametrize("replace, status", [
    ((b"Upgrade: websocket", b"Upgrade: h2c"), 426),
    ((b"Connection: Upgrade", b"Connection: keep-alive"), 400),
    ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
    ((b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="), 400),  # "short": not 16 bytes
    ((b"dGhlIHNhbXBsZSBub25jZQ==", b"!!!"), 400),
    ((b"GET /ws HTTP/1.1", b"GET /ws HTTP/1.0"), 400),
])
def test_bad_handshakes(replace, status):
    raw = client_handshake("localhost", "/ws", "dGhlIHNhbXBsZSBub25jZQ==").replace(*replace)
    p = RequestParser()
    p.feed(raw)
    with pytest.raises(HttpError) as info:
        handshake_response(p.next_request())
    assert info.value.status == status
