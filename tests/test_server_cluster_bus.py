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
