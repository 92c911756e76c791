"""pip's layout: the game in site-packages, the page under <prefix>/share/spelltraction/web.

pyproject.toml installs web/ as data files, so an installed server finds its
page there, not beside spelltraction.py. The server re-executes itself with
-S, and without site.py a virtual environment's ``sys.prefix`` is the base
interpreter's: the first CI run from an installed copy (tox) served
``404 no such resource`` at ``/``. These run the real re-exec from that layout,
in a virtual environment of their own and from a user base (``--user``).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request

import pytest

from serverproc import GAME, ROOT, Spawned

WEB_FILES = sorted(name for name in os.listdir(os.path.join(ROOT, "web"))
                   if os.path.isfile(os.path.join(ROOT, "web", name)))


def fake_install(prefix, site_packages):
    """What ``pip install`` leaves: the module and netcore in ``site_packages``,
    web/'s files (pyproject's data-files) in ``prefix``/share/spelltraction/web."""
    os.makedirs(site_packages, exist_ok=True)
    shutil.copy(GAME, site_packages)
    shutil.copytree(os.path.join(ROOT, "netcore"), os.path.join(site_packages, "netcore"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    share = os.path.join(prefix, "share", "spelltraction", "web")
    os.makedirs(share)
    for name in WEB_FILES:
        shutil.copy(os.path.join(ROOT, "web", name), share)
    return os.path.join(site_packages, "spelltraction.py")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.read()


@pytest.mark.parametrize("where", ["venv", "user"])
def test_an_installed_server_serves_the_page_from_the_share_folder(tmp_path, where):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    python = str(venv / "bin" / "python")
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    if where == "venv":
        game = fake_install(str(venv), str(venv / "lib" / version / "site-packages"))
    else:  # pip install --user: site-packages and share under the user's base
        base = tmp_path / "userbase"
        env["PYTHONUSERBASE"] = str(base)
        user_site = sysconfig.get_path("purelib", f"{os.name}_user", {"userbase": str(base)})
        game = fake_install(str(base), user_site)
    assert not os.path.exists(os.path.join(os.path.dirname(game), "web"))
    with Spawned([python, game, "serve", "--host", "127.0.0.1", "--port", "0", "--no-data"],
                 cwd=str(tmp_path), env=env) as server:
        status, page = get(server.port, "/")
        assert status == 200 and b"<!doctype html>" in page.lower(), page[:200]
        for name in WEB_FILES:
            status, body = get(server.port, f"/{name}")
            with open(os.path.join(ROOT, "web", name), "rb") as f:
                assert (status, body) == (200, f.read()), name
