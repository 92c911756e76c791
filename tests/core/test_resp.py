"""netcore.resp: the RESP2 codec, at every byte boundary and on malformed input."""

import random

import pytest

from netcore.codec import ProtocolError
from netcore.resp import (
    ReplyError,
    RespParser,
    RespProtocolError,
    encode_command,
    encode_commands,
    encode_reply,
)

# Every reply type, nulls and nesting, as Redis writes them.
WIRE = (
    b"+OK\r\n"
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b":0\r\n"
    b":-9223372036854775808\r\n"
    b":9223372036854775807\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"$4\r\na\r\nb\r\n"  # CRLF inside a bulk body is data
    b"*0\r\n"
    b"*-1\r\n"
    b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\n\x00\xff\n\r\n"
    b"*2\r\n*2\r\n:1\r\n$-1\r\n*1\r\n*0\r\n"
    b"*4\r\n+QUEUED\r\n-ERR x\r\n*-1\r\n:7\r\n"
)
REPLIES = [
    "OK",
    ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    0,
    -(2**63),
    2**63 - 1,
    b"hello",
    b"",
    None,
    b"a\r\nb",
    [],
    None,
    [b"message", b"ch", b"\x00\xff\n"],
    [[1, None], [[]]],
    ["QUEUED", ReplyError("ERR x"), None, 7],
]


def feed_chunks(parser, data, cuts):
    got = []
    last = 0
    for cut in list(cuts) + [len(data)]:
        got += parser.feed(data[last:cut])
        last = cut
    return got


# -- encoding ----------------------------------------------------------------


def test_encode_command_layout_and_argument_types():
    assert encode_command("PING") == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command("SET", b"k\r\n", 12, -3, 1.5, "é", bytearray(b"x"), memoryview(b"yz")) == (
        b"*8\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$2\r\n-3\r\n$3\r\n1.5\r\n"
        b"$2\r\n\xc3\xa9\r\n$1\r\nx\r\n$2\r\nyz\r\n"
    )
    assert encode_command("SET", "k", b"") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert encode_commands([("PING",), ("GET", "k")]) == encode_command("PING") + encode_command("GET", "k")


@pytest.mark.parametrize("bad", [True, None, object(), ["x"]])
def test_encode_command_refuses_what_is_not_an_argument(bad):
    with pytest.raises(TypeError):
        encode_command("SET", "k", bad)


def test_encode_command_needs_a_name():
    with pytest.raises(ValueError):
        encode_command()


def test_encode_reply_round_trips_the_sample():
    assert b"".join(encode_reply(r) for r in REPLIES).replace(b"*-1", b"$-1") == WIRE.replace(b"*-1", b"$-1")
    with pytest.raises(ValueError):
        encode_reply("a\r\nb")
    with pytest.raises(TypeError):
        encode_reply(True)


# -- parsing whole and split -------------------------------------------------


def test_every_type_in_one_chunk():
    parser = RespParser()
    assert parser.feed(WIRE) == REPLIES
    assert parser.buffered == 0 and not parser.pending


def test_error_reply_is_a_value_with_its_kind():
    (err,) = RespParser().feed(b"-NOAUTH Authentication required.\r\n")
    assert isinstance(err, ReplyError) and not isinstance(err, BaseException)
    assert err.kind == "NOAUTH" and err.message == "NOAUTH Authentication required."
    assert ReplyError("oops lower").kind == ""


def test_split_at_every_byte_boundary():
    for cut in range(1, len(WIRE)):
        parser = RespParser()
        assert feed_chunks(parser, WIRE, [cut]) == REPLIES, cut
        assert not parser.pending


def test_split_at_every_pair_of_boundaries():
    for a in range(1, len(WIRE)):
        for b in range(a + 1, len(WIRE), 7):
            assert feed_chunks(RespParser(), WIRE, [a, b]) == REPLIES, (a, b)


