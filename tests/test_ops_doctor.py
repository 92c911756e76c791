"""doctor: fake /proc trees (fine, blocked, borderline), then this very machine."""

import io
import json
import os
import resource
import subprocess
import sys

import pytest

import spelltraction as st
from serverproc import GAME

GOOD = {
    "fs/file-max": "9223372036854775807",
    "fs/file-nr": "2000\t0\t9223372036854775807",
    "fs/nr_open": "1048576",
    "net/core/somaxconn": "4096",
    "net/ipv4/tcp_max_syn_backlog": "8192",
    "net/ipv4/tcp_syncookies": "1",
    "net/ipv4/ip_local_port_range": "10000\t65535",
    "net/ipv4/tcp_mem": "382185\t509580\t764370",
    "net/ipv4/tcp_max_tw_buckets": "262144",
    "net/netfilter/nf_conntrack_max": "262144",
    "net/netfilter/nf_conntrack_count": "100",
}
GOOD_MEM_KB = 16 << 20  # 16 GiB available


def fake_proc(tmp_path, overrides=None, mem_kb=GOOD_MEM_KB, drop=()):
    values = dict(GOOD, **(overrides or {}))
    for key, value in values.items():
        if key in drop:
            continue
        path = tmp_path / "proc" / "sys" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    meminfo = tmp_path / "proc" / "meminfo"
    meminfo.write_text(f"MemTotal: {mem_kb * 2} kB\nMemFree: 1000 kB\n"
                       f"MemAvailable: {mem_kb} kB\n")
    return str(tmp_path)


def doctor(root, clients, nofile=(1 << 20, 1 << 20), may_raise=False):
    out = io.StringIO()
    code = st.run_doctor(clients, out, root=root, rlimit=lambda: nofile,
                         may_raise=lambda target: may_raise)
    text = out.getvalue()
    out = io.StringIO()
    st.run_doctor(clients, out, as_json=True, root=root, rlimit=lambda: nofile,
                  may_raise=lambda target: may_raise)
    checks = {c["name"].split(" (")[0]: c for c in json.loads(out.getvalue())["checks"]}
    return code, text, checks


def statuses(checks):
    return {name: c["status"] for name, c in checks.items()}


def test_a_well_tuned_host_is_fine_for_50000(tmp_path):
    code, text, checks = doctor(fake_proc(tmp_path), 50_000)
    assert code == 0
    assert set(statuses(checks).values()) == {"ok"}, statuses(checks)
    assert text.rstrip().endswith("verdict: OK for 50000 clients.")
    assert "fix:" not in text


def test_this_machines_shape_blocks_50000_and_says_what_to_do(tmp_path):
    code, text, checks = doctor(fake_proc(tmp_path), 50_000, nofile=(20_000, 20_000))
    assert code == 1
    nofile = checks["open files per process"]
    assert nofile["status"] == "block"
    assert "cannot be raised" in nofile["why"] and "CAP_SYS_RESOURCE" in nofile["why"]
    assert "at most 19968 clients" in nofile["why"]
    assert "3 server processes" in nofile["why"] and "--max-clients 19968" in nofile["why"]
    assert "another host" in nofile["why"]
    lines = [f["line"] for f in nofile["fixes"]]
    assert "LimitNOFILE=65536" in lines
    assert "spelltraction  hard  nofile  65536" in lines
    assert "verdict: BLOCKED: 1 check(s) stop 50000 clients (open files per process)" in text
    others = {name: s for name, s in statuses(checks).items() if name != "open files per process"}
    assert set(others.values()) == {"ok"}


def test_a_raisable_hard_limit_gets_a_ulimit_line(tmp_path):
    code, text, checks = doctor(fake_proc(tmp_path), 100_000, nofile=(1024, 4096),
                                may_raise=True)
    assert code == 1
    fixes = [f["line"] for f in checks["open files per process"]["fixes"]]
    assert fixes[0] == "ulimit -n 131072" and "LimitNOFILE=131072" in fixes
    assert "cannot be raised" not in text


