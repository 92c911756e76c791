"""TCPServer's defences: per-address limits, PROXY headers, SO_SNDBUF, the slow-consumer rule."""

import logging
import socket
import sys
import time

import pytest

from netcore import EventLoop, ServerConfig, TCPServer, encode_frame, testing
from netcore.testing import run_until
from netcore.metrics import Exposition, add_net_stats
from helpers import read_frames, read_until_closed

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="127.0.0.0/8 source addresses and SIOCOUTQ are Linux's")


class Echo(testing.Echo):
    """netcore.testing's echo ("echo:" + payload), keeping its connections too."""

    def __init__(self):
        super().__init__()
        self.conns = []

    def on_connect(self, conn):
        self.conns.append(conn)


def start(**cfg):
    loop = EventLoop()
    handler = Echo()
    cfg.setdefault("limit_message", lambda limit, addr: encode_frame(f"{limit} {addr}".encode()))
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], **cfg))
    server.listen()
    return loop, server, handler


def connect(server, source=None):
    s = socket.socket()
    if source is not None:
        s.bind((source, 0))
    s.connect(("127.0.0.1", server.port))
    return s


def served(loop, sock, tag):
    sock.sendall(encode_frame(tag))
    loop.run_for(0.05)
    return read_frames(sock, 1) == [b"echo:" + tag]


@linux_only
def test_connections_per_address_refuse_the_next_one_with_the_reason():
    loop, server, handler = start(max_per_address=2, exempt="")
    mine = [connect(server, "127.0.3.1") for _ in range(2)]
    other = connect(server, "127.0.3.2")
    run_until(loop, lambda: server.stats.connections == 3)
    extra = connect(server, "127.0.3.1")
    extra.sendall(b"whatever it sends")
    loop.run_for(0.1)
    assert read_until_closed(extra) == encode_frame(b"connections-per-address 127.0.3.1")
    assert server.stats.limits == {"connections-per-address": 1}
    assert all(served(loop, s, b"still") for s in mine + [other])
    mine[0].close()
    run_until(loop, lambda: server.stats.connections == 2)
    again = connect(server, "127.0.3.1")
    assert served(loop, again, b"room again")
    server.close()


@linux_only
def test_pending_connections_per_address_and_in_total():
    loop, server, handler = start(max_pending_per_address=2, max_pending=3, exempt="")
    a = [connect(server, "127.0.4.1") for _ in range(2)]
    run_until(loop, lambda: server.stats.connections == 2)
    squatter = connect(server, "127.0.4.1")
    loop.run_for(0.1)
    assert read_until_closed(squatter) == encode_frame(b"pending-per-address 127.0.4.1")
    server.settle(handler.conns[0])  # one said HELLO: no longer pending
    server.settle(handler.conns[0])  # idempotent
    b = connect(server, "127.0.4.1")
    c = connect(server, "127.0.4.2")
    run_until(loop, lambda: server.stats.connections == 4)
    over = connect(server, "127.0.4.3")  # 3 pending in all: the total is reached
    loop.run_for(0.1)
    assert read_until_closed(over) == encode_frame(b"pending-total 127.0.4.3")
    assert server.stats.limits == {"pending-per-address": 1, "pending-total": 1}
    assert all(served(loop, s, b"ok") for s in a + [b, c])
    server.close()


def test_loopback_is_exempt_by_default():
    loop, server, _ = start(max_per_address=1, max_pending_per_address=1, max_pending=1)
    socks = [connect(server) for _ in range(5)]
    run_until(loop, lambda: server.stats.connections == 5)
    assert all(served(loop, s, b"exempt") for s in socks)
    assert server.stats.limits == {}
    server.close()


def proxy_v1(client, port=40000):
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 7777\r\n".encode()


def test_proxy_protocol_from_a_trusted_proxy_names_the_client():
    loop, server, handler = start(trusted_proxies="127.0.0.1/32", max_per_address=1, exempt="")
    first = connect(server)
    first.sendall(proxy_v1("203.0.113.7") + encode_frame(b"hi"))
    loop.run_for(0.1)
    assert read_frames(first, 1) == [b"echo:hi"]
    assert server.client_address(handler.conns[0]) == "203.0.113.7"
    # The same client through the proxy again: over its limit, though the proxy is one address.
    second = connect(server)
    second.sendall(proxy_v1("203.0.113.7", 40001))
    loop.run_for(0.1)
    assert read_until_closed(second) == encode_frame(b"connections-per-address 203.0.113.7")
    third = connect(server)  # another client: fine
    third.sendall(proxy_v1("198.51.100.9") + encode_frame(b"yo"))
    loop.run_for(0.1)
    assert read_frames(third, 1) == [b"echo:yo"]
    # A header split across packets, and a LOCAL v2 header (a health check).
    fourth = connect(server)
    data = proxy_v1("192.0.2.44") + encode_frame(b"split")
    for i in range(len(data)):
        fourth.sendall(data[i : i + 1])
        loop.run_once(0.001)
    loop.run_for(0.05)
    assert read_frames(fourth, 1) == [b"echo:split"]
    server.close()


