"""bench/attack.py and bench/fuzz.py still run: tiny versions, figures not judged.

The benches measure; these only check that they run end to end and write
what they promise (a row per attack with every figure; a count per parser).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fuzz_bench_runs_every_parser_and_reports_counts(tmp_path):
    out = tmp_path / "fuzz.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fuzz.py"), "--count",
                          "300", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    assert [r["parser"] for r in results] == ["framing", "http", "websocket-server",
                                              "websocket-client", "decode", "bus",
                                              "bus-authority", "bus-gateway"]
    assert all(r["inputs"] == 300 and r["bugs"] == {} for r in results)
    assert "0 non-ProtocolError exceptions" in run.stdout


@pytest.mark.slow
def test_attack_bench_runs_and_writes_every_figure(tmp_path):
    out = tmp_path / "attack.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "attack.py"), "--attacks", "none,ping",
         "--players", "12", "--ws-players", "4", "--seconds", "1", "--quiet", "0.5",
         "--recovery", "3", "--no-pin", "--json", str(out)],
        capture_output=True, text=True, timeout=180)
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 1: a target missed
    rows = json.loads(out.read_text())["rows"]
    assert [r["attack"] for r in rows] == ["none", "ping"]
    for r in rows:
        for key in ("max_gap_ms", "lateness_p99_ms", "rss_before_mb", "rss_peak_mb",
                    "rss_after_mb", "fds_before", "fds_after", "players_dropped"):
            assert r[key] is not None, (key, r)
        assert r["server_alive"]
    assert rows[1]["attacker"]["connections"] == 20
    assert "| ping |" in run.stdout
