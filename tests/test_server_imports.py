"""What a game server carries: not the code only doctor or tests use."""

import os
import shutil
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


def test_a_server_started_as_a_script_runs_without_site_or_the_compilers_leftovers():
    """The re-run drops ``site`` (-S) and imports code the script process
    compiled: no temporary file stays open once the server listens, and
    argparse's ``import shutil`` (bz2, lzma) is not in it."""
    with Spawned([sys.executable, GAME, "serve", "--no-data", "--host", "127.0.0.1",
                  "--port", "0"]) as server:
        pid = server.proc.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"-S" in argv
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [target for target in fds if target.endswith("(deleted)")]
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
        if not argparse_imports_shutil():  # Python 3.8's does, at import: nothing to save
            assert "_bz2" not in maps and "_lzma" not in maps


def argparse_imports_shutil() -> bool:
    out = subprocess.run([sys.executable, "-S", "-c",
                          "import sys, argparse; print('shutil' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip() == "True"


def test_the_re_run_imports_the_code_the_script_compiled_not_the_files(tmp_path):
    """What ``_BOOT`` imports comes from ``_precompile``'s file: with every
    source removed after compiling, the game still starts."""
    copy = tmp_path / "game"
    copy.mkdir()
    shutil.copy(GAME, copy / "spelltraction.py")
    shutil.copytree(os.path.join(ROOT, "netcore"), copy / "netcore")
    compiled = tmp_path / "compiled"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c",
                    "import sys; sys.path.insert(0, sys.argv[1]); import spelltraction as st\n"
                    "with open(sys.argv[2], 'wb') as f: st._precompile(f)",
                    str(copy), str(compiled)], check=True, timeout=60, env=env)
    for source in [copy / "spelltraction.py", *(copy / "netcore").glob("*.py")]:
        source.unlink()
    from spelltraction import _BOOT

    with open(compiled, "rb") as f:
        out = subprocess.run([sys.executable, "-S", "-c", _BOOT, str(copy), str(f.fileno()),
                              "--version"], pass_fds=[f.fileno()], capture_output=True,
                             text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("spelltraction ")
