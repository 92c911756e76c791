"""TCPServer.shutdown: last words to everyone, then closed; on_done once."""

import socket

from netcore import EventLoop, FrameParser, Handler, ServerConfig, TCPServer, encode_frame
from netcore.testing import run_until


class Quiet(Handler):
    def __init__(self):
        self.closed = []

    def on_close(self, conn, reason):
        self.closed.append(reason)


def test_shutdown_sends_last_words_waits_for_readers_and_cuts_the_rest():
    loop = EventLoop()
    handler = Quiet()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], max_output=1 << 20,
                                                  high_water=1 << 19, low_water=1 << 18))
    server.listen()
    reader = socket.create_connection(("127.0.0.1", server.port))
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    run_until(loop, lambda: server.stats.connections == 2)
    conns = list(server.connections.values())
    stuck_conn = next(c for c in conns if c.sock.getpeername() == stuck.getsockname())
    while stuck_conn.queued == 0:  # fill everything between us and the non-reader
        stuck_conn.send(b"z" * 4000)
    done = []
    server.shutdown(grace=0.5, last_words=encode_frame(b"bye"),
                    on_done=lambda: done.append(loop.time()))
    assert not server.listeners
    started = loop.time()
    reader.settimeout(5)
    parser = FrameParser()
    got = []
    while not got:
        loop.run_once(0.01)
        try:
            got = parser.feed(reader.recv(4096))
        except socket.timeout:
            pass
    assert got == [b"bye"]
    run_until(loop, lambda: done, timeout=5)
    assert len(done) == 1 and 0.4 <= done[0] - started < 3
    assert sorted(handler.closed) == ["shutdown", "shutdown"] and not server.connections
    loop.run_for(0.1)
    assert len(done) == 1
    reader.close()
    stuck.close()
    loop.close()


def test_shutdown_with_nobody_connected_is_done_at_once():
    loop = EventLoop()
    server = TCPServer(loop, Quiet(), ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    done = []
    server.shutdown(grace=5, on_done=lambda: done.append(1))
    loop.run_once(0)
    assert done == [1]
    loop.close()
