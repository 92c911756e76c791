"""bundle: one .pyz, copied alone into an empty directory, serves a real game."""

import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile

import pytest

import spelltraction as st
from gamekit import Player
from serverproc import GAME, ROOT, Spawned


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "spelltraction.pyz"
    result = subprocess.run([sys.executable, GAME, "bundle", "-o", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    return out


@pytest.fixture
def alone(pyz, tmp_path):
    """The .pyz copied alone into an empty directory."""
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(pyz, run / "spelltraction.pyz")
    assert os.listdir(run) == ["spelltraction.pyz"]
    return run


def isolated(*args, cwd):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no PYTHONPATH
    return subprocess.run([sys.executable, "-I", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=60)


def test_bundle_holds_the_game_netcore_and_web(pyz):
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    names = set(zipfile.ZipFile(pyz).namelist())
    sources = {f"netcore/{n}" for n in os.listdir(os.path.join(ROOT, "netcore"))
               if n.endswith(".py") or n == "py.typed"}
    assert {"__main__.py", "spelltraction.py", "web/stats.html"} | sources <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_bundle_alone_serves_a_game_tick(alone):
    # Its data directory (the default: $XDG_STATE_HOME/spelltraction) inside the test's own.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_STATE_HOME": str(alone)}
    argv = [sys.executable, "-I", "spelltraction.pyz", "--host", "127.0.0.1", "--port", "0",
            "--tick-ms", "50", "--public-stats"]
    with Spawned(argv, cwd=alone, env=env) as server:
        port = server.port
        inbox = Player(port)
        welcome = inbox.welcome
        assert welcome.version == st.PROTOCOL_VERSION and welcome.tick_ms == 50
        inbox.expect(st.You)
        stats = inbox.expect(st.Stats)
        # "Memory at start" is the server ready to serve, so it compares with
        # memory now (taken before the start-up heap was released, it read
        # some 3.7 MiB above it from the bundle).
        assert 0 < stats.start_rss_kb <= stats.rss_kb + 1024, stats
        inbox.send(st.Move(7, 100, 200))
        tick = inbox.expect(st.TickMsg)
        assert tick.players == 1
        you = inbox.expect(st.You)
        assert (you.seq, you.x, you.y) == (7, 100, 200)
        inbox.close()
        # The browser client comes out of the same file, on the same port.
        for path, asset, ctype in (("/", "index.html", "text/html"),
                                   ("/app.js", "app.js", "text/javascript"),
                                   ("/stats", "stats.html", "text/html")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as page:
                assert page.status == 200
                assert page.headers["Content-Type"].startswith(ctype)
                assert page.read() == open(os.path.join(ROOT, "web", asset), "rb").read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            assert b"spelltraction_players" in page.read()
        assert server.stop() == 0


def test_assets_load_from_inside_the_bundle(alone):
    expected = open(os.path.join(ROOT, "web", "stats.html"), "rb").read()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import spelltraction; "
            "assert '.pyz' in spelltraction.__file__; "
            "sys.stdout.buffer.write(spelltraction.read_asset('stats.html'))")
    for path in ("spelltraction.pyz", str(alone / "spelltraction.pyz")):  # relative, absolute
        result = isolated("-c", code, path, cwd=alone)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected
    missing = isolated("-c", "import sys; sys.path.insert(0, 'spelltraction.pyz'); "
                       "import spelltraction; spelltraction.read_asset('nope.js')", cwd=alone)
    assert b"FileNotFoundError: no asset web/nope.js" in missing.stderr


def test_the_bundle_runs_its_other_commands(alone):
    result = isolated("spelltraction.pyz", "--version", cwd=alone)
    assert result.stdout.strip() == f"spelltraction {st.__version__}".encode()
    result = isolated("spelltraction.pyz", "doctor", "--clients", "10", cwd=alone)
    assert b"verdict:" in result.stdout


def test_a_tree_without_web_bundles_without_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(GAME, src)
    shutil.copytree(os.path.join(ROOT, "netcore"), src / "netcore")
    out = tmp_path / "x.pyz"
    names = st.build_bundle(str(out), str(src))
    assert not [n for n in names if n.startswith("web")]
    assert isolated(str(out), "--version", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("name", ["", "../spelltraction.py", "/etc/passwd", "a//b", "./x",
                                  "a/../../b", "a\\b", "x\0y"])
def test_asset_names_cannot_leave_web(name):
    with pytest.raises(ValueError):
        st.read_asset(name)


def test_assets_load_from_the_source_tree():
    assert st.read_asset("stats.html") == open(os.path.join(ROOT, "web", "stats.html"), "rb").read()
    with pytest.raises(FileNotFoundError):
        st.read_asset("no-such-file.html")


@pytest.mark.parametrize("how", [["spelltraction.py"], ["spelltraction.py", "bots"]])
def test_the_file_copied_alone_says_what_to_copy_instead_of_a_traceback(tmp_path, how):
    """The design card says "copy the single file"; alone it cannot run, so it says why."""
    shutil.copy(GAME, tmp_path / "spelltraction.py")
    # -S as well as -I: where netcore is pip-installed (tox) it must not be found either.
    result = isolated("-S", *how, cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err and result.stdout == b""
    assert f"needs the netcore/ package beside it, and {tmp_path} has none" in err
    assert "copy netcore/ (and web/" in err
    assert "python3 spelltraction.py bundle" in err and "dist/spelltraction.pyz" in err


def test_importing_the_file_alone_raises_the_same_advice(tmp_path):
    shutil.copy(GAME, tmp_path / "spelltraction.py")
    result = isolated("-S", "-c", "import sys; sys.path.insert(0, '.'); import spelltraction",
                      cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "ImportError: spelltraction.py needs the netcore/ package beside it" in err
    assert "python3 spelltraction.py bundle" in err


@pytest.mark.skipif(sys.version_info < (3, 11), reason="-P is new in Python 3.11")
def test_a_tree_run_with_safe_path_says_netcore_is_not_on_the_path(tmp_path):
    result = isolated("-S", "-P", GAME, "doctor", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err, err
    assert f"netcore/ is beside spelltraction.py in {ROOT}, but not on the import" in err
