"""Read coalescing (EventLoop(coalesce=...)) and the loop's own epoll poller.

The pause is checked with a fake clock and a recorded sleep: what matters is
its bound (never more than the interval, never past a due tick, none when
idle), not how long anything takes on this machine.
"""

import selectors
import socket

import pytest

from netcore import EventLoop, Readiness, ServerConfig, TCPServer, encode_frame
from netcore.loop import DEFAULT_COALESCE, EVENT_READ, EVENT_WRITE
from netcore.poller import EpollPoller
from conftest import Echo, FakeClock, run_until, serve
from helpers import read_frames


class ScriptedSelector(selectors.BaseSelector):
    """Returns the next batch of ready handlers per select; time moves 1 ms a poll."""

    def __init__(self, clock, batches):
        self.clock = clock
        self.batches = list(batches)
        self.timeouts = []

    def register(self, fileobj, events, data=None):  # pragma: no cover - unused
        raise NotImplementedError

    def unregister(self, fileobj):  # pragma: no cover - unused
        raise NotImplementedError

    def select(self, timeout=None):
        self.timeouts.append(timeout)
        self.clock.now += 0.001
        batch = self.batches.pop(0) if self.batches else []
        return [(selectors.SelectorKey(None, 0, EVENT_READ, h), EVENT_READ) for h in batch]

    def get_map(self):  # pragma: no cover - unused
        return {}


class Counter(Readiness):
    def __init__(self):
        self.calls = 0

    def on_ready(self, mask):
        self.calls += 1


def scripted_loop(batches, coalesce):
    clock = FakeClock(10.0)
    sel = ScriptedSelector(clock, batches)
    loop = EventLoop(selector=sel, clock=clock, coalesce=coalesce)
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        clock.now += seconds

    loop.sleep = sleep
    return loop, sel, clock, pauses


def test_a_busy_loop_polls_at_most_once_per_interval():
    h = Counter()
    loop, sel, clock, pauses = scripted_loop([[h], [h], [h]], coalesce=0.010)
    polled_at = []
    for _ in range(3):
        loop.run_once(1.0)
        polled_at.append(clock.now)
    assert h.calls == 3
    assert pauses[0] == pytest.approx(0.010)  # 10 ms after the last poll returned
    assert all(0 < p <= 0.010 for p in pauses)
    assert polled_at[2] - polled_at[1] == pytest.approx(0.010 + 0.001)


def test_an_idle_loop_does_not_pause_for_the_first_event():
    h = Counter()
    loop, sel, clock, pauses = scripted_loop([[], [h], []], coalesce=0.010)
    loop.run_once(0.5)  # nothing ready: not busy
    loop.run_once(0.5)  # the first event after idling: no pause before it
    assert pauses == []
    assert h.calls == 1
    loop.run_once(0.5)  # busy now: this poll waits for the interval
    assert len(pauses) == 1 and pauses[0] <= 0.010


def test_no_pause_when_a_tick_is_due_before_it_ends():
    h = Counter()
    loop, sel, clock, pauses = scripted_loop([[h]] * 12, coalesce=0.008)
    ticks = []
    loop.start_ticker(0.020, lambda tick: ticks.append(clock.now - tick.deadline))
    for _ in range(12):
        due = loop._tickers[0].scheduler.deadline
        before = len(pauses)
        start = clock.now
        loop.run_once(1.0)
        if len(pauses) > before:  # a pause happened: it ended before the tick was due
            assert start + pauses[-1] < due
    assert pauses and ticks
    assert all(lateness <= 0.0011 for lateness in ticks)  # one fake poll's ms
    assert len(sel.timeouts) == 12


def test_coalesce_zero_never_pauses_and_negative_is_refused():
    h = Counter()
    loop, sel, clock, pauses = scripted_loop([[h]] * 5, coalesce=0.0)
    for _ in range(5):
        loop.run_once(1.0)
    assert pauses == [] and h.calls == 5
    with pytest.raises(ValueError):
        EventLoop(coalesce=-0.001)
    assert EventLoop().coalesce == DEFAULT_COALESCE


def test_one_poll_collects_what_arrived_during_the_pause():
    loop = EventLoop(coalesce=0.05)
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    loop.run_for(0.2)  # accepted
    assert server.stats.connections == 30
    clients[0].sendall(encode_frame(b"first"))
    loop.run_once(1.0)  # reads it: busy from here
    before_polls, before_events = loop.iterations, loop.events
    for i, c in enumerate(clients):
        c.sendall(encode_frame(b"m%d" % i))
    loop.run_once(1.0)  # pauses, then one poll has all 30
    assert loop.iterations - before_polls == 1
    assert loop.events - before_events == 30
    assert read_frames(clients[0], 2) == [b"echo:first", b"echo:m0"]
    for i, c in enumerate(clients[1:], 1):
        assert read_frames(c, 1) == [b"echo:m%d" % i]
        c.close()
    clients[0].close()
    server.close()
    loop.close()


