"""The game server's logs: churn summarised under a ramp, JSON lines from serve, one handler.

netcore's formatters, rate limiter and churn reporter on their own: core/test_logs.py.
"""

import json
import logging
import signal

import spelltraction as st
from serverproc import ServerProcess


def test_a_ramp_of_hundreds_logs_one_summary_not_a_line_each(caplog, make_harness):
    caplog.set_level(logging.INFO)
    h = make_harness()
    clients = [h.client() for _ in range(300)]
    bad = [h.client(hello=False) for _ in range(20)]
    for c in bad:
        c.send_raw(b"\x00\x01\x07")
    for c in clients[:100]:
        c.sock.close()
    h.run_until(lambda: h.server.front.net.stats.connections == 200)
    h.server.report()
    # A loaded machine may also log that the tick fell behind, or why a tick
    # was late: those lines are about the tick, not a connection, and are not
    # what this test counts.
    records = [r for r in caplog.records if r.levelno >= logging.INFO
               and not r.getMessage().startswith("the tick fell")
               and " ms late; since the tick before ended " not in r.getMessage()]
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
