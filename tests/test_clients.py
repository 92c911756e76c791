"""The desktop client's brain and network driver, without Tk.

The brain is fed constructed frame sequences (built with the protocol's own
encoder) on a fake clock; the driver is run against a real in-process server
with netcore's loop standing in for Tk's.
"""

import os
import subprocess
import sys
import time

import pytest

import spelltraction as st
from conftest import FakeClock
from netcore import FrameError, ProtocolError
from serverproc import GAME, run_game


BOARD = "ABCDEFGHIJKL"
ME = 7


def tick(number, attractor=st.PARKED, held=0, board=BOARD, counts=None, movers=(), gone=()):
    counts = tuple(counts) if counts is not None else (0,) * st.CELLS
    return st.TickMsg(number, attractor, held, board, sum(counts), counts,
                      tuple(movers), tuple(gone))


def mover(pid, x, y, shape=1, colour=0x3CB44B):
    return st.Mover(pid, x, y, shape, colour)


def joined(clock=None, **kw):
    """A brain that has connected and received WELCOME + YOU + STATS."""
    clock = clock or FakeClock()
    brain = st.ClientBrain(clock=clock, **kw)
    brain.connecting("127.0.0.1:12150")
    brain.connected()
    brain.feed(st.frame(st.Welcome(ME, shape=2, colour=0xE6194B))
               + st.frame(st.You(0, 100, 200, 0, "ACE"))
               + st.frame(st.Stats(3, 2, 60, 20480, 18432, 900)))
    brain.outbox.clear()
    return brain, clock


def sent(brain):
    out = [st.decode(f[2:]) for f in brain.outbox]
    brain.outbox.clear()
    return out


# -- joining --------------------------------------------------------------------


def test_connect_says_hello_and_join_fills_player_board_and_stats():
    clock = FakeClock()
    brain = st.ClientBrain(shape=3, colour=0x123456, clock=clock)
    assert brain.state == st.ClientState.OFFLINE and brain.status_line() == "Not connected"
    brain.connecting("127.0.0.1:12150")
    assert "Connecting to 127.0.0.1:12150" in brain.status_line()
    brain.connected()
    assert sent(brain) == [st.Hello(st.PROTOCOL_VERSION, 3, 0x123456)]
    assert brain.state == st.ClientState.JOINING
    data = (st.frame(st.Welcome(ME, shape=3, colour=0x123456))
            + st.frame(st.You(0, 100, 200, 0, "ACE"))
            + st.frame(st.Stats(3, 2, 60, 20480, 18432, 900))
            + st.frame(tick(1, counts=[0, 2] + [0] * 10)))
    for i in range(len(data)):  # one byte at a time: frames split across reads
        brain.feed(data[i:i + 1])
    assert brain.state == st.ClientState.PLAYING and brain.player_id == ME
    assert brain.me is not None and (brain.me.tx, brain.me.ty) == (100, 200)
    assert (brain.me.shape, brain.me.colour) == (3, 0x123456)
    assert brain.letters == "ACE" and brain.score == 0
    assert brain.stats == st.Stats(3, 2, 60, 20480, 18432, 900)
    assert brain.board == BOARD and brain.players == 2 and brain.counts[1] == 2
    assert brain.status_line() == "Playing on 127.0.0.1:12150 as player #7"
    clock.advance(30)
    assert brain.uptime_s() == 90  # counted on from the last STATS


def test_several_messages_in_one_read_are_all_applied():
    brain, _ = joined()
    brain.feed(st.frame(tick(5, 4, 3)) + st.frame(tick(6, 4, 4))
               + st.frame(st.Stats(9, 8, 61, 1, 1, 1)))
    assert brain.tick == 6 and brain.held == 4 and brain.stats.connections == 9


# -- other players ----------------------------------------------------------------


def test_movers_become_markers_that_ease_towards_their_targets():
    brain, clock = joined()
    brain.feed(st.frame(tick(1, movers=[mover(11, 10, 20), mover(ME, 300, 300),
                                        mover(12, 400, 50, shape=3, colour=0xFFE119)])))
    assert set(brain.markers) == {11, 12}  # our own position comes from YOU, not movers
    m11 = brain.markers[11]
    assert (m11.x, m11.y, m11.tx, m11.ty) == (10, 20, 10, 20)  # newcomers appear in place
    assert (brain.markers[12].shape, brain.markers[12].colour) == (3, 0xFFE119)
    brain.animate()
    brain.feed(st.frame(tick(2, movers=[mover(11, 110, 220)])))
    assert (m11.tx, m11.ty) == (110, 220) and (m11.x, m11.y) == (10, 20)
    clock.advance(0.04)  # one animation frame
    brain.animate()
    assert 10 < m11.x < 110 and 20 < m11.y < 220  # on its way, not there yet
    first_step = m11.x - 10
    for _ in range(50):
        clock.advance(0.04)
        brain.animate()
    assert (m11.x, m11.y) == (110, 220)
    assert first_step < 50  # eased, not jumped


