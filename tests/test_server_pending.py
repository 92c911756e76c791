"""A HELLO takes a connection out of "pending" exactly once, whichever way it joins.

"Pending" (connected, no HELLO yet) is what the per-address limits bound:
``--max-pending-per-address`` and ``--max-pending``. A player who joined must
stop counting there, or the 17th browser behind one school's NAT is refused
as if it were a squatter. Every join path is checked from an address the
limits count (``exempt=""``): version 1 and 2, TCP and WebSocket, a new
player, a resumed one, one waiting for the store's commit, and players behind
a trusted proxy (named by a PROXY header, or by X-Forwarded-For).
"""

from typing import Any, Callable, List

import pytest

import spelltraction as st
from gamekit import Client
from netcore import websocket as ws
from webkit import WsClient, ws_key

# Every harness test here runs on both of the loop's pollers (epoll, selectors).
pytestmark = pytest.mark.both_pollers

LIMIT = 3  # pending connections per address; the tests join more players than this

#: What a trusted proxy says its clients are (TEST-NET-1: only ever a header's text).
CLIENT_A, CLIENT_B = "192.0.2.7", "192.0.2.8"


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 40000 12150\r\n".encode()


def join_tcp(h: Any, version: int, prefix: bytes = b"", token: bytes = b"") -> Client:
    c = Client(h)
    if prefix:
        c.send_raw(prefix)
    if version == 1:
        c.send(st.Hello())
    else:
        c.send(st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, token, b""))
    c.welcome = c.expect(st.Welcome)
    return c


class ProxiedWs(WsClient):
    """A WebSocket client whose connection starts with ``prefix`` (a PROXY header),
    and whose upgrade carries ``headers`` (X-Forwarded-For)."""

    def __init__(self, h: Any, prefix: bytes = b"", headers: bytes = b"") -> None:
        super().__init__(h, upgrade=False)
        self.key = ws_key()
        handshake = ws.client_handshake("test", "/ws", self.key)
        if headers:  # before the blank line that ends the request head
            handshake = handshake[:-2] + headers + b"\r\n"
        self.send(prefix + handshake)
        self.response = self.responses(1)[0]
        assert self.response.status == 101, self.response


def join_ws(h: Any, version: int, prefix: bytes = b"", headers: bytes = b"") -> WsClient:
    c = ProxiedWs(h, prefix, headers)
    if version == 1:
        c.send_msg(st.Hello())
    else:
        c.send_msg(st.Hello(st.PROTOCOL_V2, st.ANY_SHAPE, st.ANY_COLOUR, b"", b""))
    c.welcome = c.expect(st.Welcome)
    return c


def pending_counted(h: Any, address: str = "127.0.0.1") -> int:
    return h.server.front.net.address_limits.count(address)[1]


JOINS: List[Callable[[Any], Any]] = [
    lambda h: join_tcp(h, 1),
    lambda h: join_tcp(h, 2),
    lambda h: join_ws(h, 1),
    lambda h: join_ws(h, 2),
]
NAMES = ["v1-tcp", "v2-tcp", "v1-ws", "v2-ws"]


@pytest.mark.parametrize("join", JOINS, ids=NAMES)
def test_players_past_the_pending_limit_of_their_address_all_join(make_harness, join):
    h = make_harness(exempt="", max_pending_per_address=LIMIT, max_per_address=64)
    players = [join(h) for _ in range(3 * LIMIT)]
    assert len(h.server.world.game.players) == 3 * LIMIT
    assert pending_counted(h) == 0  # every one of them settled, once
    assert h.server.front.net.address_limits.count("127.0.0.1")[0] == 3 * LIMIT
    assert not h.server.front.pending
    # ...and the limit still bounds connections that never say HELLO.
    squatters = [Client(h) for _ in range(LIMIT)]
    h.run_until(lambda: pending_counted(h) == LIMIT, what="the squatters counted")
    refused = Client(h)
    got = refused.wait_closed()
    assert any(isinstance(m, st.Error) and "pending-per-address" in m.text for m in got), got
    for c in players + squatters:
        c.sock.close()


@pytest.mark.parametrize("join", JOINS, ids=NAMES)
def test_players_past_the_pending_total_all_join(make_harness, join):
    h = make_harness(exempt="", max_pending=LIMIT, max_pending_per_address=0)
    players = [join(h) for _ in range(3 * LIMIT)]
    assert len(h.server.world.game.players) == 3 * LIMIT
    assert h.server.front.net.address_limits.pending == 0
    for c in players:
        c.sock.close()


def test_a_player_waiting_for_the_stores_commit_is_settled_once(make_harness, tmp_path):
    """A new v2 player gets WELCOME only once its row is on disk; it stops being
    pending at its HELLO, and a resumed one (by token, from the store) too."""
    h = make_harness(exempt="", max_pending_per_address=LIMIT, data=str(tmp_path))
    players = [join_tcp(h, 2) for _ in range(2 * LIMIT)]
    tokens = [c.welcome.token for c in players]
    assert pending_counted(h) == 0
    for c in players:
        c.sock.close()
    h.run_until(lambda: not h.server.world.game.players, what="everyone left")
    back = [join_tcp(h, 2, token=t) for t in tokens]
    assert all(c.welcome.resumed == st.RESUMED for c in back)
    assert pending_counted(h) == 0
    assert h.server.front.net.address_limits.count("127.0.0.1")[0] == 2 * LIMIT
    for c in back:
        c.sock.close()


def test_a_takeover_settles_the_new_connection(make_harness):
    h = make_harness(exempt="", max_pending_per_address=LIMIT)
    first = join_tcp(h, 2)
    for _ in range(2 * LIMIT):  # the same player resumed again and again, each time anew
        again = join_tcp(h, 2, token=first.welcome.token)
        assert again.welcome.resumed == st.RESUMED
        first.sock.close()
        first = again
    assert pending_counted(h) == 0


@pytest.mark.parametrize("kind", ["tcp-proxy", "ws-proxy", "ws-forwarded-for"])
def test_players_behind_a_trusted_proxy_are_settled_by_their_own_address(make_harness, kind):
    """Behind a proxy every player comes from its address; the limits count the
    client it names, and a joined player leaves that client's pending count."""
    h = make_harness(exempt="", trusted_proxies="127.0.0.1/32", max_pending_per_address=LIMIT)
    players = []
    for i in range(3 * LIMIT):
        version = 1 + i % 2
        if kind == "tcp-proxy":
            players.append(join_tcp(h, version, prefix=proxy_v1(CLIENT_A)))
        elif kind == "ws-proxy":
            players.append(join_ws(h, version, prefix=proxy_v1(CLIENT_A)))
        else:
            players.append(join_ws(h, version,
                                   headers=f"X-Forwarded-For: {CLIENT_A}\r\n".encode()))
    assert len(h.server.world.game.players) == 3 * LIMIT
    limits = h.server.front.net.address_limits
    assert limits.count(CLIENT_A) == (3 * LIMIT, 0)
    assert limits.count("127.0.0.1") == (0, 0)  # the proxy itself is not who is counted
    # Another client behind the same proxy has its own allowance.
    other = join_tcp(h, 2, prefix=proxy_v1(CLIENT_B))
    assert limits.count(CLIENT_B) == (1, 0)
    for c in players + [other]:
        c.sock.close()
