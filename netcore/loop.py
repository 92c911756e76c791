"""The event loop: one poller (epoll, or a ``selectors`` selector), timers, ticks and signals.

Each registered file object carries a handler with ``on_ready(mask)``; the
loop does nothing per event but call it, so dispatch costs one method call.
The poller is :mod:`netcore.poller`'s: on Linux, by default, ``select.epoll``
driven directly (a list slot per socket, no ``SelectorKey``; connections
polled edge-triggered, which ``selectors`` cannot do); with
``EventLoop(poller="selectors")``, elsewhere, or when given a selector, a
``selectors`` selector (epoll level-triggered, kqueue on the BSDs and macOS,
``PollSelector``, ``SelectSelector``).

While busy it polls at most once per ``coalesce`` seconds (default 2 ms), so
one poll collects what arrived meanwhile instead of waking up for each
message; an idle loop wakes at once (see :class:`EventLoop`).

One iteration: wait until the earliest of {I/O, next timer, next tick}; fire
a due tick first (so its lateness is the loop's wake-up precision, not the
time spent on I/O), then due timers, then I/O handlers (with a tick fired
between two of them as soon as it is due), then ``call_soon`` callbacks. An
exception in any callback is logged and the loop goes on: one bad connection
must not stop a server.

I/O keeps a share of the loop. After a tick, what arrived during it is
served, one round of every ready handler, before the next tick fires (for
``io_share`` of a period at most); and after a tick that outgrew its
period, waiting I/O gets all of ``io_share`` of a period. Such ticks then run
late (and are counted late) instead of firing back to back with a single
event handled between two ticks, which starves every connection: a join
storm's HELLOs would wait unread for seconds. I/O that keeps coming (moves
arriving all the time) holds a tick back by that one round, no more: a tick
that takes 90 % of its period stays on time if the round fits in the rest.

The loop keeps where its time went (``EventLoop.spent``: waiting, I/O
handlers, timers, ticks; a few clock reads per iteration, none per event),
and a tick that fires late says why: what ran since the tick before ended,
biggest cause first (:class:`LateTick`, logged at most every 10 s, or at
once for a tick twice as late as the last one logged).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import signal
import socket
import time
from collections import deque

from .poller import EVENT_READ, EVENT_WRITE, make_poller
from .tick import Tick, TickScheduler
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import selectors
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

    from .poller import Poller

__all__ = ["DEFAULT_COALESCE", "EVENT_READ", "EVENT_WRITE", "EventLoop", "LateTick", "LoopTime",
           "Readiness", "Timer"]

log = logging.getLogger(__name__)

INF = float("inf")
_FULL_IO_TIME = 1 << 62  # an io_round no iteration reaches: I/O keeps all of io_time
# A poll (and coalescing pause) back later than its timeout by more than
# this (epoll rounds up to whole ms) was not waiting: its thread did not run.
_WAKE_SLACK = 0.002
# This thread's CPU time (user + system), read twice a tick: a tick whose
# wall time is well over it waited (another thread held the GIL, the host);
# with the process's (time.process_time), what the other threads used.
_thread_time: Callable[[], float] = getattr(time, "thread_time", time.process_time)

# Seconds between two polls while the loop is busy (see EventLoop): what a
# request arriving on a busy loop may wait before it is read, at most.
DEFAULT_COALESCE = 0.002

if TYPE_CHECKING:
    Ready = List[Tuple["Readiness", int]]

class Readiness:
    """What the loop calls when a registered file object is ready.

    ``edge_triggered``: a class that sets it True is polled edge-triggered
    where the poller can (epoll: ``EPOLLET``), so a socket it has read
    costs the kernel no second readiness check at the next poll. Such a
    handler must read until the kernel has nothing left (a short read), or
    else ask for another turn with :meth:`EventLoop.ready_again`: no new
    event comes for what is already waiting. A socket whose peer hung up
    (FIN or RST, perhaps queued behind data one short read returned) is
    polled level-triggered from then on, so its end is always seen.
    """

    __slots__ = ()

    edge_triggered = False

    def on_ready(self, mask: int) -> None:
        raise NotImplementedError

    def on_error(self, exc: BaseException) -> None:
        """``on_ready`` raised; the default just logs it."""
        log.error("handler %r failed", self, exc_info=exc)


class Timer:
    """A callback at a time; ``cancel()`` before it fires to drop it."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LoopTime:
    """Where the loop's time went: seconds since it started, sums that only grow.

    ``waiting``: in the poll and the coalescing pause (idle, or letting
    events gather) up to the time they were asked to last; ``io``: in
    ready handlers and ``call_soon`` callbacks; ``timers`` and ``ticks``:
    in their callbacks. Wall time less all four is time the loop's thread
    did not run: a poll back later than its timeout (another thread held
    the GIL, or the host ran something else), or the loop's bookkeeping.
    """

    __slots__ = ("waiting", "io", "timers", "ticks")

    def __init__(self) -> None:
        self.waiting = 0.0
        self.io = 0.0
        self.timers = 0.0
        self.ticks = 0.0