def test_gone_players_are_dropped():
    brain, _ = joined()
    brain.feed(st.frame(tick(1, movers=[mover(11, 1, 1), mover(12, 2, 2), mover(13, 3, 3)])))
    brain.feed(st.frame(tick(2, gone=[12, 99])))
    assert set(brain.markers) == {11, 13}


def test_markers_not_seen_moving_for_120_s_age_out():
    brain, clock = joined()
    brain.feed(st.frame(tick(1, movers=[mover(11, 1, 1), mover(12, 2, 2)])))
    clock.advance(100)
    brain.feed(st.frame(tick(2, movers=[mover(12, 5, 5)])))  # 12 is still active
    clock.advance(21)
    brain.animate()
    assert set(brain.markers) == {12}
    clock.advance(100)
    brain.animate()
    assert brain.markers == {}


def test_the_number_of_markers_is_capped_dropping_the_stalest():
    brain, clock = joined(max_markers=5)
    for pid in range(100, 108):
        clock.advance(1)
        brain.feed(st.frame(tick(pid, movers=[mover(pid, pid, pid)])))
    assert list(brain.markers) == [103, 104, 105, 106, 107]
    clock.advance(1)
    brain.feed(st.frame(tick(200, movers=[mover(103, 1, 1), mover(108, 2, 2)])))
    assert list(brain.markers) == [105, 106, 107, 103, 108]  # 103 moved: no longer stalest


# -- the attractor -------------------------------------------------------------


def test_attractor_countdown_is_held_over_hold_ticks_plus_one():
    brain, _ = joined()
    assert brain.countdown() == 0.0
    brain.feed(st.frame(tick(1, attractor=5, held=1)))
    assert brain.attractor == 5 and brain.countdown() == pytest.approx(1 / 21)
    brain.feed(st.frame(tick(2, attractor=5, held=14)))
    assert brain.countdown() == pytest.approx(14 / 21)
    assert brain.seconds_to_score() == pytest.approx(7 * 0.25)  # scores on the 21st tick held
    brain.feed(st.frame(tick(3)))
    assert brain.attractor == st.PARKED and brain.countdown() == 0.0


# -- scoring ----------------------------------------------------------------------


def test_a_score_flashes_the_cell_the_new_letter_and_the_score():
    brain, clock = joined()  # holds A, C, E
    brain.feed(st.frame(tick(1, attractor=2, held=20)))
    clock.advance(0.25)
    scored_at = clock.now
    new_board = "ABZDEFGHIJKL"  # C (cell 2) scored; Z took its place
    brain.feed(st.frame(tick(2, board=new_board)) + st.frame(st.Scored(2, "C", "Z", 4))
               + st.frame(st.You(0, 100, 200, 1, "AEQ")))
    assert brain.board == new_board and brain.scored == st.Scored(2, "C", "Z", 4)
    assert brain.score == 1 and brain.letters == "AEQ"
    assert brain.flash(brain.cell_flash[2]) == 1.0 and brain.flash(brain.cell_flash[3]) == 0.0
    assert brain.flash(brain.score_flash) == 1.0 and brain.flash(brain.scored_at) == 1.0
    # The hand is sorted: Q is new and sits last; A and E only kept their letters.
    assert [brain.flash(t) for t in brain.hand_flash] == [0.0, 0.0, 1.0]
    clock.advance(0.75)
    assert brain.flash(brain.cell_flash[2]) == pytest.approx(0.5)
    clock.advance(1.0)
    assert brain.flash(brain.cell_flash[2]) == 0.0 and brain.flash(brain.score_flash) == 0.0
    assert scored_at == brain.cell_flash[2]


def test_a_board_letter_that_changes_without_scored_still_flashes():
    brain, _ = joined()
    brain.feed(st.frame(tick(1)))
    brain.feed(st.frame(tick(2, board="ABCDEFGHIJKZ")))
    assert brain.flash(brain.cell_flash[11]) == 1.0
    assert brain.flash(brain.cell_flash[0]) == 0.0


