"""netcore.resp fuzzed with hypothesis: any reply tree under any chunking, any bytes."""

import pytest
from conftest import require_module

from netcore.resp import ReplyError, RespParser, RespProtocolError, encode_command, encode_reply

hypothesis = require_module("hypothesis")
st = require_module("hypothesis.strategies")
given, settings = hypothesis.given, hypothesis.settings

pytestmark = pytest.mark.slow  # hundreds of examples each: seconds of CPU


def feed_chunks(parser, data, cuts):
    got = []
    for start, stop in zip([0] + cuts, cuts + [len(data)]):
        got += parser.feed(data[start:stop])
    return got

leaves = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=20).filter(lambda s: "\r" not in s and "\n" not in s),
    st.text(max_size=20)
    .filter(lambda s: "\r" not in s and "\n" not in s)
    .map(lambda s: ReplyError("ERR " + s)),
)
replies = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(replies, min_size=1, max_size=6), st.data())
def test_hypothesis_round_trip_under_any_chunking(values, data):
    wire = b"".join(encode_reply(v) for v in values)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=10))
    parser = RespParser()
    assert feed_chunks(parser, wire, sorted(cuts)) == values
    assert not parser.pending

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=50))
def test_hypothesis_arbitrary_bytes_never_raise_anything_else(blob, step):
    parser = RespParser(max_bulk=100, max_depth=5, max_line=64)
    try:
        for i in range(0, len(blob), step):
            parser.feed(blob[i : i + step])
    except RespProtocolError:
        pass

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.text(max_size=10), st.integers()), min_size=1, max_size=8))
def test_hypothesis_commands_parse_back_as_arrays_of_bulk_strings(args):
    (parsed,) = RespParser().feed(encode_command(*args))
    expected = [a if isinstance(a, bytes) else a.encode() if isinstance(a, str) else b"%d" % a for a in args]
    assert parsed == expected
