"""etc/: the sysctl file, limits.d, the systemd unit and nginx, checked against this machine."""

import io
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

import spelltraction as st
from conftest import require, require_tool, systemd_words
from netcore.hostcheck import HOST_SYSCTLS
from serverproc import ROOT, ServerProcess, Spawned, stop_process
from unitkit import (GAME_UNIT, GATEWAY_UNIT, SERVE_UNIT, SERVICES, UNITS, exec_args,
                     service_settings)

ETC = os.path.join(ROOT, "etc")
SYSCTL = os.path.join(ETC, "sysctl.d", "60-spelltraction.conf")
LIMITS = os.path.join(ETC, "security", "limits.d", "spelltraction.conf")
NGINX_HTTP = os.path.join(ETC, "nginx", "spelltraction.conf")
NGINX_STREAM = os.path.join(ETC, "nginx", "spelltraction-stream.conf")

# The 2012 post's settings: each must be applied or explained as dropped.
SEED_KEYS = [
    "net.core.rmem_max", "net.core.wmem_max", "net.core.rmem_default", "net.core.wmem_default",
    "net.core.optmem_max", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_mem",
    "net.ipv4.tcp_max_tw_buckets", "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range", "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_no_metrics_save", "net.core.somaxconn", "fs.file-max", "NR_OPEN",
]


def proc_sys(key):
    return os.path.join("/proc/sys", *key.split("."))


# -- sysctl.d ------------------------------------------------------------------


def parse_sysctl(text):
    """[(key, value, optional, comment above)] by sysctl.d(5)'s grammar."""
    entries, comment = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            comment = []
            continue
        if line[0] in "#;":
            comment.append(line[1:].strip())
            continue
        optional = line.startswith("-")
        assert "=" in line, f"not 'key = value': {raw!r}"
        key, value = (part.strip() for part in line.lstrip("-").split("=", 1))
        assert re.fullmatch(r"[a-z0-9_.-]+", key), f"bad key {key!r}"
        assert value, f"{key} has no value"
        entries.append((key, value, optional, " ".join(comment)))
        comment = []
    return entries


def test_sysctl_file_parses_and_every_key_exists_here_or_is_optional():
    entries = parse_sysctl(open(SYSCTL).read())
    keys = [e[0] for e in entries]
    assert len(keys) == len(set(keys)), "no key twice"
    assert len(entries) >= 6
    for key, value, optional, comment in entries:
        assert len(comment) > 80, f"{key}: every line is explained above it"
        if optional:
            assert "optional" in comment.lower(), f"{key}: '-' lines say why they are optional"
            continue
        assert os.path.exists(proc_sys(key)), f"{key} does not exist in this kernel"
        current = open(proc_sys(key)).read().split()
        if key != "net.ipv4.ip_local_reserved_ports":  # a list, possibly empty now
            assert len(value.split()) == len(current), f"{key}: {value!r} vs {current!r}"
            assert all(v.isdigit() for v in value.split()), key


def test_sysctl_file_drops_the_obsolete_and_explains_every_seed_line():
    text = open(SYSCTL).read()
    active = {e[0] for e in parse_sysctl(text)}
    assert "net.ipv4.tcp_tw_recycle" not in active  # removed in Linux 4.12
    for key in ("net.core.rmem_max", "net.core.wmem_max", "net.core.rmem_default",
                "net.core.optmem_max", "net.ipv4.tcp_window_scaling",
                "net.ipv4.tcp_no_metrics_save", "net.ipv4.tcp_mem", "fs.file-max"):
        assert key not in active, f"{key} is obsolete or harmful as a fixed value"
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for key in SEED_KEYS:
        assert key in active or key in comments, f"seed setting {key} neither kept nor explained"