def test_a_low_soft_limit_alone_is_fine_because_serve_raises_it(tmp_path):
    code, text, checks = doctor(fake_proc(tmp_path), 15_000, nofile=(1024, 65536))
    assert code == 0
    c = checks["open files per process"]
    assert c["status"] == "ok" and "raises its soft limit" in c["why"]


@pytest.mark.parametrize("clients", [1, 15_000, 19_968])
def test_nofile_borderline(tmp_path, clients):
    root = fake_proc(tmp_path)
    hard = clients + st.FD_RESERVE
    assert doctor(root, clients, nofile=(hard, hard))[0] == 0
    code, _, checks = doctor(root, clients, nofile=(hard - 1, hard - 1))
    assert code == 1 and checks["open files per process"]["status"] == "block"


def test_limit_recommendation_never_exceeds_nr_open(tmp_path):
    root = fake_proc(tmp_path, {"fs/nr_open": "60000"})
    code, _, checks = doctor(root, 50_000, nofile=(20_000, 20_000))
    assert code == 1
    assert checks["fs.nr_open"]["status"] == "ok"
    assert "LimitNOFILE=60000" in [f["line"] for f in checks["open files per process"]["fixes"]]


@pytest.mark.parametrize(
    "key, fits, short, name, status_short",
    [
        # each value is the exact edge for 10,000 clients, then one below it
        ("fs/nr_open", "10032", "10031", "fs.nr_open", "block"),
        ("fs/file-max", "12032", "12031", "fs.file-max", "block"),  # + 2000 in use
        ("net/netfilter/nf_conntrack_max", "10100", "10099", "net.netfilter.nf_conntrack_max",
         "block"),  # + 100 tracked
        ("net/core/somaxconn", "4096", "4095", "net.core.somaxconn", "warn"),
        ("net/ipv4/tcp_max_syn_backlog", "4096", "4095", "net.ipv4.tcp_max_syn_backlog",
         "warn"),
        ("net/ipv4/ip_local_port_range", "10000\t19999", "10000\t19998",
         "net.ipv4.ip_local_port_range", "warn"),
        ("net/ipv4/tcp_max_tw_buckets", "10000", "9999", "net.ipv4.tcp_max_tw_buckets", "warn"),
        # 10,000 clients x 4 KiB = 10,000 pages of 4 KiB
        ("net/ipv4/tcp_mem", "5000 10000 20000", "5000 9999 20000", "net.ipv4.tcp_mem", "warn"),
        ("net/ipv4/tcp_mem", "5000 10000 10000", "5000 9000 9999", "net.ipv4.tcp_mem", "block"),
    ],
)
def test_sysctl_borderlines(tmp_path, key, fits, short, name, status_short):
    if os.sysconf("SC_PAGE_SIZE") != 4096 and key.endswith("tcp_mem"):
        pytest.skip("page-size-specific edge values")
    fine = tmp_path / "fine"
    tight = tmp_path / "tight"
    fine.mkdir()
    tight.mkdir()
    code, _, checks = doctor(fake_proc(fine, {key: fits}), 10_000)
    assert checks[name]["status"] == "ok" and code == 0
    code, text, checks = doctor(fake_proc(tight, {key: short}), 10_000)
    assert checks[name]["status"] == status_short
    assert code == (1 if status_short == "block" else 0)
    fixes = checks[name]["fixes"]
    assert fixes and all(f["where"] == st.SYSCTL_FILE for f in fixes)
    for fix in fixes:
        line_key = fix["line"].lstrip("-").split(" = ")[0]
        assert line_key == name, "the fix sets the key it is about"
        assert fix["line"] in text


