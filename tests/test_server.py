"""The game server on real loopback sockets, driven in this process."""

import logging
import time

import pytest

import spelltraction as st
from netcore import encode_frame

# Every harness test here runs on both of the loop's pollers (epoll, selectors).
pytestmark = pytest.mark.both_pollers


def test_the_harness_runs_on_the_poller_asked_for(h, poller):
    """ServerOptions.poller picks the loop's poller (st.make_loop): these tests run on each."""
    assert h.loop.poller.name == (poller or st.DEFAULT_POLLER)
    assert h.loop.edge_triggered == (h.loop.poller.name == "epoll")


def test_hello_gets_welcome_you_and_stats_in_one_send(h):
    c = h.client(hello=False)
    sends = h.server.front.net.stats.sends
    c.send(st.Hello(1, 2, 0x112233))
    welcome = c.expect(st.Welcome)
    you = c.expect(st.You)
    stats = c.expect(st.Stats)
    assert h.server.front.net.stats.sends == sends + 1
    assert welcome.shape == 2 and welcome.colour == 0x112233 and welcome.tick_ms == 20
    assert (welcome.cols, welcome.rows, welcome.cell_px, welcome.hold_ticks) == (4, 3, 117, 20)
    assert len(set(you.letters)) == 3 and you.score == 0 and you.seq == 0
    assert stats.connections == 1 and stats.players == 1
    assert stats.start_rss_kb > 0


def test_server_assigns_distinct_ids(h):
    ids = [h.client().welcome.player_id for _ in range(5)]
    assert len(set(ids)) == 5 and ids == sorted(ids)


def test_one_send_per_tick_per_player(h):
    clients = [h.client() for _ in range(10)]
    h.ticks(2)
    before, first = h.server.front.net.stats.sends, h.server.world.game.tick
    clients[0].send(st.Move(5, 10, 10))
    clients[1].send(st.Move(6, 300, 300))
    h.run(0.001)
    h.ticks(3)
    # one send per player per tick, however many ticks fired (a loaded
    # machine may fit one into the short run above)
    assert h.server.front.net.stats.sends - before == 10 * (h.server.world.game.tick - first)
    assert clients[0].expect(st.You).seq == 5
    assert clients[1].expect(st.You).seq == 6


def test_move_is_echoed_clamped_and_shown_to_others(h):
    a, b = h.client(), h.client()
    h.ticks(1)
    a.send(st.Move(42, 9999, 9999))
    you = a.expect(st.You)
    assert (you.seq, you.x, you.y) == (42, st.BOARD_W - 1, st.BOARD_H - 1)
    pid = a.welcome.player_id
    corner = (st.BOARD_W - 1, st.BOARD_H - 1)
    for _ in range(10):
        tick = b.expect(st.TickMsg)
        if any((m.player_id, m.x, m.y) == (pid, *corner) for m in tick.movers):
            break
    else:
        raise AssertionError("the other player never saw the move")
    assert tick.counts[11] >= 1


def test_join_costs_the_same_bytes_however_many_play(h):
    first = h.client(hello=False)
    first.send(st.Hello())
    h.run_until(lambda: h.server.front.net.stats.bytes_out > 0)
    alone = h.server.front.net.stats.bytes_out
    crowd = [h.client() for _ in range(200)]
    h.ticks(1)
    sizes = []
    while len(sizes) < 3:
        c = h.client(hello=False)
        out, tick = h.server.front.net.stats.bytes_out, h.server.world.game.tick
        c.send(st.Hello())
        h.run_until(lambda: h.server.front.net.stats.bytes_out > out)
        if h.server.world.game.tick == tick:  # a tick's sends would be counted too: measure again
            sizes.append(h.server.front.net.stats.bytes_out - out)
    assert sizes == [alone] * 3, "WELCOME + YOU + STATS, never the list of players"
    assert crowd


def test_tick_bytes_are_bounded_whatever_the_crowd(h):
    clients = [h.client() for _ in range(120)]
    h.ticks(2)
    for i, c in enumerate(clients):
        c.send(st.Move(i, (i * 37) % 468, (i * 53) % 351))
    for c in clients[:40]:
        c.sock.close()
    h.ticks(2)
    watcher = clients[-1]
    biggest = 0
    # Every tick from the watcher's join on, until the server has seen all 40
    # leave (a loaded machine may take more than the two ticks above).
    for _ in range(100):
        tick = watcher.expect(st.TickMsg)
        biggest = max(biggest, len(st.encode(tick)))
        assert len(tick.movers) <= st.MAX_MOVERS and len(tick.gone) <= st.MAX_MOVERS
        if tick.players == 80:
            break
    assert biggest <= 329
    assert sum(tick.counts) == tick.players == 80


