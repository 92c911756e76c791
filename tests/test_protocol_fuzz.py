"""Fuzzing the game's decode (the Protocol section): any payload, only BadMessage.

A payload that is not a message raises ``BadMessage`` (a ``ProtocolError``)
with the reason; one that is decodes to a message that encodes back to the
very same bytes. Drivers and corpus: tests/fuzzkit.py.
"""

from conftest import require_module

require_module("hypothesis")  # skips outside CI with the install line; fails in CI

from hypothesis import given, settings, strategies as hs  # noqa: E402

from fuzzkit import CORPUS, DRIVERS


@settings(max_examples=500, deadline=None)
@given(hs.one_of(hs.binary(max_size=400),
                 hs.tuples(hs.sampled_from(CORPUS["decode"]), hs.binary(max_size=4),
                           hs.integers(0, 400))
                 .map(lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])))
def test_decode_raises_only_bad_message_and_round_trips(payload):
    DRIVERS["decode"](payload)
