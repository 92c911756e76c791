"""Prometheus text exposition (format 0.0.4) from counters a server already keeps.

Nothing here runs on the hot path: the server bumps plain ``int`` slots in
:class:`~netcore.stats.NetStats` and the tick scheduler fills its fixed
:class:`~netcore.stats.Histogram`; this module only reads them when a scrape
asks. :class:`Exposition` is a small generic writer (HELP/TYPE lines, label
escaping, histograms); ``add_net_stats``, ``add_tick_stats``,
``add_loop_stats`` and ``add_process_stats`` map netcore's own figures onto
conventional names.

The process figures use the names the official client libraries use
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...) so
existing dashboards recognise them.
"""

from __future__ import annotations

import math
import os
import resource
import time

from .stats import Histogram, NetStats
from .tick import TickScheduler
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

    from .loop import EventLoop

__all__ = [
    "CONTENT_TYPE",
    "Exposition",
    "ProcessStats",
    "add_loop_stats",
    "add_net_stats",
    "add_process_stats",
    "add_tick_stats",
    "process_stats",
    "rss_bytes",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

if TYPE_CHECKING:
    Labels = Mapping[str, str]
    Sample = Tuple[Labels, float]

_KINDS = ("counter", "gauge", "histogram", "untyped")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _valid_name(name: str) -> bool:
    if not name or not (name[0].isalpha() or name[0] in "_:"):
        return False
    return all(c.isalnum() or c in "_:" for c in name) and name.isascii()


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


class Exposition:
    """Accumulates metric families and renders them as one text document.

    Each family is written once, with its ``# HELP`` and ``# TYPE`` lines;
    adding a second family of the same name is a programming error and
    raises, since Prometheus rejects such a scrape.
    """

    def __init__(self) -> None:
        self._lines: List[str] = []
        self._names: Set[str] = set()

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One family whose samples are all named ``name`` (with their labels)."""
        self._head(name, kind, help_text)
        for labels, value in samples:
            self._lines.append(f"{name}{_label_text(labels)} {_format_value(value)}")

    def counter(self, name: str, help_text: str, value: float,
                labels: Optional[Labels] = None) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end with _total")
        self.family(name, "counter", help_text, [(labels or {}, value)])

    def gauge(self, name: str, help_text: str, value: float,
              labels: Optional[Labels] = None) -> None:
        self.family(name, "gauge", help_text, [(labels or {}, value)])

    def labelled(self, name: str, kind: str, help_text: str, label: str,
                 values: Mapping[str, float]) -> None:
        """A family keyed by one label (``closed_total{reason="..."}``), sorted by key."""
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end with _total")
        self.family(name, kind, help_text,
                    [({label: key}, values[key]) for key in sorted(values)])

    def histogram(self, name: str, help_text: str, hist: Histogram,
                  labels: Optional[Labels] = None) -> None:
        """``name_bucket{le=...}`` (cumulative), ``name_sum`` and ``name_count``."""
        self._head(name, "histogram", help_text)
        base = dict(labels or {})
        lines = self._lines
        for bound, count in hist.cumulative():
            le = dict(base)
            le["le"] = _format_value(bound) if math.isfinite(bound) else "+Inf"
            lines.append(f"{name}_bucket{_label_text(le)} {count}")
        lines.append(f"{name}_sum{_label_text(base)} {_format_value(hist.sum)}")
        lines.append(f"{name}_count{_label_text(base)} {hist.count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n" if self._lines else ""

    def _head(self, name: str, kind: str, help_text: str) -> None:
        if not _valid_name(name):
            raise ValueError(f"invalid metric name {name!r}")
        if kind not in _KINDS:
            raise ValueError(f"unknown metric type {kind!r}")
        if name in self._names:
            raise ValueError(f"metric {name!r} added twice")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")


# -- netcore's own figures ---------------------------------------------------


def add_net_stats(exp: Exposition, stats: NetStats, prefix: str,
                  max_connections: Optional[int] = None) -> None:
    """Connections, churn by reason, traffic and backpressure of one TCPServer."""
    p = prefix
    exp.gauge(f"{p}_connections", "Connections open now.", stats.connections)
    if max_connections is not None:
        exp.gauge(f"{p}_connections_max", "Configured connection limit.", max_connections)
    exp.counter(f"{p}_connections_accepted_total", "Connections accepted and served.",
                stats.accepted)
    exp.labelled(f"{p}_connections_closed_total", "counter",
                 "Connections closed, by reason.", "reason", stats.closed_by_reason)
    exp.labelled(f"{p}_connections_refused_total", "counter",
                 "Connections refused at accept, by reason.", "reason",
                 {"full": stats.refused_full, "fd-limit": stats.refused_fd_limit})
    exp.counter(f"{p}_accept_errors_total", "accept() failures other than running out of fds.",
                stats.accept_errors)
    exp.counter(f"{p}_frames_received_total", "Whole frames read from clients.", stats.frames_in)
    exp.counter(f"{p}_frames_sent_total", "Frames written to clients (sent or queued).",
                stats.frames_out)
    exp.counter(f"{p}_bytes_received_total", "Bytes read from client sockets.", stats.bytes_in)
    exp.counter(f"{p}_bytes_sent_total", "Bytes the kernel accepted for client sockets.",
                stats.bytes_out)
    exp.counter(f"{p}_sends_total", "Writes handed to connections (one per client per tick).",
                stats.sends)
    exp.gauge(f"{p}_output_queued_bytes",
              "Bytes waiting in per-connection output queues (not yet taken by the kernel).",
              stats.queued_out_bytes)
    exp.counter(f"{p}_slow_consumer_disconnects_total",
                "Clients closed because their output queue reached its cap.",
                stats.slow_consumers)
    exp.labelled(f"{p}_limits_total", "counter",
                 "Limits that fired (a refusal or a close), by limit name.", "limit",
                 stats.limits)
    exp.labelled(f"{p}_untrusted_forwarding_total", "counter",
                 "X-Forwarded-For headers (ignored) and PROXY headers (closed) from peers "
                 "that are not trusted proxies, by kind.", "kind",
                 {"x-forwarded-for": stats.untrusted.get("x-forwarded-for", 0),
                  "proxy-header": stats.untrusted.get("proxy-header", 0)})
    exp.counter(f"{p}_tls_handshakes_total", "TLS handshakes completed.", stats.tls_handshakes)
    exp.labelled(f"{p}_tls_errors_total", "counter",
                 "TLS errors (each closed its connection), by OpenSSL's name for them.",
                 "error", stats.tls_errors)


def add_tick_stats(exp: Exposition, sched: TickScheduler, prefix: str) -> None:
    """Tick counts, and histograms of tick work duration and wake-up lateness."""
    p = prefix
    exp.gauge(f"{p}_tick_period_seconds", "Configured tick period.", sched.period)
    exp.counter(f"{p}_ticks_total", "Ticks fired.", sched.fired)
    exp.counter(f"{p}_ticks_late_total",
                f"Ticks that fired more than {sched.late_after:g} s after their deadline.",
                sched.late)
    exp.counter(f"{p}_ticks_skipped_total",
                "Tick numbers skipped after a stall (the schedule moved on).", sched.skipped)
    exp.histogram(f"{p}_tick_duration_seconds", "Time spent doing one tick's work.",
                  sched.duration_hist)
    exp.histogram(f"{p}_tick_lateness_seconds", "How long after its deadline a tick fired.",
                  sched.lateness_hist)
    exp.gauge(f"{p}_tick_lateness_max_seconds", "Largest tick lateness since start.",
              sched.max_lateness)


def add_loop_stats(exp: Exposition, loop: EventLoop, prefix: str) -> None:
    """Where the event loop's time went, by phase: a CPU split without a profiler.

    ``waiting`` is idle (the poll, the coalescing pause); wall time less all
    four phases is time the loop's thread did not run (see ``LoopTime``).
    """
    spent = loop.spent
    exp.labelled(f"{prefix}_loop_seconds_total", "counter",
                 "Event loop time by phase: waiting (poll and coalescing pause), io (ready "
                 "handlers), timers, ticks.", "phase",
                 {"waiting": spent.waiting, "io": spent.io, "timers": spent.timers,
                  "ticks": spent.ticks})
    exp.counter(f"{prefix}_loop_events_total", "Ready events the loop handled.", loop.events)
    exp.gauge(f"{prefix}_loop_poller_info", "The poller the event loop runs on (always 1).", 1,
              {"poller": loop.poller.name})


class ProcessStats:
    """RSS, CPU and descriptors of this process, read from /proc when asked."""

    __slots__ = ("rss_bytes", "cpu_seconds", "open_fds", "max_fds", "start_time")

    def __init__(self, rss_bytes: int, cpu_seconds: float, open_fds: Optional[int],
                 max_fds: Optional[int], start_time: Optional[float]) -> None:
        self.rss_bytes = rss_bytes
        self.cpu_seconds = cpu_seconds
        self.open_fds = open_fds
        self.max_fds = max_fds
        self.start_time = start_time

    def as_dict(self) -> Dict[str, Optional[float]]:
        return {name: getattr(self, name) for name in self.__slots__}


def rss_bytes(proc: str = "/proc") -> int:
    """This process's resident set size, from ``/proc/self/statm`` (0 without /proc)."""
    try:
        with open(os.path.join(proc, "self", "statm"), "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _boot_time(proc: str) -> Optional[float]:
    """When the machine booted, seconds since the epoch.

    ``btime`` in ``/proc/stat``; where that is hidden (systemd's
    ``ProcSubset=pid`` leaves only the processes' directories), the wall
    clock less ``CLOCK_BOOTTIME``, the clock ``/proc/self/stat`` counts in.
    """
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return None
    return time.time() - time.clock_gettime(boottime)


def _read_start_time(proc: str) -> Optional[float]:
    """Process start, seconds since the epoch (from boot time + start ticks)."""
    try:
        with open(os.path.join(proc, "self", "stat"), "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat; fields[0] is field 3
    except (OSError, ValueError, IndexError):
        return None
    booted = _boot_time(proc)
    return None if booted is None else booted + start_ticks / os.sysconf("SC_CLK_TCK")


def process_stats(proc: str = "/proc", count_fds: bool = True) -> ProcessStats:
    """A fresh reading: a few small /proc reads.

    Counting open descriptors lists ``/proc/self/fd``, which takes ~10 ms at
    15,000 fds: fine for a scrape every 15 s, too much to do every second
    (``count_fds=False`` leaves ``open_fds`` None).
    """
    times = os.times()
    open_fds: Optional[int] = None
    if count_fds:
        try:
            open_fds = len(os.listdir(os.path.join(proc, "self", "fd"))) - 1
        except OSError:
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ProcessStats(
        rss_bytes=rss_bytes(proc),
        cpu_seconds=times.user + times.system,
        open_fds=open_fds,
        max_fds=None if soft == resource.RLIM_INFINITY else soft,
        start_time=_read_start_time(proc),
    )


def add_process_stats(exp: Exposition, ps: Optional[ProcessStats] = None) -> ProcessStats:
    """The standard ``process_*`` families; returns the reading it used."""
    ps = ps if ps is not None else process_stats()
    exp.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", ps.rss_bytes)
    exp.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                ps.cpu_seconds)
    if ps.open_fds is not None:
        exp.gauge("process_open_fds", "Number of open file descriptors.", ps.open_fds)
    if ps.max_fds is not None:
        exp.gauge("process_max_fds", "Maximum number of open file descriptors.", ps.max_fds)
    if ps.start_time is not None:
        exp.gauge("process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.", ps.start_time)
    return ps
