"""What a game server carries: not the code only doctor or tests use."""

import os
import socket
import subprocess
import sys

import spelltraction as st
from helpers import read_frames
from hostilekit import http_get
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


def test_nothing_is_imported_from_the_directory_the_server_starts_in(tmp_path):
    """Started from a directory of booby-trapped modules (every top-level module this
    test process has loaded, the game's own names and the start-up's), the server
    starts, serves, and imports none of them: only the standard library and its folder."""
    marker = tmp_path / "imported"
    trap = tmp_path / "trap"
    trap.mkdir()
    names = {name.split(".")[0] for name in sys.modules} | {
        "spelltraction", "netcore", "importlib", "runpy", "py_compile", "marshal", "encodings"}
    body = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in sorted(n for n in names if n.isidentifier()):
        (trap / f"{name}.py").write_text(body)
        (trap / name).mkdir(exist_ok=True)
        (trap / name / "__init__.py").write_text(body)
    with Spawned([sys.executable, GAME, "serve", "--no-data", "--host", "127.0.0.1",
                  "--port", "0"], cwd=str(trap)) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as player:
            player.sendall(st.frame(st.Hello()))
            assert isinstance(st.decode(read_frames(player, 1)[0]), st.Welcome)
        with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"-c" in argv and ROOT.encode() in argv  # it did re-run itself, from here
        assert server.stop() == 0
    assert not marker.exists(), marker.read_text()


def test_a_server_that_served_every_kind_of_client_loaded_no_typing_or_urllib(tmp_path):
    """``typing`` (0.45 MB of RSS) is for type checkers, ``urllib.parse``
    pulls in ``ipaddress`` (0.45 MB more), and ``ssl`` (with OpenSSL, ~4.5 MB)
    is for servers given a certificate: after serving a player, a browser's
    page, a WebSocket handshake, /metrics and /stats.json, and shutting down,
    a plain server has imported none of them."""
    code = ("import atexit, sys; sys.path.insert(0, sys.argv[1])\n"
            "atexit.register(lambda: print(sorted(m for m in ('typing', 'urllib.parse', "
            "'ipaddress', 'ssl', '_ssl', 'netcore.tls') if m in sys.modules), file=sys.stderr))\n"
            "import spelltraction\n"
            "sys.exit(spelltraction.main(['serve', '--host', '127.0.0.1', '--port', '0', "
            "'--data', sys.argv[2], '--public-stats']))\n")
    server = Spawned([sys.executable, "-S", "-c", code, ROOT, str(tmp_path / "data")])
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as player:
            player.sendall(st.frame(st.Hello(version=2, name=b"ann")))
            assert isinstance(st.decode(read_frames(player, 1)[0]), st.Welcome)
        for path in ("/", "/metrics", "/stats.json", "/web/%61bsent.js"):
            http_get(server.host, server.port, path)
        with socket.create_connection((server.host, server.port), timeout=5) as browser:
            browser.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            assert browser.recv(1024).startswith(b"HTTP/1.1 101")
        assert server.stop() == 0
        assert server.proc.stderr.read().strip().splitlines()[-1] == "[]"
    finally:
        server.stop()
        server.close_pipes()