# -- our own moves -------------------------------------------------------------------


def test_a_click_moves_our_marker_at_once_and_the_echo_corrects_it():
    brain, clock = joined()
    assert brain.click(300.7, 2000)  # below the board: clamped as the server would
    assert (brain.me.tx, brain.me.ty) == (300, st.BOARD_H - 1)
    assert sent(brain) == [st.Move(1, 300, st.BOARD_H - 1)]
    clock.advance(0.1)
    brain.animate()
    assert brain.me.y > 200  # moving already, before any reply
    brain.feed(st.frame(st.You(1, 299, 349, 0, "ACE")))  # the server has the last word
    assert (brain.me.tx, brain.me.ty) == (299, 349) and brain.pending is None


def test_an_echo_of_an_older_move_does_not_undo_a_newer_click():
    brain, _ = joined()
    brain.click(10, 10)
    brain.click(400, 300)
    assert [m.seq for m in sent(brain)] == [1, 2]
    brain.feed(st.frame(st.You(1, 10, 10, 0, "ACE")))
    assert (brain.me.tx, brain.me.ty) == (400, 300)
    brain.feed(st.frame(st.You(2, 400, 300, 0, "ACE")))
    assert brain.pending is None


def test_clicks_beyond_the_rate_limit_wait_for_a_token_instead_of_being_lost():
    brain, _ = joined()
    brain.feed(st.frame(tick(1)))
    for i in range(6):
        brain.click(10 + i, 10)
    assert [m.x for m in sent(brain)] == [10, 11, 12, 13]  # the server's bucket holds 4
    assert (brain.me.tx, brain.queued) == (15, (15, 10))  # shown at once, sent later
    brain.feed(st.frame(tick(2)))  # one token back per tick
    assert sent(brain) == [st.Move(5, 15, 10)] and brain.queued is None


def test_a_move_the_server_never_echoes_is_undone_after_a_second():
    brain, clock = joined()
    brain.click(400, 300)
    clock.advance(0.5)
    brain.animate()
    assert (brain.me.tx, brain.me.ty) == (400, 300)
    clock.advance(0.6)
    brain.animate()
    assert (brain.me.tx, brain.me.ty) == (100, 200) and brain.pending is None


def test_clicks_do_nothing_until_joined():
    brain = st.ClientBrain(clock=FakeClock())
    assert not brain.click(10, 10)
    brain.connected()
    brain.outbox.clear()
    assert not brain.click(10, 10) and brain.outbox == []


# -- errors, disconnects and reconnects --------------------------------------------


def test_the_servers_error_text_is_kept_and_a_version_error_stops_retrying():
    brain = st.ClientBrain(version=3, clock=FakeClock())
    brain.connecting("h:1")
    brain.connected()
    text = "server speaks protocols 1 and 2, client sent 3"
    brain.feed(st.frame(st.Error(st.ErrorCode.VERSION, text)))
    assert brain.error == "server speaks protocols 1 and 2, client sent 3" and brain.give_up
    brain.disconnected("the server closed the connection", None)
    assert brain.state == st.ClientState.STOPPED
    assert brain.error == "server speaks protocols 1 and 2, client sent 3"  # still shown
    assert "Not reconnecting" in brain.status_line()


def test_an_error_other_than_version_is_shown_and_retried_and_cleared_by_a_join():
    brain, clock = joined()
    brain.feed(st.frame(st.Error(st.ErrorCode.SHUTDOWN, "server shutting down")))
    assert brain.error == "server shutting down" and not brain.give_up
    brain.disconnected("the server closed the connection", clock.now + 2)
    brain.connected()
    brain.feed(st.frame(st.Welcome(8, 0, 0)))
    assert brain.error == "" and brain.player_id == 8


