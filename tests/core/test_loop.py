import os
import selectors
import signal
import socket

import pytest

from netcore import EventLoop, ServerConfig, TCPServer, encode_frame
from conftest import Echo
from helpers import read_frames

SELECTORS = [
    pytest.param(name, marks=pytest.mark.skipif(
        not hasattr(selectors, name), reason=f"selectors.{name} is not available on this platform"))
    for name in ("EpollSelector", "KqueueSelector", "PollSelector", "SelectSelector", "DefaultSelector")
]


@pytest.mark.parametrize("selector_name", SELECTORS)
def test_echo_over_every_selector(selector_name):
    loop = EventLoop(selector=getattr(selectors, selector_name)())
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    for i, c in enumerate(clients):
        c.sendall(encode_frame(b"ping%d" % i))
    loop.run_for(0.2)
    for i, c in enumerate(clients):
        assert read_frames(c, 1) == [b"echo:ping%d" % i]
        c.close()
    loop.run_for(0.2)
    assert server.stats.connections == 0
    assert server.stats.closed_by_reason == {"peer-closed": 20}
    server.close()
    loop.close()


def test_timers_fire_in_order_and_cancel():
    loop = EventLoop()
    fired = []
    loop.call_later(0.03, lambda: fired.append("c"))
    loop.call_later(0.01, lambda: fired.append("a"))
    t = loop.call_later(0.02, lambda: fired.append("never"))
    loop.call_later(0.02, lambda: fired.append("b"))
    t.cancel()
    loop.call_soon(lambda: fired.append("soon"))
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert fired == ["soon", "a", "b", "c"]


def test_a_failing_callback_does_not_stop_the_loop(caplog):
    loop = EventLoop()
    fired = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_later(0.01, lambda: fired.append(1))
    loop.run_for(0.05)
    assert fired == [1]
    assert "ZeroDivisionError" in caplog.text


def test_signal_wakes_a_sleeping_loop():
    loop = EventLoop()
    got = []

    def on_signal(signum):
        got.append(signum)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal)
    loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.call_later(5.0, loop.stop)  # safety net
    start = loop.time()
    loop.run()
    assert got == [signal.SIGUSR1]
    assert loop.time() - start < 1.0
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_ticker_fires_on_a_real_clock():
    loop = EventLoop()
    ticks = []

    def on_tick(tick):
        ticks.append(tick)
        if len(ticks) == 10:
            loop.stop()

    sched = loop.start_ticker(0.02, on_tick)
    start = loop.time()
    loop.run_for(5.0)
    loop.stop_ticker(sched)
    assert [t.number for t in ticks] == list(range(10))
    assert [t.deadline for t in ticks] == [sched.start + n * 0.02 for n in range(10)]
    assert loop.time() - start >= 0.2 - 0.001
