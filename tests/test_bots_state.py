"""bots --state: protocol-2 bots keep their tokens, come back as themselves, and count it."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from serverproc import GAME, ServerProcess

pytestmark = pytest.mark.slow


def bots(port, state, count, duration=2.0, *extra):
    done = subprocess.run(
        [sys.executable, GAME, "bots", "--port", str(port), "--count", str(count), "--duration",
         str(duration), "--move-every", "1", "--probes", "0", "--state", state, "--json", *extra],
        capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1]), done


def test_a_second_run_resumes_every_bot_and_makes_the_rest_new(tmp_path):
    state = str(tmp_path / "bots.json")
    with ServerProcess("--data", str(tmp_path / "data"), "--tick-ms", "50") as server:
        first, _ = bots(server.port, state, 40)
        assert (first["connected"], first["resumed"], first["score_regressions"]) == (40, 0, 0)
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
        saved = json.load(open(state))["players"]
        assert len(saved) == 40 and len({p["token"] for p in saved}) == 40
        assert all(len(p["token"]) == 32 and p["id"] > 0 for p in saved)
        second, _ = bots(server.port, state, 50)
        assert (second["connected"], second["resumed"], second["score_regressions"]) == (50, 40, 0)
        again = json.load(open(state))["players"]
        assert [p["id"] for p in again[:40]] == [p["id"] for p in saved]
        assert len(again) == 50
        fewer, _ = bots(server.port, state, 10)
        assert fewer["resumed"] == 10 and len(json.load(open(state))["players"]) == 50


def test_bots_reconnect_through_a_kill_9_and_restart(tmp_path):
    state = str(tmp_path / "bots.json")
    data = str(tmp_path / "data")
    server = ServerProcess("--data", data, "--tick-ms", "50")
    port = server.port
    run = subprocess.Popen(
        [sys.executable, GAME, "bots", "--port", str(port), "--count", "60", "--duration", "12",
         "--move-every", "1", "--probes", "0", "--state", state, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        server.stop(signal.SIGKILL)
        time.sleep(1)
        server = ServerProcess("--data", data, "--tick-ms", "50", port=port)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        server.stop()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["connected"] == 60 and summary["dropped"] == 0, err
    assert summary["reconnected"] == 60 and summary["resumed"] == 60
    assert summary["score_regressions"] == 0