def test_a_trusted_proxy_without_a_header_is_served_as_it_is():
    # An HTTP proxy's connections carry no header (the client is in
    # X-Forwarded-For); they go to the server's codec untouched.
    loop, server, handler = start(trusted_proxies="127.0.0.0/8", max_per_address=1, exempt="")
    s = connect(server)
    s.sendall(encode_frame(b"no header"))
    loop.run_for(0.1)
    assert read_frames(s, 1) == [b"echo:no header"]
    p = connect(server)  # undecided after "PRO", then a broken header: refused
    p.sendall(b"PRO")
    loop.run_for(0.05)
    p.sendall(b"XY TCP9 x\r\n")
    loop.run_for(0.1)
    read_until_closed(p)
    assert handler.closed == ["bad-proxy-header"]
    server.close()


def test_x_forwarded_for_from_a_trusted_proxy_names_the_http_client():
    from netcore import WebFront

    loop = EventLoop()
    handler = Echo()
    server = TCPServer(loop, handler, ServerConfig(
        hosts=["127.0.0.1"], trusted_proxies="127.0.0.1/32", max_per_address=1, exempt=""),
        codec_factory=WebFront())
    server.listen()

    def get(xff):
        s = connect(server)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: " + xff + b"\r\n\r\n")
        loop.run_for(0.1)
        s.settimeout(2)
        return s, s.recv(4096)

    first, answer = get(b"198.51.100.1, 203.0.113.9")  # the last is the one nginx added
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert server.client_address(handler.conns[0]) == "203.0.113.9"
    second, answer = get(b"203.0.113.9")
    assert answer.startswith(b"HTTP/1.1 503 ") and b"203.0.113.9 (connections-per-address)" in answer
    third, answer = get(b"not an address")  # ignored: counted as the proxy (uncounted)
    assert answer.startswith(b"HTTP/1.1 200 ")
    server.close()


def test_x_forwarded_for_from_anyone_else_means_nothing():
    from netcore import WebFront

    loop = EventLoop()
    handler = Echo()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], max_per_address=5,
                                                   exempt=""), codec_factory=WebFront())
    server.listen()
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    loop.run_for(0.1)
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert server.client_address(handler.conns[0]) == "127.0.0.1"
    assert server.stats.untrusted == {"x-forwarded-for": 1}
    server.close()


V2_HEADER = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + (12).to_bytes(2, "big")
             + bytes([203, 0, 113, 7, 127, 0, 0, 1]) + (40000).to_bytes(2, "big")
             + (7777).to_bytes(2, "big"))


def untrusted_metrics(server):
    exp = Exposition()
    add_net_stats(exp, server.stats, "t")
    return {line.split(" ")[0]: line.split(" ")[1] for line in exp.text().splitlines()
            if line.startswith("t_untrusted_forwarding_total")}


@pytest.mark.parametrize("web", [False, True], ids=["frames", "web-front"])
def test_untrusted_proxy_headers_are_refused_counted_and_logged_once(caplog, web):
    """A proxy nobody trusted (a gateway without --trusted-proxies behind nginx's
    stream proxy): its PROXY headers, v1 or v2, whole or split, close the
    connection as untrusted-proxy-header; all are counted, one line is logged."""
    from netcore import WebFront
    from netcore.logs import ChurnReporter

    loop = EventLoop()
    handler = Echo()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], trusted_proxies="192.0.2.1"),
                       codec_factory=WebFront() if web else None)
    server.listen()
    churn = ChurnReporter(server.stats, logging.getLogger("churn"))
    caplog.set_level(logging.INFO)
    headers = [proxy_v1("203.0.113.7") + encode_frame(b"hi"), V2_HEADER + encode_frame(b"hi")]
    for i in range(20):
        s = connect(server)
        data = headers[i % 2]
        if i % 4 >= 2:  # split: the first read is a strict prefix of the signature
            s.sendall(data[:3])
            loop.run_for(0.02)
            assert not handler.closed[i:], "a prefix alone decides nothing"
            data = data[3:]
        s.sendall(data)
        loop.run_for(0.02)
        read_until_closed(s)
        s.close()
    run_until(loop, lambda: len(handler.closed) == 20)
    assert handler.closed == ["untrusted-proxy-header"] * 20
    assert server.stats.untrusted == {"proxy-header": 20}
    assert untrusted_metrics(server) == {
        't_untrusted_forwarding_total{kind="proxy-header"}': "20",
        't_untrusted_forwarding_total{kind="x-forwarded-for"}': "0"}
    named = [r for r in caplog.records if r.name == "netcore.server"]
    assert len(named) == 1 and named[0].levelname == "WARNING", [r.message for r in named]
    assert "PROXY header" in named[0].message and "127.0.0.1" in named[0].message
    assert "proxy-header 20" in churn.report()
    # Who is not a proxy at all is served as before, and not counted.
    plain = connect(server)
    assert served(loop, plain, b"plain")
    assert server.stats.untrusted == {"proxy-header": 20}
    server.close()


