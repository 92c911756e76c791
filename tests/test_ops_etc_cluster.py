"""etc/ for a world on Redis: the game and gateway units, their command lines run for real."""

import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

import spelltraction as st
from clusterkit import Authority, Player, World, http_get, wait_for
from conftest import require_tool
from serverproc import Spawned
from unitkit import GAME_UNIT, GATEWAY_UNIT, exec_args, service_settings


def test_the_authority_has_a_user_of_its_own_and_the_gateways_one_port():
    game, gateway = service_settings(GAME_UNIT), service_settings(GATEWAY_UNIT)
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


class UnitWorld(World):
    """The cluster units' command lines, as systemd would run them here: on a
    password-protected Redis, its password in a credentials directory."""

    def __init__(self, directory):
        super().__init__(directory, password="unit-secret")
        self.credentials = os.path.join(directory, "credentials")
        os.mkdir(self.credentials)
        with open(os.path.join(self.credentials, "redis-password"), "w") as f:
            f.write("unit-secret\n")

    def unit_args(self, path, **replace):
        """The unit's command line after the .pyz, on this Redis (its URL without
        the password, which the unit reads from its credentials)."""
        args = exec_args(path, redis=f"redis://127.0.0.1:{self.redis.port}", **replace)
        return [a.replace("${CREDENTIALS_DIRECTORY}", self.credentials).replace("%i", "1")
                for a in args]

    def game(self, *extra, env=None):
        """The game unit's authority, on any free admin port."""
        game = Authority([sys.executable, st.__file__,
                          *self.unit_args(GAME_UNIT, admin_port="0"), *extra], env=env)
        self.procs.append(game)
        return game

    def gateway(self, *extra):
        """The gateway unit's gateway on 127.0.0.1, any free ports: returned once its
        /healthz answers, its admin port as ``admin``."""
        gateway = Spawned([sys.executable, st.__file__, *self.unit_args(
            GATEWAY_UNIT, admin_port="0", host="127.0.0.1", port="0"), *extra])
        self.procs.append(gateway)
        gateway.admin = gateway.admin_port()
        wait_for(lambda: http_get(gateway.admin, "/healthz")[0] == 200)
        return gateway


@pytest.fixture
def units(tmp_path):
    world = UnitWorld(str(tmp_path))
    try:
        yield world
    finally:
        world.close()


@pytest.mark.slow
def test_the_units_command_lines_run_a_world_on_a_password_protected_redis(tmp_path, units):
    game = units.game(env=dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state")))
    gateway = units.gateway()
    p = Player(gateway.port)
    p.until(lambda: p.welcome is not None and p.last_tick() >= 0)
    p.close()
    assert os.path.isfile(tmp_path / "state" / st.DATA_FILE)
    assert game.stop(signal.SIGTERM) == 0


@pytest.mark.slow
def test_behind_the_shipped_nginx_gateway_players_are_counted_by_their_own_address(
        tmp_path, units):
    """Issue 22, finding 4: the gateway unit's command line behind the shipped nginx
    files counts players by their own address (X-Forwarded-For over WebSocket,
    the PROXY header over raw TLS), as serve's does (tests/test_ops_etc.py)."""
    from nginxkit import ShippedNginx, check_players_are_limited_per_address

    units.game("--no-data")
    # Loopback players (127.0.0.3...) are exempt by default: exempt only
    # 127.0.0.1, as a host sees players who come from outside.
    gateway = units.gateway("--exempt", "127.0.0.1")
    nginx = ShippedNginx(tmp_path, gateway.port, gateway.admin)
    try:
        check_players_are_limited_per_address(nginx)
    finally:
        nginx.stop()
