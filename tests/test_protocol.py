"""Every message round-trips; malformed ones fail with a precise reason."""

import pytest

import spelltraction as st
from netcore import FrameParser
from spelltraction import (
    BadMessage, Error, Hello, Move, Mover, Scored, Stats, TickMsg, Welcome, You, decode, encode,
)

COUNTS = tuple(range(100, 112))
MESSAGES = [
    Hello(),
    Hello(1, 2, 0x123456),
    Move(0, 0, 0),
    Move(65535, 467, 350),
    Welcome(player_id=4_000_000_000, shape=3, colour=0xABCDEF, tick_ms=100),
    TickMsg(0, st.PARKED, 0, "ABCDEFGHIJKL", 0, (0,) * 12),
    TickMsg(2**32 - 1, 11, 20, "ZYXWVUTSRQPO", 123456, COUNTS,
            tuple(Mover(i, i, 350 - i, i % 4, 0x010203 * i) for i in range(16)),
            tuple(range(1000, 1016))),
    Scored(7, "Q", "Z", 15000),
    You(12, 400, 300, 99, "AMZ"),
    Stats(15000, 14990, 3600 * 24 * 5, 34000, 20000, 1234),
    Error(st.ErrorCode.VERSION, "server speaks protocol 1, client sent 9"),
    Error(st.ErrorCode.BAD_MESSAGE, "unicode ✓ text"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    payload = encode(msg)
    assert decode(payload) == msg
    assert FrameParser().feed(st.frame(msg)) == [payload]


def test_sizes_match_the_document():
    assert len(encode(Hello())) == 8
    assert len(encode(Move(1, 2, 3))) == 7
    assert len(encode(Welcome(1, 0, 0))) == 21
    assert len(encode(MESSAGES[5])) == 73
    assert len(encode(MESSAGES[6])) == 73 + 12 * 16 + 4 * 16 == 329
    assert len(encode(Scored(0, "A", "B", 0))) == 8
    assert len(encode(You(0, 0, 0, 0, "ABC"))) == 14
    assert len(encode(Stats(0, 0, 0, 0, 0, 0))) == 25


def test_you_fast_path_matches_the_encoder():
    p = st.Player(5, 1, 0x00FF00, "ABC", 100, 200)
    p.seq, p.score = 77, 3
    assert st.you_frame(p) == st.frame(You(77, 100, 200, 3, "ABC"))


def test_tick_fast_path_matches_the_encoder():
    import random
    game = st.Game(random.Random(2))
    players = [game.join() for _ in range(20)]
    game.leave(players[0])
    result = game.step()
    fast = st._encode_tick(game, result)
    slow = st.frame(TickMsg(
        result.tick, game.attractor, game.held, "".join(game.board), len(game.players),
        tuple(game.counts),
        tuple(Mover(p.id, p.x, p.y, p.shape, p.colour) for p in result.movers),
        tuple(result.gone),
    ))
    assert fast == slow


def test_error_text_is_capped():
    payload = encode(Error(2, "x" * 1000))
    assert len(payload) == 2 + st.MAX_ERROR_TEXT


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"\x01\x00\x01", "HELLO must be 8 bytes, got 3"),
        (b"\x02" + b"\x00" * 7, "MOVE must be 7 bytes, got 8"),
        (b"\x42", "unknown message type 0x42"),
        (b"\x82" + b"\x00" * 10, "TICK must be at least"),
        (encode(MESSAGES[6])[:-3], "departures"),
        (encode(MESSAGES[6])[:100], "movers"),
        (b"\x84\x00\x01\x00\x02\x00\x03\x00\x00\x00\x01ab!", "letters must be A-Z"),
        (b"\x8f", "ERROR must be at least 2 bytes"),
    ],
)
def test_malformed_messages_say_what_is_wrong(payload, reason):
    with pytest.raises(BadMessage) as info:
        decode(payload)
    assert reason in str(info.value)


def test_cells_and_centres():
    assert st.cell_of(0, 0) == 0
    assert st.cell_of(467, 350) == 11
    assert st.cell_of(117, 0) == 1 and st.cell_of(116, 117) == 4
    for cell in range(12):
        assert st.cell_of(*st.cell_centre(cell)) == cell
