"""What strangers can make the store keep, and what ids they can use up.

A version-2 HELLO makes a new identity: an id and a row on disk. The row is
written before the WELCOME (a token handed out survives kill -9), but as not
online, and marked online only once the WELCOME has gone; a client that
leaves before its WELCOME leaves no row. New identities per address are
rate-bounded (``--new-player-burst``/``--new-player-rate``), start-up memory
does not grow with the rows on disk (returning players are read on demand),
and ids never go past the protocol's u32.
"""

import os
import sqlite3
import tracemalloc

import pytest

import spelltraction as st
from gamekit import Client, Harness
from netcore.addrlimit import AddressRates


@pytest.fixture
def data(tmp_path):
    return str(tmp_path / "data")


def rows(data):
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    try:
        return db.execute("SELECT id, online FROM players ORDER BY id").fetchall()
    finally:
        db.close()


def committed(h):
    """Run the loop until everything staged is on disk."""
    store = h.server.world.store
    h.run_until(lambda: store.backlog == 0, what="the store to catch up")


def hello_v2(token=b"", name=b""):
    return st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, token, name)


# -- rows ------------------------------------------------------------------------------


def test_a_client_gone_before_its_welcome_leaves_no_row(make_harness, data):
    h = make_harness(data=data, tick_ms=50)
    for _ in range(20):
        c = Client(h)
        c.send(hello_v2())
        h.run_until(lambda: h.server.world.joining, what="the HELLO read")
        c.sock.close()  # before the row is committed and the WELCOME sent
        h.run_until(lambda: not h.server.world.joining, what="the close read")
    committed(h)
    h.ticks(2)
    committed(h)
    assert rows(data) == []


def test_a_row_is_written_not_online_and_marked_online_once_welcomed(make_harness, data):
    h = make_harness(data=data, tick_ms=50)
    c = Client(h)
    c.send(hello_v2())
    h.run_until(lambda: h.server.world.joining, what="the HELLO read")
    (conn, (seq, player, token, status)), = h.server.world.joining.items()
    h.run_until(lambda: h.server.world.store.durable >= seq, what="the row on disk")
    assert rows(data) == [(player.id, 0)]  # on disk, its WELCOME not sent yet
    welcome = c.expect(st.Welcome)
    committed(h)
    assert rows(data) == [(welcome.player_id, 1)]
    c.sock.close()
    h.run_until(lambda: not h.server.world.game.players, what="the leave")
    committed(h)
    assert rows(data) == [(welcome.player_id, 0)]


def test_rows_never_welcomed_are_not_online_after_a_kill_and_are_pruned(data):
    """A row whose WELCOME never went out is written online=0, so a restart does
    not give it a fresh grace period and pruning takes it like any other."""
    store = st.Store(data)
    store.open()
    store.stage_player((7, b"h" * 32, "ABC", 0, 1, 2, None, 1000.0, 0))
    store.flush()
    store.close()
    again = st.Store(data)
    again.open()  # an online row would be given last_seen = now here
    again.stage_prune(2000.0)
    again.flush()
    again.close()
    assert rows(data) == []


def test_start_up_memory_does_not_grow_with_the_rows_on_disk(data):
    """Returning players are read when they come back, not loaded at start: a store of
    50,000 recent rows opens in the memory of an empty one."""
    store = st.Store(data)
    store.open()
    store.close()
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    import time

    now = time.time()
    db.executemany("INSERT INTO players VALUES (?, ?, 'ABC', 5, 1, 2, ?, ?, 1)",
                   [(i, os.urandom(32), f"p{i}", now) for i in range(1, 50_001)])
    db.commit()
    db.close()
    tracemalloc.start()
    try:
        store = st.Store(data)
        store.open()
        size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store.close()
    assert size < 1 << 20, f"{size} bytes kept after opening 50,000 rows"


def test_a_player_comes_back_from_the_store_after_a_restart(data):
    h = Harness(data=data)
    try:
        c = h.client_v2(name=b"ada")
        pid, token = c.welcome.player_id, c.welcome.token
        c.sock.close()
        h.run_until(lambda: not h.server.world.game.players)
    finally:
        h.close()
    h = Harness(data=data)
    try:
        back = h.client_v2(token=token)
        assert back.welcome.resumed == st.RESUMED and back.welcome.player_id == pid
        assert h.server.world.store.lookups == 1
        stranger = h.client_v2(token=os.urandom(16))  # unknown: a new player, not anyone's
        assert stranger.welcome.resumed == st.TOKEN_UNKNOWN
        assert stranger.welcome.player_id not in (0, pid)
    finally:
        h.close()


