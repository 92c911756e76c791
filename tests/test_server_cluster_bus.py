"""The cluster bus's framing and names, and what a client makes of a paused world.

(The world itself, on a real redis-server: tests/test_server_cluster.py.)
"""

import pytest

import spelltraction as st


def test_bus_messages_round_trip_and_refuse_what_is_cut_short():
    body = st.bus_entry(7, st.OP_HELLO, b"\x01\x00\x02") + st.bus_entry(8, st.OP_LEAVE)
    message = st.bus_pack(st.BUS_BATCH, 3, 41, body)
    assert st.bus_head(message) == (st.BUS_BATCH, 3, 41)
    assert st.bus_entries(message, st.BUS_HEAD.size) == [
        (7, st.OP_HELLO, b"\x01\x00\x02"), (8, st.OP_LEAVE, b"")]
    for cut in range(st.BUS_HEAD.size + 1, len(message)):
        if cut == st.BUS_HEAD.size + st.BUS_ENTRY.size + 3:
            continue  # a whole first entry: a valid (shorter) message
        with pytest.raises(st.BadMessage):
            st.bus_entries(message[:cut], st.BUS_HEAD.size)
    with pytest.raises(st.BadMessage, match="bus version"):
        st.bus_head(b"\x09" + message[1:])
    with pytest.raises(st.BadMessage):
        st.bus_head(message[:5])


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "w:1", "é"])
def test_world_names_that_would_break_redis_keys_are_refused(name):
    with pytest.raises(ValueError, match="world name"):
        st.check_world(name)


def test_the_roles_need_redis_and_a_sane_world_name(capsys):
    for argv in (["game", "--no-data"], ["gateway"]):
        with pytest.raises(SystemExit) as exc:
            st.main(argv)
        assert exc.value.code == 2 and "needs --redis URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        st.main(["gateway", "--redis", "redis://127.0.0.1:1", "--world", "a b"])
    assert "world name" in capsys.readouterr().err


URL_SECRET = "hunter2-Zq9"


def test_a_bad_url_on_the_command_line_is_refused_without_its_password(capsys):
    for url in (f"redis://:{URL_SECRET}@h:x", f"redis://:{URL_SECRET}/x@h:1",
                f"redis://:{URL_SECRET}@[::1"):
        with pytest.raises(SystemExit):
            st.main(["gateway", "--redis", url])
        err = capsys.readouterr().err
        assert "redis" in err and URL_SECRET not in err, err


def test_a_v2_client_knows_the_world_is_paused_until_the_next_tick():
    now = [100.0]
    brain = st.ClientBrain(version=st.PROTOCOL_V2, clock=lambda: now[0])
    brain.handle(st.TickMsg(5, 0, 0, "ABCDEFGHIJKL", 1, (1,) + (0,) * 11))
    assert not brain.paused
    now[0] += 2
    brain.handle(st.Stats(3, 3, 10, 1, 1, st.PAUSED_P99))
    assert brain.paused
    now[0] += 1
    brain.handle(st.TickMsg(90, 0, 0, "ABCDEFGHIJKL", 1, (1,) + (0,) * 11))
    assert not brain.paused and brain.tick == 90


# -- who is heard: the epoch the lease confirms, and nothing malformed ----------------
# In-process roles with no Redis: the gateway's GETs of the lease are answered
# by the test (``LeaseAsked``), publications are fed as the subscriber would.


class Answer:
    """A Pending-like reply to the gateway's GET of the lease."""

    def __init__(self, reply):
        self.reply, self.ok = reply, True


class LeaseAsked:
    """Stands in for the gateway's command connection: records each GET."""

    def __init__(self):
        self.asked = []

    def __call__(self, *args, callback=None):
        assert args[0] == "GET"
        self.asked.append((args[1], callback))

    def answer(self, lease):
        key, callback = self.asked.pop(0)
        callback(Answer(lease))
        return key


def roles():
    from netcore import EventLoop
    from netcore.redis import RedisAddress

    loop = EventLoop()
    opts = st.ServerOptions(data=None, port=0)
    gw = st.Gateway(loop, opts, st.ClusterOptions("t"), RedisAddress("127.0.0.1", 1))
    auth = st.Authority(loop, opts, st.ClusterOptions("t"), RedisAddress("127.0.0.1", 1))
    gw.redis.execute = LeaseAsked()
    return gw, auth


def tick_message(epoch, number, tick=5):
    data = st.frame(st.TickMsg(tick, 0, 0, "ABCDEFGHIJKL", 0, (0,) * 12))
    return st.bus_pack(st.BUS_TICK, epoch, number,
                       st.BUS_TICK_HEAD.pack(tick, 1, 0, len(data), 0.0) + data)


