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
    gw.bus.redis.execute = LeaseAsked()
    return gw, auth


def tick_message(epoch, number, tick=5):
    data = st.frame(st.TickMsg(tick, 0, 0, "ABCDEFGHIJKL", 0, (0,) * 12))
    return st.bus_pack(st.BUS_TICK, epoch, number,
                       st.BUS_TICK_HEAD.pack(tick, 1, 0, len(data), 0.0) + data)


def test_a_gateway_raises_its_epoch_only_to_one_the_lease_confirms():
    gw, auth = roles()
    lease = gw.bus.redis.execute
    down = gw.bus.down_channel
    # The real authority (epoch 3): held until the lease says 3, then heard.
    gw.bus.received(down, tick_message(3, 1))
    assert gw.world_bus.epoch == 0 and gw.world_bus._tick_due is None and len(lease.asked) == 1
    assert lease.answer(b"3:host:/var/lib/st") == auth.lease.key  # the authority's lease
    assert gw.world_bus.epoch == 3 and gw.world_bus._tick_due is not None and gw.world_bus.down_number == 1
    gw.world_bus._tick_due = None
    # A forgery from the top of the range: asked about, refused, counted.
    gw.world_bus._checked_at = -1.0  # (past the pause between two checks)
    gw.bus.received(down, tick_message(0xFFFFFFFF, 1))
    # Meanwhile the real authority is heard as before.
    gw.bus.received(down, tick_message(3, 2))
    assert gw.world_bus.down_number == 2 and gw.world_bus._tick_due is not None
    lease.answer(b"3:host:/var/lib/st")
    assert gw.world_bus.epoch == 3 and gw.bus.stats.forged == 1 and gw.world_bus.down_number == 2
    gw.bus.received(down, tick_message(3, 3))
    assert gw.world_bus.down_number == 3 and gw.bus.stats.fenced == 0
    # A flood of forgeries while the lease is read: one GET, a bounded queue.
    gw.world_bus._checked_at = -1.0
    for i in range(1000):
        gw.bus.received(down, tick_message(0xFFFFFFFF, i))
    assert len(lease.asked) == 1 and len(gw.world_bus._held) == st.HELD_MAX
    lease.answer(None)  # no lease at all (it expired): nothing confirmed
    assert gw.world_bus.epoch == 3 and gw.bus.stats.forged == 1001 and not gw.world_bus._held
    # The next check waits LEASE_CHECK_EVERY_S after the last: no GET per message.
    gw.bus.received(down, tick_message(9, 1))
    assert not lease.asked and gw.world_bus._checking
    # A real successor (epoch 4): confirmed, and the old epoch is fenced from then on.
    gw.world_bus._checking = False
    gw.world_bus._held = []
    gw.world_bus._checked_at = -1.0
    gw.bus.received(down, tick_message(4, 1))
    lease.answer(b"4:other:/var/lib/st")
    assert gw.world_bus.epoch == 4 and gw.world_bus.down_number == 1
    gw.bus.received(down, tick_message(3, 4))
    assert gw.bus.stats.fenced == 1 and gw.world_bus.down_number == 1
    assert gw.bus.stats.bad == 0
    assert gw.bus.stats.snapshot(1)["forged"] == 1001


def test_a_forged_epoch_s_flood_is_summarised_in_the_log(caplog):
    gw, _ = roles()
    gw.world_bus.epoch = 3
    with caplog.at_level("WARNING"):
        for i in range(500):
            gw.world_bus._held, gw.world_bus._checking, gw.world_bus._checked_at = [], False, -1.0
            gw.bus.received(gw.bus.down_channel, tick_message(7, i))
            gw.bus.redis.execute.answer(b"3:h")
    assert gw.bus.stats.forged == 500
    lines = [r for r in caplog.records if "epoch 7" in r.getMessage()]
    assert len(lines) == 1 and "lease in Redis says epoch 3" in lines[0].getMessage()


@pytest.mark.parametrize("size", range(0, 40))
def test_malformed_bus_messages_of_every_length_are_counted_not_raised(size, caplog):
    """Every length up to a whole head and more, on every channel each role reads:
    counted in bus.bad, one warning line, no traceback (the 10-byte message was an
    IndexError in the authority)."""
    gw, auth = roles()
    gw.world_bus.epoch = 1
    junk = [bytes([1, kind, 0, 0, 0, 1]) + bytes(range(size))[:max(size - 6, 0)]
            for kind in (st.BUS_TICK, st.BUS_PRIVATE, st.BUS_BATCH, st.BUS_FULL)]
    junk = [j[:size] for j in junk] + [b"\xff" * size]
    with caplog.at_level("DEBUG"):
        for data in junk:
            for role, channel in ((auth, auth.bus.up_channel), (gw, gw.bus.down_channel),
                                  (gw, gw.world_bus.private)):
                before = role.bus.stats.bad
                role.bus.received(channel, data)
                if role.bus.stats.bad == before:  # then it was whole: heard or held
                    assert size >= st.BUS_HEAD.size, (role, data)
            gw.world_bus._send_due_tick()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert gw.bus.stats.bad + auth.bus.stats.bad > 0
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) <= 2


def test_the_bus_counters_are_in_metrics():
    from netcore.metrics import Exposition

    gw, _ = roles()
    gw.bus.stats.bad, gw.bus.stats.fenced, gw.bus.stats.forged = 2, 3, 4
    exp = Exposition()
    gw.bus.add_metrics(exp)
    text = exp.text()
    for name, value in (("bad", 2), ("fenced", 3), ("forged", 4)):
        assert f"spelltraction_bus_{name}_total {value}" in text, text