class LateTick(NamedTuple):
    """Why a tick fired late: what the loop did since the tick before it ended.

    The loop logs :meth:`describe` (at most once per
    ``EventLoop.late_report_every`` seconds, unless a tick is twice as late
    as the last one logged) and keeps the newest as
    ``EventLoop.last_late_tick``. Times in seconds.
    """

    number: int  # the late tick's number
    lateness: float
    period: float
    previous: float  # how long the tick before it took
    previous_cpu: float  # of which on the CPU (this thread's user + system time)
    previous_others: float  # CPU the process's other threads used meanwhile
    since: float  # from the end of the tick before to this one firing
    io: float  # in ready handlers (and call_soon callbacks) meanwhile
    events: int  # ready events they handled
    longest_round: float  # the longest single poll's worth of handlers
    timers: float  # in timer callbacks meanwhile
    longest_timer: float
    longest_timer_name: str  # what the longest timer called ("" if none ran)
    other_ticks: float  # in other tickers' ticks meanwhile
    gc: float  # in the garbage collector, from the tick before's start (inside the above)
    longest_gc: float  # its longest pass then
    gc_generation: int  # that pass's generation (-1: none)
    waiting: float  # in the poll and the coalescing pause
    not_running: float  # the rest: other threads, the scheduler, bookkeeping

    def describe(self) -> str:
        """One log line: the numbers, biggest cause first."""
        ms = 1e3
        causes = [
            (self.previous - self.period, f"the tick before took {self.previous * ms:.0f} ms "
                                          f"of its {self.period * ms:.0f} ms period "
                                          f"({self.previous_cpu * ms:.0f} ms of it on the CPU; "
                                          f"other threads {self.previous_others * ms:.0f} ms)"),
            (self.io, f"I/O handlers {self.io * ms:.1f} ms ({self.events} events, the longest "
                      f"round {self.longest_round * ms:.1f} ms)"),
            (self.timers, f"timers {self.timers * ms:.1f} ms" + (
                f" (the longest {self.longest_timer * ms:.1f} ms: {self.longest_timer_name})"
                if self.longest_timer_name else "")),
            (self.other_ticks, f"other ticks {self.other_ticks * ms:.1f} ms"),
            (self.not_running, f"not running {self.not_running * ms:.1f} ms "
                               "(other threads, the scheduler)"),
        ]
        causes.sort(key=lambda cause: -cause[0])
        collector = (f"; garbage collection {self.gc * ms:.1f} ms of the above and the tick "
                     f"before (the longest pass {self.longest_gc * ms:.1f} ms, generation "
                     f"{self.gc_generation})" if self.gc >= 0.001 else "")
        return (f"tick {self.number} fired {self.lateness * ms:.0f} ms late; since the tick "
                f"before ended ({self.since * ms:.0f} ms): "
                + ", ".join(text for _, text in causes)
                + f", waiting {self.waiting * ms:.1f} ms" + collector)


