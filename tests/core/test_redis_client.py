"""netcore.redis against a real redis-server: commands, pipelining, pub/sub, faults."""

import os
import socket
import threading
import time

import pytest

from netcore.redis import (
    CommandError,
    ConnectionLost,
    HandshakeError,
    NotConnected,
    Redis,
    RedisAddress,
    RedisConfig,
    RedisSubscriber,
)
from netcore.resp import ReplyError
from netcore.testing import run_until
from redisproc import RedisServer, free_port, require_redis


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(str(tmp_path)).start()
    yield srv
    srv.kill()


class Events:
    """Records a link's callbacks."""

    def __init__(self):
        self.ready = 0
        self.lost = []
        self.errors = []
        self.messages = []

    def kwargs(self):
        return dict(on_ready=self.on_ready, on_lost=self.lost.append, on_error=self.errors.append)

    def on_ready(self):
        self.ready += 1


def connect(loop, address, events=None, **kw):
    events = events or Events()
    client = Redis(loop, address, RedisConfig(**kw), **events.kwargs())
    client.start()
    run_until(loop, lambda: client.ready)
    return client, events


def call(loop, client, *args):
    pending = client.execute(*args)
    run_until(loop, lambda: pending.done)
    return pending


# -- addresses (no server) ------------------------------------------------------


def test_url_parsing():
    a = RedisAddress.from_url("redis://10.0.0.5:7000/3")
    assert (a.host, a.port, a.db, a.username, a.password) == ("10.0.0.5", 7000, 3, None, None)
    a = RedisAddress.from_url("redis://:s%40cret@[::1]")
    assert (a.host, a.port, a.db, a.username, a.password) == ("::1", 6379, 0, None, "s@cret")
    a = RedisAddress.from_url("redis://game:pw@redis.example:6380/")
    assert (a.host, a.port, a.username, a.password) == ("redis.example", 6380, "game", "pw")
    assert "pw" not in repr(a) and repr(a) == "RedisAddress('redis://game:***@redis.example:6380')"


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("http://h:1", "not a redis:// or rediss:// URL"),
        ("https://h:1", "not a redis:// or rediss:// URL"),
        ("redis://h:99999", "bad port"),
        ("redis://h:x", "bad port"),
        ("redis://:1", "no host"),
        ("redis://h/db1", "database number"),
        ("redis://h/1?x=2", "no query"),
        ("redis://user@h", "needs a password"),
    ],
)
def test_url_errors_say_what_is_wrong(url, fragment):
    with pytest.raises(ValueError, match=fragment):
        RedisAddress.from_url(url)


SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@h:1",
        f"redis://:{SECRET}@h:99999",
        f"redis://u:{SECRET}@h:x",
        f"redis://:{SECRET}@:1",
        f"redis://:{SECRET}@h/db1",
        f"redis://:{SECRET}@h/1?x=2",
        f"redis://:{SECRET}/x@h",  # a '/' in the password ends the netloc early
        f"redis://:{SECRET}@h/x@y",
        f"redis:{SECRET}@h",
        f"redis://:{SECRET}\uff03@h",  # NFKC: urlsplit's own error quotes the netloc
        f"redis://:{SECRET}@[::1",
        f"redis://:{SECRET}@h/\u00b2",
    ],
)
def test_url_errors_never_show_the_password(url):
    with pytest.raises(ValueError) as exc:
        RedisAddress.from_url(url)
    assert SECRET not in str(exc.value) and "Zq9" not in str(exc.value), exc.value
    assert str(exc.value)  # still says what is wrong


def test_password_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert RedisAddress.from_url("redis://h", password_file=str(secret)).password == "from-file"
    assert RedisAddress.from_url("redis://u:x@h", password_file=str(secret)).password == "from-file"
    monkeypatch.setenv("ST_REDIS_PW", "from-env")
    assert RedisAddress.from_url("redis://game@h", password_env="ST_REDIS_PW").password == "from-env"
    with pytest.raises(ValueError, match="ST_NOPE is not set"):
        RedisAddress.from_url("redis://h", password_env="ST_NOPE")