def test_a_gateway_raises_its_epoch_only_to_one_the_lease_confirms():
    gw, auth = roles()
    lease = gw.redis.execute
    down = gw.down_channel
    # The real authority (epoch 3): held until the lease says 3, then heard.
    gw._on_bus_message(down, tick_message(3, 1))
    assert gw.epoch == 0 and gw._tick_due is None and len(lease.asked) == 1
    assert lease.answer(b"3:host:/var/lib/st") == auth.lease.key  # the authority's lease
    assert gw.epoch == 3 and gw._tick_due is not None and gw.down_number == 1
    gw._tick_due = None
    # A forgery from the top of the range: asked about, refused, counted.
    gw._checked_at = -1.0  # (past the pause between two checks)
    gw._on_bus_message(down, tick_message(0xFFFFFFFF, 1))
    # Meanwhile the real authority is heard as before.
    gw._on_bus_message(down, tick_message(3, 2))
    assert gw.down_number == 2 and gw._tick_due is not None
    lease.answer(b"3:host:/var/lib/st")
    assert gw.epoch == 3 and gw.bus.forged == 1 and gw.down_number == 2
    gw._on_bus_message(down, tick_message(3, 3))
    assert gw.down_number == 3 and gw.bus.fenced == 0
    # A flood of forgeries while the lease is read: one GET, a bounded queue.
    gw._checked_at = -1.0
    for i in range(1000):
        gw._on_bus_message(down, tick_message(0xFFFFFFFF, i))
    assert len(lease.asked) == 1 and len(gw._held) == st.HELD_MAX
    lease.answer(None)  # no lease at all (it expired): nothing confirmed
    assert gw.epoch == 3 and gw.bus.forged == 1001 and not gw._held
    # The next check waits LEASE_CHECK_EVERY_S after the last: no GET per message.
    gw._on_bus_message(down, tick_message(9, 1))
    assert not lease.asked and gw._checking
    # A real successor (epoch 4): confirmed, and the old epoch is fenced from then on.
    gw._checking = False
    gw._held = []
    gw._checked_at = -1.0
    gw._on_bus_message(down, tick_message(4, 1))
    lease.answer(b"4:other:/var/lib/st")
    assert gw.epoch == 4 and gw.down_number == 1
    gw._on_bus_message(down, tick_message(3, 4))
    assert gw.bus.fenced == 1 and gw.down_number == 1
    assert gw.bus.bad == 0
    assert gw.bus.snapshot(1)["forged"] == 1001


def test_a_forged_epoch_s_flood_is_summarised_in_the_log(caplog):
    gw, _ = roles()
    gw.epoch = 3
    with caplog.at_level("WARNING"):
        for i in range(500):
            gw._held, gw._checking, gw._checked_at = [], False, -1.0
            gw._on_bus_message(gw.down_channel, tick_message(7, i))
            gw.redis.execute.answer(b"3:h")
    assert gw.bus.forged == 500
    lines = [r for r in caplog.records if "epoch 7" in r.getMessage()]
    assert len(lines) == 1 and "lease in Redis says epoch 3" in lines[0].getMessage()


@pytest.mark.parametrize("size", range(0, 40))
def test_malformed_bus_messages_of_every_length_are_counted_not_raised(size, caplog):
    """Every length up to a whole head and more, on every channel each role reads:
    counted in bus.bad, one warning line, no traceback (the 10-byte message was an
    IndexError in the authority)."""
    gw, auth = roles()
    gw.epoch = 1
    junk = [bytes([1, kind, 0, 0, 0, 1]) + bytes(range(size))[:max(size - 6, 0)]
            for kind in (st.BUS_TICK, st.BUS_PRIVATE, st.BUS_BATCH, st.BUS_FULL)]
    junk = [j[:size] for j in junk] + [b"\xff" * size]
    with caplog.at_level("DEBUG"):
        for data in junk:
            for role, channel in ((auth, auth.up_channel), (gw, gw.down_channel),
                                  (gw, gw.private)):
                before = role.bus.bad
                role._on_bus_message(channel, data)
                if role.bus.bad == before:  # then it was whole: heard or held
                    assert size >= st.BUS_HEAD.size, (role, data)
            gw._send_due_tick()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert gw.bus.bad + auth.bus.bad > 0
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) <= 2


def test_the_bus_counters_are_in_metrics():
    from netcore.metrics import Exposition

    gw, _ = roles()
    gw.bus.bad, gw.bus.fenced, gw.bus.forged = 2, 3, 4
    exp = Exposition()
    gw.bus.add_metrics(exp)
    text = exp.text()
    for name, value in (("bad", 2), ("fenced", 3), ("forged", 4)):
        assert f"spelltraction_bus_{name}_total {value}" in text, text
