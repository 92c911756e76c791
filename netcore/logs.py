"""Logs a 100k-connection server can afford: one line per event, never one per peer.

- :class:`JsonFormatter`: one JSON object per line (``time``, ``level``,
  ``logger``, ``message`` and any ``extra=`` fields), for log shippers.
- :class:`TextFormatter`: the same event as one human line.
- :class:`RateLimitFilter`: the same warning repeated (a handler failing
  every tick, accept failing in a loop) passes a few times per window and is
  then counted, and the count is reported once the window is over.
- :class:`ChurnReporter`: connection churn as one summary line every few
  seconds (``connections: +1523 -12 (now 15000); closed by reason {...}``),
  so a 15k ramp never writes 15k lines; per-connection lines stay at DEBUG.
"""

from __future__ import annotations

import json
import logging
import time

from .stats import NetStats
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["ChurnReporter", "JsonFormatter", "RateLimitFilter", "TextFormatter", "extra_fields"]

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


def extra_fields(record: logging.LogRecord) -> Dict[str, Any]:
    """The fields passed with ``extra=`` to the logging call."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _iso_time(created: float) -> str:
    t = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes in ``exc`` on the same line."""

    def format(self, record: logging.LogRecord) -> str:
        out: Dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO spelltraction: message``.

    A traceback, if any, follows on the next lines, as Python prints it.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso_time(record.created)} {record.levelname} {record.name}: " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RateLimitFilter(logging.Filter):
    """Let ``burst`` records of one kind through per ``window`` seconds.

    A kind is (logger, level, message template): the same call site with
    different arguments counts as a repeat. Only records at ``level`` or
    above are limited. Suppressed records are counted; the next record of
    that kind after the window, or :meth:`flush`, reports how many.
    """

    def __init__(self, window: float = 10.0, burst: int = 5, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.level = level
        self.clock = clock
        self._kinds: Dict[Tuple[str, int, str], _Window] = {}
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or getattr(record, "rate_limit_report", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        win = self._kinds.get(key)
        if win is None or now - win.start >= self.window:
            if win is not None and win.suppressed:
                record.msg = f"{record.msg} [{win.suppressed} similar suppressed in the " \
                             f"last {now - win.start:.0f} s]"
                record.suppressed = win.suppressed
            self._kinds[key] = _Window(now)
            return True
        if win.passed < self.burst:
            win.passed += 1
            return True
        win.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self, logger: logging.Logger, force: bool = False) -> int:
        """Report kinds whose window is over (all kinds if ``force``); returns how many."""
        now = self.clock()
        reported = 0
        for key, win in list(self._kinds.items()):
            if not force and now - win.start < self.window:
                continue
            del self._kinds[key]
            if win.suppressed:
                reported += 1
                logger.log(key[1], "%d more like %r from %s suppressed in the last %.0f s",
                           win.suppressed, key[2], key[0], now - win.start,
                           extra={"suppressed": win.suppressed, "rate_limit_report": True})
        return reported


class _Window:
    __slots__ = ("start", "passed", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.passed = 1
        self.suppressed = 0


class ChurnReporter:
    """Summarises connection churn since the previous report in one line."""

    def __init__(self, stats: NetStats, logger: logging.Logger,
                 label: str = "connections") -> None:
        self.stats = stats
        self.logger = logger
        self.label = label
        self._accepted = stats.accepted
        self._closed = stats.closed
        self._by_reason = dict(stats.closed_by_reason)
        self._refused_full = stats.refused_full
        self._refused_fd = stats.refused_fd_limit
        self._slow = stats.slow_consumers
        self._limits = dict(stats.limits)
        self._untrusted = dict(stats.untrusted)

    def report(self) -> Optional[str]:
        """Log the summary if anything changed; returns the message logged."""
        s = self.stats
        opened = s.accepted - self._accepted
        closed = s.closed - self._closed
        refused_full = s.refused_full - self._refused_full
        refused_fd = s.refused_fd_limit - self._refused_fd
        limits = {name: n - self._limits.get(name, 0)
                  for name, n in s.limits.items() if n != self._limits.get(name, 0)}
        untrusted = {kind: n - self._untrusted.get(kind, 0)
                     for kind, n in s.untrusted.items() if n != self._untrusted.get(kind, 0)}
        if not (opened or closed or refused_full or refused_fd or limits or untrusted):
            return None
        self._limits = dict(s.limits)
        self._untrusted = dict(s.untrusted)
        before = self._by_reason
        by_reason = {reason: n - before.get(reason, 0)
                     for reason, n in s.closed_by_reason.items() if n != before.get(reason, 0)}
        slow = s.slow_consumers - self._slow
        self._accepted, self._closed = s.accepted, s.closed
        self._by_reason = dict(s.closed_by_reason)
        self._refused_full, self._refused_fd = s.refused_full, s.refused_fd_limit
        self._slow = s.slow_consumers
        msg = f"{self.label}: +{opened} -{closed} (now {s.connections})"
        if by_reason:
            msg += "; closed by reason " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(by_reason.items()))
        if refused_full:
            msg += f"; refused {refused_full} (full)"
        if refused_fd:
            msg += f"; refused {refused_fd} (out of file descriptors)"
        if limits:
            msg += "; limits hit " + ", ".join(f"{name} {n}" for name, n in sorted(limits.items()))
        if untrusted:
            msg += "; from peers not trusted as proxies " + ", ".join(
                f"{kind} {n}" for kind, n in sorted(untrusted.items()))
        troubled = slow > 0 or refused_fd > 0 or by_reason.get("error", 0) > 0
        self.logger.log(  # no args: the line is its own template, and holds no '%'
            logging.WARNING if troubled else logging.INFO, msg,
            extra={"opened": opened, "closed": closed, "connections": s.connections,
                   "closed_by_reason": by_reason, "refused_full": refused_full,
                   "refused_fd_limit": refused_fd, "limits": limits,
                   "untrusted": untrusted},
        )
        return msg
