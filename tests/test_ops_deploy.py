"""docs/DEPLOY.md's commands, run as written (paths and ports swapped for a temporary
directory), and what they rely on: the private CA and the check, certbot's deploy
hook (copies, permissions, the reload it asks systemd for, the server reloading),
the sample EnvironmentFile's flags on the units' command lines, and the backup
unit's command making a copy that the restore puts back."""

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest

import spelltraction as st
from conftest import require, require_tool, systemd_words
from helpers import read_frames
from serverproc import ROOT, ServerProcess, Spawned
from tlsgamekit import pki  # noqa: F401 - a fixture

DEPLOY = os.path.join(ROOT, "docs", "DEPLOY.md")
ETC = os.path.join(ROOT, "etc")
HOOK = os.path.join(ETC, "letsencrypt", "renewal-hooks", "deploy", "spelltraction")
ENV_FILE = os.path.join(ETC, "spelltraction", "spelltraction.env")
SYSTEMD = os.path.join(ETC, "systemd")
BACKUP_SERVICE = os.path.join(SYSTEMD, "spelltraction-backup.service")
BACKUP_TIMER = os.path.join(SYSTEMD, "spelltraction-backup.timer")


def block(name):
    """The shell code block under ``<!-- run: name -->`` in DEPLOY.md."""
    text = open(DEPLOY).read()
    found = re.search(rf"<!-- run: {re.escape(name)} -->\n```sh\n(.*?)\n```", text, re.S)
    assert found, f"no block {name} in DEPLOY.md"
    return found[1]


def bash(script, cwd, env=None, check=True):
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, (script, done.stdout, done.stderr)
    return done


def leaf_der(chain):
    text = open(chain).read()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[:end] + "\n")


def served_leaf(port, cafile, name="localhost"):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


def service_value(path, key):
    values = [line.split("=", 1)[1] for line in open(path).read().splitlines()
              if line.startswith(key + "=")]
    assert values, f"{key}= missing from {path}"
    return values[-1]


def systemd_unescape(line):
    """What systemd hands the program for a command line's ``$$`` and ``%%``."""
    return line.replace("$$", "$").replace("%%", "%")


# -- a private CA: openssl makes it, the server serves it, s_client checks it ------------


def test_the_private_ca_commands_make_a_certificate_the_server_serves_and_s_client_checks(
        tmp_path):
    require_tool("openssl")
    bash(block("private-ca"), cwd=tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "privkey.pem").st_mode) == 0o600
    with ServerProcess("--tls-cert", str(tmp_path / "fullchain.pem"),
                       "--tls-key", str(tmp_path / "privkey.pem")) as server:
        check = block("check").replace("play.example.org:12150", f"127.0.0.1:{server.port}")
        done = bash(check, cwd=tmp_path)
        assert "Verification: OK" in done.stderr and "TLSv1.3" in done.stderr, done.stderr
        assert served_leaf(server.port, str(tmp_path / "ca.pem"), "play.example.org")


# -- certbot's deploy hook ------------------------------------------------------------------