def test_names_are_resolved_before_the_loop_never_on_it(loop):
    with pytest.raises(ValueError, match="resolve"):
        Redis(loop, RedisAddress("redis.invalid"))
    for numeric in ("localhost", "127.0.0.1", "::1"):
        address = RedisAddress(numeric, 7000, 2, "u", "p")
        assert address.resolve() is address


def test_commands_before_ready_fail_without_being_sent(loop):
    client = Redis(loop, RedisAddress("127.0.0.1", free_port()))
    got = []
    pending = client.execute("PING", callback=got.append)
    assert not pending.done  # reported on the loop, not re-entrantly
    run_until(loop, lambda: pending.done)
    assert got == [pending] and isinstance(pending.error, NotConnected)
    with pytest.raises(NotConnected):
        pending.result()


# -- commands -------------------------------------------------------------------


def test_commands_and_reply_types(loop, server):
    client, events = connect(loop, RedisAddress.from_url(server.url))
    assert call(loop, client, "SET", "k", b"\x00v\r\n").result() == "OK"
    assert call(loop, client, "GET", "k").result() == b"\x00v\r\n"
    assert call(loop, client, "GET", "missing").result() is None
    assert call(loop, client, "INCRBY", "n", 41).result() == 41
    assert call(loop, client, "RPUSH", "l", "a", "b", 3).result() == 3
    assert call(loop, client, "LRANGE", "l", 0, -1).result() == [b"a", b"b", b"3"]
    big = os.urandom(1 << 20)
    assert call(loop, client, "SET", "big", big).ok
    assert call(loop, client, "GET", "big").result() == big
    assert events.ready == 1 and not events.errors
    figures = client.stats()
    assert figures["state"] == "ready" and figures["connects"] == 1 and figures["losses"] == 0
    assert figures["commands_sent"] == figures["replies"] == 8 + 1  # and the handshake's PING
    assert figures["bytes_out"] > 1 << 20 and figures["bytes_in"] > 1 << 20
    client.close()


def test_localhost_by_name(loop, server):
    client, _ = connect(loop, RedisAddress("localhost", server.port))
    assert call(loop, client, "PING").result() == "PONG"


def test_error_replies_are_values_and_the_connection_goes_on(loop, server):
    client, events = connect(loop, RedisAddress.from_url(server.url))
    call(loop, client, "SET", "s", "x")
    wrong = call(loop, client, "LPUSH", "s", "y")
    assert isinstance(wrong.reply, ReplyError) and wrong.reply.kind == "WRONGTYPE"
    assert not wrong.ok
    with pytest.raises(CommandError, match="LPUSH: WRONGTYPE"):
        wrong.result()
    unknown = call(loop, client, "NOSUCHCOMMAND")
    assert unknown.reply.kind == "ERR"
    assert call(loop, client, "GET", "s").result() == b"x"
    assert client.ready and events.lost == []


def test_pipelining_1000_commands_in_order(loop, server):
    client, _ = connect(loop, RedisAddress.from_url(server.url))
    order = []
    pendings = [client.execute("INCR", "counter", callback=order.append) for _ in range(1000)]
    pendings += client.pipeline([("GET", "counter"), ("LPUSH", "counter", "x"), ("PING",)])
    run_until(loop, lambda: pendings[-1].done)
    assert [p.result() for p in pendings[:1000]] == list(range(1, 1001))
    assert order == pendings[:1000]
    assert pendings[1000].result() == b"1000"
    assert pendings[1001].reply.kind == "WRONGTYPE"
    assert pendings[1002].result() == "PONG"
    assert client.in_flight == 0


def test_a_raising_callback_does_not_break_reply_matching(loop, server):
    client, _ = connect(loop, RedisAddress.from_url(server.url))

    def boom(pending):
        raise RuntimeError("owner bug")

    first = client.execute("INCR", "x", callback=boom)
    second = client.execute("INCR", "x")
    run_until(loop, lambda: second.done)
    assert first.result() == 1 and second.result() == 2 and client.ready


