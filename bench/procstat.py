"""Reading a process's RSS and CPU time from /proc, as the benchmarks need.

RSS comes from ``/proc/PID/statm`` (resident pages x page size): the same
quantity the original server reported, and the same file a process reads as
``/proc/self/statm``. CPU time comes from ``/proc/PID/stat`` (utime, stime).
"""

from __future__ import annotations

import os
import statistics
from typing import Dict, Iterable, Sequence, Tuple

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds used so far by ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def cpu_runtime(pid: int) -> float:
    """CPU seconds ``pid`` has run (user + system), to the nanosecond.

    ``/proc/PID/stat`` counts in clock ticks (10 ms here), too coarse for a
    few seconds of a lightly loaded server; ``/proc/PID/schedstat`` has the
    scheduler's own runtime in ns. Falls back to stat where it is missing.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        user, system = cpu_seconds(pid)
        return user + system


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else 0.0


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
    }


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)