def test_epoll_poller_registration_errors_and_masks():
    if not hasattr(__import__("select"), "epoll"):
        pytest.skip("select.epoll is Linux-only")
    poller = EpollPoller()
    a, b = socket.socketpair()
    h = Counter()
    poller.register(a, EVENT_READ, h)
    with pytest.raises(KeyError):
        poller.register(a.fileno(), EVENT_READ, h)  # by fd or by object: the same fd
    with pytest.raises(ValueError):
        poller.register(b, 0, h)
    assert poller.poll(0) == []
    b.send(b"x")
    assert poller.poll(0) == [(h, EVENT_READ)]
    poller.modify(a, EVENT_READ | EVENT_WRITE, h)
    assert poller.poll(0) == [(h, EVENT_READ | EVENT_WRITE)]
    poller.modify(a, EVENT_WRITE, h)
    assert poller.poll(0) == [(h, EVENT_WRITE)]
    poller.modify(a, EVENT_READ, h)
    b.close()  # hang-up: reported as readable to a reader, as selectors does
    assert poller.poll(0) == [(h, EVENT_READ)]
    poller.unregister(a)
    with pytest.raises(KeyError):
        poller.unregister(a)
    with pytest.raises(KeyError):
        poller.modify(a, EVENT_READ, h)
    c, d = socket.socketpair()
    poller.register(c.fileno(), EVENT_READ, h)
    fd = c.fileno()
    c.close()
    poller.unregister(fd)  # closed first: the kernel dropped it; no error
    with pytest.raises(ValueError):
        poller.register(c, EVENT_READ, h)  # a closed socket's fileno() is -1
    poller.close()
    a.close()
    d.close()


class OneByte(Readiness):
    """Reads one byte a turn; edge-triggered or not, as the test says."""

    __slots__ = ("loop", "sock", "got", "turns", "edge_triggered")

    def __init__(self, loop, sock, edge):
        self.loop = loop
        self.sock = sock
        self.got = b""
        self.turns = 0
        self.edge_triggered = edge

    def on_ready(self, mask):
        self.turns += 1
        try:
            data = self.sock.recv(1)
        except BlockingIOError:
            return
        self.got += data
        if data and self.edge_triggered:
            self.loop.ready_again(self)  # a full read (of 1 byte): more may wait


@pytest.mark.parametrize("edge", [True, False])
def test_input_left_in_the_kernel_is_read_without_new_events(edge):
    """Edge-triggered, one event comes per arrival: a handler that stops
    before the kernel runs dry gets its next turn from ready_again, never
    from another event; level-triggered, the poll reports it again."""
    loop = EventLoop(coalesce=0)
    a, b = socket.socketpair()
    b.setblocking(False)
    handler = OneByte(loop, b, edge)
    loop.register(b, EVENT_READ, handler)
    a.sendall(b"hello")
    for _ in range(10):
        loop.run_once(0.05)
    assert handler.got == b"hello"
    if edge:
        # 5 reads and one that found nothing: with level triggering the
        # loop would have kept calling it on every poll
        assert handler.turns == 6
        assert loop.poller._epoll.poll(0) == []  # nothing reported any more: no new edge
    loop.unregister(b)
    loop.close()
    a.close()
    b.close()


def test_connections_are_polled_edge_triggered_and_listeners_not():
    assert EpollPoller.edge_triggered
    from netcore.connection import Connection
    from netcore.server import Listener
    assert Connection.edge_triggered
    assert not Listener.edge_triggered  # accepts a batch per wake-up: must be told again


class ShortReader(Readiness):
    """Edge-triggered; reads once per event, as a connection does after a short read."""

    edge_triggered = True

    def __init__(self, sock):
        self.sock = sock
        self.reads = []

    def on_ready(self, mask):
        try:
            self.reads.append(self.sock.recv(4096))
        except ConnectionResetError:
            self.reads.append("reset")


@pytest.mark.parametrize("hang_up", ["fin", "rst"])
def test_epoll_poller_reports_a_hung_up_edge_triggered_socket_until_it_is_read_dry(hang_up):
    """Data and the hang-up arrive before one poll: the read that gets the data does
    not see the EOF, and no new edge will come, so the next poll must report it again."""
    if not hasattr(__import__("select"), "epoll"):
        pytest.skip("select.epoll is Linux-only")
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    ours.setblocking(False)
    poller = EpollPoller()
    h = ShortReader(ours)
    poller.register(ours, EVENT_READ, h, edge=True)
    peer.send(b"half a frame")
    if hang_up == "rst":
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    peer.close()
    for _ in range(2):
        for handler, mask in poller.poll(1.0):
            handler.on_ready(mask)
    # the data first, then the EOF, or the reset's error
    assert h.reads[:2] == [b"half a frame", b"" if hang_up == "fin" else "reset"]
    poller.close()
    ours.close()
    listener.close()


@pytest.mark.parametrize("linger", [False, True])
def test_a_connection_that_sends_then_hangs_up_before_the_first_poll_is_closed(linger):
    """Accepted with half a frame and the FIN (or RST) already queued: the server reads
    the half frame, then must still see the hang-up and close (no fd left behind)."""
    loop, server, handler = serve()
    client = socket.create_connection(("127.0.0.1", server.port))
    client.send(encode_frame(b"hello")[:3])
    if linger:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    client.close()
    run_until(loop, lambda: handler.closed, timeout=5.0)
    assert not server.connections
    server.close()
