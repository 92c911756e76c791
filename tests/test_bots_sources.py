"""bots spread over loopback source addresses: past ~28,000 ports per address toward one port."""

import socket
import time

import spelltraction as st


def test_auto_spreads_only_a_big_loopback_load():
    assert st.bot_sources("127.0.0.1", 15_000) == []
    assert st.bot_sources("127.0.0.1", 30_000) == ["127.0.0.2", "127.0.0.3"]
    assert st.bot_sources("127.0.0.1", 45_001) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert st.bot_sources("10.0.0.5", 30_000) == []  # not ours to choose
    assert st.bot_sources("::1", 30_000) == []
    assert st.bot_sources("127.0.0.1", 30_000, "none") == []
    assert st.bot_sources("127.0.0.1", 5, "127.0.0.7, 127.0.0.8") == ["127.0.0.7", "127.0.0.8"]


def test_each_bot_connects_from_its_source_address_in_turn():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(5)
        worker = st.BotWorker("127.0.0.1", listener.getsockname()[1], 6, 80.0, 0, 1, 10,
                              sources=["127.0.0.2", "127.0.0.3"], offset=1)
        peers = []
        deadline = time.monotonic() + 5
        while len(peers) < 6 and time.monotonic() < deadline:
            worker.step(0.01)
            try:
                conn, addr = listener.accept()
            except socket.timeout:
                continue
            peers.append(addr[0])
            conn.close()
        assert sorted(peers) == ["127.0.0.2"] * 3 + ["127.0.0.3"] * 3
