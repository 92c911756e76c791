"""Logs: one line per event, JSON on request, churn summarised, repeats rate-limited."""

import json
import logging
import signal

import spelltraction as st
from netcore import NetStats
from netcore.logs import ChurnReporter, JsonFormatter, RateLimitFilter, TextFormatter
from serverproc import ServerProcess


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


def test_a_ramp_of_hundreds_logs_one_summary_not_a_line_each(caplog, make_harness):
    caplog.set_level(logging.INFO)
    h = make_harness()
    clients = [h.client() for _ in range(300)]
    bad = [h.client(hello=False) for _ in range(20)]
    for c in bad:
        c.send_raw(b"\x00\x01\x07")
    for c in clients[:100]:
        c.sock.close()
    h.run_until(lambda: h.server.net.stats.connections == 200)
    h.server.report()
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].getMessage().startswith("connections: +320 -120 (now 200); closed by")
    by_reason = records[0].closed_by_reason
    # A client closing with unread ticks makes its kernel send RST: "reset".
    assert by_reason.pop("protocol-error") == 20
    assert sum(by_reason.values()) == 100 and set(by_reason) <= {"peer-closed", "reset"}


def test_serve_logs_json_lines(tmp_path):
    server = ServerProcess("--log-format", "json", "--tick-ms", "50")
    code = server.stop(signal.SIGTERM)
    assert code == 0
    lines = [line for line in server.proc.stderr.read().splitlines() if line]
    assert lines, "the shutdown is logged"
    for line in lines:
        obj = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(obj)
    assert any("SIGTERM: shutting down" in json.loads(line)["message"] for line in lines)


def test_setup_logging_installs_one_handler_with_the_limiter():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        limiter = st._setup_logging("warning", "json")
        limiter2 = st._setup_logging("info", "text")
        assert len(root.handlers) == 1 and root.level == logging.INFO
        assert limiter2 in root.handlers[0].filters and limiter not in root.handlers[0].filters
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
