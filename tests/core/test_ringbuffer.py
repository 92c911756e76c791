import random

import pytest

from netcore.ringbuffer import BufferFull, RingBuffer


def test_lazy_allocation_and_release():
    ring = RingBuffer(limit=1024, initial=16)
    assert ring.capacity == 0 and len(ring) == 0 and not ring
    ring.write(b"abc")
    assert ring.capacity == 16 and len(ring) == 3 and ring
    ring.consume(3)
    assert ring.capacity == 0, "a drained ring gives its storage back"
    ring.write(b"")
    assert ring.capacity == 0, "an empty write allocates nothing"


def test_wrap_around_keeps_order():
    ring = RingBuffer(limit=8, initial=8)
    ring.write(b"abcdef")
    assert ring.read(4) == b"abcd"
    ring.write(b"ghijkl")  # tail wraps past the end of storage
    assert ring.capacity == 8, "fits after wrapping; no growth needed"
    assert len(ring) == 8
    assert bytes(ring.peek()) == b"efgh", "peek gives the contiguous run up to the wrap"
    assert ring.peek_bytes(8) == b"efghijkl"
    ring.consume(4)
    assert bytes(ring.peek()) == b"ijkl"
    assert ring.read(100) == b"ijkl"


def test_growth_doubles_up_to_cap_and_linearises():
    ring = RingBuffer(limit=100, initial=8)
    ring.write(b"0123456")
    ring.consume(5)
    ring.write(b"789ab")  # wrapped in 8 bytes of storage
    ring.write(b"cdefghij")  # must grow: 7 + 8 > 8
    assert ring.capacity == 16
    assert ring.peek_bytes(100) == b"56789abcdefghij"
    ring.write(b"x" * 60)
    assert ring.capacity == 100, "growth stops at the limit, not the next power of two"
    assert len(ring) == 75


def test_limit_is_enforced_atomically():
    ring = RingBuffer(limit=10, initial=4)
    ring.write(b"12345678")
    with pytest.raises(BufferFull) as info:
        ring.write(b"abc")
    assert info.value.size == 8 and info.value.incoming == 3 and info.value.limit == 10
    assert ring.read(100) == b"12345678", "a refused write leaves the ring untouched"


def test_consume_validates():
    ring = RingBuffer(limit=10)
    ring.write(b"ab")
    with pytest.raises(ValueError):
        ring.consume(3)
    with pytest.raises(ValueError):
        RingBuffer(limit=0)


def test_memoryview_and_bytearray_inputs():
    ring = RingBuffer(limit=32, initial=4)
    ring.write(memoryview(b"hello world")[6:])
    ring.write(bytearray(b"!"))
    assert ring.read(32) == b"world!"


def test_random_operations_match_a_reference_fifo():
    rng = random.Random(7)
    ring = RingBuffer(limit=300, initial=4)
    model = bytearray()
    for step in range(5000):
        if rng.random() < 0.55:
            chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            if len(model) + len(chunk) > 300:
                with pytest.raises(BufferFull):
                    ring.write(chunk)
            else:
                ring.write(chunk)
                model += chunk
        else:
            n = rng.randrange(0, len(model) + 1)
            view = ring.peek()
            assert bytes(view) == bytes(model[: len(view)])
            view.release()
            ring.consume(n)
            del model[:n]
        assert len(ring) == len(model)
        assert ring.peek_bytes(len(model)) == bytes(model), f"diverged at step {step}"
        if not model:
            assert ring.capacity == 0
