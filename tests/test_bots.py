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


@pytest.mark.parametrize("ws", [False, True], ids=["tcp", "wss"])
def test_tls_bots_play_every_tick(tmp_path, ws):
    """bots --tls (--ws: wss://) against serve --tls-required: every bot is in over
    TLS (a plain one would be refused), plays every tick, its moves echoed."""
    from tlsgamekit import PKIFiles

    pki = PKIFiles(str(tmp_path / "pki"))
    with ServerProcess("--tick-ms", "100", "--tls-cert", pki.cert, "--tls-key", pki.key,
                       "--tls-required") as server:
        result = run_game("bots", "--tls", "--ca", pki.root, *(["--ws"] if ws else []),
                          "--port", str(server.port), "--count", "300", "--duration", "4",
                          "--move-every", "1", "--procs", "2", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "over TLS" in result.stdout
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["connected"] == 300 and summary["tls_handshakes"] == 300
        assert summary["failed"] == 0 and summary["dropped"] == 0
        assert summary["bots_below_95pct_ticks"] == 0
        assert summary["latency_samples"] > 0
        assert summary["errors"] == {}


def test_tls_bots_refuse_a_certificate_they_cannot_check(tmp_path):
    from tlsgamekit import PKIFiles

    pki = PKIFiles(str(tmp_path / "pki"))
    with ServerProcess("--tls-cert", pki.stranger_cert, "--tls-key", pki.stranger_key) as server:
        result = run_game("bots", "--tls", "--ca", pki.root, "--port", str(server.port),
                          "--count", "3", "--duration", "1", "--ramp-timeout", "5", "--json")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 1
        assert summary["failed"] == 3 and summary["connected"] == 0
        assert any("certificate" in e for e in summary["errors"]), summary["errors"]
    bad = run_game("bots", "--insecure", "--count", "1")
    assert bad.returncode == 2 and "--tls" in bad.stderr