@pytest.mark.parametrize(
    "raw, code, text",
    [
        (encode_frame(b"\x07hello"), st.ErrorCode.BAD_MESSAGE, "unknown message type 0x07"),
        (encode_frame(st.encode(st.Move(1, 2, 3))), st.ErrorCode.BAD_MESSAGE, "before HELLO"),
        (encode_frame(b"\x01\x00"), st.ErrorCode.BAD_MESSAGE, "HELLO must be 8 bytes"),
        (encode_frame(st.encode(st.Hello(version=9))), st.ErrorCode.VERSION,
         "server speaks protocols 1 and 2, client sent 9"),
        (b"\x00\x00", st.ErrorCode.BAD_FRAME, "zero-length frame"),
        (b"\x7f\xff" + b"x" * 10, st.ErrorCode.BAD_FRAME, "exceeds limit 256"),
    ],
)
def test_bad_input_gets_a_reason_then_close_and_others_play_on(h, raw, code, text, caplog):
    caplog.set_level(logging.DEBUG)  # per-connection lines are DEBUG
    others = [h.client() for _ in range(3)]
    bad = h.client(hello=False)
    bad.send_raw(raw)
    got = bad.wait_closed()
    errors = [m for m in got if isinstance(m, st.Error)]
    assert errors and errors[-1].code == code and text in errors[-1].text
    assert text in caplog.text, "the reason is logged"
    for c in others:
        c.send(st.Move(77, 5, 5))
        assert c.expect(st.You).seq == 77
    assert len(h.server.world.game.players) == 3


def test_a_second_hello_is_an_error(h):
    c = h.client()
    c.send(st.Hello())
    errors = [m for m in c.wait_closed() if isinstance(m, st.Error)]
    assert errors[-1].code == st.ErrorCode.BAD_MESSAGE and "unexpected HELLO in game" in errors[-1].text


def test_flooding_disconnects(h):
    c = h.client()
    h.ticks(1)
    c.send_raw(st.frame(st.Move(1, 1, 1)) * (st.FLOOD_MESSAGES + 5))
    errors = [m for m in c.wait_closed() if isinstance(m, st.Error)]
    assert errors[-1].code == st.ErrorCode.FLOOD


def test_hello_timeout(make_harness):
    h = make_harness(hello_timeout=0.1)
    c = h.client(hello=False)
    errors = [m for m in c.wait_closed() if isinstance(m, st.Error)]
    assert errors[-1].code == st.ErrorCode.HELLO_TIMEOUT


def test_a_hello_waiting_unread_is_no_hello_timeout(make_harness):
    """A server too busy to read (a join storm on a loaded box) does not kick a
    player for silence while its HELLO waits in the server's own socket."""
    from netcore.server import unread_bytes

    h = make_harness(hello_timeout=0.05)
    c = h.client(hello=False)
    h.run_until(lambda: len(h.server.front.pending) == 1, what="the connection accepted")
    (conn,) = h.server.front.pending
    c.send(st.Hello())  # the loop does not run: nobody reads it
    end = time.monotonic() + 5
    while not unread_bytes(conn.sock) and time.monotonic() < end:
        time.sleep(0.001)
    time.sleep(0.1)  # twice the hello timeout
    h.server.front._expire_pending()
    assert conn in h.server.front.pending and conn.is_open
    assert isinstance(c.expect(st.Welcome), st.Welcome)  # read at last: a player
    time.sleep(0.1)
    h.server.front._expire_pending()  # a silent one is still timed out
    silent = h.client(hello=False)
    errors = [m for m in silent.wait_closed() if isinstance(m, st.Error)]
    assert errors[-1].code == st.ErrorCode.HELLO_TIMEOUT


def test_server_full_is_an_error_frame(make_harness):
    h = make_harness(max_clients=2)
    players = [h.client(), h.client()]
    c = h.client(hello=False)
    errors = [m for m in c.wait_closed() if isinstance(m, st.Error)]
    assert errors[-1].code == st.ErrorCode.SERVER_FULL and "server full" in errors[-1].text
    assert len(h.server.world.game.players) == len(players)


def test_leaving_lists_the_player_as_gone(h):
    a, b = h.client(), h.client()
    h.ticks(1)
    a.sock.close()
    pid = a.welcome.player_id
    for _ in range(10):
        tick = b.expect(st.TickMsg)
        if pid in tick.gone:
            break
    assert pid in tick.gone and tick.players == 1


def test_scoring_reaches_everyone(h):
    a, b, c = h.client(), h.client(), h.client()
    a.send(st.Move(1, 10, 10))
    b.send(st.Move(1, 20, 20))
    c.send(st.Move(1, 400, 300))
    board = None
    for _ in range(40):
        tick = c.expect(st.TickMsg)
        board = board or tick.board
        if tick.attractor == 0:
            break
    assert tick.attractor == 0
    scored = c.expect(st.Scored, timeout=10)
    assert scored.cell == 0 and scored.old == board[0]
    holders = [x for x in h.server.world.game.players.values() if x.score == 1]
    assert scored.scorers == len(holders)


@pytest.mark.slow  # a second or more of timers
def test_stats_every_51_ticks(h):
    c = h.client()
    c.expect(st.Stats)
    h.ticks(st.STATS_EVERY + 1)
    s = c.expect(st.Stats)
    assert s.players == 1 and s.uptime_s >= 0 and s.rss_kb > 0


def test_sigterm_style_shutdown_says_goodbye(h):
    clients = [h.client() for _ in range(20)]
    h.server.shutdown()
    h.loop.run_for(3)
    assert not h.loop.running
    for c in clients:
        errors = [m for m in c.wait_closed() if isinstance(m, st.Error)]
        assert errors[-1].code == st.ErrorCode.SHUTDOWN