def test_disconnect_resets_the_session_and_says_it_is_reconnecting():
    brain, clock = joined()
    brain.feed(st.frame(tick(1, attractor=3, held=5, counts=[1] * 12,
                             movers=[mover(11, 1, 1)])))
    brain.click(50, 50)
    brain.feed(st.frame(st.You(1, 50, 50, 0, "ACE"))[:5])  # half a frame, then the line dies
    brain.disconnected("connection reset by peer", clock.now + 0.5)
    assert brain.state == st.ClientState.WAITING
    assert (brain.player_id, brain.me, brain.letters, brain.score) == (0, None, "", 0)
    assert brain.markers == {} and brain.stats is None and brain.outbox == []
    assert brain.attractor == st.PARKED and brain.counts == (0,) * 12 and brain.players == 0
    assert brain.board == BOARD  # the last board stays on screen, dimmed
    assert brain.status_line() == ("Server gone: connection reset by peer. "
                                   "Reconnecting in 0.5 s...")
    clock.advance(0.3)
    assert "Reconnecting in 0.2 s" in brain.status_line()
    assert not brain.click(10, 10)
    # Reconnected: a new HELLO, a fresh parser (the half frame is forgotten), a new player.
    brain.connected()
    assert sent(brain) == [st.Hello()]
    brain.feed(st.frame(st.Welcome(21, 0, 0x4363D8)) + st.frame(st.You(0, 5, 6, 0, "XYZ")))
    assert brain.state == st.ClientState.PLAYING and brain.player_id == 21 and brain.letters == "XYZ"
    assert (brain.me.tx, brain.me.ty) == (5, 6) and brain.seq == 0


def test_never_connected_says_it_cannot_reach_the_server():
    clock = FakeClock()
    brain = st.ClientBrain(clock=clock)
    brain.connecting("127.0.0.1:9")
    brain.disconnected("connection refused", clock.now + 1)
    assert brain.status_line() == ("Cannot reach 127.0.0.1:9: connection refused. "
                                   "Reconnecting in 1.0 s...")


def test_bad_data_from_the_server_raises_a_protocol_error():
    brain, _ = joined()
    with pytest.raises(ProtocolError, match="does not send Hello"):
        brain.feed(st.frame(st.Hello()))
    brain2, _ = joined()
    with pytest.raises(FrameError):
        brain2.feed(b"\xff\xff")  # longer than any server frame may be
    brain3 = st.ClientBrain(clock=FakeClock())
    brain3.connected()
    with pytest.raises(ProtocolError, match="YOU before WELCOME"):
        brain3.feed(st.frame(st.You(0, 1, 1, 0, "ABC")))


def test_view_helpers_scale_and_shade():
    assert st.view_transform(st.VIEW_W, st.VIEW_H) == (1.0, 0.0, 0.0)
    scale, ox, oy = st.view_transform(st.VIEW_W * 2, st.VIEW_H * 3)
    assert scale == 2.0 and ox == 0.0 and oy == st.VIEW_H * 0.5
    assert st.crowd_heat(0, 100) == 0.0 and st.crowd_heat(0, 0) == 0.0
    assert st.crowd_heat(25, 100) == 1.0  # three times a fair share of 100/12
    assert st.crowd_heat(1250, 15000) == pytest.approx(1 / 3)  # a fair share of a crowd
    assert st.crowd_rgb(0) == st.TK_CELL and st.crowd_rgb(1) == st.TK_CROWD[-1]
    assert st._fmt_duration(59) == "59 s" and st._fmt_duration(3725) == "1 h 02 min"
    assert st._fmt_kib(20480) == "20.0 MiB"


# -- the network driver, on a real server, with netcore's loop standing in for Tk -----


def drive(h, brain, port, clock=None):
    net = st.NetClient(brain, "127.0.0.1", port, h.loop.call_later,
                       **({"clock": clock} if clock else {}))
    net.start()
    return net


def test_driver_joins_sees_others_move_and_its_click_reaches_the_server(h):
    brain = st.ClientBrain()
    net = drive(h, brain, h.port)
    h.run_until(lambda: brain.state == st.ClientState.PLAYING and brain.tick >= 0)
    pid = brain.player_id
    assert pid in h.server.world.game.players and brain.stats is not None
    other = h.client()
    other.send(st.Move(1, 420, 330))
    h.run_until(lambda: other.welcome.player_id in brain.markers
                and brain.markers[other.welcome.player_id].tx == 420)
    assert brain.markers[other.welcome.player_id].ty == 330
    assert brain.click(60, 300)
    net.flush()
    h.run_until(lambda: (h.server.world.game.players[pid].x, h.server.world.game.players[pid].y)
                == (60, 300))
    h.run_until(lambda: brain.pending is None)  # echoed
    assert (brain.me.tx, brain.me.ty) == (60, 300)
    net.stop()


