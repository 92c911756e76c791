"""netcore.poller: one interface over epoll and any selectors selector, for the loop and clients."""

import select
import selectors
import socket

import pytest

from netcore import EventLoop, Readiness, make_poller
from netcore.poller import (
    DEFAULT_POLLER, EVENT_READ, EVENT_WRITE, POLLERS, EpollPoller, SelectorPoller,
)

HAVE_EPOLL = hasattr(select, "epoll")
KINDS = [pytest.param(k, marks=pytest.mark.skipif(k == "epoll" and not HAVE_EPOLL,
                                                  reason="select.epoll is Linux-only"))
         for k in POLLERS]


def test_the_default_is_epoll_where_there_is_one():
    assert POLLERS == ("epoll", "selectors")
    assert DEFAULT_POLLER == ("epoll" if HAVE_EPOLL else "selectors")
    poller = make_poller()
    assert isinstance(poller, EpollPoller if HAVE_EPOLL else SelectorPoller)
    poller.close()


def test_make_poller_by_name_and_its_refusals():
    poller = make_poller("selectors")
    assert isinstance(poller, SelectorPoller) and not poller.edge_triggered
    assert isinstance(poller.selector, selectors.DefaultSelector)
    poller.close()
    own = selectors.SelectSelector()
    poller = make_poller(selector=own)
    assert isinstance(poller, SelectorPoller) and poller.selector is own
    poller.close()
    with pytest.raises(ValueError, match="unknown poller"):
        make_poller("kqueue")
    with pytest.raises(ValueError, match="not 'epoll'"):
        make_poller("epoll", selector=selectors.SelectSelector())


@pytest.mark.parametrize("kind", KINDS)
def test_either_poller_reports_data_and_masks_alike(kind):
    """The same calls give the same answers: what was registered, with selectors' masks."""
    poller = make_poller(kind)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    poller.register(a, EVENT_READ, "a")
    poller.register(c.fileno(), EVENT_READ | EVENT_WRITE, 7)
    with pytest.raises(KeyError):
        poller.register(a.fileno(), EVENT_READ, "again")
    assert poller.poll(0) == [(7, EVENT_WRITE)]
    b.send(b"x")
    assert sorted(poller.poll(0), key=str) == [("a", EVENT_READ), (7, EVENT_WRITE)]
    poller.modify(a, EVENT_WRITE, "a2")
    poller.unregister(c)
    with pytest.raises(KeyError):
        poller.unregister(c)
    assert poller.poll(0) == [("a2", EVENT_WRITE)]
    poller.modify(a, EVENT_READ, "a3")
    b.close()  # hang-up: readable to a reader
    assert poller.poll(0.5) == [("a3", EVENT_READ)]
    poller.close()
    for s in (a, c, d):
        s.close()


@pytest.mark.skipif(not HAVE_EPOLL, reason="select.epoll is Linux-only")
@pytest.mark.parametrize("edge", [False, True])
def test_epoll_is_edge_triggered_only_where_asked(edge):
    """Level-triggered, input left unread is reported at every poll; edge-triggered, once."""
    poller = EpollPoller()
    a, b = socket.socketpair()
    poller.register(a, EVENT_READ, "a", edge=edge)
    b.send(b"unread")
    assert poller.poll(0) == [("a", EVENT_READ)]
    assert poller.poll(0) == ([] if edge else [("a", EVENT_READ)])
    with pytest.raises(ValueError):
        poller.register(b, EVENT_READ, None)  # None marks a free slot
    poller.close()
    a.close()
    b.close()


class Reader(Readiness):
    def __init__(self, sock):
        self.sock = sock
        self.got = b""

    def on_ready(self, mask):
        self.got += self.sock.recv(100)


@pytest.mark.parametrize("kind", KINDS)
def test_the_loop_runs_on_either_poller(kind):
    loop = EventLoop(poller=kind)
    assert isinstance(loop.poller, EpollPoller if kind == "epoll" else SelectorPoller)
    assert loop.poller.name == kind
    assert loop.edge_triggered == (kind == "epoll")
    a, b = socket.socketpair()
    reader = Reader(a)
    loop.register(a, EVENT_READ, reader)
    b.send(b"hello")
    for _ in range(5):
        loop.run_once(0.05)
    assert reader.got == b"hello"
    loop.unregister(a)
    loop.close()
    a.close()
    b.close()


def test_a_loop_given_a_selector_polls_with_it():
    own = selectors.SelectSelector()
    loop = EventLoop(selector=own)
    assert loop.poller.selector is own and not loop.edge_triggered
    loop.close()
    with pytest.raises(ValueError):
        EventLoop(poller="epoll", selector=selectors.SelectSelector())
