"""Cheap counters and small fixed-memory summaries.

Counters are plain ``int`` slots bumped with ``+=`` on the hot path; anything
costlier (percentiles, dicts for export) is computed only when asked.
"""

from __future__ import annotations

import bisect
import math
from array import array

from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Sequence, Tuple

__all__ = ["Histogram", "NetStats", "Window", "percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0.0 if empty."""
    data = sorted(values)
    if not data:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(data)))
    return float(data[min(rank, len(data)) - 1])


class Window:
    """The last ``size`` samples, in a fixed ``array('d')``."""

    __slots__ = ("_data", "_next", "_count")

    def __init__(self, size: int = 1024) -> None:
        self._data = array("d", bytes(8 * size))
        self._next = 0
        self._count = 0

    def add(self, value: float) -> None:
        data = self._data
        i = self._next
        data[i] = value
        i += 1
        self._next = 0 if i == len(data) else i
        if self._count < len(data):
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def values(self) -> List[float]:
        n = self._count
        if n < len(self._data):
            return list(self._data[:n])
        return list(self._data)

    def percentile(self, q: float) -> float:
        return percentile(self.values(), q)

    def max(self) -> float:
        return max(self.values(), default=0.0)


class Histogram:
    """Cumulative-style histogram with fixed upper bounds, as Prometheus wants."""

    __slots__ = ("bounds", "_counts", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("bounds must be a non-empty ascending sequence")
        self.bounds: Tuple[float, ...] = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> List[Tuple[float, int]]:
        """``(upper_bound, count <= bound)`` pairs, ending with ``(inf, count)``."""
        out: List[Tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.bounds + (math.inf,), self._counts):
            running += n
            out.append((bound, running))
        return out


class NetStats:
    """Counters a server keeps about its connections and traffic."""

    __slots__ = (
        "connections",
        "accepted",
        "closed",
        "closed_by_reason",
        "refused_full",
        "refused_fd_limit",
        "accept_errors",
        "bytes_in",
        "bytes_out",
        "frames_in",
        "frames_out",
        "sends",
        "queued_out_bytes",
        "slow_consumers",
        "limits",
        "untrusted",
        "tls_handshakes",
        "tls_errors",
    )

    def __init__(self) -> None:
        self.connections = self.accepted = self.closed = 0
        self.closed_by_reason: Dict[str, int] = {}
        self.refused_full = self.refused_fd_limit = self.accept_errors = 0
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = self.sends = 0
        self.queued_out_bytes = self.slow_consumers = 0
        # Every limit that fired, by its name ("connections-per-address",
        # "send-backlog", "ws-control-rate"...): a refusal or a close.
        self.limits: Dict[str, int] = {}
        # What peers that are not trusted proxies sent as if they were, by
        # kind: "x-forwarded-for" (an HTTP request's header, ignored) and
        # "proxy-header" (a PROXY header: the connection is closed).
        self.untrusted: Dict[str, int] = {}
        # TLS handshakes completed, and TLS errors by OpenSSL's name for them
        # ("wrong-version-number", "certificate-verify-failed"...): each
        # closed its connection (reason "tls-error").
        self.tls_handshakes = 0
        self.tls_errors: Dict[str, int] = {}

    def limit(self, name: str) -> None:
        """Count one firing of the limit ``name``."""
        limits = self.limits
        limits[name] = limits.get(name, 0) + 1

    def count_close(self, reason: str) -> None:
        self.closed += 1
        self.connections -= 1
        by_reason = self.closed_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def snapshot(self) -> Dict[str, object]:
        out: Dict[str, object] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, dict) else value
        return out
