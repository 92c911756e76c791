"""The desktop client speaks protocol 2: it keeps its token and comes back as itself."""

import json
import os
import stat

import spelltraction as st
from conftest import FakeClock


def hello_sent(brain):
    (payload,) = [st.decode(f[2:]) for f in brain.outbox]
    return payload


def welcome_v2(pid, token, resumed=st.NEW_PLAYER):
    return st.frame(st.Welcome(pid, 1, 0x112233, st.PROTOCOL_V2, resumed=resumed, token=token))


def test_the_brain_says_its_token_and_name_and_keeps_the_one_it_is_given():
    saved = []
    brain = st.ClientBrain(version=st.PROTOCOL_V2, clock=FakeClock(), name="ada",
                           on_token=saved.append)
    brain.connecting("h:1")
    brain.connected()
    assert hello_sent(brain) == st.Hello(2, st.ANY_SHAPE, st.ANY_COLOUR, b"", b"ada")
    token = os.urandom(16)
    brain.feed(welcome_v2(7, token) + st.frame(st.You(0, 1, 1, 0, "ABC")))
    assert saved == [token] and brain.token == token and not brain.resumed
    brain.disconnected("the server closed the connection", 1.0)
    brain.connected()  # a reconnect: the same player, by its token
    assert hello_sent(brain).token == token
    brain.feed(welcome_v2(7, token, st.RESUMED))
    assert brain.resumed and saved == [token]  # nothing new to save
    assert "welcome back" in brain.status_line()


def test_the_brain_draws_the_hall_of_fame_and_gives_way_when_taken_over():
    brain = st.ClientBrain(version=st.PROTOCOL_V2, clock=FakeClock())
    brain.connecting("h:1")
    brain.connected()
    brain.feed(welcome_v2(3, b"t" * 16) + st.frame(st.Fame(((3, 9, "me"), (4, 2, "")))))
    assert brain.fame == ((3, 9, "me"), (4, 2, ""))
    brain.feed(st.frame(st.Error(st.ErrorCode.TAKEN_OVER, "resumed by a newer connection")))
    assert brain.give_up
    brain.disconnected("the server closed the connection", None)
    assert "Playing elsewhere" in brain.status_line()
    assert brain.fame, "the hall of fame stays on screen"


def test_client_tokens_are_kept_per_server_in_a_private_file(tmp_path):
    path = str(tmp_path / "state" / "client.json")
    a, b = st.ClientTokens(path, "a:1"), st.ClientTokens(path, "b:2")
    assert a.load() == b""
    a.save(b"1" * 16)
    b.save(b"2" * 16)
    assert (a.load(), b.load()) == (b"1" * 16, b"2" * 16)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "w") as f:
        f.write("{not json")
    assert a.load() == b""  # a damaged file: a new player, not a crash
    with open(path, "w") as f:
        json.dump({"servers": {"a:1": {"token": "abc"}}}, f)
    assert a.load() == b""


def test_client_state_path_is_in_the_xdg_state_dir(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    assert st.client_state_path() == "/x/state/spelltraction/client.json"


def test_the_driver_comes_back_as_itself_after_the_server_drops_it(h):
    saved = []
    brain = st.ClientBrain(version=st.PROTOCOL_V2, on_token=saved.append)
    net = st.NetClient(brain, "127.0.0.1", h.port, h.loop.call_later)
    net.start()
    h.run_until(lambda: brain.state == st.ClientState.PLAYING)
    pid = brain.player_id
    assert saved == [brain.token]
    player = h.server.world.game.players[pid]
    player.peer.close("test")  # the server drops the connection
    h.run_until(lambda: brain.state != st.ClientState.PLAYING)
    h.run_until(lambda: brain.state == st.ClientState.PLAYING, timeout=15)
    assert brain.player_id == pid and brain.resumed and h.server.world.resumes == 1
    net.stop()
