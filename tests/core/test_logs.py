"""netcore.logs: one line per event, JSON on request, churn summarised, repeats rate-limited.

The game's use of them (serve's log lines, churn under a ramp) is in test_server_logs.py.
"""

import json
import logging

from netcore import NetStats
from netcore.logs import ChurnReporter, JsonFormatter, RateLimitFilter, TextFormatter


def record(msg, *args, level=logging.WARNING, name="demo", extra=None, exc_info=None):
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    for k, v in (extra or {}).items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_time_level_logger_message_and_extras():
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys

        exc = sys.exc_info()
    line = JsonFormatter().format(record("closed %d of %s", 3, "x", extra={"fd": 7},
                                         exc_info=exc))
    assert "\n" not in line, "one event, one line"
    obj = json.loads(line)
    assert obj["level"] == "WARNING" and obj["logger"] == "demo"
    assert obj["message"] == "closed 3 of x" and obj["fd"] == 7
    assert obj["time"].endswith("Z") and obj["time"][10] == "T"
    assert "RuntimeError: boom" in obj["exc"]


def test_text_lines_have_time_level_and_logger():
    line = TextFormatter().format(record("hello %s", "world", level=logging.INFO))
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z") and level == "INFO" and rest == "demo: hello world"


def test_repeated_warnings_are_rate_limited_and_counted():
    now = [100.0]
    limiter = RateLimitFilter(window=10.0, burst=5, clock=lambda: now[0])
    passed = [limiter.filter(record("accept failed: %s", i)) for i in range(100)]
    assert passed == [True] * 5 + [False] * 95
    assert limiter.filter(record("another call site")), "other kinds are not held back"
    assert limiter.filter(record("quiet", level=logging.INFO)), "below WARNING is not limited"
    now[0] += 10.5
    later = record("accept failed: %s", "again")
    assert limiter.filter(later)
    assert "[95 similar suppressed in the last 10 s]" in later.getMessage()
    assert limiter.suppressed_total == 95


def test_flush_reports_what_was_held_back(caplog):
    caplog.set_level(logging.WARNING)
    now = [0.0]
    limiter = RateLimitFilter(window=10.0, burst=1, clock=lambda: now[0])
    for _ in range(4):
        limiter.filter(record("tick failed"))
    logger = logging.getLogger("flushed")
    assert limiter.flush(logger) == 0, "the window is not over yet"
    now[0] = 11.0
    assert limiter.flush(logger) == 1
    assert "3 more like 'tick failed' from demo suppressed" in caplog.text
    assert limiter.flush(logger) == 0, "reported once"


def test_churn_is_one_line_per_report(caplog):
    caplog.set_level(logging.INFO)
    stats = NetStats()
    churn = ChurnReporter(stats, logging.getLogger("churn"))
    assert churn.report() is None, "nothing happened: nothing logged"
    stats.accepted += 1523
    stats.connections += 1523
    for reason in ["peer-closed"] * 10 + ["reset"] * 2:
        stats.count_close(reason)
    stats.refused_full += 3
    msg = churn.report()
    assert msg == ("connections: +1523 -12 (now 1511); closed by reason peer-closed 10, "
                   "reset 2; refused 3 (full)")
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert caplog.records[0].closed_by_reason == {"peer-closed": 10, "reset": 2}
    stats.slow_consumers += 1
    stats.count_close("slow-consumer")
    assert churn.report() == "connections: +0 -1 (now 1510); closed by reason slow-consumer 1"
    assert caplog.records[-1].levelname == "WARNING", "slow consumers deserve a warning"
    assert churn.report() is None