def test_untrusted_x_forwarded_for_is_counted_per_request_and_logged_once(caplog):
    """Behind an HTTP proxy that is not trusted (or with none configured), each
    request's X-Forwarded-For is ignored and counted; one line names the peer."""
    from netcore import WebFront
    from netcore.logs import ChurnReporter

    loop = EventLoop()
    handler = Echo()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], max_pending_per_address=2,
                                                   exempt=""), codec_factory=WebFront())
    server.listen()
    churn = ChurnReporter(server.stats, logging.getLogger("churn"))
    caplog.set_level(logging.INFO)
    s = connect(server)
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
    for _ in range(30):  # kept alive: one connection, 30 requests
        s.sendall(request)
        loop.run_for(0.01)
    s.settimeout(2)
    got = b""
    while got.count(b"HTTP/1.1 200 ") < 30:
        got += s.recv(65536)
    assert server.client_address(handler.conns[0]) == "127.0.0.1"
    assert server.stats.untrusted == {"x-forwarded-for": 30}
    named = [r for r in caplog.records if r.name == "netcore.server"]
    assert len(named) == 1 and "X-Forwarded-For" in named[0].message, [r.message for r in named]
    assert "from 127.0.0.1" in named[0].message and "trusted_proxies: none" in named[0].message
    assert "x-forwarded-for 30" in churn.report()
    server.close()


def test_a_trusted_proxys_forwarding_is_not_counted_as_untrusted():
    from netcore import WebFront

    loop = EventLoop()
    handler = Echo()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], trusted_proxies="127.0.0.1"),
                       codec_factory=WebFront())
    server.listen()
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    loop.run_for(0.1)
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    p = connect(server)
    p.sendall(proxy_v1("198.51.100.3") + encode_frame(b"hi"))
    loop.run_for(0.1)
    assert read_frames(p, 1) == [b"echo:hi"]
    assert server.stats.untrusted == {}
    server.close()


def test_untrusted_peers_cannot_claim_an_address():
    loop, server, handler = start(trusted_proxies="192.0.2.0/24")
    s = connect(server)
    s.sendall(proxy_v1("203.0.113.7"))  # 'P' = 0x50: a frame length of 20,000+
    loop.run_for(0.1)
    read_until_closed(s)
    assert handler.closed == ["untrusted-proxy-header"]
    assert server.stats.untrusted == {"proxy-header": 1}
    server.close()


@linux_only
def test_sndbuf_is_set_on_accepted_sockets():
    loop, server, handler = start(sndbuf=16384)
    s = connect(server)
    run_until(loop, lambda: handler.conns)
    assert handler.conns[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 32768
    server.close()


@linux_only
def test_a_never_reader_is_cut_soon_after_a_backlog_appears_and_readers_are_not():
    loop, server, handler = start(sndbuf=8192, send_backlog_limit=4096, send_backlog_grace=0.5)
    never = socket.socket()
    never.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its own buffer fills fast
    never.connect(("127.0.0.1", server.port))
    readers = [connect(server) for _ in range(3)]
    run_until(loop, lambda: len(handler.conns) == 4)
    chunk = b"t" * 1000
    appeared = None
    start_time = time.monotonic()
    got = {id(r): 0 for r in readers}
    for r in readers:
        r.setblocking(False)
    while "slow-consumer" not in handler.closed:
        assert time.monotonic() - start_time < 15, "the never-reader was not cut"
        server.broadcast(encode_frame(chunk), list(server.connections.values()))
        loop.run_for(0.02)
        for r in readers:
            try:
                while True:
                    got[id(r)] += len(r.recv(65536))
            except BlockingIOError:
                pass
        conn = handler.conns[0]
        if appeared is None and not conn.closed:
            from netcore.server import unsent_bytes
            if conn.queued + unsent_bytes(conn.sock) > 4096:
                appeared = time.monotonic()
    cut = time.monotonic()
    assert appeared is not None and cut - appeared < 0.5 + 1.5  # grace + a sweep, with slack
    assert handler.closed == ["slow-consumer"]
    assert server.stats.limits == {"send-backlog": 1}
    assert all(n > 0 for n in got.values())
    for r in readers:
        r.setblocking(True)
        assert served(loop, r, b"readers play on")
    server.close()


def test_limits_are_exported_by_name():
    loop, server, _ = start()
    server.stats.limit("pending-total")
    server.stats.limit("pending-total")
    exp = Exposition()
    add_net_stats(exp, server.stats, "x")
    assert 'x_limits_total{limit="pending-total"} 2' in exp.text()
    server.close()


def test_the_backlog_sweep_goes_in_slices_with_the_loop_between(monkeypatch):
    import netcore.server as server_module

    monkeypatch.setattr(server_module, "_BACKLOG_SLICE", 2)
    loop, server, handler = start(send_backlog_limit=1 << 20, send_backlog_grace=0.2)
    socks = [connect(server) for _ in range(5)]
    run_until(loop, lambda: server.stats.connections == 5)
    checked = []
    real = server_module.unsent_counter

    def counting():
        unsent = real()
        return lambda fd: checked.append(fd) or unsent(fd)

    monkeypatch.setattr(server_module, "unsent_counter", counting)
    server._check_backlogs()
    assert len(checked) == 2  # one slice now; the rest on the next turns of the loop
    loop.run_once(0)
    loop.run_once(0)
    assert len(checked) == 5
    server.close()


@linux_only
def test_the_sweeps_unsent_counter_reads_what_unsent_bytes_reads():
    from netcore.server import unsent_bytes, unsent_counter

    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: never read
    sock, _ = listener.accept()
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"x" * 4096)
    except BlockingIOError:
        pass
    unsent = unsent_counter()
    assert unsent_bytes(sock) > 0
    assert unsent(sock.fileno()) == unsent_bytes(sock)
    assert unsent(peer.fileno()) == unsent_bytes(peer) == 0  # sent nothing
    fd = sock.fileno()
    sock.close()
    assert unsent(fd) == 0  # a descriptor closed meanwhile (EBADF): 0, no exception
    for s in (peer, listener):
        s.close()