def test_one_byte_at_a_time_holds_only_the_current_element():
    parser = RespParser()
    got = []
    biggest = 0
    for i in range(len(WIRE)):
        got += parser.feed(WIRE[i : i + 1])
        biggest = max(biggest, parser.buffered)
    assert got == REPLIES
    # Finished array items are kept as values, not as bytes.
    assert biggest <= len(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")


def test_random_chunking_of_random_streams():
    rng = random.Random(7)
    for _ in range(200):
        replies = [rng.choice(REPLIES) for _ in range(rng.randrange(1, 20))]
        data = b"".join(encode_reply(r) for r in replies)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12))))
        assert feed_chunks(RespParser(), data, cuts) == replies


def test_large_bulk_in_small_chunks_and_a_wide_array():
    body = bytes(range(256)) * 4096  # 1 MiB
    data = encode_reply(body) + encode_reply([b"%d" % i for i in range(20000)])
    parser = RespParser()
    got = feed_chunks(parser, data, range(1000, len(data), 1000))
    assert got[0] == body
    assert got[1] == [b"%d" % i for i in range(20000)]


def test_parser_accepts_memoryview_and_bytearray():
    parser = RespParser()
    assert parser.feed(memoryview(b"+A\r\n:1")) == ["A"]
    assert parser.feed(bytearray(b"\r\n")) == [1]


# -- malformed input ---------------------------------------------------------

MALFORMED = [
    # (bytes, message fragment, offset of the faulty element)
    (b"?what\r\n", "bad type byte 0x3f", 0),
    (b"+OK\r\n\x00\r\n", "bad type byte 0x00", 5),
    (b"\r\n", "bad type byte 0x0d", 0),
    (b"+OK\n", "line not terminated by CRLF", 0),
    (b"\n", "bad type byte 0x0a", 0),
    (b"+\n", "line not terminated by CRLF", 0),
    (b":12\r\n:1\n", "line not terminated by CRLF", 5),
    (b"+O\rK\r\n", "CR inside a simple string", 0),
    (b"-E\rR\r\n", "CR inside an error reply", 0),
    (b"$abc\r\nabc\r\n", "bulk length b'abc' is not a decimal number", 0),
    (b"$\r\n", "bulk length b'' is not a decimal number", 0),
    (b"$ 3\r\nabc\r\n", "is not a decimal number", 0),
    (b"$+3\r\nabc\r\n", "is not a decimal number", 0),
    (b"$1_0\r\n", "is not a decimal number", 0),
    (b"$-2\r\n", "bulk length -2", 0),
    (b"$3\r\nabcd\r\n", "bulk string of 3 bytes not followed by CRLF", 0),
    (b"$3\r\nabc\n\r", "bulk string of 3 bytes not followed by CRLF", 0),
    (b":\r\n", "integer b'' is not a decimal number", 0),
    (b":1.5\r\n", "integer b'1.5' is not a decimal number", 0),
    (b":--1\r\n", "is not a decimal number", 0),
    (b":-\r\n", "is not a decimal number", 0),
    (b":9223372036854775808\r\n", "integer 9223372036854775808 is out of range", 0),
    (b":" + b"9" * 5000 + b"\r\n", "is out of range", 0),
    (b"*x\r\n", "array length b'x' is not a decimal number", 0),
    (b"*-3\r\n", "array length -3", 0),
    (b"*2\r\n:1\r\n!5\r\n", "RESP3 blob error ('!')", 8),
    (b"%1\r\n", "RESP3 map ('%')", 0),
    (b">3\r\n", "RESP3 push ('>')", 0),
    (b"_\r\n", "RESP3 null ('_')", 0),
]


@pytest.mark.parametrize("data,fragment,offset", MALFORMED)
def test_malformed_input_is_a_precise_protocol_error(data, fragment, offset):
    parser = RespParser()
    with pytest.raises(RespProtocolError) as info:
        parser.feed(data)
    assert fragment in str(info.value)
    assert info.value.offset == offset
    assert f"at stream offset {offset}" in str(info.value)
    assert isinstance(info.value, ProtocolError) and info.value.reason == "bad-resp"


