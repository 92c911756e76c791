"""netcore.process's memory release: free pages between live blocks go back to the OS."""

import socket
import subprocess
import sys
import textwrap

from netcore import EventLoop, process
from netcore.connection import COMPACT_AFTER
from netcore.testing import run_until, serve


def test_a_burst_of_buffers_freed_mid_heap_leaves_rss_once_released():
    """A thousand 40 KB buffers (what clients that never read may hold) freed
    between live blocks stay resident until the heap is trimmed."""
    code = textwrap.dedent("""
        from netcore.process import release_freed_memory
        def rss():
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * 4096
        # Every other block stays live, so each freed one sits between two
        # live ones whatever holes the heap had: none can merge into the top
        # of the heap, where free() itself would give it back.
        blocks = [bytearray(40_000) for _ in range(2001)]
        keep = blocks[::2]
        high = rss()
        del blocks
        freed = rss()
        if not release_freed_memory():
            print('no-glibc')
        else:
            print(high, freed, rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    if out == ["no-glibc"]:
        return  # nothing to release with: the call says so and does nothing
    high, freed, released = map(int, out)
    burst = 1000 * 40_000
    assert high - freed < burst / 4, "the burst went back without a trim: nothing to test"
    assert freed - released > burst / 2  # most of the 40 MB: the margin is for other pages


def test_release_every_runs_on_the_loop_until_stopped(monkeypatch):
    calls = []
    monkeypatch.setattr(process, "release_freed_memory", lambda: calls.append(1) or True)
    loop = EventLoop()
    try:
        stop = process.release_freed_memory_every(loop, 0.01)
        loop.call_later(0.2, loop.stop)
        loop.run()
        ran = len(calls)
        assert ran >= 3
        stop()
        loop.call_later(0.1, loop.stop)
        loop.run()
        assert len(calls) == ran
    finally:
        loop.close()


def test_release_every_stops_by_itself_where_there_is_nothing_to_release(monkeypatch):
    calls = []
    monkeypatch.setattr(process, "release_freed_memory", lambda: calls.append(1) and False)
    loop = EventLoop()
    try:
        process.release_freed_memory_every(loop, 0.01)
        loop.call_later(0.2, loop.stop)
        loop.run()
        assert len(calls) == 1
    finally:
        loop.close()


def test_release_every_runs_before_first_what_frees_memory(monkeypatch):
    order = []
    monkeypatch.setattr(process, "release_freed_memory", lambda: order.append("trim") or True)
    loop = EventLoop()
    try:
        process.release_freed_memory_every(loop, 0.01, before=lambda: order.append("before"))
        loop.call_later(0.1, loop.stop)
        loop.run()
        assert order[:4] == ["before", "trim", "before", "trim"]
    finally:
        loop.close()


def test_a_server_counts_closes_and_compact_rebuilds_its_table_after_enough():
    """Closed connections are counted; compact() rebuilds ``connections`` (same
    entries, a new table) once COMPACT_AFTER have gone, and not before."""
    loop, server, _ = serve()
    try:
        port = server.port
        keep = socket.create_connection(("127.0.0.1", port))
        run_until(loop, lambda: len(server.connections) == 1)
        for _ in range(COMPACT_AFTER - 1):
            s = socket.create_connection(("127.0.0.1", port))
            run_until(loop, lambda: len(server.connections) == 2)
            s.close()
            run_until(loop, lambda: len(server.connections) == 1)
        assert server.removed == COMPACT_AFTER - 1
        table = server.connections
        server.compact()
        assert server.connections is table  # not yet
        s = socket.create_connection(("127.0.0.1", port))
        run_until(loop, lambda: len(server.connections) == 2)
        s.close()
        run_until(loop, lambda: len(server.connections) == 1)
        server.compact()
        assert server.connections is not table and server.removed == 0
        assert list(server.connections.values()) == list(table.values())
        keep.close()  # its close is found through the new table
        run_until(loop, lambda: not server.connections)
        assert server.removed == 1
    finally:
        server.close()
        loop.close()


def test_large_blocks_mapped_apart_go_back_to_the_os_when_freed():
    """Once glibc has raised its bar (a 1 MB block freed), 600 KB tables would
    come from the heap; mapped apart, each freed table goes back at once,
    whatever was allocated after it."""
    code = textwrap.dedent("""
        from netcore.process import map_large_blocks_apart
        def rss():
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * 4096
        if not map_large_blocks_apart():
            print('no-glibc'); raise SystemExit
        junk = bytearray(1 << 20)
        del junk
        keep, tables = [], []
        before = rss()
        for _ in range(10):
            tables.append(bytearray(600_000))
            keep.append(bytearray(2_000))  # live blocks allocated after each table
        held = rss()
        del tables
        print(held - before, rss() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    if out == ["no-glibc"]:
        return
    held, after = map(int, out)
    assert held > 5_000_000 and after < 500_000  # ten tables held, then all given back
