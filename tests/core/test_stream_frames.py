"""StreamFrames: one parser for every connection, a parser of its own only
for a connection whose frame is split between reads."""

import socket

import pytest

from helpers import read_frames
from netcore import CodecHandoff, FrameParser, ServerConfig, StreamFrames, TCPServer, encode_frame
from netcore.framing import OversizeFrame, ZeroLengthFrame
from netcore.testing import Echo, run_until

PAYLOADS = [b"a", b"hello", bytes(range(256)) * 3, b"z" * 4096]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def test_whole_frames_need_no_state():
    shared = StreamFrames(4096)
    assert shared.feed(STREAM) == PAYLOADS
    assert shared.feed(encode_frame(b"again")) == [b"again"]


def test_a_split_at_every_byte_hands_over_a_parser_holding_the_rest():
    shared = StreamFrames(4096)
    for split in range(1, len(STREAM)):
        try:
            got = shared.feed(STREAM[:split])
            codec = shared
        except CodecHandoff as handoff:
            got = list(handoff.messages)
            codec = handoff.codec
            assert isinstance(codec, FrameParser) and codec.buffered > 0
        got += codec.feed(STREAM[split:])
        assert got == PAYLOADS, f"split at {split}"


def test_bad_headers_fail_as_soon_as_seen_with_the_frames_before():
    shared = StreamFrames(100)
    with pytest.raises(ZeroLengthFrame) as zero:
        shared.feed(encode_frame(b"one") + b"\x00\x00")
    assert list(zero.value.messages) == [b"one"] and zero.value.offset == 5
    with pytest.raises(OversizeFrame) as big:
        shared.feed(b"\x00\x65")  # 101 > 100, body not needed to know
    assert big.value.length == 101
    assert shared.feed(encode_frame(b"still shared")) == [b"still shared"]


def test_a_server_shares_it_until_a_connection_splits_a_frame(loop):
    shared = StreamFrames(1024)
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]),
                       codec_factory=lambda conn: shared)
    server.listen()
    whole = socket.create_connection(("127.0.0.1", server.port))
    split = socket.create_connection(("127.0.0.1", server.port))
    try:
        whole.sendall(encode_frame(b"whole"))
        split.sendall(encode_frame(b"split")[:4])
        # (Until its first read a connection's codec is the server's check for
        # an untrusted PROXY header, which then hands over to the shared one.)
        run_until(loop, lambda: server.stats.frames_in == 1 and any(
            isinstance(c.codec, FrameParser) for c in server.connections.values()),
                  what="the splitter's own parser")
        assert read_frames(whole, 1) == [b"echo:whole"]
        codecs = [conn.codec for conn in server.connections.values()]
        assert codecs.count(shared) == 1 and isinstance(
            next(c for c in codecs if c is not shared), FrameParser)
        split.sendall(encode_frame(b"split")[4:] + encode_frame(b"next"))
        run_until(loop, lambda: server.stats.frames_in == 3)
        split.setblocking(True)
        assert read_frames(split, 2) == [b"echo:split", b"echo:next"]
    finally:
        whole.close()
        split.close()
        server.close()
