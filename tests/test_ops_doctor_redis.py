"""doctor --redis: the bus checks from probes, then against a real redis-server
configured with etc/redis/spelltraction.conf."""

import json
import os

import pytest

import spelltraction as st
from netcore.hostcheck import BLOCK, RedisProbe
from netcore.redis import RedisAddress
from redisproc import RedisServer, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET = os.path.join(ROOT, "etc", "redis", "spelltraction.conf")
ADDRESS = RedisAddress("127.0.0.1", 6379)
GOOD_CONFIG = (("maxmemory-policy", "noeviction"),
               ("client-output-buffer-limit", "normal 0 0 0 replica 268435456 67108864 60 "
                                              "pubsub 67108864 16777216 60"))


def statuses(checks):
    return {c.name.split(" (")[0]: c.status for c in checks}


def test_a_well_configured_fast_redis_is_ok():
    probe = RedisProbe("", (0.1, 0.2, 0.3), "7.0.15", GOOD_CONFIG)
    checks = st.redis_checks(probe, ADDRESS)
    assert statuses(checks) == {"Redis reachable": "ok", "Redis latency": "ok",
                                "Redis maxmemory-policy": "ok"}
    assert "Redis 7.0.15" in checks[0].current


def test_unreachable_blocks_and_says_what_to_look_at():
    (check,) = st.redis_checks(RedisProbe("connect: Connection refused"), ADDRESS)
    assert check.status == BLOCK and "Connection refused" in check.current
    assert "--redis-password-file" in check.why and check.fixes


@pytest.mark.parametrize("probe,name,status", [
    (RedisProbe("", (0.1, 3.0, 3.0), "7.0", GOOD_CONFIG), "Redis latency", "warn"),
    (RedisProbe("", (0.1, 0.1, 25.0), "7.0", GOOD_CONFIG), "Redis latency", "warn"),
    (RedisProbe("", (0.1,), "5.0.7", GOOD_CONFIG), "Redis version", "warn"),
    (RedisProbe("", (0.1,), "7.0", (("maxmemory-policy", "allkeys-lru"),)),
     "Redis maxmemory-policy", "warn"),
    (RedisProbe("", (0.1,), "7.0", (("!maxmemory-policy", "NOPERM"),)),
     "Redis maxmemory-policy", "warn"),
    (RedisProbe("", (0.1,), "7.0", (("maxmemory-policy", "noeviction"),
                                       ("client-output-buffer-limit", "pubsub 1048576 0 0"))),
     "Redis pub/sub output buffer", "warn"),
])
def test_each_warning(probe, name, status):
    checks = statuses(st.redis_checks(probe, ADDRESS))
    assert checks[name] == status
    assert checks["Redis reachable"] == "ok"


def run_json(argv, capsys):
    code = st.main(argv)
    report = json.loads(capsys.readouterr().out)
    return code, {c["name"].split(" (")[0]: c for c in report["checks"]}


def test_the_etc_snippet_passes_doctor_against_a_real_server(tmp_path, capsys, monkeypatch):
    """redis-server takes etc/redis/spelltraction.conf as it is (port, dir and the
    password overridden after it), and doctor finds nothing to fix there."""
    srv = RedisServer(str(tmp_path), password="doctor-pw", include=SNIPPET).start()
    try:
        pwfile = tmp_path / "pw"
        pwfile.write_text("doctor-pw\n")
        code, checks = run_json(["doctor", "--clients", "10", "--json", "--redis",
                                 f"redis://localhost:{srv.port}",
                                 "--redis-password-file", str(pwfile)], capsys)
        redis = {name: c["status"] for name, c in checks.items() if name.startswith("Redis")}
        assert redis == {"Redis reachable": "ok", "Redis latency": "ok",
                         "Redis maxmemory-policy": "ok"}, checks
        # The wrong password blocks, and says so.
        monkeypatch.setenv("ST_TEST_REDIS_PW", "wrong")
        code, checks = run_json(["doctor", "--clients", "10", "--json", "--redis",
                                 f"redis://127.0.0.1:{srv.port}",
                                 "--redis-password-env", "ST_TEST_REDIS_PW"], capsys)
        assert code == 1 and checks["Redis reachable"]["status"] == "block"
        assert "WRONGPASS" in checks["Redis reachable"]["current"]
    finally:
        srv.kill()


def test_cli_unreachable_redis_exits_non_zero(capsys):
    code, checks = run_json(["doctor", "--clients", "10", "--json", "--redis",
                             f"redis://127.0.0.1:{free_port()}"], capsys)
    assert code == 1 and checks["Redis reachable"]["status"] == "block"


@pytest.mark.parametrize("argv,message", [
    (["--redis-password-env", "X"], "need --redis"),
    (["--redis", "http://x"], "not a redis:// or rediss:// URL"),
    (["--redis", "redis://h", "--redis-password-env", "ST_SURELY_UNSET"], "ST_SURELY_UNSET is not set"),
])
def test_cli_redis_option_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        st.main(["doctor", "--clients", "10", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
