"""Graceful shutdown of a real server process: SIGTERM, goodbye to all, exit 0 within 2 s."""

import os
import select
import selectors
import signal
import socket
import time

import pytest

import spelltraction as st
from helpers import raise_nofile
from hostilekit import http_get
from netcore import FrameParser
from serverproc import ServerProcess

CLIENTS = 500
DEADLINE_S = 2.0  # the behavioural deadline, not a benchmark


class Peer:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.parser = FrameParser(max_frame=65535)
        self.messages = []
        self.eof = False
        self.reset = False
        self.sock.sendall(st.frame(st.Hello()))

    def read(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.reset = self.eof = True
            return
        if not data:
            self.eof = True
            return
        self.messages += [st.decode(f) for f in self.parser.feed(data)]


def pump(sel, until, timeout, proc=None):
    end = time.monotonic() + timeout
    exited_at = None
    while not until():
        assert time.monotonic() < end, "timed out"
        for key, _ in sel.select(0.01):
            peer = key.data
            peer.read()
            if peer.eof:
                sel.unregister(peer.sock)
        if proc is not None and exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
    return exited_at


@pytest.mark.parametrize("poller", st.POLLERS)
def test_sigterm_with_500_clients_says_goodbye_to_each_and_exits_0_within_2s(poller):
    if poller == "epoll" and not hasattr(select, "epoll"):
        pytest.skip("epoll is Linux-only")
    raise_nofile(CLIENTS + 200)
    server = ServerProcess("--poller", poller)
    sel = selectors.DefaultSelector()
    peers = []
    try:
        for _ in range(CLIENTS):
            peer = Peer(server.port)
            peers.append(peer)
            sel.register(peer.sock, selectors.EVENT_READ, peer)
        pump(sel, lambda: all(any(isinstance(m, st.Welcome) for m in p.messages)
                              for p in peers), timeout=30)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        exited_at = pump(sel, lambda: all(p.eof for p in peers) and server.proc.poll() is not None,
                         timeout=10, proc=server.proc)
        exited_at = exited_at or time.monotonic()
        assert server.proc.returncode == 0
        assert exited_at - sent < DEADLINE_S, f"exit took {exited_at - sent:.2f} s"
        for i, p in enumerate(peers):
            assert not p.reset, f"client {i} was reset instead of closed"
            last = p.messages[-1]
            assert isinstance(last, st.Error) and last.code == st.ErrorCode.SHUTDOWN, \
                f"client {i}: last message before the close was {last!r}"
            assert last.text == "server shutting down"
        out = server.proc.stdout.read()
        assert f"{CLIENTS} connections served" in out
    finally:
        for p in peers:
            p.sock.close()
        sel.close()
        server.stop()


def test_a_second_signal_ends_the_process_at_once():
    server = ServerProcess()
    peers = [Peer(server.port) for _ in range(20)]
    try:
        time.sleep(0.3)
        # Both signals pending when the process resumes: the loop reads them in
        # one go, so the second finds the graceful shutdown already under way.
        os.kill(server.proc.pid, signal.SIGSTOP)
        os.kill(server.proc.pid, signal.SIGINT)
        os.kill(server.proc.pid, signal.SIGTERM)
        os.kill(server.proc.pid, signal.SIGCONT)
        code = server.proc.wait(timeout=5)
        # Which of the two the loop sees first is the kernel's choice; the
        # process must die by whichever came second (128 + N in a shell).
        err = server.proc.stderr.read()
        assert code in (-signal.SIGINT, -signal.SIGTERM), code
        second = signal.Signals(-code).name
        first = ({"SIGINT", "SIGTERM"} - {second}).pop()
        assert f"{first}: shutting down" in err
        assert f"second signal ({second}): exiting at once" in err
        assert "stopped after" not in server.proc.stdout.read(), "no orderly exit path"
    finally:
        for p in peers:
            p.sock.close()
        server.stop()


def test_after_the_first_signal_a_second_one_no_longer_waits_for_the_loop():
    """The first signal swaps the Python-level handler, so a busy loop can't delay the second."""
    from netcore import EventLoop, process

    loop = EventLoop()
    server = st.GameServer(loop, st.ServerOptions(host="127.0.0.1", port=0, tick_ms=20))
    server.start()
    handlers = st.ServerSignals(loop, server)
    saved = {sig: signal.getsignal(sig) for sig in handlers.SIGNALS}
    try:
        handlers.install()
        handlers.on_signal(signal.SIGTERM)  # as the loop dispatches the first one
        assert server.shutting_down
        for sig in handlers.SIGNALS:
            assert signal.getsignal(sig) is process.die_by_signal
    finally:
        loop.remove_signal_handlers()
        for sig, old in saved.items():
            signal.signal(sig, old)
        server.front.net.close()
        loop.close()


def test_a_server_on_the_selectors_poller_serves_and_says_so(tmp_path):
    """--poller selectors: the loop runs on selectors.DefaultSelector, as /metrics says."""
    with ServerProcess("--poller", "selectors", "--public-stats", "--tick-ms", "50") as server:
        peer = Peer(server.port)
        sel = selectors.DefaultSelector()
        sel.register(peer.sock, selectors.EVENT_READ, peer)
        pump(sel, lambda: sum(isinstance(m, st.TickMsg) for m in peer.messages) >= 2, timeout=10)
        assert isinstance(peer.messages[0], st.Welcome)
        sel.close()
        peer.sock.close()
        status, _headers, metrics = http_get(server.host, server.port, "/metrics")
        assert status == 200
        assert b'spelltraction_loop_poller_info{poller="selectors"} 1' in metrics
        assert server.stop() == 0
