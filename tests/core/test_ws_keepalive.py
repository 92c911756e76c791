"""Server pings and the idle timeout: a WebSocket peer that vanished is found and closed."""

import base64
import os
import socket
import time

import pytest

from netcore import EventLoop, Handler, ServerConfig, TCPServer, WebConfig, WebFront
from netcore import websocket as ws


def upgrade(port):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(ws.client_handshake("t", "/ws", key))
    return s


@pytest.mark.slow  # a second or more of timers
def test_quiet_peers_are_pinged_and_the_silent_one_is_closed_1011():
    loop = EventLoop()
    front = WebFront(WebConfig(ping_interval=0.2, idle_timeout=0.6))
    server = TCPServer(loop, Handler(), ServerConfig(hosts=["127.0.0.1"]), codec_factory=front)
    server.listen()
    alive, silent = upgrade(server.port), upgrade(server.port)
    for s in (alive, silent):
        s.setblocking(False)
    parser = {alive: ws.WebSocketParser(client=True), silent: ws.WebSocketParser(client=True)}
    heads = {alive: b"", silent: b""}
    events = {alive: [], silent: []}
    eof = set()
    start = time.monotonic()
    silent_closed_at = None
    while time.monotonic() - start < 2.0:
        loop.run_once(0.02)
        for s in (alive, silent):
            if s in eof:
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                eof.add(s)
                if s is silent:
                    silent_closed_at = time.monotonic() - start
                continue
            if b"\r\n\r\n" not in heads[s] and not parser[s].buffered and not events[s]:
                heads[s] += data
                if b"\r\n\r\n" not in heads[s]:
                    continue
                data = heads[s].split(b"\r\n\r\n", 1)[1]
                heads[s] += b"\r\n\r\n"
            for event in parser[s].parse(data):
                events[s].append(event)
                if isinstance(event, ws.Ping) and s is alive:  # a live peer answers
                    s.sendall(ws.frame(event.data, ws.PONG, mask_key=b"abcd"))
    assert alive not in eof, events[alive]
    assert sum(isinstance(e, ws.Ping) for e in events[alive]) >= 3  # pinged while quiet
    assert silent_closed_at is not None and 0.6 <= silent_closed_at < 1.2, silent_closed_at
    assert isinstance(events[silent][-1], ws.Close)
    assert events[silent][-1].code == ws.CloseCode.INTERNAL_ERROR
    assert "not even a pong" in events[silent][-1].reason
    assert server.stats.limits == {"ws-idle": 1}
    server.close()
    loop.close()