def test_a_host_with_the_sysctl_file_passes_doctor_for_50000(tmp_path):
    """Apply the file to a fake /proc/sys built from this machine's values."""
    settings = {key: value for key, value, _, _ in parse_sysctl(open(SYSCTL).read())}
    for key in HOST_SYSCTLS:
        value = settings.get(key)
        if value is None:
            if not os.path.exists(proc_sys(key)):
                continue
            value = open(proc_sys(key)).read().strip()
        path = tmp_path / "proc" / "sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    (tmp_path / "proc" / "meminfo").write_text(open("/proc/meminfo").read())
    out = io.StringIO()
    limit = unit_limit_nofile()
    code = st.run_doctor(50_000, out, as_json=True, root=str(tmp_path),
                         rlimit=lambda: (limit, limit), may_raise=lambda n: False)
    import json

    report = json.loads(out.getvalue())
    statuses = {c["name"].split(" (")[0]: c["status"] for c in report["checks"]}
    for key in settings:
        if key in statuses:
            assert statuses[key] == "ok", (key, statuses)
    assert statuses["open files per process"] == "ok", "LimitNOFILE covers 50,000"
    assert statuses["net.ipv4.ip_local_port_range"] == "ok"
    if code:  # only memory or tcp_mem, which no file can fix, may block
        blocked = {k for k, s in statuses.items() if s == "block"}
        assert blocked <= {"memory available", "net.ipv4.tcp_mem"}, blocked


def test_somaxconn_covers_the_servers_backlog():
    settings = {e[0]: e[1] for e in parse_sysctl(open(SYSCTL).read())}
    assert int(settings["net.core.somaxconn"]) >= st.ServerOptions().backlog
    assert str(st.DEFAULT_PORT) in settings["net.ipv4.ip_local_reserved_ports"].split(",")
    lo, hi = map(int, settings["net.ipv4.ip_local_port_range"].split())
    assert lo <= st.DEFAULT_PORT <= hi, "the reservation matters only inside the range"


# -- limits.d --------------------------------------------------------------------


def unit_keys():
    """[(section, key, value)] of the unit file, in order."""
    section, out = None, []
    for line in open(SERVE_UNIT).read().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, value = line.split("=", 1)
        out.append((section, key.strip(), value.strip()))
    return out


def unit_value(key, section="Service"):
    values = [v for s, k, v in unit_keys() if s == section and k == key]
    assert values, f"{key}= missing from [{section}]"
    return values[-1]


def unit_limit_nofile():
    return int(unit_value("LimitNOFILE"))


def test_limits_d_sets_nofile_for_our_user_within_nr_open():
    rows = []
    for line in open(LIMITS).read().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split())
    assert rows, "no limit lines"
    nr_open = int(open("/proc/sys/fs/nr_open").read())
    for domain, kind, item, value in rows:
        assert domain == "spelltraction" and item == "nofile" and kind in ("soft", "hard")
        assert st.FD_RESERVE + 100_000 <= int(value) <= nr_open
        assert int(value) == unit_limit_nofile(), "the same number as the unit"
    assert {row[1] for row in rows} == {"soft", "hard"}


# -- systemd ---------------------------------------------------------------------


def test_unit_has_the_limits_restart_user_and_hardening_the_issue_asks_for():
    service = {k: v for s, k, v in unit_keys() if s == "Service"}
    assert service["Restart"] == "on-failure"
    assert service["DynamicUser"] == "yes"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    assert service["KillSignal"] == "SIGTERM"
    stop = float(service["TimeoutStopSec"].rstrip("s"))
    grace = st.ServerOptions().shutdown_grace
    assert grace + 0.5 <= stop <= 10, "room for the 2 s graceful exit, then SIGKILL soon"
    argv = shlex.split(service["ExecStart"])
    assert argv[:3] == ["/usr/bin/python3", "-I", "/opt/spelltraction/spelltraction.pyz"]
    max_clients = int(argv[argv.index("--max-clients") + 1])
    assert max_clients + st.FD_RESERVE <= unit_limit_nofile()
    assert unit_value("WantedBy", "Install") == "multi-user.target"


def test_unit_signals_agree_with_the_server():
    """stop sends what drains; reload sends SIGHUP, which reloads the TLS certificate
    and does nothing else (not a drain, not ignored); no SIGHUP after the stop."""
    service = {k: v for s, k, v in unit_keys() if s == "Service"}
    assert getattr(signal, service["KillSignal"]) in st.ServerSignals.SIGNALS
    assert service["SendSIGHUP"] == "no"
    assert shlex.split(service["ExecReload"])[:2] == ["/bin/kill", "-HUP"]
    assert signal.SIGHUP not in st.ServerSignals.SIGNALS
    assert "TLS" in (st.ServerSignals.on_reload.__doc__ or "")
    argv = shlex.split(service["ExecStart"])
    assert "--admin-port" in argv and "--admin-host" not in argv  # loopback, the default


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_every_unit_setting_is_explained(path):
    """In every unit (the single server's and the cluster's), each setting has a comment."""
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s[0] in "#;[":
            continue
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].strip().startswith("#"):
            j -= 1  # settings grouped under one comment
        assert j >= 0 and lines[j].strip().startswith("#"), f"no comment for: {s}"


