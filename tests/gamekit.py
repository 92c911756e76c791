"""A game server in this process, and blocking test clients that speak to it."""

import socket
import time
from typing import List

import spelltraction as st
from netcore import EventLoop, FrameParser


class Harness:
    def __init__(self, tick_ms=20, **opts):
        self.loop = EventLoop()
        options = st.ServerOptions(host="127.0.0.1", port=0, tick_ms=tick_ms, seed=1, **opts)
        self.server = st.GameServer(self.loop, options)
        self.server.start()
        self.port = self.server.net.port

    def run(self, seconds):
        self.loop.run_for(seconds)

    def run_until(self, pred, timeout=10.0):
        end = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < end, "condition not reached"
            self.loop.run_once(0.005)

    def ticks(self, n):
        target = self.server.game.tick + n
        self.run_until(lambda: self.server.game.tick >= target)

    def client(self, hello=True):
        c = Client(socket.create_connection(("127.0.0.1", self.port)), self)
        if hello:
            c.send(st.Hello())
            c.welcome = c.expect(st.Welcome)
            c.you = c.expect(st.You)  # WELCOME, YOU and STATS come together
            c.stats = c.expect(st.Stats)
        return c

    def client_v2(self, token=b"", name=b"", shape=st.ANY_SHAPE, colour=st.ANY_COLOUR):
        """A protocol-2 player: WELCOME (with its token), YOU, STATS and FAME."""
        c = Client(socket.create_connection(("127.0.0.1", self.port)), self)
        c.send(st.Hello(st.PROTOCOL_V2, shape, colour, token, name))
        c.welcome = c.expect(st.Welcome)
        c.you = c.expect(st.You)
        c.stats = c.expect(st.Stats)
        c.fame = c.expect(st.Fame)
        return c

    def close(self):
        self.server.net.close()
        self.loop.close()
        self.server.close_store()


class Client:
    def __init__(self, sock, harness):
        self.sock = sock
        self.h = harness
        self.parser = FrameParser(max_frame=65535)
        self.inbox: List[object] = []
        self.eof = False
        self.bytes_received = 0
        self.frames_received = 0
        sock.setblocking(False)

    def send(self, msg):
        self.sock.sendall(st.frame(msg))

    def send_raw(self, data):
        self.sock.sendall(data)

    def pump(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.bytes_received += len(data)
            frames = self.parser.feed(data)
            self.frames_received += len(frames)
            self.inbox += [st.decode(f) for f in frames]

    def expect(self, kind, timeout=5.0):
        """The next message of ``kind``, dropping earlier ones of other kinds."""
        end = time.monotonic() + timeout
        while True:
            self.pump()
            while self.inbox:
                msg = self.inbox.pop(0)
                if isinstance(msg, kind):
                    return msg
            assert not self.eof, f"closed while waiting for {kind.__name__}"
            assert time.monotonic() < end, f"no {kind.__name__} in time"
            self.h.loop.run_once(0.005)

    def wait_closed(self, timeout=5.0):
        """Everything until the server closes; returns the messages."""
        end = time.monotonic() + timeout
        got = []
        while True:
            self.pump()
            got += self.inbox
            self.inbox = []
            if self.eof:
                return got
            assert time.monotonic() < end, f"not closed; got {got}"
            self.h.loop.run_once(0.005)
