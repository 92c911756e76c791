"""Pipelined HTTP requests are answered a few per turn of the loop, in order, bounded.

A client may send many requests before reading an answer (HTTP/1.1
pipelining). Answering all of them in the turn they arrive lets one
connection's 100 requests (3.7 KB) hold every other connection, and the tick,
for 100 requests' work. The front answers ``REQUESTS_PER_TURN`` per turn and
takes the rest on the following turns; input pipelined more than
``MAX_PIPELINED`` bytes ahead of its answers is refused.
"""

import socket

from netcore import EventLoop, Handler, ServerConfig, TCPServer, WebConfig, WebFront
from netcore import websocket as ws
from netcore.testing import run_until
from netcore.web import MAX_PIPELINED, REQUESTS_PER_TURN


def serve(routes):
    loop = EventLoop()
    server = TCPServer(loop, Handler(), ServerConfig(hosts=["127.0.0.1"]),
                       codec_factory=WebFront(WebConfig(routes=routes, max_requests=1000)))
    server.listen()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    return loop, server, sock


def read(sock):
    out = b""
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_a_pipelined_burst_is_answered_a_few_per_turn_and_in_order():
    calls = []
    routes = {f"/r{i}": (lambda i=i: calls.append(i) or ("text/plain", b"%d" % i))
              for i in range(60)}
    loop, server, sock = serve(routes)
    sock.sendall(b"".join(get(f"/r{i}") for i in range(60)))
    run_until(loop, lambda: calls, 5, "the first answers")
    per_turn = [len(calls)]
    while len(calls) < 60:
        before = len(calls)
        loop.run_once(0.01)
        per_turn.append(len(calls) - before)
    assert REQUESTS_PER_TURN <= 8  # "a few"
    assert max(per_turn) <= REQUESTS_PER_TURN, per_turn
    assert calls == list(range(60))
    loop.run_for(0.05)  # the last answers reach the kernel
    data = read(sock)
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in data.split(b"HTTP/1.1 200")[1:]]
    assert [int(b) for b in bodies] == list(range(60))
    sock.close()
    server.close()
    loop.close()


def test_the_rest_of_a_burst_waits_its_turn_behind_other_connections():
    """While one connection's burst is answered, another connection's request is
    answered within a turn or two, not after the burst."""
    calls = []
    routes = {"/slow": lambda: calls.append("burst") or ("text/plain", b"x"),
              "/other": lambda: calls.append("other") or ("text/plain", b"y")}
    loop, server, burst = serve(routes)
    other = socket.create_connection(("127.0.0.1", server.port))
    burst.sendall(get("/slow") * 200)
    run_until(loop, lambda: calls, 5, "the burst begins")
    other.sendall(get("/other"))
    run_until(loop, lambda: "other" in calls, 5, "the other request")
    assert calls.index("other") < 40, calls.index("other")
    run_until(loop, lambda: calls.count("burst") == 200, 10, "the whole burst")
    for s in (burst, other):
        s.close()
    server.close()
    loop.close()


def test_an_upgrade_after_pipelined_requests_is_served_in_its_turn():
    routes = {"/x": lambda: ("text/plain", b"x")}
    loop, server, sock = serve(routes)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(get("/x") * 9 + ws.client_handshake("t", "/ws", key))
    got = b""

    def upgraded():
        nonlocal got
        got += read(sock)
        return b"101 Switching Protocols" in got

    run_until(loop, upgraded, 5, "the upgrade")
    assert got.count(b"HTTP/1.1 200") == 9
    assert got.index(b"101 Switching") > got.rindex(b"HTTP/1.1 200")
    sock.close()
    server.close()
    loop.close()


def test_requests_pipelined_too_far_ahead_are_refused():
    routes = {"/x": lambda: ("text/plain", b"x")}
    loop, server, sock = serve(routes)
    burst = get("/x") * (MAX_PIPELINED // len(get("/x")) + 200)
    got = b""
    try:
        sock.sendall(burst)
    except BlockingIOError:
        pass  # the kernel's buffers are full: the server has refused it by then

    def closed():
        nonlocal got
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        got += data
        return not data

    run_until(loop, closed, 10, "the close")
    assert b"429" in got
    assert server.stats.connections == 0
    sock.close()
    server.close()
    loop.close()


def test_a_burst_waits_for_its_reader_instead_of_overflowing_the_output_queue():
    """Answers bigger than the output queue: the front stops answering while the
    client has not read (above high water) and goes on as it reads; nobody is cut.
    (Without the pause, four answers a turn overflow the 32 KiB queue at once.)"""
    big = b"x" * 9_000
    loop = EventLoop()
    server = TCPServer(loop, Handler(), ServerConfig(
        hosts=["127.0.0.1"], max_output=32 << 10, high_water=8 << 10, low_water=2 << 10,
        sndbuf=4096), codec_factory=WebFront(WebConfig(
            routes={"/big": lambda: ("text/plain", big)}, max_requests=1000)))
    server.listen()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.sendall(get("/big") * 40)
    got = b""

    def slowly():
        nonlocal got
        try:
            got += sock.recv(16384)  # some each turn
        except BlockingIOError:
            pass
        return got.count(b"HTTP/1.1 200") == 40 and got.endswith(big)

    run_until(loop, slowly, 30, "every answer, read slowly")
    assert server.stats.slow_consumers == 0 and server.stats.connections == 1
    sock.close()
    server.close()
    loop.close()