def test_unit_execstart_runs_the_real_server(tmp_path):
    """The unit's command line (on a bundle, a free port) serves and stops cleanly on SIGTERM."""
    argv = systemd_words(shlex.split(unit_value("ExecStart")))  # no EnvironmentFile: no flags
    args = argv[argv.index("/opt/spelltraction/spelltraction.pyz") + 1:]
    args[args.index("--port") + 1] = "0"
    args[args.index("--host") + 1] = "127.0.0.1"
    if "--admin-port" in args:
        args[args.index("--admin-port") + 1] = "0"  # any free port
    pyz = tmp_path / "spelltraction.pyz"
    st.build_bundle(str(pyz))
    assert argv[1] == "-I"
    # systemd's StateDirectory= hands the server $STATE_DIRECTORY: its data directory.
    assert unit_value("StateDirectory") == "spelltraction"
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"))
    with Spawned([sys.executable, "-I", str(pyz), *args], cwd=tmp_path, env=env) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(st.frame(st.Hello()))
            assert sock.recv(4096), "WELCOME"
        assert server.stop() == 0
    assert os.path.isfile(tmp_path / "state" / st.DATA_FILE)


HARDENING_22 = {"ProtectProc": "invisible", "ProcSubset": "pid", "ProtectClock": "yes",
                "ProtectHostname": "yes", "RemoveIPC": "yes", "PrivateMounts": "yes",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
                "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
                "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "", "UMask": "0077"}


@pytest.mark.parametrize("path", SERVICES, ids=os.path.basename)
def test_every_unit_has_the_same_hardening(path):
    """Issue 22, finding 9: the game and gateway units had little of what the
    serve unit has, and none had ProcSubset=pid."""
    service = service_settings(path)
    for key, value in HARDENING_22.items():
        assert service.get(key) == value, f"{os.path.basename(path)}: {key}={value}"
    assert service.get("User") not in (None, "root") or service.get("DynamicUser") == "yes"


#: `systemd-analyze security --offline=true` per unit, after issue 22 (before: 1.2,
#: 1.8, 1.8). A unit that loses hardening scores higher and fails here.
EXPOSURE = {"spelltraction.service": 1.2, "spelltraction-game.service": 1.2,
            "spelltraction-gateway@.service": 1.4, "spelltraction-backup.service": 0.5}


@pytest.mark.parametrize("path", SERVICES, ids=os.path.basename)
def test_systemd_analyze_security_exposure_stays_low(path, tmp_path):
    analyze = require_tool("systemd-analyze")
    name = os.path.basename(path).replace("@.", "@1.")
    shutil.copy(path, tmp_path / name)
    result = subprocess.run([analyze, "security", "--offline=true", str(tmp_path / name)],
                            capture_output=True, text=True, timeout=60)
    require("offline" not in result.stderr, "this systemd-analyze has no --offline",
            "apt-get install systemd  # 250 or newer")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found[1]) <= EXPOSURE[os.path.basename(path)], result.stdout


@pytest.mark.slow
def test_the_unit_server_works_with_only_its_own_proc(tmp_path):
    """ProcSubset=pid and ProtectProc=invisible, as systemd mounts them (a /proc of
    the processes' directories only; /proc/stat, /proc/sys, /proc/meminfo gone):
    the unit's command line serves players, /healthz and every process_* metric."""
    unshare = require_tool("unshare")
    require(os.geteuid() == 0 and sys.platform == "linux",
            "mounting a /proc with subset=pid needs root (CI runs as root)", "sudo")
    args = exec_args(SERVE_UNIT, port="0", host="127.0.0.1", admin_port="0")
    pyz = tmp_path / "spelltraction.pyz"
    st.build_bundle(str(pyz))
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"))
    mount = "mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec \"$@\""
    argv = [unshare, "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
            sys.executable, "-I", str(pyz), *args]
    with Spawned(argv, cwd=tmp_path, env=env) as server:
        admin = server.admin_port()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(st.frame(st.Hello()))
            assert sock.recv(4096), "WELCOME"
        from clusterkit import http_get

        pid = server.proc.pid
        assert http_get(admin, "/healthz")[0] == 200
        status, metrics = http_get(admin, "/metrics")
        assert status == 200
        for name in ("process_resident_memory_bytes", "process_open_fds",
                     "process_start_time_seconds", "process_cpu_seconds_total"):
            assert re.search(rf"^{name} [0-9.e+]+$", metrics, re.M), name
        started = float(re.search(r"^process_start_time_seconds (\S+)$", metrics, re.M)[1])
        assert abs(started - os.stat(f"/proc/{pid}").st_ctime) < 60
        assert http_get(admin, "/stats.json")[0] == 200
        # It really ran in such a /proc: what its mount namespace shows.
        mounts = open(f"/proc/{pid}/mounts").read()
        assert re.search(r"^proc /proc proc \S*subset=pid", mounts, re.M), mounts
        assert server.stop() == 0