def test_transaction(loop, server):
    client, _ = connect(loop, RedisAddress.from_url(server.url))
    done = client.transaction([("SET", "a", 1), ("INCR", "a"), ("LPUSH", "a", "x")])
    run_until(loop, lambda: done.done)
    result = done.result()
    assert result[:2] == ["OK", 2] and result[2].kind == "WRONGTYPE"


def test_select_database(loop, server):
    db2, _ = connect(loop, RedisAddress.from_url(server.url + "/2"))
    db0, _ = connect(loop, RedisAddress.from_url(server.url))
    call(loop, db2, "SET", "where", "two")
    assert call(loop, db2, "GET", "where").result() == b"two"
    assert call(loop, db0, "GET", "where").result() is None


def test_a_config_is_checked_and_the_old_keywords_still_work_with_a_warning(loop):
    address = RedisAddress("127.0.0.1", 6379)
    with pytest.raises(ValueError):
        Redis(loop, address, RedisConfig(backoff_min=2.0, backoff_max=1.0))
    with pytest.raises(ValueError):
        RedisSubscriber(loop, address, print, RedisConfig(ping_interval=0))
    config = RedisConfig(name="a", ping_interval=3.0)
    assert Redis(loop, address, config).config is config
    assert RedisSubscriber(loop, address, print, config).config is config
    assert Redis(loop, address).config.backoff_max == RedisConfig().backoff_max
    for make in (lambda **kw: Redis(loop, address, **kw),
                 lambda **kw: RedisSubscriber(loop, address, print, **kw)):
        with pytest.warns(DeprecationWarning, match="RedisConfig") as caught:
            link = make(name="old", backoff_max=0.5, on_ready=print)
        assert caught[0].filename == __file__  # points at the caller's line
        assert (link.name, link.config.backoff_max, link.on_ready) == ("old", 0.5, print)
        with pytest.raises(TypeError):
            make(config=config, name="both")
        with pytest.raises(TypeError), pytest.warns(DeprecationWarning):
            make(nmae="typo")


def test_client_name(loop, server):
    client, _ = connect(loop, RedisAddress.from_url(server.url), name="spell-gw1")
    assert call(loop, client, "CLIENT", "GETNAME").result() == b"spell-gw1"


# -- pub/sub --------------------------------------------------------------------


def subscriber(loop, address, events, **kw):
    sub = RedisSubscriber(
        loop,
        address,
        on_message=lambda ch, data: events.messages.append((ch, data)),
        config=RedisConfig(**kw),
        on_pmessage=lambda pat, ch, data: events.messages.append((pat, ch, data)),
        **events.kwargs(),
    )
    return sub


def test_pubsub_channels_and_patterns(loop, server):
    address = RedisAddress.from_url(server.url)
    pub, _ = connect(loop, address)
    events = Events()
    sub = subscriber(loop, address, events)
    sub.subscribe("world.tick", b"world.gw1")
    sub.psubscribe("chat.*")
    sub.start()
    run_until(loop, lambda: sub.ready)
    assert sub.active == {b"c:world.tick": True, b"c:world.gw1": True, b"p:chat.*": True}
    receivers = call(loop, pub, "PUBLISH", "world.tick", b"\x00tick\xff")
    assert receivers.result() == 1
    call(loop, pub, "PUBLISH", "chat.en", "hi")
    call(loop, pub, "PUBLISH", "nobody", "x")
    run_until(loop, lambda: len(events.messages) == 2)
    assert events.messages == [(b"world.tick", b"\x00tick\xff"), (b"chat.*", b"chat.en", b"hi")]
    sub.unsubscribe("world.tick")
    sub.subscribe("late")
    run_until(loop, lambda: b"c:late" in sub.active and b"c:world.tick" not in sub.active)
    call(loop, pub, "PUBLISH", "world.tick", "gone")
    call(loop, pub, "PUBLISH", "late", "here")
    run_until(loop, lambda: len(events.messages) == 3)
    assert events.messages[2] == (b"late", b"here")
    assert events.ready == 1 and events.errors == []


