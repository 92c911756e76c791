"""A world over TLS end to end: the authority and a gateway reach a real
redis-server's TLS port by rediss:// with --redis-ca, and the gateway serves
TLS players (--tls-cert) beside plain ones; doctor probes rediss:// too."""

import json

import pytest

import spelltraction as st
from clusterkit import Player, World, http_get
from helpers import read_frames
from serverproc import run_game
from tlsgamekit import pki, tls_player  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.slow  # redis-server, an authority and a gateway


def test_a_world_on_rediss_with_tls_players_on_its_gateway(tmp_path, pki):
    world = World(str(tmp_path), tls=(pki.cert, pki.key, pki.root))
    try:
        game = world.game("--tick-ms", "50")
        gateway = world.gateway("--tls-cert", pki.cert, "--tls-key", pki.key)
        plain = Player(gateway.port)
        plain.until(lambda: plain.welcome is not None)
        secure = tls_player(gateway.port, pki.client_context())
        ticks = [st.decode(f) for f in read_frames(secure, 4, timeout=10)]
        assert any(isinstance(m, st.TickMsg) for m in ticks)
        plain.until(lambda: len(plain.ticks) >= 2)
        status, body = http_get(game.admin, "/stats.json")
        assert status == 200
        assert json.loads(body)["cluster"]["redis"]["state"] == "ready", body
        snap = json.loads(http_get(gateway.admin, "/stats.json")[1])  # type: ignore[attr-defined]
        assert snap["cluster"]["redis"]["state"] == "ready"
        assert snap["tls"]["players"] == 1
        assert "rediss://" in world.redis_args[1]
        secure.close()
        plain.close()
    finally:
        world.close()


def test_doctor_probes_rediss_and_a_missing_ca_file_is_named(tmp_path, pki):
    from redisproc import RedisServer

    redis = RedisServer(str(tmp_path), tls=(pki.cert, pki.key)).start()
    try:
        done = run_game("doctor", "--redis", redis.tls_url, "--redis-ca", pki.root, "--json",
                        timeout=60)
        checks = json.loads(done.stdout)
        text = json.dumps(checks)
        assert "reachable" in text.lower() or "latency" in text.lower(), text
        assert "rediss://" in text, text
        refused = run_game("doctor", "--redis", redis.tls_url, "--redis-ca",
                           pki.stranger.root, "--json", timeout=60)
        assert "certificate" in refused.stdout + refused.stderr, refused
        missing = str(tmp_path / "no-ca.pem")
        bad = run_game("gateway", "--redis", redis.tls_url, "--redis-ca", missing, timeout=60)
        assert bad.returncode == 2 and missing in bad.stderr, bad.stderr
        plain_ca = run_game("gateway", "--redis", redis.url, "--redis-ca", pki.root, timeout=60)
        assert plain_ca.returncode == 2 and "rediss://" in plain_ca.stderr, plain_ca.stderr
    finally:
        redis.kill()
