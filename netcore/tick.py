"""A fixed-rate tick that does not drift.

``sleep(period)`` after each tick drifts by however long the tick itself took.
Here tick N is due at ``start + N * period`` whatever happened before, so an
hour of ticks ends an hour after it began. The scheduler is pure: it is given
the time rather than reading a clock, so tests drive it with a fake clock.

A tick that fires later than ``late_after`` past its deadline is counted as
late. If the process falls ``max_catchup`` whole periods behind (a stall, a
suspended VM), the skipped tick numbers are counted in ``skipped`` and the
schedule moves on rather than firing a burst of stale ticks; nothing is
dropped without being counted.
"""

from __future__ import annotations

from .stats import Histogram, Window
from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional

__all__ = ["LATENESS_BUCKETS", "Tick", "TickScheduler"]

# Seconds; shared by lateness and duration so both export the same way.
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


class Tick(NamedTuple):
    number: int  # 0-based, counts scheduled ticks (skipped ones included)
    deadline: float  # when it was due, on the scheduler's clock
    lateness: float  # seconds after the deadline that it fired
    skipped: int  # tick numbers jumped over just before this one


class TickScheduler:
    """The schedule of one fixed-rate tick, fed the time by its caller.

    ``poll(now)`` returns the :class:`Tick` due at ``now`` (or None), with
    its lateness and the tick numbers skipped before it; ``deadline`` is
    when the next one is due. It also keeps the lateness and duration
    histograms that metrics export. :meth:`EventLoop.start_ticker
    <netcore.loop.EventLoop.start_ticker>` makes and drives one.
    """

    __slots__ = (
        "period",
        "start",
        "next_number",
        "late_after",
        "max_catchup",
        "fired",
        "late",
        "skipped",
        "max_lateness",
        "recent_lateness",
        "recent_duration",
        "lateness_hist",
        "duration_hist",
    )

    def __init__(
        self,
        period: float,
        start: float,
        late_after: Optional[float] = None,
        max_catchup: int = 8,
        window: int = 1024,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self.start = start
        self.next_number = 0
        self.late_after = period / 10 if late_after is None else late_after
        self.max_catchup = max_catchup
        self.fired = 0
        self.late = 0
        self.skipped = 0
        self.max_lateness = 0.0
        self.recent_lateness = Window(window)
        self.recent_duration = Window(window)
        self.lateness_hist = Histogram(LATENESS_BUCKETS)
        self.duration_hist = Histogram(LATENESS_BUCKETS)

    @property
    def deadline(self) -> float:
        """When the next tick is due."""
        return self.start + self.next_number * self.period

    def poll(self, now: float) -> Optional[Tick]:
        """The tick due at ``now``, if any. Call again to get a further one."""
        number = self.next_number
        deadline = self.start + number * self.period
        if now < deadline:
            return None
        lateness = now - deadline
        jumped = 0
        if self.max_catchup > 0 and lateness >= self.max_catchup * self.period:
            jumped = int(lateness // self.period)
            number += jumped
            deadline = self.start + number * self.period
            lateness = now - deadline
            self.skipped += jumped
        self.next_number = number + 1
        self.fired += 1
        if lateness > self.late_after:
            self.late += 1
        if lateness > self.max_lateness:
            self.max_lateness = lateness
        self.recent_lateness.add(lateness)
        self.lateness_hist.observe(lateness)
        return Tick(number, deadline, lateness, jumped)

    def state(self) -> Dict[str, float]:
        """The schedule and its counts, for a successor's :meth:`resume` (JSON-ready)."""
        return {"start": self.start, "next": self.next_number, "fired": self.fired,
                "late": self.late, "skipped": self.skipped}

    def resume(self, state: Mapping[str, float], now: float) -> None:
        """Continue a predecessor's schedule (its :meth:`state`), at ``now``.

        The same clock (CLOCK_MONOTONIC is the machine's) and the same phase;
        the next tick keeps the next number and is due at once however long
        the hand-over took: neither a burst of ticks to catch up nor, past
        ``max_catchup`` periods, a jump in the numbers (players see them).
        """
        self.start, self.next_number = float(state["start"]), int(state["next"])
        self.fired, self.late, self.skipped = (int(state["fired"]), int(state["late"]),
                                               int(state["skipped"]))
        behind = now - self.deadline
        if behind > self.period:
            self.start += (behind // self.period) * self.period

    def record_duration(self, seconds: float) -> None:
        """How long the tick's work took (for stats; does not move deadlines)."""
        self.recent_duration.add(seconds)
        self.duration_hist.observe(seconds)

    def snapshot(self) -> Dict[str, float]:
        """The figures as JSON-ready numbers; a key that is a time ends in ``_s``.

        Percentiles are over the last ``window`` ticks; sums and counts are
        since the start, so a reader can take differences between snapshots.
        """
        return {
            "period_s": self.period,
            "fired": self.fired,
            "late": self.late,
            "skipped": self.skipped,
            "lateness_max_s": self.max_lateness,
            "lateness_p50_s": self.recent_lateness.percentile(50),
            "lateness_p99_s": self.recent_lateness.percentile(99),
            "duration_p50_s": self.recent_duration.percentile(50),
            "duration_p99_s": self.recent_duration.percentile(99),
            "duration_sum_s": self.duration_hist.sum,
            "duration_count": self.duration_hist.count,
        }