def pub_and_sub(loop, server, *channels, wait=True):
    """A command link and a subscriber to ``channels`` (ready unless ``wait`` is false)."""
    address = RedisAddress.from_url(server.url)
    pub, _ = connect(loop, address)
    events = Events()
    sub = subscriber(loop, address, events)
    sub.subscribe(*channels)
    sub.start()
    if wait:
        run_until(loop, lambda: sub.ready)
    return pub, sub, events


def test_subscribing_while_the_resubscription_is_under_way(loop, server):
    pub, sub, events = pub_and_sub(loop, server, "first", wait=False)
    run_until(loop, lambda: b"c:first" in sub.active or sub._subscribing)
    sub.subscribe("second")  # SUBSCRIBE first is on its way: this one must follow it
    run_until(loop, lambda: sub.ready and b"c:second" in sub.active)
    call(loop, pub, "PUBLISH", "second", "2")
    run_until(loop, lambda: events.messages == [(b"second", b"2")])


def test_many_messages_in_order(loop, server):
    pub, sub, events = pub_and_sub(loop, server, "bus")
    pub.pipeline([("PUBLISH", "bus", b"%d" % i) for i in range(2000)])
    run_until(loop, lambda: len(events.messages) == 2000)
    assert [int(m[1]) for m in events.messages] == list(range(2000))


# -- AUTH -----------------------------------------------------------------------


@pytest.fixture
def secured(tmp_path):
    extra = "user game on >gamepw ~* &* +@all\nuser narrow on >narrowpw ~* &allowed.* +@all\n"
    srv = RedisServer(str(tmp_path), password="s3cret pw", extra=extra).start()
    yield srv
    srv.kill()


def test_auth_with_a_password_from_a_file(loop, secured, tmp_path):
    pwfile = tmp_path / "redis.pw"
    pwfile.write_text("s3cret pw\n")
    address = RedisAddress.from_url(f"redis://127.0.0.1:{secured.port}", password_file=str(pwfile))
    client, events = connect(loop, address)
    assert call(loop, client, "SET", "x", 1).result() == "OK"
    assert events.errors == []


def test_auth_with_an_acl_username(loop, secured):
    client, _ = connect(loop, RedisAddress.from_url(f"redis://game:gamepw@127.0.0.1:{secured.port}"))
    assert call(loop, client, "ACL", "WHOAMI").result() == b"game"
    events = Events()
    sub = subscriber(loop, RedisAddress.from_url(f"redis://game:gamepw@127.0.0.1:{secured.port}"), events)
    sub.subscribe("c")
    sub.start()
    run_until(loop, lambda: sub.ready)


def test_a_channel_the_acl_refuses(loop, secured):
    address = RedisAddress.from_url(f"redis://narrow:narrowpw@127.0.0.1:{secured.port}")
    events = Events()
    sub = subscriber(loop, address, events, backoff_min=0.01, backoff_max=0.05)
    sub.subscribe("allowed.1", "forbidden")
    sub.start()
    # Resubscribing can't be done as asked: a handshake error, retried, never ready.
    run_until(loop, lambda: len(events.errors) >= 2)
    assert isinstance(events.errors[0], HandshakeError) and events.errors[0].reply.kind == "NOPERM"
    assert not sub.ready and events.ready == 0
    # Once the owner drops the channel, the link comes up; later refusals are reported.
    sub.unsubscribe("forbidden")
    run_until(loop, lambda: sub.ready)
    events.errors.clear()
    sub.subscribe("forbidden.too")
    run_until(loop, lambda: events.errors)
    assert isinstance(events.errors[0], CommandError) and "NOPERM" in str(events.errors[0])
    assert sub.ready and sub.active == {b"c:allowed.1": True}


def test_auth_failure_is_reported_and_retried_never_ready(loop, secured):
    events = Events()
    client = Redis(
        loop, RedisAddress.from_url(f"redis://:wrong@127.0.0.1:{secured.port}"),
        RedisConfig(backoff_min=0.01, backoff_max=0.05), **events.kwargs()
    )
    client.start()
    run_until(loop, lambda: len(events.errors) >= 3)
    assert all(isinstance(e, HandshakeError) for e in events.errors)
    assert "AUTH failed: WRONGPASS" in str(events.errors[0])
    assert events.ready == 0 and not client.ready and client.connects >= 3
    client.close()


