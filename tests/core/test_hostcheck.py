"""netcore.hostcheck: the checks judge the figures they are given, and say it in the words given."""

import io
import json

from netcore import EventLoop
from netcore.hostcheck import (
    BLOCK, OK, WARN, HostFacts, HostNeeds, RedisNeeds, RedisProbe, checks_json, host_checks,
    probe_redis, read_host_facts, redis_checks, verdict, write_checks,
)
from netcore.redis import RedisAddress
from redisproc import free_port

SYSCTL = {
    "fs.file-max": "1000000", "fs.file-nr": "2000 0 1000000", "fs.nr_open": "1048576",
    "net.core.somaxconn": "4096", "net.ipv4.tcp_max_syn_backlog": "8192",
    "net.ipv4.tcp_syncookies": "1", "net.ipv4.ip_local_port_range": "10000 65535",
    "net.ipv4.tcp_mem": "382185 509580 764370", "net.ipv4.tcp_max_tw_buckets": "262144",
    "net.netfilter.nf_conntrack_max": None, "net.netfilter.nf_conntrack_count": None,
}


def facts(hard=100_000, mem_kb=1 << 20, **sysctl):
    return HostFacts(hard, hard, False, dict(SYSCTL, **sysctl), mem_kb, 4096)


def by_name(checks):
    return {c.name.split(" (")[0]: c for c in checks}


def test_memory_is_judged_by_the_figures_given():
    small = HostNeeds(10_000, user_bytes_per_client=1024, kernel_bytes_per_socket=1024,
                      buffer_bytes_per_socket=1024, base_bytes=0)
    mem_kb = 10_000 * 3  # exactly 3 KiB a client
    assert by_name(host_checks(facts(mem_kb=mem_kb), small))["memory available"].status == OK
    big = small._replace(user_bytes_per_client=1025)
    check = by_name(host_checks(facts(mem_kb=mem_kb), big))["memory available"]
    assert check.status == BLOCK and "3 KiB per client" in check.needed


def test_fixes_go_where_the_application_says_in_its_words():
    needs = HostNeeds(50_000, reserve_fds=10, sysctl_file="/etc/sysctl.d/x.conf",
                      limits_file="/etc/limits.d/x.conf", limits_user="xuser",
                      unit_file="x.service", spread="run {processes} of me ({per_process} each)",
                      port_users="my load tool")
    checks = by_name(host_checks(facts(hard=20_010, **{"fs.nr_open": "100"}), needs))
    nofile = checks["open files per process"]
    assert nofile.status == BLOCK and "50010 (50000 clients + 10 spare)" in nofile.needed
    assert "So one process holds at most 20000 clients here: run 3 of me (20000 each)." \
        in nofile.why
    assert ("x.service, [Service]", "LimitNOFILE=65536") in nofile.fixes
    assert ("/etc/limits.d/x.conf", "xuser  hard  nofile  65536") in nofile.fixes
    assert checks["fs.nr_open"].fixes == (("/etc/sysctl.d/x.conf", "fs.nr_open = 65536"),)
    ports = host_checks(facts(**{"net.ipv4.ip_local_port_range": "60000 60010"}), needs)
    assert "my load tool" in by_name(ports)["net.ipv4.ip_local_port_range"].why
    assert "net.netfilter.nf_conntrack_max" not in checks  # not loaded: no row


def test_the_report_and_its_json():
    checks = host_checks(facts(**{"net.core.somaxconn": "128"}), HostNeeds(1000))
    out = io.StringIO()
    write_checks(checks, out)
    assert "[ WARN] net.core.somaxconn" in out.getvalue()
    assert "fix: net.core.somaxconn = 4096" in out.getvalue()
    assert verdict(checks, 1000) == "verdict: OK for 1000 clients, with 1 warning(s) above."
    report = json.loads(checks_json(checks, 1000))
    assert report["clients"] == 1000 and not report["blocked"]
    assert [c["status"] for c in report["checks"]].count(WARN) == 1


def test_this_hosts_facts_are_read(tmp_path):
    read = read_host_facts(fds=10)
    assert read.page_size > 0 and set(read.sysctl) == set(SYSCTL)
    fake = read_host_facts(str(tmp_path), 10, rlimit=lambda: (5, 6), may_raise=lambda n: n == 10)
    assert fake[:3] == (5, 6, True) and fake.mem_available_kb is None
    assert set(fake.sysctl.values()) == {None}


def test_a_redis_that_does_not_answer_blocks_in_the_words_given():
    address = RedisAddress("127.0.0.1", free_port())
    probe = probe_redis(address, timeout=1.0)
    assert probe.error and not probe.rtts_ms
    (check,) = redis_checks(probe, address, RedisNeeds("my.conf", unreachable="start it"))
    assert check.status == BLOCK and check.why == "start it"
    assert check.fixes[0].where == "my.conf"
    fine = RedisProbe("", (0.5, 0.6), "7.2", (("maxmemory-policy", "noeviction"),))
    assert {c.status for c in redis_checks(fine, address)} == {OK}
    slow = redis_checks(fine, address, RedisNeeds(median_ms=0.1, slow="too slow"))
    assert by_name(slow)["Redis latency"].why == "too slow"


def test_run_until_returns_whether_the_condition_came_true():
    loop = EventLoop()
    fired = []
    loop.call_later(0.01, lambda: fired.append(1))
    assert loop.run_until(lambda: fired, timeout=5.0)
    assert not loop.run_until(lambda: False, timeout=0.05)
    loop.close()
