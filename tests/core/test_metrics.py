"""netcore.metrics: Prometheus exposition text, read back by prometheus_client's own parser.

The game's /metrics and /stats.json: test_server_metrics.py.
"""

import math
import os
import time

import pytest

from conftest import metric as value, parse_metrics as parse
from netcore import Histogram
from netcore.metrics import Exposition, add_process_stats, process_stats


def test_exposition_round_trips_through_the_prometheus_parser():
    exp = Exposition()
    exp.counter("demo_requests_total", "Requests.\nSecond line with a \\ backslash.", 42)
    exp.gauge("demo_temperature", "A float gauge.", 21.5)
    exp.labelled("demo_closed_total", "counter", "By reason.", "reason",
                 {'quote"d': 3, "back\\slash": 4, "new\nline": 5, "plain": 0})
    hist = Histogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.002, 0.002, 0.05, 3.0):
        hist.observe(v)
    exp.histogram("demo_duration_seconds", "A histogram.", hist)
    exp.gauge("demo_nan", "Not a number.", math.nan)
    samples, types = parse(exp.text())
    assert types == {"demo_requests": "counter", "demo_temperature": "gauge",
                     "demo_closed": "counter", "demo_duration_seconds": "histogram",
                     "demo_nan": "gauge"}
    assert value(samples, "demo_requests_total") == 42
    assert value(samples, "demo_temperature") == 21.5
    assert value(samples, "demo_closed_total", reason='quote"d') == 3
    assert value(samples, "demo_closed_total", reason="back\\slash") == 4
    assert value(samples, "demo_closed_total", reason="new\nline") == 5
    assert value(samples, "demo_closed_total", reason="plain") == 0
    buckets = {le: value(samples, "demo_duration_seconds_bucket", le=le)
               for le in ("0.001", "0.01", "0.1", "+Inf")}
    assert buckets == {"0.001": 1, "0.01": 3, "0.1": 4, "+Inf": 5}
    assert value(samples, "demo_duration_seconds_count") == 5
    assert value(samples, "demo_duration_seconds_sum") == pytest.approx(3.0545)
    assert math.isnan(value(samples, "demo_nan"))


def test_exposition_refuses_what_prometheus_would_reject():
    exp = Exposition()
    exp.gauge("ok_name", "x", 1)
    with pytest.raises(ValueError, match="twice"):
        exp.gauge("ok_name", "x", 2)
    with pytest.raises(ValueError, match="invalid metric name"):
        exp.gauge("bad-name", "x", 1)
    with pytest.raises(ValueError, match="invalid metric name"):
        exp.gauge("9lives", "x", 1)
    with pytest.raises(ValueError, match="_total"):
        exp.counter("no_suffix", "x", 1)
    assert Exposition().text() == ""


def test_process_stats_are_this_process():
    ps = process_stats()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert abs(ps.rss_bytes - rss) < 8 << 20
    times = os.times()
    assert 0 < ps.cpu_seconds <= times.user + times.system + 0.01
    assert ps.open_fds == len(os.listdir("/proc/self/fd")) - 1
    assert process_stats(count_fds=False).open_fds is None  # the per-second path skips it
    assert ps.start_time is not None and 0 < time.time() - ps.start_time < 24 * 3600
    samples, types = parse(Exposition().text() + _process_text(ps))
    assert value(samples, "process_resident_memory_bytes") == ps.rss_bytes
    assert types["process_cpu_seconds"] == "counter"


def _process_text(ps):
    exp = Exposition()
    add_process_stats(exp, ps)
    return exp.text()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux's /proc")
def test_start_time_without_proc_stat_as_under_procsubset_pid(tmp_path):
    """systemd's ProcSubset=pid hides /proc/stat (btime) but not /proc/self:
    the start time then comes from CLOCK_BOOTTIME, and agrees."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_bytes(open("/proc/self/statm", "rb").read())
    (tmp_path / "self" / "stat").write_bytes(open("/proc/self/stat", "rb").read())
    hidden = process_stats(proc=str(tmp_path), count_fds=False)
    assert not (tmp_path / "stat").exists()
    assert hidden.start_time is not None, "process_start_time_seconds would vanish"
    assert abs(hidden.start_time - process_stats(count_fds=False).start_time) < 1.5
    assert hidden.rss_bytes > 0
