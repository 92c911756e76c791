import random

import pytest

from netcore.framing import (
    FrameError,
    FrameParser,
    OversizeFrame,
    ZeroLengthFrame,
    encode_frame,
)

PAYLOADS = [b"a", b"hello", bytes(range(256)) * 3, b"\x00\x00", b"z" * 4096]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def test_encode_frame_layout():
    assert encode_frame(b"hi") == b"\x00\x02hi"
    assert encode_frame(b"x" * 0x1234)[:2] == b"\x12\x34"
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"x" * 0x10000)


def test_many_frames_in_one_chunk():
    parser = FrameParser(max_frame=4096)
    assert parser.feed(STREAM) == PAYLOADS
    assert parser.buffered == 0


def test_stream_split_at_every_byte_boundary():
    for split in range(1, len(STREAM)):
        parser = FrameParser(max_frame=4096)
        got = parser.feed(STREAM[:split])
        got += parser.feed(STREAM[split:])
        assert got == PAYLOADS, f"split at {split}"
        assert parser.buffered == 0


def test_three_way_splits_around_every_header():
    starts = [0]
    for p in PAYLOADS:
        starts.append(starts[-1] + 2 + len(p))
    cuts = sorted({c + d for c in starts for d in (0, 1, 2, 3) if 0 < c + d < len(STREAM)})
    for a in cuts:
        for b in cuts:
            if a < b:
                parser = FrameParser(max_frame=4096)
                got = parser.feed(STREAM[:a]) + parser.feed(STREAM[a:b]) + parser.feed(STREAM[b:])
                assert got == PAYLOADS, (a, b)


def test_one_byte_at_a_time():
    parser = FrameParser(max_frame=4096)
    got = []
    for i in range(len(STREAM)):
        got += parser.feed(STREAM[i : i + 1])
        assert parser.buffered <= 4096 + 2
    assert got == PAYLOADS


def test_random_chunking_fuzz():
    rng = random.Random(1)
    for _ in range(300):
        payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(rng.randrange(1, 12))]
        stream = b"".join(encode_frame(p) for p in payloads)
        parser = FrameParser(max_frame=300)
        got, pos = [], 0
        while pos < len(stream):
            n = rng.randrange(1, 64)
            got += parser.feed(memoryview(stream)[pos : pos + n])
            pos += n
        assert got == payloads


def test_zero_length_is_an_error_with_its_offset():
    parser = FrameParser()
    with pytest.raises(ZeroLengthFrame) as info:
        parser.feed(b"\x00\x01a\x00\x00rest")
    assert info.value.offset == 3
    assert info.value.reason == "bad-frame"


def test_oversize_is_detected_from_the_header_alone():
    parser = FrameParser(max_frame=100)
    assert parser.feed(b"\x00\x02ok") == [b"ok"]
    with pytest.raises(OversizeFrame) as info:
        parser.feed(b"\x00")
        parser.feed(b"\x65")  # 101: known bad before any body arrives
    assert (info.value.length, info.value.limit, info.value.offset) == (101, 100, 4)


def test_oversize_split_header_inside_partial_path():
    parser = FrameParser(max_frame=10)
    assert parser.feed(b"\x00\x01a\x00") == [b"a"]
    with pytest.raises(OversizeFrame) as info:
        parser.feed(b"\x0b")
    assert info.value.offset == 3


def test_parser_stays_failed():
    parser = FrameParser(max_frame=10)
    with pytest.raises(FrameError):
        parser.feed(b"\xff\xff")
    with pytest.raises(FrameError):
        parser.feed(b"\x00\x01a")


def test_frames_are_copies_independent_of_the_input_buffer():
    parser = FrameParser()
    buf = bytearray(encode_frame(b"abc"))
    frames = parser.feed(memoryview(buf))
    buf[2:5] = b"xyz"
    assert frames == [b"abc"]


def test_partial_frame_buffer_is_lazy_and_released():
    parser = FrameParser(max_frame=1000)
    assert parser._partial is None
    parser.feed(b"\x00\x05ab")
    assert parser.buffered == 4
    parser.feed(b"cde")
    assert parser.buffered == 0
    assert parser._partial is not None and parser._partial.capacity == 0
