"""A server's listeners and connections handed to a successor server, every byte kept.

In this process: one server exports its state and lets go of its sockets
without closing them (``release_server``), a second one, built anew on
another loop, takes them (``restore_server``). Each client was caught
mid-something: a binary frame cut by a read, a pipelined HTTP request, a
WebSocket message in fragments and a frame half sent, a connection that has
said nothing yet, one whose output waits unsent; each conversation goes on
as if nothing happened. The exec itself (a real successor process) is
tested with the game.
"""

import json
import socket

from netcore import (
    EventLoop, FrameParser, ServerConfig, TCPServer, WebConfig, WebFront, WholeFrames,
)
from netcore import websocket as ws
from netcore.handover import (
    FORMAT, HandoverError, export_server, pack_rows, release_server, restore_server, unmovable,
    unpack_columns, unpack_rows,
)
from netcore.testing import Echo, run_until
from netcore.tls import server_context
from tlskit import MemoryClient, pki  # noqa: F401 - pki is a fixture

import pytest


def make(loop):
    front = WebFront(WebConfig(routes={"/hello": lambda: ("text/plain", b"hi")},
                               message_codec=WholeFrames(256)))
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"], exempt="",
                                                  max_pending_per_address=50, sndbuf=4096),
                       codec_factory=front)
    return server


def client(port, rcvbuf=0):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def drain(s):
    out = b""
    while True:
        try:
            data = s.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def frame(payload):
    return len(payload).to_bytes(2, "big") + payload


def test_every_connection_and_its_bytes_go_on_in_the_successor():
    loop = EventLoop()
    old = make(loop)
    old.listen()
    port = old.port
    binary = client(port)
    binary.sendall(frame(b"one"))
    http = client(port)
    http.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    web = client(port)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    web.sendall(ws.client_handshake("t", "/ws", key))
    silent = client(port)
    reader = client(port, rcvbuf=4096)
    reader.sendall(frame(b"x" * 200) * 400)  # echoed: more than it reads
    run_until(loop, lambda: len(old.connections) == 5 and old.stats.frames_in >= 401, 5,
              "everyone in")
    got = {s: drain(s) for s in (binary, http, web)}
    assert got[binary].endswith(b"echo:one") and b"200 OK" in got[http]
    assert b"101 Switching" in got[web]
    # Mid-something, as the exec comes:
    binary.sendall(frame(b"two")[:3])  # a frame cut by a read
    http.sendall(b"GET /hello HT")  # a request half sent
    last = ws.frame(frame(b"more"), ws.CONTINUATION, fin=True, mask_key=b"abcd")
    web.sendall(ws.frame(frame(b"frag"), ws.BINARY, fin=False, mask_key=b"wxyz")
                + last[:7])  # a message in fragments, the last one half sent
    loop.run_for(0.2)
    assert any(c.out is not None for c in old.connections.values()), "output waiting"
    state, fds = export_server(old)
    assert not state["left"] and state["connections"]["rows"] == 5
    state = json.loads(json.dumps(state))  # plain data, as it crosses the exec
    release_server(old)
    loop.close()

    loop2 = EventLoop()
    new = make(loop2)
    restored = restore_server(new, state)
    assert all(c is not None for c in restored) and len(new.connections) == 5
    assert new.address_limits.count("127.0.0.1") == old.address_limits.count("127.0.0.1") == (5, 5)
    binary.sendall(frame(b"two")[3:])
    http.sendall(b"TP/1.1\r\nHost: t\r\n\r\n")
    web.sendall(last[7:])
    silent.sendall(frame(b"late"))
    run_until(loop2, lambda: new.stats.frames_in == 401 + 4, 5, "the rest")
    loop2.run_for(0.2)
    assert drain(binary) == frame(b"echo:two")
    assert drain(http).startswith(b"HTTP/1.1 200")
    events = ws.WebSocketParser(client=True).parse(drain(web))
    assert [e.data for e in events if isinstance(e, ws.Message)] == [
        frame(b"echo:frag"), frame(b"echo:more")]
    assert drain(silent) == frame(b"echo:late")
    expected = frame(b"echo:" + b"x" * 200) * 400
    seen = b""
    while len(seen) < len(expected):
        loop2.run_once(0.01)
        seen += drain(reader)
    assert seen == expected  # not a byte lost or doubled across the hand-over
    assert new.stats.accepted == old.stats.accepted == 5
    for s in (binary, http, web, silent, reader):
        s.close()
    new.close()
    loop2.close()


def test_a_state_of_another_format_is_refused():
    loop = EventLoop()
    with pytest.raises(HandoverError, match="format"):
        restore_server(make(loop), {"format": FORMAT + 1})
    loop.close()


def test_a_tls_session_cannot_move_and_is_named_before_the_export(pki):
    """``ssl`` cannot export a session's keys: ``unmovable`` names the TLS connection
    (the application says goodbye and closes it first), the plain one moves."""
    loop = EventLoop()
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"], exempt="",
                                                  tls=server_context(pki.cert, pki.key)))
    server.listen()
    plain = client(server.port)
    plain.sendall(frame(b"plain"))
    secure = MemoryClient(server.port, pki.client_context())
    secure.send(secure.hello())

    def both_echoed():
        secure.pump()
        if secure.done and not secure.received:
            secure.write(frame(b"secure"))
        return secure.received.endswith(b"echo:secure") and server.stats.frames_in == 2

    run_until(loop, both_echoed, 10, "both echoed")
    (tls_conn,) = unmovable(server)
    assert tls_conn.tls is not None
    state, fds = export_server(server)
    assert state["left"] == [tls_conn.fd] and state["connections"]["rows"] == 1
    tls_conn.close("upgrade")
    assert unmovable(server) == []
    state, fds = export_server(server)
    assert state["left"] == [] and state["connections"]["rows"] == 1
    plain.close()
    secure.close()
    server.close()
    loop.close()


def nodes(value):
    """How many JSON values ``value`` is (what parsing it allocates, roughly)."""
    if isinstance(value, dict):
        return 1 + sum(nodes(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(nodes(v) for v in value)
    return 1


def test_rows_go_as_columns_and_come_back_as_they_were():
    rows = [(fd, {"kind": "frames"}, "", None, f"7f00000{fd % 3}", fd % 2 == 0, 0.5 * fd,
             bytes([fd % 256]) * 32, [1, "x"] if fd == 7 else None) for fd in range(5, 1005)]
    packed = json.loads(json.dumps(pack_rows(rows)))  # plain data, as it crosses the exec
    assert [tuple(r) for r in unpack_rows(packed)] == rows
    columns = unpack_columns(packed)
    assert columns[0][999] == 1004 and columns[4][2] == "7f000001" and columns[7][0] == b"\5" * 32
    # A column of one repeated dict is one dict, shared: not a thousand.
    assert columns[1][0] is columns[1][500]
    # What the successor parses does not grow with the rows (a table of distinct
    # values aside): a thousand rows are as many JSON values as ten.
    small = pack_rows(rows[:10])
    assert nodes(packed) == nodes(json.loads(json.dumps(small)))
    assert list(unpack_rows(pack_rows([]))) == []
    assert list(unpack_rows(pack_rows([(), ()]))) == [(), ()]
    assert unpack_columns(pack_rows([]), 3) == [(), (), ()]  # nobody: empty columns