@pytest.mark.parametrize("data,fragment,offset", MALFORMED)
def test_malformed_input_fed_byte_by_byte_fails_the_same(data, fragment, offset):
    parser = RespParser()
    with pytest.raises(RespProtocolError) as info:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    assert fragment in str(info.value) and info.value.offset == offset


def test_a_bad_type_byte_fails_at_once_without_waiting_for_a_line():
    parser = RespParser()
    assert parser.feed(b":1\r\n") == [1]
    with pytest.raises(RespProtocolError, match="bad type byte 0x48 at stream offset 4"):
        parser.feed(b"HTTP/1.1 400")


def test_offsets_count_from_the_first_byte_ever_fed():
    parser = RespParser()
    assert parser.feed(b"+OK\r\n+OK\r\n") == ["OK", "OK"]
    with pytest.raises(RespProtocolError) as info:
        parser.feed(b":1\r\n#t\r\n")
    assert info.value.offset == 14


def test_replies_before_the_fault_travel_with_the_error():
    parser = RespParser()
    with pytest.raises(RespProtocolError) as info:
        parser.feed(b"+OK\r\n*2\r\n:1\r\n:2\r\n*1\r\n?")
    assert info.value.replies == ["OK", [1, 2]] and info.value.offset == 21


def test_a_failed_parser_stays_failed():
    parser = RespParser()
    with pytest.raises(RespProtocolError) as first:
        parser.feed(b"?\r\n")
    with pytest.raises(RespProtocolError) as again:
        parser.feed(b"+OK\r\n")
    assert again.value is first.value and again.value.replies == []
    assert parser.buffered == 0


def test_oversize_bulk_fails_at_its_header_before_the_body_arrives():
    parser = RespParser(max_bulk=10)
    assert parser.feed(b"$10\r\n0123456789\r\n") == [b"0123456789"]
    with pytest.raises(RespProtocolError) as info:
        parser.feed(b"$11\r\n")
    assert "bulk string of 11 bytes exceeds limit 10" in str(info.value)
    assert RespParser().feed(b"$536870912\r\n") == []  # the default: Redis' own 512 MiB
    with pytest.raises(RespProtocolError):
        RespParser().feed(b"$536870913\r\n")


def test_nesting_depth_cap():
    ok = b"*1\r\n" * 3 + b":1\r\n"
    assert RespParser(max_depth=3).feed(ok) == [[[[1]]]]
    with pytest.raises(RespProtocolError) as info:
        RespParser(max_depth=3).feed(b"*1\r\n" * 4 + b":1\r\n")
    assert "arrays nested deeper than 3" in str(info.value) and info.value.offset == 12
    # Empty and null arrays don't open a level.
    assert RespParser(max_depth=1).feed(b"*2\r\n*0\r\n*-1\r\n") == [[[], None]]
    # The default stops a hostile stream of array headers.
    with pytest.raises(RespProtocolError):
        RespParser().feed(b"*1\r\n" * 100000)


def test_array_length_cap():
    assert RespParser(max_array=2).feed(b"*2\r\n:1\r\n:2\r\n") == [[1, 2]]
    with pytest.raises(RespProtocolError) as info:
        RespParser(max_array=2).feed(b"*3\r\n")
    assert "array of 3 items exceeds limit 2" in str(info.value)


def test_line_length_cap_without_a_newline():
    parser = RespParser(max_line=100)
    assert parser.feed(b"+" + b"x" * 100) == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == ["x" * 100]
    with pytest.raises(RespProtocolError) as info:
        parser.feed(b"+" + b"x" * 101 + b"\r")
    assert "line longer than 100 bytes" in str(info.value)
    # A line far longer than the cap is refused without a newline ever coming.
    with pytest.raises(RespProtocolError):
        RespParser(max_line=100).feed(b"-" + b"e" * 10000)


def test_random_garbage_raises_only_protocol_errors():
    rng = random.Random(11)
    alphabet = b"+-:$*\r\n0123456789-abc?%_"
    for _ in range(3000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        parser = RespParser(max_bulk=64, max_depth=4, max_line=32)
        try:
            for i in range(0, len(data), 3):
                parser.feed(data[i : i + 3])
        except RespProtocolError:
            pass
