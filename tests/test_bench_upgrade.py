"""bench/upgrade.py, run small: 60 players, both paths, directly, behind nginx and on a gateway.

This checks the harness (the copy of the tree, the deploy by rename, the
upgrade command or the restart, the bots' summaries, the JSON and the table)
and what it exists to show, at a size CI can afford: through an upgrade
nobody is disconnected or reconnects and no score goes down; through a
restart the version-1 players are gone. The figures at 15,000 players are
in docs/MEASURED.md.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import require_tool
from serverproc import ROOT
from test_bench_tls import nginx_here

UPGRADE_BENCH = os.path.join(ROOT, "bench", "upgrade.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="upgrade.py reads /proc"),
]


def test_smoke_upgrade_against_restart_directly_and_behind_nginx(tmp_path):
    require_tool("openssl")
    via = "direct,nginx" if nginx_here() else "direct"
    out = tmp_path / "upgrade.json"
    result = subprocess.run(
        [sys.executable, UPGRADE_BENCH, "--count", "60", "--hold", "6", "--via", via,
         "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["via"], r["path"]) for r in rows] == [
        (v, p) for v in via.split(",") for p in ("upgrade", "restart")]
    for row in rows:
        assert row["failed"] == 0, row
        if row["path"] == "upgrade":
            assert row["meets_targets"], row
            assert (row["disconnected"], row["reconnected"], row["score_regressions"]) == (0, 0, 0)
            assert row["said"].startswith("ok: upgraded to") and "moved 60 players" in row["said"]
        else:  # a restart: every connection goes; version 1's 30 come back as new players
            assert row["disconnected"] + row["reconnected"] >= 30, row
    assert "| upgrade |" in result.stdout and "| restart |" in result.stdout


def test_smoke_a_gateway_upgrades_with_its_players(tmp_path):
    """``--via gateway``: a world on a real redis-server, its gateway upgraded by pid."""
    require_tool("redis-server")
    out = tmp_path / "upgrade.json"
    result = subprocess.run(
        [sys.executable, UPGRADE_BENCH, "--count", "60", "--hold", "6", "--via", "gateway",
         "--paths", "upgrade", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert (row["via"], row["path"], row["failed"]) == ("gateway", "upgrade", 0), row
    assert (row["disconnected"], row["reconnected"], row["score_regressions"]) == (0, 0, 0)
    assert row["said"].startswith("ok: upgraded to") and "moved 60 players" in row["said"]
    assert row["meets_targets"], row