def test_systemd_analyze_verify_is_clean(tmp_path):
    analyze = require_tool("systemd-analyze")
    unit = tmp_path / "spelltraction.service"
    shutil.copy(SERVE_UNIT, unit)
    # ... and with its optional doctor line on ("-+": failure ignored, outside the sandbox).
    text = open(SERVE_UNIT).read()
    assert "\n#ExecStartPre=-+/usr/bin/python3 -I" in text
    with_doctor = tmp_path / "with-doctor" / "spelltraction.service"
    with_doctor.parent.mkdir()
    with_doctor.write_text(text.replace("\n#ExecStartPre=", "\nExecStartPre="))
    for path in (unit, with_doctor):
        result = subprocess.run([analyze, "verify", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        complaints = [line for line in result.stderr.splitlines() if "spelltraction" in line]
        assert complaints == [], complaints  # unknown keys and bad values are only warnings


# -- nginx -----------------------------------------------------------------------


def test_nginx_files_proxy_websockets_and_put_stream_at_top_level():
    http = open(NGINX_HTTP).read()
    code = "\n".join(line.split("#", 1)[0] for line in http.splitlines())
    assert code.count("{") == code.count("}")
    ws = code[code.index("location = /ws"):]
    ws = ws[:ws.index("}")]
    for needed in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $spelltraction_connection;"):
        assert needed in ws, needed
    assert "listen 443 ssl;" in code and not re.search(r"^\s*stream\s*{", code, re.M)
    assert f"127.0.0.1:{st.DEFAULT_PORT}" in code
    stream = "\n".join(line.split("#", 1)[0] for line in open(NGINX_STREAM).read().splitlines())
    assert stream.strip().startswith("stream {")
    assert f"127.0.0.1:{st.DEFAULT_PORT}" in stream


def test_shipped_listeners_never_share_a_port():
    """nginx's TLS ports, each unit's admin port and the game port are one host's
    ports: two of them alike and one service fails to bind at boot."""
    etc = os.path.join(ROOT, "etc")
    nginx_ports = []
    for name in (NGINX_HTTP, NGINX_STREAM):
        code = "\n".join(line.split("#", 1)[0] for line in open(name).read().splitlines())
        nginx_ports += {int(p) for p in re.findall(r"listen\s+(?:\[::\]:)?(\d+)", code)}
    admin_ports = []
    for unit in sorted(os.listdir(os.path.join(etc, "systemd"))):
        if not unit.endswith(".service"):
            continue  # the backup timer starts no program
        text = open(os.path.join(etc, "systemd", unit)).read()
        start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)
        instances = range(1, 5) if "%i" in start else [None]
        for i in instances:
            line = start.replace("%i", str(i)) if i is not None else start
            admin_ports += [int(p) for p in re.findall(r"--admin-port (\d+)", line)]
            assert str(st.DEFAULT_PORT) in line or "--port" not in line, unit
    ports = nginx_ports + admin_ports + [st.DEFAULT_PORT]
    assert all(0 < p < 65536 for p in ports), ports
    assert len(ports) == len(set(ports)), sorted(ports)


def flag(args, name):
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def nginx_blocks(path, kind):
    """{name: body} of the uncommented ``location``/``upstream`` blocks of an nginx file."""
    code = "\n".join(line.split("#", 1)[0] for line in open(path).read().splitlines())
    if kind == "location":
        found = re.findall(r"location\s+(?:=|\^~)?\s*(\S+)\s*\{([^}]*)\}", code)
    else:
        found = re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", code)
    return dict(found)


def nginx_values(path, directive):
    code = "\n".join(line.split("#", 1)[0] for line in open(path).read().splitlines())
    return re.findall(rf"^\s*{directive}\s+([^;]+);", code, re.M)


def test_the_units_trust_exactly_the_address_nginx_connects_from():
    """Issue 22, finding 4: serve and the gateways behind the shipped nginx believe
    its X-Forwarded-For and PROXY headers, and nobody else's."""
    binds = set(nginx_values(NGINX_HTTP, "proxy_bind")) | set(
        nginx_values(NGINX_STREAM, "proxy_bind"))
    assert len(binds) == 1, f"both nginx proxies connect from one address: {binds}"
    proxy = binds.pop()
    assert proxy in st.parse_networks(st.ServerOptions().exempt), \
        "loopback: the reason the unit must trust it (an untrusted one would be exempt)"
    for unit in (SERVE_UNIT, GATEWAY_UNIT):
        args = exec_args(unit)
        trusted = flag(args, "--trusted-proxies")
        assert trusted == proxy, f"{unit}: trusts {trusted!r}, nginx connects from {proxy}"
        assert proxy in st.parse_networks(trusted)
        assert "127.0.0.3" not in st.parse_networks(trusted), "exactly the proxy, not a range"
        assert flag(args, "--port") == str(st.DEFAULT_PORT)
    assert "--trusted-proxies" not in exec_args(GAME_UNIT), "the authority has no player port"
    # ... and the address nginx proxies to is that port.
    game = nginx_blocks(NGINX_HTTP, "upstream")["spelltraction_game"]
    assert re.findall(r"server\s+([\d.]+:\d+)", game) == [f"127.0.0.1:{st.DEFAULT_PORT}"]
    stream = nginx_blocks(NGINX_STREAM, "upstream")["spelltraction_raw"]
    assert re.findall(r"server\s+([\d.]+:\d+)", stream) == [f"127.0.0.1:{st.DEFAULT_PORT}"]
    assert nginx_values(NGINX_STREAM, "proxy_protocol") == ["on"]


def test_nginx_sends_operators_to_the_admin_port_and_players_to_the_game_port():
    upstreams = {name: re.findall(r"server\s+([\d.]+):(\d+)", body)
                 for name, body in nginx_blocks(NGINX_HTTP, "upstream").items()}
    locations = nginx_blocks(NGINX_HTTP, "location")
    admin_port = flag(exec_args(SERVE_UNIT), "--admin-port")
    assert "--admin-host" not in exec_args(SERVE_UNIT), "loopback: nginx is on this host"

    def target(path):
        upstream = re.search(r"proxy_pass\s+http://(\w+)\s*;", locations[path])[1]
        return upstreams[upstream]

    for path in ("/metrics", "/stats"):
        assert target(path) == [("127.0.0.1", admin_port)], f"{path}: the admin port"
        assert "deny all;" in locations[path]
    for path in ("/ws", "/"):
        assert target(path) == [("127.0.0.1", str(st.DEFAULT_PORT))], path
        assert "X-Forwarded-For $proxy_add_x_forwarded_for" in locations[path], path
    # The gateways' admin ports (1216N) and the authority's (12160) are distinct.
    game_admin = flag(exec_args(GAME_UNIT), "--admin-port")
    gateways = {flag(exec_args(GATEWAY_UNIT), "--admin-port").replace("%i", str(i))
                for i in range(1, 10)}
    assert len(gateways) == 9 and game_admin not in gateways and admin_port not in gateways


@pytest.mark.slow
def test_behind_the_shipped_nginx_players_are_counted_by_their_own_address(tmp_path):
    """The serve unit's command line behind the shipped nginx files: one client
    address is limited to its 16 pending connections over WebSocket (X-Forwarded-For)
    and raw TLS (PROXY header), and another address behind the same nginx is not."""
    from nginxkit import ShippedNginx, check_players_are_limited_per_address

    args = exec_args(SERVE_UNIT, port="0", host="127.0.0.1", admin_port="0")
    # Loopback players (our 127.0.0.3...) are exempt by default: exempt only 127.0.0.1,
    # as a host sees players who come from outside. Nothing else changes.
    args += ["--exempt", "127.0.0.1", "--no-data"]
    with Spawned([sys.executable, st.__file__, *args], cwd=tmp_path) as server:
        admin = server.admin_port()
        nginx = ShippedNginx(tmp_path, server.port, admin)
        try:
            check_players_are_limited_per_address(nginx)
        finally:
            nginx.stop()


STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


@pytest.fixture
def nginx():
    """The nginx binary, with openssl to make a certificate; else skip (fail under CI)."""
    require_tool("openssl")
    return require_tool("nginx")


def nginx_tree(tmp_path, raw_socket=None, game_port=None):
    """Our two files under a minimal nginx.conf, with a throwaway certificate.

    ``raw_socket``: the stream {} block listens on that Unix socket instead of port
    12151 (a path is ours alone; a port number could be taken by the time nginx binds).
    """
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)

    def adapt(text):
        text = text.replace("/etc/ssl/spelltraction/fullchain.pem", str(tmp_path / "cert.pem"))
        text = text.replace("/etc/ssl/spelltraction/privkey.pem", str(tmp_path / "key.pem"))
        if raw_socket:
            text = text.replace("listen 12151 ssl;", f"listen unix:{raw_socket} ssl;")
            text = text.replace("listen [::]:12151 ssl;", "")
        if game_port:
            text = text.replace(f"127.0.0.1:{st.DEFAULT_PORT}", f"127.0.0.1:{game_port}")
        return text

    (tmp_path / "site.conf").write_text(adapt(open(NGINX_HTTP).read()))
    (tmp_path / "stream.conf").write_text(adapt(open(NGINX_STREAM).read()))
    load = f"load_module {STREAM_MODULE};\n" if os.path.exists(STREAM_MODULE) else ""
    http = "" if raw_socket else f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
    (tmp_path / "nginx.conf").write_text(
        f"{load}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"daemon off;\nevents {{}}\ninclude {tmp_path}/stream.conf;\n{http}"
    )
    for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (tmp_path / d).mkdir(exist_ok=True)
    return tmp_path / "nginx.conf"


