"""netcore.redis over TLS (rediss://) against a real redis-server started with
``tls-port`` (Debian's build speaks TLS): commands, pub/sub, and refusals of a
server whose certificate or name does not check out."""

import pytest

from netcore.redis import Redis, RedisAddress, RedisConfig, RedisSubscriber
from netcore.testing import run_until
from redisproc import RedisServer
from tlskit import pki  # noqa: F401 - a fixture


def test_rediss_urls_say_tls_and_keep_the_name_to_check():
    a = RedisAddress.from_url("rediss://:pw@localhost:6380/2", ca_file="/ca.pem")
    assert (a.tls, a.ca_file, a.server_name, a.port, a.db) == (True, "/ca.pem", "localhost",
                                                                6380, 2)
    assert a.url() == "rediss://:***@localhost:6380/2"
    assert a.resolve().server_name == "localhost"
    plain = RedisAddress.from_url("redis://127.0.0.1")
    assert not plain.tls and plain.server_name is None and plain.tls_context() is None
    assert plain != RedisAddress.from_url("rediss://127.0.0.1")
    with pytest.raises(ValueError, match="rediss://"):
        RedisAddress.from_url("redis://127.0.0.1", ca_file="/ca.pem")


def test_a_ca_file_that_cannot_be_read_is_named(tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="missing.pem"):
        RedisAddress.from_url("rediss://127.0.0.1", ca_file=missing).tls_context()


@pytest.fixture
def tls_redis(tmp_path, pki):
    srv = RedisServer(str(tmp_path), password="s3cret", tls=(pki.cert, pki.key)).start()
    yield srv
    srv.kill()


def test_commands_and_pubsub_over_rediss(loop, tls_redis, pki):
    address = RedisAddress.from_url(tls_redis.tls_url, ca_file=pki.root)
    client = Redis(loop, address, RedisConfig("tls-test"))
    sub_events = []
    subscriber = RedisSubscriber(loop, address,
                                 lambda ch, data: sub_events.append((ch, data)),
                                 RedisConfig("tls-sub"))
    client.start()
    subscriber.subscribe("news")
    subscriber.start()
    run_until(loop, lambda: client.ready and subscriber.ready)
    big = bytes(range(256)) * 4096  # 1 MiB: many TLS records each way
    done = client.execute("SET", "k", big)
    run_until(loop, lambda: done.done)
    got = client.execute("GET", "k")
    run_until(loop, lambda: got.done)
    assert got.result() == big
    published = client.execute("PUBLISH", "news", b"over tls")
    run_until(loop, lambda: sub_events)
    assert sub_events == [(b"news", b"over tls")]
    assert published.result() == 1
    assert client._client.stats.tls_handshakes == 1
    assert tls_redis.command("STRLEN", "k") == b":1048576\r\n"  # the plain port: the same data
    client.close()
    subscriber.close()


@pytest.mark.parametrize("case", ["untrusted-ca", "wrong-name", "plain-port"])
def test_a_server_that_does_not_check_out_never_gets_ready(loop, tls_redis, pki, case):
    url, ca, name = {
        "untrusted-ca": (tls_redis.tls_url, pki.stranger.root, None),
        "wrong-name": (tls_redis.tls_url, pki.root, "other.example"),
        "plain-port": (tls_redis.url.replace("redis://", "rediss://"), pki.root, None),
    }[case]
    address = RedisAddress.from_url(url, ca_file=ca)
    if name is not None:
        address = RedisAddress(address.host, address.port, password=address.password, tls=True,
                               ca_file=ca, server_name=name)
    errors = []
    client = Redis(loop, address, RedisConfig("tls-bad", connect_timeout=2.0, backoff_max=0.2),
                   on_error=errors.append)
    client.start()
    run_until(loop, lambda: client.connects or client._failures >= 2, timeout=10)
    assert not client.ready and client.connects == 0
    stats = client._client.stats
    assert stats.tls_handshakes == 0
    if case != "plain-port":
        assert "certificate-verify-failed" in stats.tls_errors, stats.tls_errors
    client.close()
