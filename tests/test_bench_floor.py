"""bench/floor.py, run small: 40 connections, a 2 s hold, every server present.

This checks the harness (servers built and started, the load generator
connected and counting frames, marks taken, everything stopped, JSON and
table written), not how fast anything is: no figure is compared with a
threshold beyond "frames arrived, and arrived whole".
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from serverproc import ROOT
from test_bench_capacity import process_groups_alive

FLOOR = os.path.join(ROOT, "bench", "floor.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="floor.py reads /proc"),
]


def test_smoke_every_server_present_delivers_whole_frames(tmp_path):
    out = tmp_path / "floor.json"
    result = subprocess.run(
        [sys.executable, FLOOR, "--count", "40", "--hold", "2", "--repeats", "1",
         "--settle", "0.5", "--per-proc", "25", "--json", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    expected = ["netcore"]
    if shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"):
        expected.insert(0, "c")
    else:
        assert "skipping the C floor" in result.stdout
    if shutil.which("node") or shutil.which("nodejs"):
        expected.append("node")
    else:
        assert "skipping Node" in result.stdout
    assert data["servers"] == expected
    assert [r["server"] for r in data["runs"]] == expected
    assert data["interrupted"] is None
    pgids = set()
    for run in data["runs"]:
        d = run["derived"]
        assert run["errors"] == [], run["errors"]
        assert d["ok"] and d["connections"] == 40 and d["closed"] == 0
        assert d["bad_frames"] == 0, "every frame arrived with its header where it belongs"
        assert d["frames"] > 0 and d["per_conn_min"] >= 1, "every connection got frames"
        assert run["server_counters"]["accepted"] == 40
        assert run["server_counters"]["ticks"] > 0
        assert run["server_exit"] == 0, "the server stopped cleanly on SIGTERM"
        assert len(run["rss_samples"]) >= 2 and all(x > 0 for x in run["rss_samples"])
        assert isinstance(d["cpu_us_per_send"], float)
        assert len(run["marks"][0]["gens"]) == 2, "40 connections at 25 a process"
    rows = {(s["count"], s["server"]): s for s in data["summary"]}
    assert set(rows) == {(40, k) for k in expected}
    if "c" in expected:
        floor = rows[(40, "c")]
        # /proc/PID/stat counts CPU in 10 ms ticks: 40 connections for 2 s
        # may cost the C floor none of them, and then there is no ratio.
        if floor["cpu_us_per_send"] > 0:
            assert floor["cpu_us_per_send_vs_c"] == pytest.approx(1.0)
        else:
            assert floor["cpu_us_per_send_vs_c"] is None
    table = re.findall(r"^\| 40 \| (.+?) \|", result.stdout, re.M)
    assert len(table) == len(expected), "the table is printed, a row a server"
    logs = tmp_path / "floor-logs"
    assert logs.is_dir()
    for run in data["runs"]:
        pgids.update(run.get("pids", []))
    assert process_groups_alive(pgids) == []


def test_pollers_runs_the_netcore_server_on_each_poller_alternating(tmp_path):
    """--pollers epoll,selectors: two netcore servers in the rotation, the medians compared."""
    out = tmp_path / "floor.json"
    result = subprocess.run(
        [sys.executable, FLOOR, "--servers", "netcore", "--pollers", "epoll,selectors",
         "--count", "40", "--hold", "2", "--repeats", "2", "--settle", "0.5",
         "--per-proc", "40", "--json", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["servers"] == ["netcore", "netcore-selectors"]
    assert [r["server"] for r in data["runs"]] == [
        "netcore", "netcore-selectors", "netcore-selectors", "netcore"], "alternating"
    for run in data["runs"]:
        assert run["errors"] == [] and run["derived"]["ok"], run["errors"]
        assert run["derived"]["bad_frames"] == 0 and run["derived"]["per_conn_min"] >= 1
    assert {s["server"]: s["repeats"] for s in data["summary"]} == {
        "netcore": 2, "netcore-selectors": 2}
    # 40 connections for 2 s may cost no 10 ms CPU tick, and then there is no ratio ("-")
    assert re.search(r"40 connections, netcore TCPServer \(selectors\) / netcore TCPServer "
                     r"\(epoll\): CPU per send (-|[\d.]+x), RSS per connection (-|-?[\d.]+x) "
                     r"\(medians of [012] per-repeat ratios\)", result.stdout), result.stdout[-2000:]
    assert process_groups_alive({pid for r in data["runs"] for pid in r["pids"]}) == []
