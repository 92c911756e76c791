"""A game server in this process, and blocking test clients that speak to it."""

import socket
import time
from typing import List

import spelltraction as st
from conftest import LoopClient, run_until
from netcore import FrameParser


#: How long one turn of the loop may wait while a test's own sockets (which the
#: loop does not watch) are read between turns.
STEP = 0.005


class Harness:
    """A ``GameServer`` on 127.0.0.1 (an ephemeral port) and its loop; use the
    ``h``/``make_harness`` fixtures, which close it after the test.

    The loop is the one ``serve`` makes (``st.make_loop``): ``poller="selectors"``
    runs it on a ``selectors`` selector instead of epoll (the ``poller`` fixture
    runs a test module marked ``both_pollers`` on each)."""

    def __init__(self, tick_ms=20, **opts):
        options = st.ServerOptions(host="127.0.0.1", port=0, tick_ms=tick_ms, seed=1, **opts)
        self.loop = st.make_loop(options)
        self.server = st.GameServer(self.loop, options)
        self.server.start()
        self.port = self.server.front.net.port

    def run(self, seconds):
        self.loop.run_for(seconds)

    def run_until(self, pred, timeout=10.0, what="condition"):
        run_until(self.loop, pred, timeout, what, step=STEP)

    def ticks(self, n):
        target = self.server.world.game.tick + n
        self.run_until(lambda: self.server.world.game.tick >= target)

    def client(self, hello=True):
        c = Client(self)
        if hello:
            c.send(st.Hello())
            c.welcome = c.expect(st.Welcome)
            c.you = c.expect(st.You)  # WELCOME, YOU and STATS come together
            c.stats = c.expect(st.Stats)
        return c

    def client_v2(self, token=b"", name=b"", shape=st.ANY_SHAPE, colour=st.ANY_COLOUR):
        """A protocol-2 player: WELCOME (with its token), YOU, STATS and FAME."""
        c = Client(self)
        c.send(st.Hello(st.PROTOCOL_V2, shape, colour, token, name))
        c.welcome = c.expect(st.Welcome)
        c.you = c.expect(st.You)
        c.stats = c.expect(st.Stats)
        c.fame = c.expect(st.Fame)
        return c

    def close(self):
        self.server.close()  # listeners, connections, the store
        self.loop.close()


class Expecting:
    """``expect(kind)`` for a client with ``pump()``, ``inbox``, ``eof`` and a harness ``h``."""

    def expect(self, kind, timeout=5.0):
        """The next game message of ``kind`` (a class or a tuple of them), dropping others."""
        found = []
        name = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))

        def have():
            self.pump()
            while self.inbox:
                msg = self.inbox.pop(0)
                if isinstance(msg, kind):
                    found.append(msg)
                    return True
            assert not self.eof, f"closed while waiting for {name}: {self.last_words()}"
            return False

        run_until(self.h.loop, have, timeout, f"a {name}", step=STEP)
        return found[0]

    def last_words(self):
        return ""


class Client(Expecting, LoopClient):
    """A binary-protocol player: game messages in ``inbox`` as the loop runs."""

    def __init__(self, harness):
        super().__init__(harness.port)
        self.h = harness
        self.parser = FrameParser(max_frame=65535)
        self.inbox: List[object] = []
        self.bytes_received = 0
        self.frames_received = 0

    def send(self, msg):
        self.sock.sendall(st.frame(msg))

    def send_raw(self, data):
        self.sock.sendall(data)

    def pump(self):
        data = self.read_available()
        self.bytes_received += len(data)
        frames = self.parser.feed(data)
        self.frames_received += len(frames)
        self.inbox += [st.decode(f) for f in frames]

    def wait_closed(self, timeout=5.0):
        """Everything until the server closes; returns the messages."""
        got = []

        def closed():
            self.pump()
            got.extend(self.inbox)
            self.inbox = []
            return self.eof

        run_until(self.h.loop, closed, timeout, lambda: f"close; got {got}", step=STEP)
        return got


class Player:
    """A plain TCP player of a server in another process: blocking reads, game messages.

    Says HELLO on connecting (``hello=False`` to not); ``expect`` returns the next
    message of a kind, ``ticks_until`` the first TICK a predicate accepts.
    """

    def __init__(self, port, hello=True, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.parser = FrameParser(max_frame=st.MAX_SERVER_FRAME)
        self.inbox: List[object] = []
        if hello:
            self.send(st.Hello())
            self.welcome = self.expect(st.Welcome)

    def send(self, msg):
        self.sock.sendall(st.frame(msg))

    def expect(self, kind, timeout=5.0):
        """The next message of ``kind`` (earlier ones of other kinds are dropped)."""
        end = time.monotonic() + timeout
        while True:
            while self.inbox:
                msg = self.inbox.pop(0)
                if isinstance(msg, kind):
                    return msg
            assert time.monotonic() < end, f"no {kind.__name__} in {timeout:g} s"
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, f"the server closed the connection while waiting for {kind.__name__}"
            self.inbox += [st.decode(f) for f in self.parser.feed(data)]

    def ticks_until(self, pred, timeout=10.0, what="condition"):
        """The first TICK for which ``pred(tick)`` is true, within ``timeout`` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            tick = self.expect(st.TickMsg, timeout=max(0.01, end - time.monotonic()))
            if pred(tick):
                return tick
        raise AssertionError(f"{what} never seen in the ticks of {timeout:g} s")

    def close(self):
        self.sock.close()
