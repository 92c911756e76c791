"""etc/ for a world on Redis: the game and gateway units, their command lines run for real."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

import spelltraction as st
from clusterkit import Authority, Player, http_get, wait_for
from conftest import require_tool, systemd_words
from redisproc import RedisServer
from serverproc import ROOT, Spawned

SYSTEMD = os.path.join(ROOT, "etc", "systemd")
GAME_UNIT = os.path.join(SYSTEMD, "spelltraction-game.service")
GATEWAY_UNIT = os.path.join(SYSTEMD, "spelltraction-gateway@.service")


def service(path):
    """The [Service] settings, the last of each key (ExecStart and friends once each)."""
    found, section = {}, ""
    for line in open(path).read().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and line[0] not in "#;" and section == "Service":
            key, _, value = line.partition("=")
            found.setdefault(key, value)
    return found


def test_the_authority_has_a_user_of_its_own_and_the_gateways_one_port():
    game, gateway = service(GAME_UNIT), service(GATEWAY_UNIT)
    # Issue 22, finding 9: a compromised gateway must not signal the authority or
    # read its store, so not one user for both; the gateways share one (SO_REUSEPORT).
    assert gateway["User"] == gateway["Group"] == "spelltraction"
    assert game["User"] == game["Group"] == "spelltraction-game"
    assert "DynamicUser" not in gateway  # SO_REUSEPORT needs one uid for every instance
    assert game["StateDirectoryMode"] == "0700" and game["ProtectProc"] == "invisible"
    assert f"useradd --system --home /var/lib/spelltraction-game {game['User']}" in open(
        GAME_UNIT).read(), "the install lines make the user it runs as"
    argv = shlex.split(gateway["ExecStart"])
    assert argv[argv.index("--port") + 1] == "12150"  # the same for every instance
    assert argv[argv.index("--admin-port") + 1] == "1216%i"
    assert int(argv[argv.index("--max-clients") + 1]) + st.FD_RESERVE <= int(gateway["LimitNOFILE"])
    for unit in (game, gateway):
        argv = shlex.split(unit["ExecStart"])
        assert "--redis-password-file" in argv and "@" not in argv[argv.index("--redis") + 1]
        assert unit["LoadCredential"].startswith("redis-password:")
    # A second authority for a world exits 3: restarting it would not help.
    assert game["RestartPreventExitStatus"] == "3"


def test_systemd_analyze_verifies_the_cluster_units(tmp_path):
    analyze = require_tool("systemd-analyze")
    shutil.copy(GAME_UNIT, tmp_path / "spelltraction-game.service")
    shutil.copy(GATEWAY_UNIT, tmp_path / "spelltraction-gateway@1.service")
    result = subprocess.run([analyze, "verify", str(tmp_path / "spelltraction-game.service"),
                             str(tmp_path / "spelltraction-gateway@1.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "spelltraction" in line]
    assert complaints == [], complaints


def unit_args(path, credentials, redis_url, **replace):
    """The unit's command line after the .pyz, as systemd would run it here."""
    argv = systemd_words(shlex.split(service(path)["ExecStart"]))  # no EnvironmentFile
    args = argv[argv.index("/opt/spelltraction/spelltraction.pyz") + 1:]
    args = [a.replace("${CREDENTIALS_DIRECTORY}", credentials).replace("%i", "1") for a in args]
    args[args.index("--redis") + 1] = redis_url
    for flag, value in replace.items():
        args[args.index("--" + flag.replace("_", "-")) + 1] = value
    return args


@pytest.mark.slow
def test_the_units_command_lines_run_a_world_on_a_password_protected_redis(tmp_path):
    redis = RedisServer(str(tmp_path), password="unit-secret").start()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-password").write_text("unit-secret\n")
    url = f"redis://127.0.0.1:{redis.port}"
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"))
    game = gateway = None
    try:
        game = Authority([sys.executable, st.__file__, *unit_args(
            GAME_UNIT, str(credentials), url, admin_port="0")], env=env)
        gateway = Spawned([sys.executable, st.__file__, *unit_args(
            GATEWAY_UNIT, str(credentials), url, admin_port="0", host="127.0.0.1", port="0")])
        admin = gateway.admin_port()
        wait_for(lambda: http_get(admin, "/healthz")[0] == 200)
        p = Player(gateway.port)
        p.until(lambda: p.welcome is not None and p.last_tick() >= 0)
        p.close()
        assert os.path.isfile(tmp_path / "state" / st.DATA_FILE)
        assert game.stop(signal.SIGTERM) == 0
    finally:
        if gateway is not None:
            gateway.stop(signal.SIGKILL)
            gateway.close_pipes()
        if game is not None:
            game.stop(signal.SIGKILL)
        redis.kill()


@pytest.mark.slow
def test_behind_the_shipped_nginx_gateway_players_are_counted_by_their_own_address(tmp_path):
    """Issue 22, finding 4: the gateway unit's command line behind the shipped nginx
    files counts players by their own address (X-Forwarded-For over WebSocket,
    the PROXY header over raw TLS), as serve's does (tests/test_ops_etc.py)."""
    from nginxkit import ShippedNginx, check_players_are_limited_per_address

    redis = RedisServer(str(tmp_path), password="unit-secret").start()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-password").write_text("unit-secret\n")
    url = f"redis://127.0.0.1:{redis.port}"
    game = gateway = nginx = None
    try:
        game = Authority([sys.executable, st.__file__, *unit_args(
            GAME_UNIT, str(credentials), url, admin_port="0"), "--no-data"])
        # Loopback players (127.0.0.3...) are exempt by default: exempt only
        # 127.0.0.1, as a host sees players who come from outside.
        gateway = Spawned([sys.executable, st.__file__, *unit_args(
            GATEWAY_UNIT, str(credentials), url, admin_port="0", host="127.0.0.1", port="0"),
            "--exempt", "127.0.0.1"])
        admin = gateway.admin_port()
        wait_for(lambda: http_get(admin, "/healthz")[0] == 200)
        nginx = ShippedNginx(tmp_path, gateway.port, admin)
        check_players_are_limited_per_address(nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        if gateway is not None:
            gateway.stop(signal.SIGKILL)
            gateway.close_pipes()
        if game is not None:
            game.stop(signal.SIGKILL)
        redis.kill()