def hook_env(tmp_path, tls_dir, **extra):
    """The hook's environment: a stand-in ``systemctl`` that records its arguments and
    sends SIGHUP to the pid in ``tmp_path/server.pid`` (what systemctl reload does)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    f'echo "$@" >> {tmp_path}/systemctl.log\n'
                    f'[ -r {tmp_path}/server.pid ] && kill -HUP "$(cat {tmp_path}/server.pid)"\n'
                    "exit 0\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               SPELLTRACTION_TLS_DIR=str(tls_dir), SPELLTRACTION_TLS_GROUP="root",
               SPELLTRACTION_HOOK_CONF=str(tmp_path / "no-such.env"))
    env.pop("RENEWED_LINEAGE", None)
    env.update(extra)
    return env


def certbot_lineage(tmp_path, cert, key):
    """What certbot leaves in /etc/letsencrypt/live/NAME (root's alone)."""
    live = tmp_path / "letsencrypt" / "live" / "play.example.org"
    live.mkdir(parents=True, exist_ok=True)
    os.chmod(live.parent, 0o700)
    shutil.copy(cert, live / "fullchain.pem")
    shutil.copy(key, live / "privkey.pem")
    return live


def run_hook(tmp_path, live, env):
    command = block("hook").replace("/etc/letsencrypt/live/play.example.org", str(live)) \
        .replace("/etc/letsencrypt/renewal-hooks/deploy/spelltraction", HOOK)
    return bash(command, cwd=tmp_path, env=env)


def test_the_deploy_hook_copies_the_renewed_files_for_the_service_and_reloads_it(pki, tmp_path):
    require(os.geteuid() == 0, "the hook chowns to root (certbot runs it as root)", "sudo")
    tls_dir = tmp_path / "etc-spelltraction" / "tls"
    env = hook_env(tmp_path, tls_dir)
    live = certbot_lineage(tmp_path, pki.cert, pki.key)
    run_hook(tmp_path, live, env)  # the first time, before the server starts
    cert, key = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    assert stat.S_IMODE(os.stat(tls_dir).st_mode) == 0o750
    for path in (cert, key):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_uid == 0 and info.st_gid == 0
    assert [p.name for p in tls_dir.iterdir() if p.name.startswith(".")] == []
    with ServerProcess("--tls-cert", str(cert), "--tls-key", str(key)) as server:
        (tmp_path / "server.pid").write_text(str(server.proc.pid))
        assert served_leaf(server.port, pki.root) == leaf_der(pki.cert)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as player:
            player.sendall(st.frame(st.Hello(st.PROTOCOL_V2)))
            read_frames(player, 1)
            # certbot renews: new files in live/, the hook runs.
            certbot_lineage(tmp_path, pki.renewed_cert, pki.renewed_key)
            done = run_hook(tmp_path, live, env)
            assert "reloaded" in done.stdout
            deadline = time.monotonic() + 5
            while served_leaf(server.port, pki.root) != leaf_der(pki.renewed_cert):
                assert time.monotonic() < deadline, "the server still serves the old certificate"
                time.sleep(0.1)
            read_frames(player, 2)  # the player from before the renewal plays on
        assert server.stop() == 0
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls == ["try-reload-or-restart spelltraction.service "
                     "spelltraction-gateway@*.service"] * 2, calls


def test_the_deploy_hook_leaves_other_certificates_alone_and_says_what_is_missing(pki, tmp_path):
    require(os.geteuid() == 0, "the hook chowns to root (certbot runs it as root)", "sudo")
    tls_dir = tmp_path / "tls"
    live = certbot_lineage(tmp_path, pki.cert, pki.key)
    run_hook(tmp_path, live, hook_env(tmp_path, tls_dir, SPELLTRACTION_CERT_NAME="mail.example"))
    assert not tls_dir.exists() and not (tmp_path / "systemctl.log").exists()
    env = hook_env(tmp_path, tls_dir, SPELLTRACTION_TLS_GROUP="no-such-group-here")
    done = bash(f"RENEWED_LINEAGE={live} {HOOK}", cwd=tmp_path, env=env, check=False)
    assert done.returncode != 0 and "useradd --system" in done.stderr
    done = bash(HOOK, cwd=tmp_path, env=hook_env(tmp_path, tls_dir), check=False)
    assert done.returncode != 0 and "RENEWED_LINEAGE" in done.stderr


# -- the EnvironmentFile --------------------------------------------------------------------


def env_lines():
    """The sample's settings, commented out as shipped: [(name, value)]."""
    found = re.findall(r"^#([A-Z_]+)=(.*)$", open(ENV_FILE).read(), re.M)
    assert found
    return found


@pytest.mark.parametrize("unit", ["spelltraction.service", "spelltraction-gateway@.service"])
def test_every_setting_of_the_sample_environment_file_is_flags_the_unit_takes(unit):
    path = os.path.join(SYSTEMD, unit)
    assert service_value(path, "EnvironmentFile") == "-/etc/spelltraction/spelltraction.env"
    start = shlex.split(service_value(path, "ExecStart").replace("%i", "1"))  # instance 1
    assert "$SPELLTRACTION_OPTS" in start
    for name, value in env_lines():
        argv = systemd_words(start, {name: value})
        args = argv[argv.index("/opt/spelltraction/spelltraction.pyz") + 1:]
        parser = st.build_parser()
        parsed = st.parsed_options(parser, parser.parse_args(args))
        if "--tls-cert" in value:
            assert parsed.tls_cert == "/etc/spelltraction/tls/fullchain.pem"
            assert parsed.tls_key == "/etc/spelltraction/tls/privkey.pem"


def test_the_serve_unit_with_the_sample_s_tls_line_serves_tls(pki, tmp_path):
    """The unit's command line, the sample's TLS line uncommented (its paths where
    the test's files are), on a bundle: TLS and plain players on the game port."""
    start = shlex.split(service_value(os.path.join(SYSTEMD, "spelltraction.service"),
                                      "ExecStart"))
    value = env_lines()[0][1]  # the first: TLS, plain players too
    assert "--tls-cert" in value and "--tls-required" not in value
    value = value.replace("/etc/spelltraction/tls/fullchain.pem", pki.cert) \
        .replace("/etc/spelltraction/tls/privkey.pem", pki.key)
    argv = systemd_words(start, {"SPELLTRACTION_OPTS": value})
    args = argv[argv.index("/opt/spelltraction/spelltraction.pyz") + 1:]
    for flag, new in (("--port", "0"), ("--host", "127.0.0.1"), ("--admin-port", "0")):
        args[args.index(flag) + 1] = new
    pyz = tmp_path / "spelltraction.pyz"
    st.build_bundle(str(pyz))
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"))
    with Spawned([sys.executable, "-I", str(pyz), *args], cwd=tmp_path, env=env) as server:
        assert served_leaf(server.port, pki.root) == leaf_der(pki.cert)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(st.frame(st.Hello()))
            assert isinstance(st.decode(read_frames(plain, 1)[0]), st.Welcome)
        assert server.stop() == 0


# -- the backup timer's command, and the restore ----------------------------------------------


def test_systemd_analyze_verifies_the_backup_units(tmp_path):
    analyze = require_tool("systemd-analyze")
    for path in (BACKUP_SERVICE, BACKUP_TIMER):
        shutil.copy(path, tmp_path / os.path.basename(path))
    result = subprocess.run([analyze, "verify", str(tmp_path / "spelltraction-backup.service"),
                             str(tmp_path / "spelltraction-backup.timer")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "spelltraction" in line]
    assert complaints == [], complaints
    timer = open(BACKUP_TIMER).read()
    assert "OnCalendar=daily" in timer and "Persistent=yes" in timer
    # The backup runs as the server's user, on the server's data directory.
    serve = os.path.join(SYSTEMD, "spelltraction.service")
    assert service_value(BACKUP_SERVICE, "User") == service_value(serve, "User")
    assert service_value(serve, "StateDirectory") in \
        service_value(BACKUP_SERVICE, "StateDirectory").split()


@pytest.mark.slow
def test_a_copy_made_by_the_backup_units_command_restores(tmp_path):
    data, backups = tmp_path / "var-lib-spelltraction", tmp_path / "var-lib-spelltraction-backup"
    backups.mkdir()
    pyz = tmp_path / "spelltraction.pyz"
    st.build_bundle(str(pyz))

    def unit_command(key):
        line = systemd_unescape(service_value(BACKUP_SERVICE, key))
        line = line.replace("/var/lib/spelltraction-backup", str(backups)) \
            .replace("/var/lib/spelltraction", str(data)) \
            .replace("/opt/spelltraction/spelltraction.pyz", str(pyz)) \
            .replace("/usr/bin/python3", sys.executable)
        return shlex.split(line)

    # A player with a name and a score of its own, on a server with that data directory.
    with ServerProcess("--data", str(data)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as player:
            player.sendall(st.frame(st.Hello(st.PROTOCOL_V2, name=b"kept")))
            welcome = st.decode(read_frames(player, 1)[0])
            assert isinstance(welcome, st.Welcome)
        old = backups / "spelltraction-20000101T000000Z.sqlite3"  # 14+ days old: goes
        old.write_bytes(b"old")
        os.utime(old, (time.time() - 20 * 86400,) * 2)
        # The timer's service, while the server runs: ExecStart, then ExecStartPost.
        for key in ("ExecStart", "ExecStartPost"):
            done = subprocess.run(unit_command(key), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (key, done.stdout, done.stderr)
        assert server.stop() == 0
    copies = sorted(backups.iterdir())
    assert len(copies) == 1 and re.fullmatch(r"spelltraction-\d{8}T\d{6}Z\.sqlite3",
                                             copies[0].name), copies
    # Disaster: the data is lost. The restore, as DEPLOY.md says it.
    shutil.rmtree(data)
    data.mkdir(mode=0o700)
    restore = block("restore")
    assert restore.splitlines()[0] == "systemctl stop spelltraction"
    assert restore.splitlines()[-1] == "systemctl start spelltraction"
    script = "\n".join(restore.splitlines()[1:-1]) \
        .replace("/var/lib/spelltraction-backup/spelltraction-20250101T003012Z.sqlite3",
                 str(copies[0])) \
        .replace("/var/lib/spelltraction", str(data))
    bash(script, cwd=tmp_path)
    restored = data / st.DATA_FILE
    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o600
    with ServerProcess("--data", str(data)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as player:
            player.sendall(st.frame(st.Hello(st.PROTOCOL_V2, token=welcome.token)))
            back = st.decode(read_frames(player, 1)[0])
        assert isinstance(back, st.Welcome) and back.resumed == st.RESUMED, back
        assert back.player_id == welcome.player_id
        assert server.stop() == 0


def test_reload_means_the_certificate_on_the_units_with_a_player_port_only():
    """serve and the gateways reload (SIGHUP: the certificate); the authority has no
    player port, no certificate, and so no ExecReload= at all."""
    for unit in ("spelltraction.service", "spelltraction-gateway@.service"):
        path = os.path.join(SYSTEMD, unit)
        assert service_value(path, "ExecReload") == "/bin/kill -HUP $MAINPID"
        assert service_value(path, "SendSIGHUP") == "no"
    assert "ExecReload=" not in open(os.path.join(SYSTEMD, "spelltraction-game.service")).read()