def test_memory_borderline(tmp_path):
    per_client = st.USER_BYTES_PER_CLIENT + st.KERNEL_BYTES_PER_SOCKET + \
        st.BUFFER_BYTES_PER_SOCKET
    need_kb = (st.BASE_BYTES + 10_000 * per_client) // 1024
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert doctor(fake_proc(a, mem_kb=need_kb), 10_000)[0] == 0
    code, _, checks = doctor(fake_proc(b, mem_kb=need_kb - 1), 10_000)
    assert code == 1 and checks["memory available"]["status"] == "block"


def test_no_conntrack_means_no_conntrack_row_and_missing_keys_warn(tmp_path):
    root = fake_proc(tmp_path, drop=("net/netfilter/nf_conntrack_max",
                                     "net/netfilter/nf_conntrack_count",
                                     "net/core/somaxconn"))
    code, text, checks = doctor(root, 10_000)
    assert "net.netfilter.nf_conntrack_max" not in checks
    assert checks["net.core.somaxconn"]["status"] == "warn"
    assert checks["net.core.somaxconn"]["current"] == "unreadable"
    assert code == 0


def test_the_cli_reads_a_fake_tree_and_exits_non_zero_when_blocked(tmp_path, capsys):
    fine = tmp_path / "fine"
    fine.mkdir()
    assert st.main(["doctor", "--clients", "1000", "--root", fake_proc(fine)]) == 0
    assert "verdict: OK for 1000 clients" in capsys.readouterr().out
    tight = tmp_path / "tight"
    tight.mkdir()
    root = fake_proc(tight, {"fs/nr_open": "100"})
    assert st.main(["doctor", "--clients", "1000", "--root", root]) == 1
    out = capsys.readouterr().out
    assert "[BLOCK] fs.nr_open" in out and "fix: fs.nr_open = 65536" in out
    assert "then run: sysctl --system" in out


# -- the real machine ---------------------------------------------------------


def real_doctor(clients):
    proc = subprocess.run([sys.executable, GAME, "doctor", "--clients", str(clients), "--json"],
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    return proc.returncode, {c["name"].split(" (")[0]: c for c in report["checks"]}


def read(key):
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().split()


def hard_limit_can_be_raised():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
    except (ValueError, OSError):
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return True


def test_on_this_machine_the_verdict_follows_the_real_limits():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-files limit to test against")
    fits = hard - st.FD_RESERVE
    code_fits, fit = real_doctor(fits)
    code_over, over = real_doctor(fits + 1)
    assert fit["open files per process"]["status"] == "ok"
    assert over["open files per process"]["status"] == "block"
    assert code_over == 1
    assert code_fits == (1 if any(c["status"] == "block" for c in fit.values()) else 0)
    why = over["open files per process"]["why"]
    if hard_limit_can_be_raised():
        assert "ulimit -n" in over["open files per process"]["fixes"][0]["line"]
    else:
        assert "cannot be raised" in why and f"at most {fits} clients" in why
    # Every kernel value doctor reports is the one in /proc/sys now.
    for name in ("fs.nr_open", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
                 "net.ipv4.tcp_max_tw_buckets"):
        assert fit[name]["current"].split()[0] == read(name)[0]
    lo, hi = read("net.ipv4.ip_local_port_range")
    assert fit["net.ipv4.ip_local_port_range"]["current"].startswith(f"{lo}-{hi}")
    assert fit["net.ipv4.tcp_mem"]["current"].startswith(" ".join(read("net.ipv4.tcp_mem")))
    # Statuses follow the values: a block is a real shortfall.
    nr_open = int(read("fs.nr_open")[0])
    assert (fit["fs.nr_open"]["status"] == "ok") == (nr_open >= hard)


def test_on_this_machine_15000_is_judged_by_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code, checks = real_doctor(15_000)
    fits = hard == resource.RLIM_INFINITY or hard >= 15_000 + st.FD_RESERVE
    assert (checks["open files per process"]["status"] == "ok") == fits
    blocked = any(c["status"] == "block" for c in checks.values())
    assert code == (1 if blocked else 0)
