"""What a game server carries: not the code only doctor or tests use."""

import subprocess
import sys

from serverproc import GAME, ROOT, Spawned


def python_prints(code: str) -> str:
    """What a fresh interpreter running ``code`` in the project's root prints; it must succeed."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_the_game_loads_no_redis_client_tk_or_test_helpers():
    code = ("import sys, spelltraction; "
            "print(sorted(m for m in ('netcore.redis', 'netcore.resp', 'netcore.testing', "
            "'tkinter', 'pytest') if m in sys.modules))")
    assert python_prints(code).strip() == "[]"


def test_a_server_started_as_a_script_runs_this_file_whatever_the_current_directory(tmp_path):
    """It re-runs itself as a module (for memory's sake): the module must be this
    file, not a spelltraction.py that happens to be in the current directory."""
    (tmp_path / "spelltraction.py").write_text("raise SystemExit('the wrong spelltraction.py ran')\n")
    with Spawned([sys.executable, GAME, "serve", "--no-data", "--host", "127.0.0.1",
                  "--port", "0"], cwd=str(tmp_path)) as server:
        with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"-c" in argv and ROOT.encode() in argv  # re-run, from here


def test_listening_on_an_ascii_host_loads_no_idna_codec():
    """getaddrinfo encodes a str host with the idna codec (and loads unicodedata):
    the server gives it bytes, so a server never carries them."""
    code = ("import sys; from netcore.server import bind_listeners; "
            "socks = bind_listeners(['127.0.0.1', 'localhost'], 0, 8); "
            "print(len(socks) > 0, 'encodings.idna' in sys.modules, 'unicodedata' in sys.modules)")
    assert python_prints(code).split() == ["True", "False", "False"]
