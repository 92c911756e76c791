"""bench/refusals.py runs: a full server refuses every connect of a storm, with and without a rate."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # two storms, one of them paced at 400 refusals a second
def test_refusals_bench_refuses_every_connect_with_and_without_a_rate():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "refusals.py"),
                          "--count", "400", "--rate", "400", "--timeout", "30"],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["refuse_rate None", "refuse_rate 400.0"]
    for line in lines:
        refused, seconds = re.search(r": (\d+) refused in ([\d.]+) s", line).groups()
        assert int(refused) == 400, line  # every client told, none left waiting
        assert "us a refusal" in line and "% of a core" in line
    # Paced: 400 at 400 a second (a quarter second's burst first) takes most of a second.
    assert float(re.search(r"in ([\d.]+) s", lines[1]).group(1)) >= 0.5
