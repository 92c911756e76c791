"""Playing over WebSocket: the same game, the same bytes, RFC 6455 on the wire."""

import pytest

import spelltraction as st
from netcore import websocket as ws
from webkit import RawConn, WsClient

# Every harness test here runs on both of the loop's pollers (epoll, selectors).
pytestmark = pytest.mark.both_pollers


def test_hello_over_websocket_gets_welcome_you_and_stats_in_one_message(h):
    c = WsClient(h)
    sends = h.server.front.net.stats.sends
    c.hello()
    assert h.server.front.net.stats.sends == sends + 1
    assert len(c.messages) == 1  # WELCOME + YOU + STATS, one binary message
    assert c.welcome.tick_ms == 20 and c.stats.players == 1
    assert h.server.front.web.stats.upgrades == 1


def test_handshake_and_hello_in_one_segment(h):
    hello = ws.frame(st.frame(st.Hello()), mask_key=b"abcd")
    c = WsClient(h, extra=hello)
    assert c.expect(st.Welcome).player_id >= 1


def test_websocket_and_tcp_players_see_each_other(h):
    w = WsClient(h).hello()
    t = h.client()
    h.ticks(1)
    w.send_msg(st.Move(7, 400, 300))
    t.send(st.Move(8, 20, 30))
    seen_by_tcp = seen_by_ws = False
    for _ in range(10):
        tick = t.expect(st.TickMsg)
        seen_by_tcp |= any(m.player_id == w.welcome.player_id and (m.x, m.y) == (400, 300)
                           for m in tick.movers)
        tick = w.expect(st.TickMsg)
        seen_by_ws |= any(m.player_id == t.welcome.player_id and (m.x, m.y) == (20, 30)
                          for m in tick.movers)
        if seen_by_tcp and seen_by_ws:
            break
    assert seen_by_tcp and seen_by_ws