def test_driver_reconnects_when_the_server_drops_it_as_a_new_player(h):
    brain = st.ClientBrain()
    net = drive(h, brain, h.port)
    h.run_until(lambda: brain.state == st.ClientState.PLAYING)
    first = brain.player_id
    h.server.world.game.players[first].peer.close("test")
    h.run_until(lambda: brain.state == st.ClientState.WAITING)
    assert "Server gone: the server closed the connection" in brain.status_line()
    assert 0.4 < brain.retry_at - h.loop.time() <= 0.5
    h.run_until(lambda: brain.state == st.ClientState.PLAYING, timeout=5)
    assert brain.player_id != first and brain.player_id in h.server.world.game.players
    assert net.failures == 0  # a successful join resets the backoff
    net.stop()


def test_driver_shows_a_version_error_and_stops_retrying(h):
    brain = st.ClientBrain(version=3)
    net = drive(h, brain, h.port)
    h.run_until(lambda: brain.state == st.ClientState.STOPPED)
    assert brain.error == "server speaks protocols 1 and 2, client sent 3"
    h.run(0.8)
    assert net.sock is None and brain.state == st.ClientState.STOPPED  # no retry
    assert h.server.front.net.stats.accepted == 1
    net.stop()


def step_until(net, done, steps=2000, lookup_wait=5.0):
    """Step the driver until ``done()``, waiting for its name lookup thread when it has one."""
    for _ in range(steps):
        net.step()
        if done():
            return
        if net.lookup is not None:
            net.lookup.done.wait(lookup_wait)


def test_driver_backs_off_exponentially_while_nobody_listens(clock, refused_port):
    brain = st.ClientBrain(clock=clock)
    net = st.NetClient(brain, "127.0.0.1", refused_port, lambda d, f: None, clock=clock)
    delays = []
    for _ in range(7):
        before = brain.retry_at
        # A refused loopback connect fails at once or on the next poll.
        step_until(net, lambda: brain.state == st.ClientState.WAITING
                   and brain.retry_at != before)
        assert brain.state == st.ClientState.WAITING, brain.status_line()
        assert "Cannot reach 127.0.0.1" in brain.status_line()
        delays.append(brain.retry_at - clock.now)
        clock.now = brain.retry_at
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_driver_drops_a_silent_server_after_10_s(clock, listener):
    # The kernel completes the connect to ``listener``; nobody ever answers.
    brain = st.ClientBrain(clock=clock)
    net = st.NetClient(brain, "127.0.0.1", listener.getsockname()[1], lambda d, f: None,
                       clock=clock)
    step_until(net, lambda: brain.state == st.ClientState.JOINING)
    assert brain.state == st.ClientState.JOINING
    conn, _ = listener.accept()
    conn.settimeout(5)
    assert conn.recv(100) == st.frame(st.Hello())
    clock.advance(9)
    net.step()
    assert brain.state == st.ClientState.JOINING
    clock.advance(2)
    net.step()
    assert brain.state == st.ClientState.WAITING and "nothing from the server for 10 s" in brain.why
    conn.close()


def test_driver_drops_a_server_that_sends_garbage(listener):
    brain = st.ClientBrain()
    net = st.NetClient(brain, "127.0.0.1", listener.getsockname()[1], lambda d, f: None)
    while brain.state != st.ClientState.JOINING:
        net.step()
    conn, _ = listener.accept()
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    for _ in range(500):
        net.step()
        if brain.state == st.ClientState.WAITING:
            break
        time.sleep(0.01)
    assert brain.state == st.ClientState.WAITING and brain.why.startswith("bad data from the server")
    conn.close()


def test_unresolvable_host_is_reported_not_raised():
    brain = st.ClientBrain()
    net = st.NetClient(brain, "no-such-host.invalid", 12150, lambda d, f: None)
    step_until(net, lambda: brain.state == st.ClientState.WAITING, lookup_wait=10)
    assert brain.state == st.ClientState.WAITING and brain.why.startswith("cannot find no-such-host.invalid")


# -- the command line ------------------------------------------------------------------


def test_the_server_side_never_imports_tkinter():
    code = ("import sys, spelltraction as st; st.ClientBrain(); "
            "print('tkinter' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(GAME))
    assert out.stdout.strip() == "False", out.stderr


def test_client_without_a_display_says_so_and_exits_2():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, GAME, "client", "--port", "1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot open a window" in out.stderr, out.stderr
    bad = run_game("client", "--colour", "orange")
    assert bad.returncode == 2 and "colour must be 6 hex digits" in bad.stderr