def test_no_password_given_is_a_handshake_error_not_a_ready_link(loop, secured):
    events = Events()
    client = Redis(loop, RedisAddress("127.0.0.1", secured.port),
                   RedisConfig(backoff_min=0.01, backoff_max=0.05), **events.kwargs())
    client.start()
    run_until(loop, lambda: len(events.errors) >= 2)
    assert isinstance(events.errors[0], HandshakeError)
    assert events.errors[0].reply.kind == "NOAUTH" and events.ready == 0
    client.close()


# -- faults ---------------------------------------------------------------------


def test_server_closes_the_connection(loop, server):
    address = RedisAddress.from_url(server.url)
    events = Events()
    client, _ = connect(loop, address, events, name="victim")
    blocked = client.execute("BLPOP", "never", 0)
    run_until(loop, lambda: b"victim" in server.command("CLIENT", "LIST"))
    assert server.command("CLIENT", "KILL", "USER", "default", "SKIPME", "yes").startswith(b":")
    run_until(loop, lambda: blocked.done)
    assert isinstance(blocked.error, ConnectionLost)
    assert events.lost and events.lost[0] == "closed by the server"
    run_until(loop, lambda: events.ready == 2)
    assert call(loop, client, "PING").result() == "PONG"


def test_malformed_reply_closes_and_reconnects(loop):
    """A peer that is not Redis: its garbage is an error to the owner, then a retry."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def serve():
        while len(accepted) < 2:
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(100)
            if len(accepted) == 1:  # AUTH's reply and the garbage in one segment
                conn.sendall(b"+OK\r\n?garbage\r\n")
            else:  # ... and in two
                conn.sendall(b"+OK\r\n")
                time.sleep(0.05)
                conn.sendall(b"?garbage\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    events = Events()
    client = Redis(
        loop, RedisAddress("127.0.0.1", listener.getsockname()[1], password="x"),
        RedisConfig(backoff_min=0.01), **events.kwargs()
    )
    client.start()
    run_until(loop, lambda: len(events.errors) >= 2)
    assert "bad type byte 0x3f at stream offset 5" in str(events.errors[0])
    # AUTH's +OK came before the fault: the link was ready both times.
    assert events.ready >= 2 and len(events.lost) >= 2
    client.close()
    thread.join(5)
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_frozen_server_is_noticed_by_keepalive(loop, server):
    events, sev = Events(), Events()
    address = RedisAddress.from_url(server.url)
    client, _ = connect(loop, address, events, ping_interval=0.2, backoff_max=0.2)
    sub = subscriber(loop, address, sev, ping_interval=0.2, backoff_max=0.2)
    sub.subscribe("c")
    sub.start()
    run_until(loop, lambda: sub.ready)
    server.pause()
    try:
        run_until(loop, lambda: events.lost and sev.lost, timeout=3)
    finally:
        server.resume()
    assert "no reply to PING within 0.2s" in events.lost[0]
    assert any("PING" in str(e) for e in sev.errors)
    run_until(loop, lambda: client.ready and sub.ready, timeout=5)
    call(loop, client, "PUBLISH", "c", "back")
    run_until(loop, lambda: sev.messages == [(b"c", b"back")])
    assert call(loop, client, "PING").result() == "PONG"


@pytest.mark.slow  # a second or more of timers
def test_a_busy_loop_does_not_take_an_unread_pong_for_a_dead_server(loop, server):
    """The loop stalls (a long handler: a busy or starved process) right after
    sending a keepalive PING, past the next one: the PONG is in the socket, unread
    when the timer fires. The link reads it before judging, and stays up."""
    events = Events()
    address = RedisAddress.from_url(server.url)
    client = Redis(loop, address, RedisConfig(ping_interval=0.2), **events.kwargs())

    def stall_after_the_first_ping():  # due with the keepalive, after it: once it is sent
        if events.ready == 1:
            loop.call_later(0.2, lambda: loop.call_soon(lambda: time.sleep(0.5)))

    client.on_ready = lambda: (events.on_ready(), stall_after_the_first_ping())
    client.start()
    loop.run_for(2.5)
    assert client.ready and events.lost == [] and client.losses == 0, events.lost
    assert events.errors == []
    assert call(loop, client, "PING").result() == "PONG"


@pytest.mark.slow
def test_server_down_at_start_backs_off_then_connects(loop, tmp_path):
    require_redis()
    port = free_port()
    events = Events()
    client = Redis(loop, RedisAddress("127.0.0.1", port), RedisConfig(backoff_min=0.05, backoff_max=0.4),
                   **events.kwargs())
    client.start()
    loop.run_for(1.5)
    # Backed off, not hammering: 0.05 doubling to 0.4 gives a handful of tries.
    assert 3 <= len(events.errors) <= 12, events.errors
    assert all(isinstance(e, NotConnected) for e in events.errors)
    assert not client.ready and events.ready == 0
    srv = RedisServer(str(tmp_path))
    srv.port = port
    srv.start()
    try:
        run_until(loop, lambda: client.ready, timeout=5)
        assert call(loop, client, "PING").result() == "PONG"
    finally:
        srv.kill()


@pytest.mark.slow
def test_server_restart_reconnects_and_resubscribes(loop, server):
    address = RedisAddress.from_url(server.url)
    cev, sev = Events(), Events()
    client, _ = connect(loop, address, cev, backoff_max=0.3)
    sub = subscriber(loop, address, sev, backoff_max=0.3)
    sub.subscribe("tick")
    sub.psubscribe("gw.*")
    sub.start()
    run_until(loop, lambda: sub.ready)
    in_flight = client.execute("BLPOP", "never", 0)
    server.stop()
    run_until(loop, lambda: cev.lost and sev.lost and in_flight.done)
    assert isinstance(in_flight.error, ConnectionLost)
    refused = client.execute("PING")
    run_until(loop, lambda: refused.done)
    assert isinstance(refused.error, NotConnected)
    loop.run_for(0.5)  # a few refused retries while it is down
    server.start()
    run_until(loop, lambda: cev.ready == 2 and sev.ready == 2, timeout=10)
    assert sub.active == {b"c:tick": True, b"p:gw.*": True}
    call(loop, client, "PUBLISH", "tick", "after")
    call(loop, client, "PUBLISH", "gw.1", "moves")
    run_until(loop, lambda: len(sev.messages) == 2)
    assert sev.messages == [(b"tick", b"after"), (b"gw.*", b"gw.1", b"moves")]
    assert client.stats()["losses"] == 1 and sub.stats()["losses"] == 1
    assert sub.stats()["connects"] == 2 and sub.stats()["messages"] == 2
    sub.close()
    client.close()
    assert cev.lost[-1] == "closed by the client"


def test_a_subscriber_over_its_output_buffer_limit_is_cut_and_comes_back(loop, tmp_path):
    """Redis closes a pub/sub client that falls behind (client-output-buffer-limit):
    pub/sub is at-most-once, so the subscriber loses messages, reconnects and says
    so with on_lost/on_ready, which is where its owner resynchronises."""
    srv = RedisServer(str(tmp_path), extra="client-output-buffer-limit pubsub 64kb 0 0\n").start()
    try:
        sev = Events()
        sub = subscriber(loop, RedisAddress("127.0.0.1", srv.port), sev, backoff_max=0.2)
        sub.subscribe("flood")
        sub.start()
        run_until(loop, lambda: sub.ready)
        # The loop is not running: the subscriber reads nothing while Redis publishes.
        payload = b"x" * 1000
        command = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nflood\r\n$1000\r\n" + payload + b"\r\n"
        with socket.create_connection(("127.0.0.1", srv.port)) as pub:
            pub.sendall(command * 20000)
            pub.sendall(b"*1\r\n$4\r\nQUIT\r\n")
            while pub.recv(65536):
                pass
        run_until(loop, lambda: sev.lost and sev.ready == 2, timeout=10)
        assert sev.lost == ["closed by the server"]
        assert 0 < len(sev.messages) < 20000
        assert sub.active == {b"c:flood": True}
    finally:
        srv.kill()
