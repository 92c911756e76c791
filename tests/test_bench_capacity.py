"""The capacity harness, run small: 200 players, a few seconds, ours and asyncio.

This checks that the harness works (processes started and stopped, samples
taken, figures read from both servers and the bots, JSON, report and chart
written), not how fast anything is: no figure is compared with a threshold.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from serverproc import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from procstat import all_proc_stats  # noqa: E402

pytestmark = pytest.mark.slow  # the whole harness: servers, bot processes, sampling

CAPACITY = os.path.join(ROOT, "bench", "capacity.py")


def process_groups_alive(pgids):
    """Processes still running in any of ``pgids`` (zombies excluded)."""
    return [pid for pid, fields in all_proc_stats() if int(fields[2]) in pgids and fields[0] != "Z"]


def outputs(tmp_path):
    return ["--json", str(tmp_path / "capacity.json"), "--report", str(tmp_path / "report.html"),
            "--svg", str(tmp_path / "capacity.svg")]


def test_smoke_200_players_ours_and_asyncio(tmp_path):
    result = subprocess.run(
        [sys.executable, CAPACITY, "--server", "ours,asyncio", "--ladder", "200",
         "--active", "200", "--hold", "2", *outputs(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["servers"] == ["ours", "asyncio"]
    assert data["interrupted"] is None
    steps = data["steps"]
    assert sorted((s["server"], s["scenario"]) for s in steps) == [
        ("asyncio", "active"), ("asyncio", "idle"), ("ours", "active"), ("ours", "idle")]
    for s in steps:
        d = s["derived"]
        assert s["errors"] == [], s["errors"]
        assert d["ok"]
        assert s["bots"]["connected"] == 200 and s["bots"]["failed"] == 0
        assert s["bots"]["dropped"] == 0 and d["players"] == 200
        assert len(s["samples"]) >= 4 and d["window_samples"] >= 2
        assert all(rss > 0 for _t, rss, _u, _s, _run in s["samples"])
        runtimes = [run for *_rest, run in s["samples"]]
        assert runtimes == sorted(runtimes), "CPU runtime never goes backwards"
        assert s["server_final"]["ticks"]["fired"] > 0
        assert s["server_final"]["net"]["accepted"] >= 200
        assert len(s["observer_ticks"]) > 0 and d["tick_rate_hz"] > 0
        assert s["bots"]["latency_samples"] > 0
        for key in ("rss_mb", "cpu_pct", "cpu_us_per_player_tick", "tick_lateness_p99_ms",
                    "move_latency_ms_p50", "move_latency_ms_p99"):
            assert isinstance(d[key], (int, float)), key
        assert s["server_exit"] == 0, "the server stopped cleanly on SIGTERM"
    for server in ("ours", "asyncio"):
        slopes = data["slopes"][server]
        assert isinstance(slopes["bytes_per_player"], float)
        assert isinstance(slopes["cpu_us_per_player_tick"], float)
        assert isinstance(slopes["active_cpu_us_per_player_tick"], float)
    assert {t["target"].split(",")[0] for t in data["targets"]} >= {
        "RSS per player", "CPU per player-tick (idle-ish)", "CPU per player-tick (active)"}

    report = (tmp_path / "report.html").read_text()
    assert report.count("<svg") == 4
    assert "netcore (ours)" in report and "asyncio" in report and "Every step" in report
    chart = ET.parse(str(tmp_path / "capacity.svg")).getroot()
    assert chart.tag.endswith("svg") and len(chart.findall("{http://www.w3.org/2000/svg}svg")) == 4
    md = (tmp_path / "capacity.md").read_text()
    assert "| idle | 200 | netcore (ours) |" in md and "| active | 200 | asyncio |" in md
    assert "Measured " in md and data["machine"]["cpu_model"] in md
    assert "| idle | 200 | netcore (ours) |" in result.stdout, "the table is printed"

    pgids = {pid for s in steps for pid in s["pids"]}
    assert len(pgids) == 8
    assert process_groups_alive(pgids) == []


@pytest.mark.skipif(shutil.which("cc") is None, reason="--load c needs a C compiler (cc)")
def test_c_players_make_every_player_move_and_report_like_the_bots(tmp_path):
    """--load c: the C players join, move every tick and report what the bots report."""
    result = subprocess.run(
        [sys.executable, CAPACITY, "--server", "ours", "--ladder", "none", "--active", "300",
         "--hold", "3", "--load", "c", *outputs(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["load"] == "c"
    (step,) = data["steps"]
    d = step["derived"]
    assert step["errors"] == [] and d["ok"], step["errors"]
    bots = step["bots"]
    assert bots["load"] == "c"
    assert bots["connected"] == 300 and bots["failed"] == 0 and bots["dropped"] == 0
    # every player moved every tick: at least 3 s x 4 moves each while holding
    assert bots["moves_sent"] >= 300 * 4 * 3
    assert bots["tick_fraction_min"] >= 0.9
    assert bots["latency_samples"] > 300  # moves echoed in a YOU, timed
    assert 0 < bots["move_latency_ms_p50"] <= bots["move_latency_ms_p99"]
    assert step["server_final"]["net"]["frames_in"] >= bots["moves_sent"] * 0.9
    assert "C players (bench/peers/loadgen.c)" in (tmp_path / "capacity.md").read_text()
    assert process_groups_alive(set(step["pids"])) == []


def test_ctrl_c_stops_everything_and_leaves_a_report(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, CAPACITY, "--server", "ours", "--ladder", "200", "--active", "0",
         "--hold", "60", *outputs(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    pids = set()
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"server pid (\d+), bots pid (\d+)", line)
            if m:
                pids = {int(m.group(1)), int(m.group(2))}
            if line.strip().startswith("ramp:"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert pids, "".join(seen)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["interrupted"]
    assert (tmp_path / "report.html").exists()
    assert process_groups_alive(pids) == []


def test_tick_rate_axis_runs_each_period_and_reports_the_most_players_held(tmp_path):
    result = subprocess.run(
        [sys.executable, CAPACITY, "--server", "ours", "--ladder", "none", "--active", "0",
         "--tick-axis", "100,50", "--tick-ladder", "100,200", "--hold", "2",
         *outputs(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["tick_axis"] == [100, 50] and data["tick_ladder"] == [100, 200]
    ran = [(s["tick_ms"], s["players_target"]) for s in data["steps"]]
    not_run = data["not_run"]
    # Every planned step either ran or was left out because a smaller one missed.
    assert len(ran) + len(not_run) == 4
    assert (100, 100) in ran and (50, 100) in ran
    for s in data["steps"]:
        assert s["scenario"] == "rate" and s["errors"] == [], s["errors"]
        d = s["derived"]
        assert d["tick_rate_nominal_hz"] == 1000.0 / s["tick_ms"]
        assert d["tick_rate_hz"] > 0 and s["server_final"]["ticks"]["period_s"] == s["tick_ms"] / 1000
        assert isinstance(d["bots_cpu_pct"], float) and d["bots_cpu_pct"] >= 0
        assert len(s["bots_cpu"]) >= 2
    md = (tmp_path / "capacity.md").read_text()
    assert "Tick-rate axis" in md
    assert "| 100 ms (10 Hz) | netcore (ours) |" in md and "| 50 ms (20 Hz) | netcore (ours) |" in md
    assert "| rate 100 ms | 100 | netcore (ours) |" in md
    assert "Tick-rate axis" in (tmp_path / "report.html").read_text()


def test_pollers_run_our_server_on_each_poller_and_report_their_medians(tmp_path):
    """--pollers epoll,selectors --repeats 2: our server on each poller, alternating, and
    a table of the medians with selectors against epoll."""
    result = subprocess.run(
        [sys.executable, CAPACITY, "--server", "ours", "--pollers", "epoll,selectors",
         "--ladder", "none", "--active", "100", "--repeats", "2", "--hold", "2",
         *outputs(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["servers"] == ["ours", "ours-selectors"] and data["repeats"] == 2
    steps = data["steps"]
    assert [(s["server"], s["repeat"]) for s in steps] == [
        ("ours", 0), ("ours-selectors", 0), ("ours-selectors", 1), ("ours", 1)]
    for s in steps:
        assert s["errors"] == [] and s["derived"]["ok"], s["errors"]
    medians = {m["server"]: m for m in data["medians"]}
    assert medians["ours"]["runs"] == medians["ours-selectors"]["runs"] == 2
    assert isinstance(medians["ours-selectors"]["cpu_us_per_player_tick_vs_ours"], float)
    md = (tmp_path / "capacity.md").read_text()
    assert "Medians of the repeats (--repeats 2" in md
    assert "| active | 100 | netcore (ours, selectors) | 2 |" in md
    assert process_groups_alive({pid for s in steps for pid in s["pids"]}) == []
