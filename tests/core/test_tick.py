import random
import selectors

from conftest import FakeClock
from netcore.loop import EventLoop
from netcore.tick import TickScheduler


def test_no_drift_over_1000_ticks_with_jitter_and_slow_work():
    rng = random.Random(3)
    sched = TickScheduler(period=0.25, start=100.0)
    now = 100.0
    numbers = []
    for _ in range(1000):
        # The loop wakes a little after the deadline and the tick's own
        # work takes up to 200 ms; neither may shift later deadlines.
        now = max(now, sched.deadline) + rng.uniform(0, 0.004)
        tick = sched.poll(now)
        assert tick is not None
        numbers.append(tick.number)
        assert tick.deadline == 100.0 + tick.number * 0.25
        now += rng.uniform(0, 0.2)
        sched.record_duration(0.1)
    assert numbers == list(range(1000))
    assert sched.deadline == 100.0 + 1000 * 0.25
    assert sched.late == 0 and sched.skipped == 0
    assert sched.max_lateness < 0.0041


def test_poll_before_deadline_returns_none():
    sched = TickScheduler(period=1.0, start=10.0)
    assert sched.poll(9.999) is None
    assert sched.poll(10.0).number == 0
    assert sched.poll(10.5) is None


def test_late_ticks_are_counted_and_reported():
    sched = TickScheduler(period=0.25, start=0.0, late_after=0.05)
    late = {10, 11, 500, 999}
    for n in range(1000):
        deadline = n * 0.25
        tick = sched.poll(deadline + (0.2 if n in late else 0.001))
        assert tick.number == n
    assert sched.fired == 1000
    assert sched.late == len(late)
    assert abs(sched.max_lateness - 0.2) < 1e-9
    assert sched.snapshot()["late"] == 4


def test_a_long_stall_skips_ticks_but_counts_them():
    sched = TickScheduler(period=0.25, start=0.0, max_catchup=4)
    assert sched.poll(0.0).number == 0
    tick = sched.poll(10.1)  # stalled ~40 periods
    assert tick.skipped == 39 and tick.number == 40
    assert sched.skipped == 39
    assert abs(tick.lateness - 0.1) < 1e-9
    assert sched.poll(10.25).number == 41


def test_short_lateness_catches_up_tick_by_tick():
    sched = TickScheduler(period=0.25, start=0.0, max_catchup=8)
    assert [sched.poll(1.0).number for _ in range(5)] == [0, 1, 2, 3, 4]
    assert sched.poll(1.0) is None
    assert sched.skipped == 0


class FakeSelector(selectors.BaseSelector):
    """No I/O: select() just advances a fake clock by the timeout plus jitter."""

    def __init__(self, clock):
        self.clock = clock
        self.rng = random.Random(11)

    def register(self, fileobj, events, data=None):  # pragma: no cover - unused
        raise NotImplementedError

    def unregister(self, fileobj):  # pragma: no cover - unused
        raise NotImplementedError

    def select(self, timeout=None):
        self.clock.now += (timeout or 0.0) + self.rng.uniform(0, 0.003)
        return []

    def get_map(self):  # pragma: no cover - unused
        return {}


def test_event_loop_ticks_do_not_drift_with_a_fake_clock():
    clock = FakeClock(50.0)
    loop = EventLoop(selector=FakeSelector(clock), clock=clock)
    fired = []

    def on_tick(tick):
        fired.append((tick.number, tick.deadline, clock.now))
        clock.now += 0.15  # a heavy tick: 60% of the period
        if len(fired) == 1000:
            loop.stop()

    sched = loop.start_ticker(0.25, on_tick)
    loop.run()
    start = sched.start
    assert [n for n, _, _ in fired] == list(range(1000))
    for n, deadline, at in fired:
        assert deadline == start + n * 0.25
        assert 0 <= at - deadline < 0.0031
    assert sched.late == 0
    assert len(sched.recent_duration) == 1000


def test_a_successor_resumes_the_schedule_with_the_next_number_and_the_same_phase():
    old = TickScheduler(period=0.25, start=100.0)
    now = 100.0
    for _ in range(40):
        now = old.deadline + 0.001
        old.poll(now)
    state = old.state()
    assert state == {"start": 100.0, "next": 40, "fired": 40, "late": 0, "skipped": 0}
    for gap in (0.1, 0.6, 1.9, 5.3):  # shorter and longer than max_catchup periods (2 s)
        new = TickScheduler(period=0.25, start=0.0)
        new.resume(state, now + gap)
        at = max(now + gap, new.deadline)  # a short hand-over waits for the due time
        first = new.poll(at)
        assert first is not None and first.number == 40 and first.skipped == 0, gap
        assert round((first.deadline - 100.0) / 0.25, 6).is_integer(), first  # the old phase
        assert 0 <= first.lateness <= 0.25, (gap, first)
        assert new.poll(at) is None  # no burst to catch up
        second = new.poll(first.deadline + 0.25)
        assert second.number == 41 and second.skipped == 0
        assert (new.fired, new.skipped) == (42, 0)