def test_a_slice_that_cuts_stops_at_its_time_and_the_next_turn_goes_on(monkeypatch):
    """Cutting a slow consumer runs the handler's on_close: a slice that cuts
    hundreds must not hold the loop (a due tick) for all of them."""
    import netcore.server as server_module

    monkeypatch.setattr(server_module, "_BACKLOG_SLICE_TIME", 0.0)  # one cut per slice
    monkeypatch.setattr(server_module, "unsent_counter", lambda: (lambda fd: 1 << 20))
    loop, server, handler = start(send_backlog_limit=1024, send_backlog_grace=0.05)
    socks = [connect(server) for _ in range(4)]
    run_until(loop, lambda: server.stats.connections == 4)
    server._backlog_timer.cancel()  # the sweeps below are this test's own
    server._check_backlogs()  # every one is over: noted, none cut before the grace
    assert server.stats.slow_consumers == 0
    time.sleep(0.06)
    server._check_backlogs()
    assert server.stats.slow_consumers == 1  # the slice stopped after its first cut
    for _ in range(3):
        loop.run_once(0)  # the rest of the sweep, a slice a turn
    assert server.stats.slow_consumers == 4
    assert handler.closed == ["slow-consumer"] * 4
    for s in socks:
        s.close()
    server.close()


def _refusals(socks):
    """How many of ``socks`` have been told "server full" (and closed) so far."""
    told = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(100)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            data = b""
        assert data in (b"", encode_frame(b"server full")), data
        told += 1
    return told


def test_a_full_server_refuses_at_its_refuse_rate_and_the_rest_wait_in_the_kernel():
    loop, server, handler = start(max_connections=1, refuse_rate=40.0)  # bursts of 10
    player = connect(server)
    run_until(loop, lambda: server.stats.connections == 1)
    storm = [connect(server) for _ in range(30)]
    loop.run_for(0.1)
    told = [s for s in storm if _refusals([s])]
    # The burst was refused at once; the others wait, unaccepted (no fd, no
    # Connection, no CPU here), while the listener rests.
    assert 10 <= len(told) <= 16, len(told)
    assert server.stats.refused_full == len(told)
    assert server.stats.limits.get("refuse-rate", 0) >= 1
    assert served(loop, player, b"ticks on")
    waiting = [s for s in storm if s not in told]
    run_until(loop, lambda: server.stats.refused_full == 30, timeout=3)
    assert _refusals(waiting) == len(waiting)  # each told in the end, none dropped
    for s in storm + [player]:
        s.close()
    server.close()


def test_without_a_refuse_rate_every_connect_is_refused_at_once():
    loop, server, handler = start(max_connections=1, refuse_rate=None)
    player = connect(server)
    run_until(loop, lambda: server.stats.connections == 1)
    storm = [connect(server) for _ in range(30)]
    loop.run_for(0.1)
    assert _refusals(storm) == 30 == server.stats.refused_full
    assert "refuse-rate" not in server.stats.limits
    for s in storm + [player]:
        s.close()
    server.close()
    with pytest.raises(ValueError):
        ServerConfig(refuse_rate=0)