def test_two_connections_waiting_on_the_store_for_one_player(data):
    """Both wait for the same read; the newer takes the player over, as in memory."""
    h = Harness(data=data)
    try:
        token = h.client_v2().welcome.token
    finally:
        h.close()
    h = Harness(data=data)
    try:
        first, second = Client(h), Client(h)
        first.send(hello_v2(token))
        h.run_until(lambda: len(h.server.world.waiting) == 1, what="the first waiting")
        second.send(hello_v2(token))
        h.run_until(lambda: len(h.server.world.waiting) == 2, what="the second waiting")
        assert h.server.world.store.lookups == 1
        assert first.expect(st.Welcome).resumed == st.RESUMED
        assert second.expect(st.Welcome).resumed == st.RESUMED
        first_words = first.wait_closed()
        assert any(isinstance(m, st.Error) and m.code == st.ErrorCode.TAKEN_OVER
                   for m in first_words)
        assert len(h.server.world.game.players) == 1
    finally:
        h.close()


# -- new players per address -----------------------------------------------------------


def test_address_rates_are_a_token_bucket_per_address():
    rates = AddressRates(3, 1.0, exempt="10.99.0.0/24")
    assert [rates.take("192.0.2.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rates.take("192.0.2.2", 0.0)  # another address: its own burst
    assert rates.take("192.0.2.1", 1.0) and not rates.take("192.0.2.1", 1.0)
    assert all(rates.take("10.99.0.7", 0.0) for _ in range(10))  # exempt
    assert rates.refused == 2
    rates.forget_full(10.0)
    assert len(rates) == 0


def test_new_players_from_one_address_are_rate_bounded_and_returning_ones_are_not(
        make_harness, data):
    h = make_harness(data=data, exempt="", new_player_burst=4, new_player_rate=0.001)
    players = [h.client_v2() for _ in range(3)] + [h.client()]  # v1 players are new ids too
    refused = Client(h)
    refused.send(hello_v2())
    errors = [m for m in refused.wait_closed() if isinstance(m, st.Error)]
    assert errors and errors[0].code == st.ErrorCode.SERVER_FULL
    assert "new-players-per-address" in errors[0].text
    assert h.server.front.net.stats.limits["new-players-per-address"] == 1
    # A returning player is not a new one: it comes back past the burst.
    token = players[0].welcome.token
    players[0].sock.close()
    h.run_until(lambda: len(h.server.world.game.players) == 3, what="the leave")
    back = h.client_v2(token=token)
    assert back.welcome.resumed == st.RESUMED
    assert h.server.front.net.stats.limits["new-players-per-address"] == 1


def test_exempt_networks_make_new_players_without_a_bound(make_harness):
    h = make_harness(new_player_burst=2, new_player_rate=0.001)  # loopback is exempt
    players = [h.client_v2() for _ in range(6)]
    assert len(h.server.world.game.players) == len(players)


# -- ids -------------------------------------------------------------------------------


def test_ids_stop_at_the_protocols_limit_with_a_clear_error(make_harness):
    h = make_harness()
    h.server.world.game._next_id = st.MAX_PLAYER_ID - 1
    a, b = h.client(), h.client_v2()
    assert {a.welcome.player_id, b.welcome.player_id} == {st.MAX_PLAYER_ID - 1, st.MAX_PLAYER_ID}
    for hello in (st.Hello(), hello_v2()):
        late = Client(h)
        late.send(hello)
        errors = [m for m in late.wait_closed() if isinstance(m, st.Error)]
        assert errors and errors[0].code == st.ErrorCode.SERVER_FULL
        assert "no player ids left" in errors[0].text
    tick = a.expect(st.TickMsg)  # the world goes on: TICKs with the last ids encode
    assert tick.players == 2
    b.send(st.Move(1, 10, 10))
    h.ticks(3)
    assert b.expect(st.TickMsg)


def test_ids_stop_at_the_limit_across_a_restart(data):
    store = st.Store(data)
    store.open()
    store.stage_meta("reserved_id", st.MAX_PLAYER_ID)
    store.flush()
    store.close()
    h = Harness(data=data)
    try:
        last = h.client_v2()
        assert last.welcome.player_id == st.MAX_PLAYER_ID
        late = Client(h)
        late.send(hello_v2())
        assert any(isinstance(m, st.Error) and "no player ids left" in m.text
                   for m in late.wait_closed())
        back = h.client_v2(token=last.welcome.token)  # returning players still come back
        assert back.welcome.resumed == st.RESUMED
    finally:
        h.close()
