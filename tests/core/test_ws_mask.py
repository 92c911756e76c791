"""websocket.mask: the same bytes as a byte-by-byte XOR at every size and boundary."""

import os

import pytest

from netcore.websocket import _MASK_STEP, mask


def reference(data, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 1000, _MASK_STEP - 1, _MASK_STEP,
                               _MASK_STEP + 1, _MASK_STEP + 3, 2 * _MASK_STEP,
                               3 * _MASK_STEP + 2, 300_001])
def test_mask_matches_a_byte_by_byte_xor(n):
    data = os.urandom(n)
    key = os.urandom(4)
    want = reference(data, key)
    assert mask(data, key) == want
    assert mask(memoryview(data), key) == want
    assert mask(bytearray(data), key) == want
    assert mask(want, key) == data
