"""The load test itself: a real server process and 2,000 bot players."""

import json

import pytest

from serverproc import ServerProcess, run_game

pytestmark = pytest.mark.slow  # bot processes: seconds each, 20 s for the 2,000


def test_2000_bots_for_20_seconds_all_play_every_tick():
    with ServerProcess("--max-clients", "2500") as server:
        result = run_game("bots", "--port", str(server.port), "--count", "2000",
                          "--duration", "20", "--move-every", "5", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.strip().splitlines()
        summary = json.loads(lines[-1])
        assert "ramp:" in result.stdout and "summary:" in result.stdout
        assert summary["connected"] == 2000
        assert summary["failed"] == 0 and summary["dropped"] == 0
        assert summary["bots_below_95pct_ticks"] == 0
        assert summary["tick_fraction_min"] >= 0.95
        assert summary["frames"] >= 2000 * 20 * 4 * 0.95
        assert summary["latency_samples"] > 0 and summary["move_latency_ms_p99"] > 0
        assert 200 <= summary["tick_interval_ms_p50"] <= 300
    assert server.proc.returncode == 0


def test_bots_report_failures_and_exit_nonzero_when_nobody_listens(refused_port):
    result = run_game("bots", "--port", str(refused_port), "--count", "5", "--duration", "1",
                      "--ramp-timeout", "5", "--json")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1
    assert summary["failed"] == 5 and summary["connected"] == 0
    assert any("refused" in e.lower() for e in summary["errors"]), summary["errors"]


def test_websocket_bots_play_every_tick_alongside_tcp_bots():
    with ServerProcess("--tick-ms", "100", "--stats-out", "/dev/null") as server:
        result = run_game("bots", "--ws", "--port", str(server.port), "--count", "200",
                          "--duration", "5", "--move-every", "1", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(WebSocket)" in result.stdout
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["connected"] == 200
        assert summary["failed"] == 0 and summary["dropped"] == 0
        assert summary["bots_below_95pct_ticks"] == 0
        assert summary["moves_sent"] > 0
        assert summary["latency_samples"] > 0  # moves were echoed: masked frames accepted
        assert summary["errors"] == {}


def test_websocket_bots_report_a_refused_upgrade():
    with ServerProcess("--no-web") as server:
        result = run_game("bots", "--ws", "--port", str(server.port), "--count", "3",
                          "--duration", "1", "--ramp-timeout", "5", "--json")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 1
        assert summary["failed"] == 3 and summary["connected"] == 0
