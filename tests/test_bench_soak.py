"""bench/soak.py runs end to end: a tiny soak in which every phase happens.

300 players for 40 s, an attack window every 20 s (two short attacks), a
churn wave every 10 s, a sample every 5 s. Functional checks only: the
JSON holds the samples, the churn waves (every player who left came back,
as itself), the attack windows with bench/attack.py's rows, and no player
dropped; how fast anything was is the bench's business, not this test's.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_late_tick_reports_are_read_from_the_servers_log_as_the_loop_writes_them():
    import logging

    from netcore.logs import TextFormatter
    from netcore.loop import LateTick

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import soak
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    report = LateTick(number=9, lateness=0.12, period=0.25, previous=0.3, previous_cpu=0.28,
                      previous_others=0.0,
                      since=0.07,
                      io=0.05, events=40, longest_round=0.05, timers=0.0, longest_timer=0.0,
                      longest_timer_name="", other_ticks=0.0, gc=0.04, longest_gc=0.039,
                      gc_generation=2, waiting=0.01, not_running=0.01)
    record = logging.LogRecord("netcore.loop", logging.WARNING, __file__, 1, "%s%s",
                               (report.describe(), " (2 more late ticks since the last report)"),
                               None)
    log = "\n".join(["2026-12-02T02:00:00.000Z WARNING spelltraction: something else",
                     TextFormatter().format(record)])
    (line,) = soak.late_tick_reports(log)
    assert line.endswith(report.describe() + " (2 more late ticks since the last report)")
    assert line.startswith("20") and "WARNING" not in line  # the time stays, the level goes


@pytest.mark.slow  # a server, bot processes and attackers for ~50 s
def test_soak_bench_runs_every_phase_and_writes_its_figures(tmp_path):
    out, svg = tmp_path / "soak.json", tmp_path / "soak.svg"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "soak.py"), "--count", "300",
         "--ws-players", "30", "--duration", "40", "--cycle", "20", "--attack-at", "3",
         "--churn-every", "10", "--sample", "5", "--rss-before", "3",
         "--attacks", "ping,never-read", "--seconds", "2", "--never-readers", "100",
         "--never-read-hold", "4", "--quiet", "0.5", "--recovery", "3", "--no-pin",
         "--json", str(out), "--svg", str(svg)],
        capture_output=True, text=True, timeout=150)
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 1: a target missed
    result = json.loads(out.read_text())
    assert not result["errors"] and not result["interrupted"], result["errors"]

    samples = result["samples"]
    assert len(samples) >= 6
    for s in samples:
        assert s["rss_bytes"] > 0 and s["fds"] > 0 and s["cpu_pct"] >= 0
        assert s["players_connected"] > 0
    assert any(s["attack"] for s in samples)  # sampled during an attack too

    waves = result["churn_waves"]
    assert len(waves) >= 2
    for w in waves:
        assert w["left"] == result["churn_wave_size"] == 6
        assert w["back"] == w["left"] and w["resumed"] == w["left"]  # back as themselves
        assert w["not_back"] == 0 and "fds_after" in w
    assert result["churn"]["rejoined"] == result["churn"]["left"] == 6 * len(waves)

    windows = result["attack_windows"]
    assert windows and all(not w["error"] for w in windows)
    assert [r["attack"] for r in windows[0]["rows"]] == ["ping", "never-read"]
    assert windows[0]["rows"][0]["attacker"]["connections"] == 20

    assert result["drops"] == {"bots": 0, "bot_reasons": {}, "observers": 0,
                               "observer_reasons": [], "players": 0}
    assert result["minutes"] and result["minutes"][0]["ticks_seen"] > 0
    assert result["rss_points"]
    assert isinstance(result["late_tick_reports"], list)
    assert {t["target"] for t in result["targets"]} >= {
        "players dropped who did not choose to leave", "rejoining players refused"}
    assert "| target | measured | limit | met |" in run.stdout
    assert svg.read_text().startswith("<svg") and "attack windows" in svg.read_text()
