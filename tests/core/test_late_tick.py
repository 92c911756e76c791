"""A late tick says why: what the loop did between the tick before and it (LateTick)."""

import logging
import re
import socket
import time

from netcore import EventLoop
from netcore.loop import LateTick, Readiness

PERIOD = 0.05


def work(seconds):
    """Hold the loop's thread, as real work would (a busy wait, not a sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class OnceSlow(Readiness):
    """Reads its socket; the first read costs ``cost`` seconds."""

    def __init__(self, sock, cost):
        self.sock = sock
        self.cost = cost

    def on_ready(self, mask):
        self.sock.recv(64)
        work(self.cost)
        self.cost = 0.0


def run_until_late(loop, limit=2.0):
    end = time.monotonic() + limit
    while loop.last_late_tick is None and time.monotonic() < end:
        loop.run_once(0.01)
    assert loop.last_late_tick is not None, "no tick was late"
    return loop.last_late_tick


def ticking_loop(on_tick=None):
    loop = EventLoop()
    loop.late_report_every = 0.0
    ticks = []
    loop.sched = loop.start_ticker(PERIOD, on_tick or ticks.append, io_share=0.0)
    # Two ticks on time first: the report covers the span after a tick.
    end = time.monotonic() + 2
    while len(ticks) < 2 and time.monotonic() < end and on_tick is None:
        loop.run_once(0.01)
    return loop


def test_a_slow_handler_is_named_as_the_cause():
    loop = ticking_loop()
    ours, theirs = socket.socketpair()
    try:
        loop.register(ours, 1, OnceSlow(ours, 3 * PERIOD))
        theirs.send(b"move")
        report = run_until_late(loop)
        assert report.lateness > PERIOD
        assert report.io >= 3 * PERIOD * 0.9
        assert report.longest_round >= 3 * PERIOD * 0.9
        assert report.events >= 1
        assert report.describe().split("; since the tick before ended")[1].startswith(
            f" ({report.since * 1e3:.0f} ms): I/O handlers")
    finally:
        ours.close()
        theirs.close()
        loop.close()


def test_a_slow_timer_is_named_with_what_it_called():
    loop = ticking_loop()

    def compact_the_world():
        work(3 * PERIOD)

    loop.call_later(0.005, compact_the_world)
    report = run_until_late(loop)
    assert report.timers >= 3 * PERIOD * 0.9
    assert report.longest_timer >= 3 * PERIOD * 0.9
    assert "compact_the_world" in report.longest_timer_name
    assert "timers" in report.describe().split(": ", 1)[1].split(",")[0]
    loop.close()


def test_a_tick_that_outgrew_its_period_is_the_cause_of_the_next_ones_lateness():
    seen = []

    def on_tick(tick):
        seen.append(tick.number)
        if len(seen) == 3:
            work(2.5 * PERIOD)

    loop = ticking_loop(on_tick)
    report = run_until_late(loop)
    assert report.number == seen[2] + 1  # the one after the slow tick
    assert report.previous >= 2.5 * PERIOD * 0.9
    assert 0 < report.previous_cpu <= report.previous + 0.001  # CPU time never exceeds wall
    assert report.io < PERIOD and report.timers < PERIOD
    assert report.describe().split(": ", 1)[1].startswith("the tick before took")
    loop.close()


def test_a_tick_that_waited_shows_less_cpu_than_wall_time():
    """A tick held up without working (another thread's GIL, a blocking call)
    is told apart from one that had too much to do."""
    seen = []

    def on_tick(tick):
        seen.append(tick.number)
        if len(seen) == 3:
            time.sleep(2.5 * PERIOD)

    loop = ticking_loop(on_tick)
    report = run_until_late(loop)
    assert report.previous >= 2.5 * PERIOD * 0.9
    assert report.previous_cpu < 0.5 * PERIOD
    assert f"({report.previous_cpu * 1e3:.0f} ms of it on the CPU; " in report.describe()
    loop.close()


def test_a_poll_back_late_is_time_the_loop_did_not_run_not_waiting():
    """The loop's thread can be kept from running past a poll's timeout (a
    thread holding the GIL, a busy host): that is not idle time."""
    loop = ticking_loop()
    held = []

    class HeldOnce:
        """The loop's poller, but back 3 periods late once (as if another
        thread kept the GIL)."""

        def __init__(self, poller):
            self.poller = poller

        def __getattr__(self, name):
            return getattr(self.poller, name)

        def poll(self, timeout):
            events = self.poller.poll(timeout)
            if timeout and not held:
                held.append(timeout)
                time.sleep(3 * PERIOD)
            return events

    loop.poller = HeldOnce(loop.poller)
    report = run_until_late(loop)
    assert held and report.lateness >= 2 * PERIOD
    assert report.not_running >= 2.5 * PERIOD
    assert report.waiting <= held[0] + 0.003
    assert report.describe().split(": ", 1)[1].startswith("not running")
    loop.close()


def test_the_times_add_up_to_the_span_and_nothing_is_counted_twice():
    loop = ticking_loop()
    ours, theirs = socket.socketpair()
    try:
        loop.register(ours, 1, OnceSlow(ours, 2 * PERIOD))
        loop.call_later(0.005, lambda: work(PERIOD))
        theirs.send(b"x")
        report = run_until_late(loop)
        accounted = (report.io + report.timers + report.other_ticks + report.waiting
                     + report.not_running)
        # Counted twice (a tick inside the handlers' time, say), the parts
        # would outgrow the span by that much.
        assert abs(accounted - report.since) < 0.005
        spent = loop.spent
        assert spent.io >= 2 * PERIOD * 0.9 and spent.timers >= PERIOD * 0.9
    finally:
        ours.close()
        theirs.close()
        loop.close()


def late_by(loop, seconds):
    """Hold the loop ``seconds`` past the next tick's deadline; the report.

    First the ticks catch up (a tick late from the last hold is not this
    one), so that the hold starts just before a deadline still ahead."""
    end = time.monotonic() + 2
    while loop.sched.deadline - loop.time() < PERIOD / 2 and time.monotonic() < end:
        loop.run_once(0.005)
    lead = PERIOD / 4  # the poll's wake-up may overshoot a little: start well before
    loop.call_at(loop.sched.deadline - lead, lambda: work(seconds + lead))
    loop.last_late_tick = None
    return run_until_late(loop)


def test_late_ticks_are_logged_once_per_interval_unless_twice_as_late(caplog):
    caplog.set_level(logging.WARNING, logger="netcore.loop")
    loop = ticking_loop()
    loop.late_report_every = 60.0

    def logged():
        return [r.getMessage() for r in caplog.records if " ms late; " in r.getMessage()]

    first = late_by(loop, 1.5 * PERIOD)
    for _ in range(2):  # no later than the first: counted, not logged
        assert late_by(loop, 1.0 * PERIOD).lateness < 2 * first.lateness
    assert len(logged()) == 1 and logged()[0].startswith(f"tick {first.number} ")
    worse = late_by(loop, 4 * PERIOD)  # twice as late as the one logged: logged too
    assert worse.lateness >= 2 * first.lateness
    assert len(logged()) == 2 and logged()[1].startswith(f"tick {worse.number} ")
    # The two counted, and the ticks that caught up after each hold, late too.
    more = re.search(r"\((\d+) more late ticks since the last report\)$", logged()[1])
    assert more and int(more.group(1)) >= 2
    loop.late_report_every = 0.0
    last = late_by(loop, 1.0 * PERIOD)
    assert len(logged()) >= 3 and logged()[-1].startswith(f"tick {last.number} ")
    loop.close()


def test_describe_puts_the_biggest_cause_first():
    report = LateTick(number=7, lateness=0.3, period=0.25, previous=0.1, previous_cpu=0.1,
                      previous_others=0.0,
                      since=0.4, io=0.01,
                      events=3, longest_round=0.01, timers=0.0, longest_timer=0.0,
                      longest_timer_name="", other_ticks=0.0, gc=0.0, longest_gc=0.0,
                      gc_generation=-1, waiting=0.0, not_running=0.38)
    text = report.describe()
    assert text.startswith("tick 7 fired 300 ms late; since the tick before ended (400 ms): "
                           "not running 380.0 ms")
    assert "waiting 0.0 ms" in text


def test_a_garbage_collection_behind_a_late_tick_is_named_with_its_generation():
    import gc

    junk = [[i] for i in range(300_000)]  # many tracked objects: a full pass takes a while
    for i in range(0, len(junk) - 1, 2):
        junk[i].append(junk[i + 1])
    gc.collect()  # before the ticks start: none of this is theirs
    loop = ticking_loop()

    def collect_and_work():
        gc.collect()  # a full (generation 2) pass, timed by the loop's gc.callbacks entry
        work(2 * PERIOD)

    loop.call_later(0.005, collect_and_work)
    report = run_until_late(loop)
    assert report.gc > 0 and report.longest_gc > 0 and report.gc_generation == 2
    assert report.longest_gc <= report.gc <= report.timers + report.previous
    assert "garbage collection" in report.describe() and "generation 2" in report.describe()
    again = EventLoop()
    again.start_ticker(PERIOD, lambda tick: None)
    assert sum(1 for cb in gc.callbacks if type(cb).__name__ == "_GcClock") == 1
    again.close()
    loop.close()
    del junk


def test_a_tick_slowed_by_another_thread_holding_the_gil_says_how_much_it_used():
    import threading

    stop = threading.Event()

    def spin():  # pure Python: holds the GIL but for the switch interval's handovers
        while not stop.is_set():
            sum(range(1000))

    seen = []

    def on_tick(tick):
        seen.append(tick.number)
        if len(seen) == 3:
            other = threading.Thread(target=spin)
            other.start()
            work(2.5 * PERIOD)
            stop.set()
            other.join()

    loop = ticking_loop(on_tick)
    report = run_until_late(loop)
    assert report.previous_others > 0.2 * report.previous  # the spinner's share of the tick
    assert f"other threads {report.previous_others * 1e3:.0f} ms" in report.describe()
    loop.close()