class _GcClock:
    """Time in the cyclic garbage collector, process-wide (a ``gc.callbacks`` entry).

    A pass runs inside whatever allocated last (a tick, a handler), so it is
    reported beside the phases, not as one: a late tick then says whether a
    full collection of the players' objects (tens of ms) was behind it.
    """

    __slots__ = ("total", "started", "longest", "generation")

    def __init__(self) -> None:
        self.total = 0.0
        self.started = 0.0
        self.longest = 0.0  # since the last reset (each tick's start)
        self.generation = -1

    def __call__(self, phase: str, info: Dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started = now
            return
        took = now - self.started
        self.total += took
        if took > self.longest:
            self.longest = took
            self.generation = int(info.get("generation", -1))


_GC = _GcClock()


def _callable_name(callback: Callable[..., Any]) -> str:
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    owner = getattr(callback, "__self__", None)
    if owner is not None and "." not in name:
        name = f"{type(owner).__qualname__}.{name}"
    return name


class _Ticker:
    __slots__ = ("scheduler", "callback", "io_time", "io_until", "io_round", "previous",
                 "previous_cpu", "previous_others", "mark", "gc_mark")

    def __init__(self, scheduler: TickScheduler, callback: Callable[[Tick], None],
                 io_time: float) -> None:
        self.scheduler = scheduler
        self.callback = callback
        self.io_time = io_time  # seconds of I/O kept after each tick, at most
        self.io_until = -INF  # waiting I/O may run until then before the next tick
        # The loop iteration whose poll and handlers must be done first: the
        # one after the tick (what arrived during it), or, for a tick that
        # ended when the next was already due, none (io_time in full).
        self.io_round = -1
        self.previous = 0.0  # how long the last tick took
        self.previous_cpu = 0.0  # of which on the CPU: less if it waited (the GIL, the host)
        self.previous_others = 0.0  # the other threads' CPU meanwhile (the GIL's holders)
        # At the end of the last tick: the clock, LoopTime's four sums and
        # the events count, for the report of a late tick after it.
        self.mark: Optional[Tuple[float, float, float, float, float, int]] = None
        self.gc_mark = 0.0  # _GC.total when the last tick started

    def holds(self, iteration: int, now: float) -> bool:
        """Whether waiting I/O still goes before this ticker's due tick."""
        return now < self.io_until and iteration <= self.io_round

    def due(self, iteration: int) -> float:
        """When the next tick fires if I/O is waiting."""
        deadline = self.scheduler.deadline
        if iteration > self.io_round or deadline >= self.io_until:
            return deadline
        return self.io_until


class _SignalReader(Readiness):
    """Drains the wakeup socket that ``signal.set_wakeup_fd`` writes to."""

    __slots__ = ("loop", "sock")

    def __init__(self, loop: "EventLoop", sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock

    def on_ready(self, mask: int) -> None:
        while True:
            try:
                data = self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                self.loop._dispatch_signal(signum)


class EventLoop:
    """One thread's event loop: I/O readiness, timers, fixed-rate ticks, signals.

    Register a file object with a :class:`Readiness` handler (``register``),
    schedule callbacks (``call_soon``, ``call_later``, ``call_at``; a
    :class:`Timer` can be cancelled), start a drift-free tick
    (``start_ticker``) and route signals to callbacks
    (``add_signal_handler``), then ``run()`` until ``stop()``. The order of
    one iteration is in the module docstring. Not thread-safe: everything
    is called from the thread that runs it. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        selector: Optional[selectors.BaseSelector] = None,
        clock: Callable[[], float] = time.monotonic,
        coalesce: float = DEFAULT_COALESCE,
        poller: Optional[str] = None,
    ) -> None:
        """``poller``: ``"epoll"`` drives ``select.epoll`` directly (Linux;
        connections are polled edge-triggered), ``"selectors"`` a plain
        ``selectors.DefaultSelector()`` (level-triggered; any platform);
        None, the default: epoll where there is one (see
        :mod:`netcore.poller`). ``selector``: poll with this ``selectors``
        selector instead (a ``"selectors"`` poller).

        ``coalesce``: while busy, poll at most once per this many seconds.
        After a poll that found something ready, the next one waits until
        ``coalesce`` seconds after it (unless a tick or timer is due before
        that: then it polls as usual, so input that arrives just before a
        tick is read before it), so what arrives meanwhile is collected by
        one poll rather than one wake-up each: with thousands of players moving, one ``epoll_wait`` returns
        hundreds of sockets. An idle loop still wakes at once for the first
        event, so the added delay is at most ``coalesce`` for anything
        (a request, a handshake, a ping) and only on a busy loop. 0: off.
        """
        if coalesce < 0:
            raise ValueError("coalesce must be >= 0")
        self.poller: Poller = make_poller(poller, selector)
        self.clock = clock
        self.sleep: Callable[[float], None] = time.sleep  # the coalescing pause (tests swap it)
        self.coalesce = coalesce
        self._busy_until = 0.0  # while busy: no poll before this (clock time)
        self._timers: List[Tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: Deque[Callable[[], None]] = deque()
        self._again: Ready = []  # handlers with input left over: dispatched with the next poll
        #: True where handlers that ask for it are polled edge-triggered (epoll).
        self.edge_triggered: bool = self.poller.edge_triggered
        self._tickers: List[_Ticker] = []
        self._signal_callbacks: Dict[int, Callable[[int], None]] = {}
        self._signal_reader: Optional[_SignalReader] = None
        self._signal_writer: Optional[socket.socket] = None
        self._old_wakeup_fd = -1
        self._stopping = False
        self.running = False
        self.iterations = 0
        self.events = 0  # ready events dispatched, all polls together
        self.spent = LoopTime()
        # Since the last tick (of any ticker): the longest poll's worth of
        # handlers, and the longest timer callback, for LateTick.
        self._longest_round = 0.0
        self._longest_timer = 0.0
        self._longest_timer_callback: Optional[Callable[[], None]] = None
        #: The newest late tick's report (see LateTick); logged at most once
        #: per ``late_report_every`` seconds, with a count of those left out.
        self.last_late_tick: Optional[LateTick] = None
        self.late_report_every = 10.0
        self._late_logged_at = -INF
        self._late_logged_lateness = 0.0
        self._late_unlogged = 0

    # -- time ---------------------------------------------------------------

    def time(self) -> float:
        return self.clock()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.clock() + delay, callback)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._soon.append(callback)

    def start_ticker(
        self,
        period: float,
        callback: Callable[[Tick], None],
        late_after: Optional[float] = None,
        max_catchup: int = 8,
        io_share: float = 0.25,
    ) -> TickScheduler:
        """Call ``callback(tick)`` every ``period`` seconds, fixed-rate.

        The first tick is due one period from now. Returns the scheduler,
        whose counters report lateness; ``stop_ticker`` ends it.
        ``io_share``: the most of a period that waiting I/O gets after a tick
        before the next one fires: one round of the handlers that are ready,
        or all of it after a tick that outgrew its period (see the module
        docstring); 0: none.
        """
        if not 0 <= io_share < 1:
            raise ValueError("io_share must be in [0, 1)")
        sched = TickScheduler(period, self.clock() + period, late_after, max_catchup)
        if _GC not in gc.callbacks:  # once per process; costs a call per collection
            gc.callbacks.append(_GC)
        self._tickers.append(_Ticker(sched, callback, io_share * period))
        return sched

    def stop_ticker(self, scheduler: TickScheduler) -> None:
        self._tickers = [t for t in self._tickers if t.scheduler is not scheduler]

    # -- I/O registration ---------------------------------------------------

    def register(self, fileobj: Any, events: int, handler: Readiness) -> None:
        """Call ``handler.on_ready(mask)`` when ``fileobj`` (or an fd) is ready.

        Passing the int fd the caller already holds (as ``Connection.fd``)
        rather than the socket spares the poller an int object per socket.
        """
        self.poller.register(fileobj, events, handler, handler.edge_triggered)

    def modify(self, fileobj: Any, events: int, handler: Readiness) -> None:
        self.poller.modify(fileobj, events, handler, handler.edge_triggered)

    def unregister(self, fileobj: Any) -> None:
        self.poller.unregister(fileobj)

    def ready_again(self, handler: Readiness) -> None:
        """Call ``handler.on_ready(EVENT_READ)`` again with the next poll's events.

        For an edge-triggered handler that stopped reading before the kernel
        ran dry (its read budget was used up): the next poll does not wait,
        and the handler takes its turn after the ones that poll returns, so
        one busy peer cannot keep the others (or a due tick) waiting.
        """
        self._again.append((handler, EVENT_READ))

    # -- signals ------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` from the loop when ``signum`` arrives.

        Uses ``signal.set_wakeup_fd`` so a signal wakes a sleeping ``select``
        at once. Main thread only, as with ``signal.signal``.
        """
        if self._signal_reader is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._old_wakeup_fd = signal.set_wakeup_fd(
                writer.fileno(), warn_on_full_buffer=False
            )
            self._signal_writer = writer
            self._signal_reader = _SignalReader(self, reader)
            self.register(reader, EVENT_READ, self._signal_reader)
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _note_signal)

    def remove_signal_handlers(self) -> None:
        for signum in list(self._signal_callbacks):
            signal.signal(signum, signal.SIG_DFL)
        self._signal_callbacks.clear()
        if self._signal_reader is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self.unregister(self._signal_reader.sock)
            self._signal_reader.sock.close()
            assert self._signal_writer is not None
            self._signal_writer.close()
            self._signal_reader = None
            self._signal_writer = None

    def _dispatch_signal(self, signum: int) -> None:
        callback = self._signal_callbacks.get(signum)
        if callback is not None:
            self._guard(callback, signum)

    # -- running ------------------------------------------------------------

    def stop(self) -> None:
        """Make ``run()`` return after the current iteration."""
        self._stopping = True

    def run(self) -> None:
        self._stopping = False
        self.running = True
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self.running = False

    def run_for(self, seconds: float) -> None:
        """Run until ``stop()`` or until ``seconds`` have passed."""
        end = self.clock() + seconds
        self._stopping = False
        self.running = True
        try:
            while not self._stopping:
                now = self.clock()
                if now >= end:
                    break
                self.run_once(end - now)
        finally:
            self.running = False

    def run_until(self, condition: Callable[[], object], timeout: float,
                  step: float = 0.05) -> bool:
        """Run until ``condition()`` is true or ``timeout`` seconds (wall time) pass.

        For a short-lived tool that drives the loop itself (a probe, a test):
        the condition is checked before each iteration, so it may already
        hold, and each iteration waits at most ``step`` s for events (short,
        when the condition depends on sockets the loop does not watch).
        Returns whether the condition held.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.run_once(min(left, step))
        return True

    def run_once(self, max_wait: Optional[float] = None) -> None:
        clock = self.clock
        spent = self.spent
        timeout = wait = self._timeout(max_wait)
        began = clock()
        if self._busy_until and timeout != 0.0:
            # Busy: let events gather until the coalescing interval is up,
            # if the whole pause fits before the next tick, timer or max_wait.
            # If not, poll as usual, so what arrives just before a tick is
            # still read before it (a move makes the tick it was sent for).
            pause = self._busy_until - began
            if pause > 0 and (timeout is None or pause < timeout):
                self.sleep(pause)
                if timeout is not None:  # what is left, even if the sleep overshot
                    timeout = max(0.0, timeout - (clock() - began))
        events = self.poller.poll(timeout)
        polled = clock()
        waited = polled - began
        if wait is not None and waited > wait + _WAKE_SLACK:
            # Back later than asked: the thread did not run meanwhile (another
            # held the GIL, or the host ran something else), not idle time.
            waited = wait + _WAKE_SLACK
        spent.waiting += waited
        again = self._again
        if again:
            self._again = []
            events = events + again if events else again
        self.iterations += 1
        if events:
            self.events += len(events)
            if self.coalesce:
                self._busy_until = polled + self.coalesce
        else:
            self._busy_until = 0.0
        if self._tickers:
            self._fire_ticks(bool(events))
        if self._timers:
            self._fire_timers()
        soon = self._soon
        if events or soon:
            ticks = spent.ticks
            start = clock()
            self._dispatch(events)
            for _ in range(len(soon)):
                self._guard(soon.popleft())
            took = clock() - start - (spent.ticks - ticks)  # less the ticks fired between
            spent.io += took
            if took > self._longest_round:
                self._longest_round = took

    def close(self) -> None:
        self.remove_signal_handlers()
        self.poller.close()

    # -- internals ----------------------------------------------------------

    def _dispatch(self, events: Ready) -> None:
        """Call each handler; with tickers, fire a tick the moment one is due
        between two events.

        A burst (a join storm: thousands of events in one select) or a few
        handlers that each take milliseconds (64 KiB of tiny frames to
        parse) must not hold up a tick: the clock is read after each event
        (~60 ns), and a due tick goes before the next one.
        """
        tickers = self._tickers
        iteration = self.iterations
        due = min(t.due(iteration) for t in tickers) if tickers and len(events) > 1 else INF
        clock = self.clock
        for handler, mask in events:
            try:
                handler.on_ready(mask)
            except Exception as exc:  # noqa: BLE001 - one handler must not stop the loop
                try:
                    handler.on_error(exc)
                except Exception:  # noqa: BLE001
                    log.exception("error handler of %r failed", handler)
            if due != INF and clock() >= due:
                self._fire_ticks(True)
                tickers = self._tickers
                due = min(t.due(iteration) for t in tickers) if tickers else INF

    def _timeout(self, max_wait: Optional[float]) -> Optional[float]:
        if self._soon or self._again or self._stopping:
            return 0.0
        deadline: Optional[float] = None
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if timers:
            deadline = timers[0][0]
        for ticker in self._tickers:
            due = ticker.scheduler.deadline
            if deadline is None or due < deadline:
                deadline = due
        wait: Optional[float] = None
        if deadline is not None:
            wait = max(0.0, deadline - self.clock())
        if max_wait is not None and (wait is None or max_wait < wait):
            wait = max(0.0, max_wait)
        return wait

    def _fire_ticks(self, io_waiting: bool) -> None:
        """Fire the due ticks; with ``io_waiting``, not one whose I/O time is still on."""
        clock = self.clock
        for ticker in self._tickers:
            now = clock()
            if io_waiting and ticker.holds(self.iterations, now):
                continue
            sched = ticker.scheduler
            tick = sched.poll(now)
            if tick is None:
                continue
            if tick.lateness > sched.late_after and ticker.mark is not None:
                self._late_tick(ticker, tick, now)
            started = clock()
            gc_mark = _GC.total
            _GC.longest, _GC.generation = 0.0, -1  # the next report's longest pass: from here
            cpu, all_cpu = _thread_time(), time.process_time()
            self._guard(ticker.callback, tick)
            ticker.previous_cpu = _thread_time() - cpu
            ticker.previous_others = max(0.0, time.process_time() - all_cpu
                                         - ticker.previous_cpu)
            ended = clock()
            took = ended - started
            sched.record_duration(took)
            spent = self.spent
            spent.ticks += took
            ticker.previous = took
            ticker.gc_mark = gc_mark
            ticker.mark = (ended, spent.waiting, spent.io, spent.timers, spent.ticks, self.events)
            self._longest_round = self._longest_timer = 0.0
            self._longest_timer_callback = None
            ticker.io_until = ended + ticker.io_time
            # On time (the next tick not yet due): one round of what waits,
            # capped at io_time. Outgrown (already due): io_time in full.
            ticker.io_round = self.iterations + 1 if sched.deadline > ended else _FULL_IO_TIME

    def _late_tick(self, ticker: _Ticker, tick: Tick, now: float) -> None:
        """Account for a late tick: keep the report, and log it (rate-limited)."""
        assert ticker.mark is not None
        ended, waiting, io, timers, ticks, events = ticker.mark
        spent = self.spent
        since = now - ended
        waiting, io = spent.waiting - waiting, spent.io - io  # meanwhile
        timers, ticks = spent.timers - timers, spent.ticks - ticks
        callback = self._longest_timer_callback
        report = LateTick(
            number=tick.number, lateness=tick.lateness, period=ticker.scheduler.period,
            previous=ticker.previous, previous_cpu=ticker.previous_cpu,
            previous_others=ticker.previous_others, since=since, io=io,
            events=self.events - events, longest_round=self._longest_round,
            timers=timers, longest_timer=self._longest_timer,
            longest_timer_name=_callable_name(callback) if callback is not None else "",
            other_ticks=ticks, gc=_GC.total - ticker.gc_mark,
            longest_gc=_GC.longest, gc_generation=_GC.generation, waiting=waiting,
            not_running=max(0.0, since - io - timers - ticks - waiting),
        )
        self.last_late_tick = report
        if (now - self._late_logged_at < self.late_report_every
                and tick.lateness < 2 * self._late_logged_lateness):
            self._late_unlogged += 1
            return
        more = (f" ({self._late_unlogged} more late ticks since the last report)"
                if self._late_unlogged else "")
        # Within the interval a tick is logged only if it is twice as late as
        # the last one logged: the worst of a bad spell is always on record.
        self._late_logged_lateness = tick.lateness
        self._late_logged_at = now
        self._late_unlogged = 0
        log.warning("%s%s", report.describe(), more)

    def _fire_timers(self) -> None:
        timers = self._timers
        clock = self.clock
        now = started = clock()  # what is due now; one added meanwhile waits a turn
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                timer.cancelled = True  # a timer fires once
                self._guard(timer.callback)
                ended = clock()
                took = ended - started
                self.spent.timers += took
                if took > self._longest_timer:
                    self._longest_timer = took
                    self._longest_timer_callback = timer.callback
                started = ended

    @staticmethod
    def _guard(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - logged; the loop must go on
            log.exception("callback %r failed", callback)


def _note_signal(signum: int, frame: object) -> None:
    """Python-level handler: the work happens via the wakeup fd."""