def test_ticks_are_the_same_bytes_and_the_header_is_built_once(h):
    tcp = [h.client() for _ in range(3)]
    wss = [WsClient(h).hello() for _ in range(3)]
    calls = []
    real = h.server.front.net.broadcast

    def spy(data, conns, frames=1, *private):  # private: a newcomer's YOU overrides
        calls.append((data, list(conns)))
        return real(data, conns, frames, *private)

    h.server.front.net.broadcast = spy
    h.ticks(3)
    ws_conns = set(h.server.front.ws_players)
    assert len(ws_conns) == 3
    # Per tick: one broadcast to the TCP players and one to the WebSocket
    # players; the WebSocket one is the WebSocket header + the very same data.
    by_tick = {}
    for data, conns in calls:
        kind = "ws" if set(conns) <= ws_conns else "tcp"
        assert set(conns) <= ws_conns or not (set(conns) & ws_conns)
        by_tick.setdefault(len(by_tick) // 2, {})[kind] = (data, conns)
    for pair in by_tick.values():
        tcp_data, tcp_conns = pair["tcp"]
        ws_data, ws_targets = pair["ws"]
        assert len(tcp_conns) == 3 and len(ws_targets) == 3
        assert ws_data == ws.frame_header(len(tcp_data)) + tcp_data
    # And clients see it: every WebSocket message is exactly a TCP tick's bytes.
    h.server.front.net.broadcast = real
    h.ticks(1)
    for c in tcp:
        c.pump()
    for w in wss:
        w.pump()
    ticks_tcp = {m.number for m in tcp[0].inbox if isinstance(m, st.TickMsg)}
    ticks_ws = {m.number for m in wss[0].inbox if isinstance(m, st.TickMsg)}
    # The TCP player joined first and may have seen ticks before the WebSocket
    # one was in; from then on both saw the very same ticks.
    assert ticks_ws and ticks_ws == {n for n in ticks_tcp if n >= min(ticks_ws)}


def test_one_send_per_tick_per_websocket_player(h):
    clients = [WsClient(h).hello() for _ in range(5)]
    h.ticks(2)
    before, first = h.server.front.net.stats.sends, h.server.world.game.tick
    clients[0].send_msg(st.Move(5, 10, 10))
    h.run(0.001)
    h.ticks(3)
    # one send per player per tick, however many ticks fired (a loaded
    # machine may fit one into the short run above)
    assert h.server.front.net.stats.sends - before == 5 * (h.server.world.game.tick - first)
    you = clients[0].expect(st.You)
    assert you.seq == 5


def test_several_frames_in_one_message(h):
    c = WsClient(h)
    c.send_frame(st.frame(st.Hello()) + st.frame(st.Move(3, 100, 100)))
    c.expect(st.Welcome)
    for _ in range(5):
        you = c.expect(st.You)
        if you.seq == 3:
            break
    assert (you.x, you.y) == (100, 100)


def test_fragmented_message_with_a_ping_in_between(h):
    c = WsClient(h)
    hello = st.frame(st.Hello())
    c.send_frame(hello[:3], ws.BINARY, fin=False)
    c.send_frame(b"ping!", ws.PING)
    c.send_frame(hello[3:], ws.CONTINUATION)
    assert c.expect(st.Welcome)
    assert ws.Pong(b"ping!") in c.events


def test_ping_is_answered(h):
    c = WsClient(h).hello()
    c.send_frame(b"are you there", ws.PING)
    c.run_until(lambda: ws.Pong(b"are you there") in c.events, what="pong")


def test_client_close_is_echoed_then_the_server_closes(h):
    c = WsClient(h).hello()
    c.send_frame(ws.close_payload(1000, "bye"), ws.CLOSE)
    c.wait_closed()
    assert c.close_event() == ws.Close(1000, "")
    h.run_until(lambda: not h.server.world.game.players)
    h.run_until(lambda: not h.server.front.ws_players)


def reject(h, c, frames=b"", raw=b""):
    if frames:
        c.send_frame(frames)
    if raw:
        c.send(raw)
    c.wait_closed()
    errors = c.errors()
    assert len(errors) == 1, c.events
    return errors[0], c.close_event()


def test_version_mismatch_sends_the_error_then_close_1002(h):
    err, close = reject(h, WsClient(h), st.frame(st.Hello(version=9)))
    assert err.code == st.ErrorCode.VERSION and "client sent 9" in err.text
    assert close.code == ws.CloseCode.PROTOCOL_ERROR and "client sent 9" in close.reason


@pytest.mark.parametrize("raw, code", [
    (ws.frame(st.frame(st.Hello())), ws.CloseCode.PROTOCOL_ERROR),  # unmasked
    (ws.frame("caf\u00e9".encode("latin-1"), ws.TEXT, mask_key=b"abcd"), ws.CloseCode.INVALID_DATA),
    (ws.frame(b"hello", ws.TEXT, mask_key=b"abcd"), ws.CloseCode.UNSUPPORTED_DATA),
    (ws.frame_header(5000, ws.BINARY, mask_key=b"abcd"), ws.CloseCode.TOO_BIG),
    (bytes([0x80 | 0x40 | ws.BINARY]) + ws.frame(b"x", mask_key=b"abcd")[1:],
     ws.CloseCode.PROTOCOL_ERROR),  # RSV1
    (ws.frame(b"x", 0x3, mask_key=b"abcd"), ws.CloseCode.PROTOCOL_ERROR),  # opcode 3
    (ws.frame(st.frame(st.Hello())[:5], mask_key=b"abcd"), ws.CloseCode.PROTOCOL_ERROR),  # split
    (ws.frame(b"\x01\x01" + b"x" * 257, mask_key=b"abcd"), ws.CloseCode.PROTOCOL_ERROR),  # 257 > 256
], ids=["unmasked", "bad-utf8", "text", "too-big", "rsv1", "opcode-3", "split-frame",
        "oversize-game-frame"])
def test_bad_frames_get_error_then_the_fitting_close_code(h, raw, code):
    player = h.client()
    c = WsClient(h)
    err, close = reject(h, c, raw=raw)
    assert err.code == st.ErrorCode.BAD_FRAME
    assert close.code == code, (close, err)
    player.send(st.Move(1, 5, 5))
    assert player.expect(st.You).seq == 1  # everyone else plays on


def test_bad_frame_in_game_closes_only_that_player(h):
    other = WsClient(h).hello()
    c = WsClient(h).hello()
    err, close = reject(h, c, raw=ws.frame(b"x"))  # unmasked
    assert close.code == ws.CloseCode.PROTOCOL_ERROR
    h.run_until(lambda: len(h.server.world.game.players) == 1)
    assert other.expect(st.TickMsg)


def test_flood_over_websocket(h):
    c = WsClient(h).hello()
    h.ticks(1)
    c.send(b"".join(ws.frame(st.frame(st.Move(i, 1, 1)), mask_key=b"abcd") for i in range(40)))
    err, close = reject(h, c)
    assert err.code == st.ErrorCode.FLOOD
    assert close.code == ws.CloseCode.POLICY_VIOLATION


def test_hello_timeout_over_websocket(make_harness):
    h = make_harness(hello_timeout=0.1)
    c = WsClient(h)
    err, close = reject(h, c)
    assert err.code == st.ErrorCode.HELLO_TIMEOUT
    assert close.code == ws.CloseCode.POLICY_VIOLATION


def test_shutdown_says_goodbye_to_every_transport(h):
    w = WsClient(h).hello()
    t = h.client()
    web = RawConn(h)
    web.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # mid-request
    h.run(0.05)
    h.server.shutdown()
    events = w.wait_closed()
    assert [e.code for e in w.errors()] == [st.ErrorCode.SHUTDOWN]
    assert w.close_event().code == ws.CloseCode.GOING_AWAY
    got = t.wait_closed()
    assert [m.code for m in got if isinstance(m, st.Error)] == [st.ErrorCode.SHUTDOWN]
    assert web.wait_closed() == b""  # nothing in game frames for an HTTP peer
    assert events


def test_bad_handshake_is_an_http_error_not_a_game_error(h):
    c = RawConn(h)
    c.send(ws.client_handshake("t", "/ws", "short").replace(b"short", b"c2hvcnQ="))
    r = c.responses(1)[0]
    assert r.status == 400 and b"16 bytes" in r.body
    c.wait_closed()
    assert not h.server.front.errors_sent


@pytest.mark.parametrize("key", [b"\n\n\n\n", b"\r\n\r\n", b"a\nb\r"])
def test_upgrade_and_a_first_frame_holding_lf_in_one_segment(h, key):
    # The frame after the head was scanned as a pipelined HTTP request:
    # "400 bare LF" whenever its masked bytes held 0x0A (random, 1 in ~30).
    hello = ws.frame(st.frame(st.Hello()), mask_key=key)
    c = WsClient(h, extra=hello)
    assert c.expect(st.Welcome).player_id >= 1


def test_allowed_origins_refuse_other_origins_with_403(make_harness):
    h = make_harness(allowed_origins="https://play.example.org")
    good = WsClient(h, upgrade=False)
    good.send(ws.client_handshake("test", "/ws", "dGhlIHNhbXBsZSBub25jZQ==",
                                  [("Origin", "https://play.example.org")]))
    assert good.responses(1)[0].status == 101
    bad = RawConn(h)
    bad.send(ws.client_handshake("test", "/ws", "dGhlIHNhbXBsZSBub25jZQ==",
                                 [("Origin", "https://evil.example")]))
    r = bad.responses(1)[0]
    assert r.status == 403 and b"Origin" in r.body


def upgrade_status(h, origin=None, host="test"):
    conn = RawConn(h)
    headers = [("Origin", origin)] if origin is not None else []
    conn.send(ws.client_handshake(host, "/ws", "dGhlIHNhbXBsZSBub25jZQ==", headers))
    status = conn.responses(1)[0].status
    conn.sock.close()
    return status


def test_by_default_only_pages_of_the_host_asked_for_may_join(h):
    """Same origin: the Origin's host[:port] is the request's Host (any scheme, so a
    page served over https by nginx still joins); programs send no Origin and join."""
    assert upgrade_status(h, "http://test") == 101
    assert upgrade_status(h, "https://test") == 101
    assert upgrade_status(h, "https://game.example.org:8443", host="game.example.org:8443") == 101
    assert upgrade_status(h, None) == 101
    for other in ("https://evil.example", "http://test.evil.example", "http://test:8080",
                  "null", "test", "http://evil.example/http://test"):
        assert upgrade_status(h, other) == 403, other
    assert upgrade_status(h, "http://game.example.org", host="game.example.org:12150") == 403


def test_any_origin_with_a_star_and_no_origin_always(make_harness):
    assert upgrade_status(make_harness(allowed_origins="*"), "https://evil.example") == 101
    listed = make_harness(allowed_origins="https://play.example.org")
    assert upgrade_status(listed, None) == 101  # not a browser: an Origin guards browsers
    assert upgrade_status(listed, "http://test") == 403  # the list replaces same-origin...
    both = make_harness(allowed_origins="https://play.example.org,same-origin")
    assert upgrade_status(both, "http://test") == 101  # ...unless it names it


def test_the_game_allows_few_fragments_per_message(h):
    c = WsClient(h).hello()
    c.send_frame(b"\x00", fin=False)
    for _ in range(st.WS_MAX_FRAGMENTS):
        c.send_frame(b"", ws.CONTINUATION, fin=False)
    c.wait_closed()
    close = c.close_event()
    assert close.code == ws.CloseCode.POLICY_VIOLATION and "frames" in close.reason
    assert h.server.front.net.stats.limits.get("ws-fragments") == 1


def test_a_hello_and_a_close_in_one_packet_get_a_welcome_then_the_close(h):
    # The HELLO parsed before the Close in the same read was dropped.
    c = WsClient(h)
    c.send(ws.frame(st.frame(st.Hello()), mask_key=b"abcd")
           + ws.close_frame(1000, "bye", mask_key=b"abcd"))
    events = c.wait_closed()
    assert isinstance(events[-1], ws.Close) and events[-1].code == 1000
    assert any(isinstance(m, st.Welcome) for m in c.inbox)


def test_a_hello_and_a_bad_frame_in_one_packet_get_a_welcome_then_the_error(h):
    c = WsClient(h)
    c.send(ws.frame(st.frame(st.Hello()), mask_key=b"abcd") + ws.frame(b"unmasked"))
    events = c.wait_closed()
    assert any(isinstance(m, st.Welcome) for m in c.inbox)
    assert [e.code for e in c.errors()] == [st.ErrorCode.BAD_FRAME]
    assert events[-1].code == ws.CloseCode.PROTOCOL_ERROR
