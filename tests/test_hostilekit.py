"""The hostile-test kit tells a ticking server from a stalled one (tests/hostilekit.py)."""

import signal
import socket
import sys
import time

import pytest

from hostilekit import Crowd, HostileServer, arrival, open_fds, rss_bytes, stamp_arrivals


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_TIMESTAMPNS is Linux's")
def test_arrival_is_the_kernels_receive_time_not_when_we_got_round_to_reading():
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        with socket.create_connection(lsock.getsockname()) as client:
            server, _ = lsock.accept()
            with server:
                stamp_arrivals(client)
                # Linux turns receive timestamps on for the whole host from a
                # work queue, a moment after the first socket asks: until then
                # segments arrive unstamped (seen on a loaded CI box). Wait for
                # a stamped one before measuring.
                for _ in range(100):
                    server.sendall(b"w")
                    if client.recvmsg(1, 64)[1]:
                        break
                    time.sleep(0.01)
                server.sendall(b"tick")
                time.sleep(0.3)  # a busy test process reads late
                data, ancillary, _, _ = client.recvmsg(100, 64)
                now = time.monotonic()
                assert data == b"tick"
                assert 0.25 < now - arrival(ancillary, now) < 1.0


@pytest.mark.slow  # a subprocess server and a crowd, for a few seconds
def test_a_quiet_server_passes_the_checks_and_a_stalled_one_fails_them():
    with HostileServer() as server, Crowd(server.port, tcp=8, ws_count=4) as crowd:
        before = server.resources()
        assert 0 < before.rss and abs(rss_bytes(server.pid) - before.rss) < (4 << 20)
        assert before.fds >= 12 + 3 and open_fds(server.pid) == before.fds  # a socket per watcher
        start = crowd.mark()
        time.sleep(0.2)  # an attack rejected at once: the check itself waits out 2 s
        crowd.assert_ticking(max_gap=1.0)
        assert time.monotonic() - start >= 2.0
        # A window shorter than that is refused, whatever it holds.
        with pytest.raises(AssertionError, match="less than the 2.0 s"):
            crowd.assert_ticking(since=start, until=start + 1.5)
        late = crowd.lateness(0.25)
        assert len(late) >= 12 * 4, "each watcher gets about four ticks a second"
        numbers = [n for _, n in crowd.watchers[0].ticks]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        server.assert_recovered(before)

        # A stall the watchers must notice: the server stopped for 1.5 s.
        crowd.mark()
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        server.proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        with pytest.raises(AssertionError, match="without a TICK"):
            crowd.assert_ticking(max_gap=1.0)
        assert crowd.max_gap() >= 1.4
        assert not crowd.dropped()
        # A stall that starts after the attack was rejected, and ends before
        # the 2 s are up: the check waits for it and sees it.
        crowd.mark()
        time.sleep(0.1)
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        server.proc.send_signal(signal.SIGCONT)
        with pytest.raises(AssertionError, match="without a TICK"):
            crowd.assert_ticking(max_gap=1.0)
    # The crowd's data ends with it: a window past its close is not judged.
    crowd.mark()
    with pytest.raises(AssertionError, match="stopped watching"):
        crowd.assert_ticking(max_gap=1.0, min_window=0.1)
