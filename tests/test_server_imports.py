"""What a game server carries: not the code only doctor or tests use."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_game_loads_no_redis_client_tk_or_test_helpers():
    code = ("import sys, spelltraction; "
            "print(sorted(m for m in ('netcore.redis', 'netcore.resp', 'netcore.testing', "
            "'tkinter', 'pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