def require_stream_module(nginx_stderr=""):
    have = os.path.exists(STREAM_MODULE) or sys.platform != "linux"
    require(have and 'unknown directive "stream"' not in nginx_stderr,
            "nginx's stream module is not installed", "apt-get install libnginx-mod-stream")


def test_nginx_accepts_both_files(tmp_path, nginx):
    conf = nginx_tree(tmp_path)
    result = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path),
                             "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True, timeout=60)
    require_stream_module(result.stderr)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_raw_protocol_through_the_stream_tls_block(tmp_path, nginx):
    """A TLS client plays a tick through nginx's stream {} to a real server."""
    require_stream_module()
    # The stream block sends a PROXY header from 127.0.0.2 (proxy_protocol on;).
    game = ServerProcess("--tick-ms", "50", "--trusted-proxies", "127.0.0.2")
    raw_socket = str(tmp_path / "raw.sock")
    conf = nginx_tree(tmp_path, raw_socket=raw_socket, game_port=game.port)
    proxy = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path),
                              "-e", str(tmp_path / "error.log")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                raw = socket.socket(socket.AF_UNIX)
                raw.settimeout(5)
                raw.connect(raw_socket)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                raw.close()
                assert proxy.poll() is None, proxy.stderr.read()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        ctx.check_hostname = False
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(st.frame(st.Hello()))
            from netcore import FrameParser

            parser, got = FrameParser(max_frame=65535), []
            while not any(isinstance(m, st.TickMsg) for m in got):
                data = tls.recv(65536)
                assert data, f"closed; got {got}"
                got += [st.decode(f) for f in parser.feed(data)]
            assert isinstance(got[0], st.Welcome)
    finally:
        stop_process(proxy, signal.SIGQUIT)
        proxy.stdout.close()
        proxy.stderr.close()
        game.stop()


# -- the README's test command ---------------------------------------------------


def test_ci_runs_the_readmes_test_command_word_for_word():
    """A fresh machine runs what CI runs: one line, a venv (PEP 668), tox in it."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    command = re.search(r"```sh\n(python3 -m venv .*)\n```", readme)
    assert command, "no test command in the README"
    line = command[1]
    assert "pip install tox" in line and line.endswith("tox")
    ci = [text.strip() for text in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()]
    assert line in ci, f"{line!r} is not a line of .ci/run"
