"""An upgrade without a disconnect: the running server execs the file on disk, same pid,
and every player plays on.

The server runs from a copy of the source tree. The test replaces the copy's
spelltraction.py (by rename, as a deploy should) with a version that says so,
then asks: ``spelltraction.py upgrade --data DIR``. Version-1 and version-2
players over TCP and WebSocket, a connection that has not said HELLO, a
player caught mid-frame and one whose output waits unsent all come through:
the same ids and scores, TICK numbers that go on, every byte accounted for.
A new version that cannot be imported, or refuses the format, leaves the
running server as it was, and the command says why.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import spelltraction as st
from netcore import FrameParser
from netcore import websocket as ws
from clusterkit import world  # noqa: F401 - a fixture
from helpers import read_frames, read_until_closed
from serverproc import GAME, ROOT, Spawned
from tlsgamekit import pki, tls_connect  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.slow  # servers that exec themselves, seconds each


@pytest.fixture
def tree(tmp_path):
    """A copy of the game (spelltraction.py, netcore/, web/) to run and to replace."""
    copy = tmp_path / "game"
    copy.mkdir()
    shutil.copy(os.path.join(ROOT, "spelltraction.py"), copy / "spelltraction.py")
    for folder in ("netcore", "web"):
        shutil.copytree(os.path.join(ROOT, folder), copy / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def deploy(tree, replace=("", "")):
    """A new version in place, by rename: its version string says it is new."""
    with open(GAME, encoding="utf-8") as f:  # this checkout's, changed
        source = f.read()
    new = source.replace(f'__version__ = "{st.__version__}"',
                         f'__version__ = "{st.__version__}+next"', 1)
    assert new != source
    if replace[0]:
        assert replace[0] in new
        new = new.replace(replace[0], replace[1], 1)
    staged = tree / "spelltraction.py.new"
    staged.write_text(new)
    os.replace(staged, tree / "spelltraction.py")


def upgrade(*how, timeout=60):
    """``spelltraction.py upgrade`` (this checkout's: the deployed file may be broken)."""
    return subprocess.run([sys.executable, GAME, "upgrade", *how], capture_output=True,
                          text=True, timeout=timeout)


class Reader:
    """A player's socket read in the background of the test: its messages in order."""

    def __init__(self, sock, websocket=False):
        self.sock = sock
        self.sock.setblocking(False)
        self.websocket = websocket
        self.parser = FrameParser(max_frame=st.MAX_SERVER_FRAME)
        self.wsparser = ws.WebSocketParser(client=True, max_message=1 << 20)
        self.messages = []
        self.closed = False

    def pump(self):
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                self.closed = True
                return
            if self.websocket:
                for event in self.wsparser.parse(data):
                    if isinstance(event, ws.Message):
                        self.messages += [st.decode(f) for f in
                                          FrameParser(65535).feed(event.data)]
            else:
                self.messages += [st.decode(f) for f in self.parser.feed(data)]

    def of(self, kind):
        return [m for m in self.messages if isinstance(m, kind)]


def tcp(port, hello=None):
    s = socket.create_connection(("127.0.0.1", port))
    if hello is not None:
        s.sendall(st.frame(hello))
    return s


def websocket(port, hello):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(ws.client_handshake("127.0.0.1", "/ws", "dGhlIHNhbXBsZSBub25jZQ=="))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(ws.frame(st.frame(hello), mask_key=b"abcd"))
    return s


def pump_for(readers, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for r in readers:
            r.pump()
        time.sleep(0.01)


def server(tree, data, *extra):
    return Spawned([sys.executable, str(tree / "spelltraction.py"), "serve", "--host",
                    "127.0.0.1", "--port", "0", "--tick-ms", "100", "--data", str(data),
                    "--admin-port", "0", *extra])


def version_of(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    line = [l for l in data.decode().splitlines() if l.startswith("spelltraction_build_info")]
    return line[0].split('version="', 1)[1].split('"', 1)[0]


def test_every_player_plays_on_through_an_upgrade(tree, tmp_path):
    data = tmp_path / "data"
    with server(tree, data) as srv:
        admin = srv.admin_port()
        pid = srv.proc.pid
        v1 = Reader(tcp(srv.port, st.Hello()))
        v2 = Reader(tcp(srv.port, st.Hello(st.PROTOCOL_V2, 1, 0x123456, b"", b"ann")))
        web = Reader(websocket(srv.port, st.Hello(st.PROTOCOL_V2, 2, 0x654321, b"", b"bo")),
                     websocket=True)
        silent = tcp(srv.port)  # connected, no HELLO yet
        readers = [v1, v2, web]
        pump_for(readers, 1.0)
        welcomes = [r.of(st.Welcome)[0] for r in readers]
        assert version_of(admin) == st.__version__
        v1.sock.sendall(st.frame(st.Move(7, 100, 100))[:3])  # a MOVE cut across the exec
        deploy(tree)
        done = upgrade("--data", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("ok: upgraded to"), done.stdout
        assert "moved 3 players" in done.stdout
        v1.sock.sendall(st.frame(st.Move(7, 100, 100))[3:])
        silent.sendall(st.frame(st.Hello()))
        late = Reader(silent)
        pump_for(readers + [late], 1.5)
        assert srv.proc.pid == pid and srv.proc.poll() is None  # the same process
        assert version_of(admin) == f"{st.__version__}+next"
        for r, welcome in zip(readers, welcomes):
            assert not r.closed
            assert len(r.of(st.Welcome)) == 1  # nobody joined again
            numbers = [t.number for t in r.of(st.TickMsg)]
            jumps = [b - a for a, b in zip(numbers, numbers[1:])]
            assert set(jumps) == {1}, jumps  # TICK numbers go on, none missed or repeated
            assert numbers[-1] > numbers[0] + 15
        assert any(y.seq == 7 for y in v1.of(st.You))  # the MOVE cut by the exec arrived
        assert late.of(st.Welcome), "the connection that had not said HELLO joins"
        assert late.of(st.Welcome)[0].player_id not in {w.player_id for w in welcomes}
        status = srv.stop()
        assert status == 0
        # It started as a module from what its check compiled: nothing compiled in the gap.
        assert "upgrade: exec, the new code as its check compiled it" in srv.proc.stderr.read()


def test_a_hand_over_longer_than_the_catch_up_window_keeps_the_numbers(tree, tmp_path):
    """At 10 ms a tick, any hand-over outlasts the loop's catch-up window (8 periods),
    where a stalled loop skips numbers: after an upgrade the next TICK still has the
    next number, and the ticks after it come at the usual pace, not in a burst."""
    data = tmp_path / "data"
    with Spawned([sys.executable, str(tree / "spelltraction.py"), "serve", "--host",
                  "127.0.0.1", "--port", "0", "--tick-ms", "10", "--data", str(data)]) as srv:
        player = Reader(tcp(srv.port, st.Hello(st.PROTOCOL_V2, name=b"fast")))
        pump_for([player], 0.5)
        deploy(tree)
        done = upgrade("--data", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
        pump_for([player], 1.0)
        numbers = [t.number for t in player.of(st.TickMsg)]
        assert set(b - a for a, b in zip(numbers, numbers[1:])) == {1}, numbers
        gap = re.search(r"the largest tick gap (\d+) ms", done.stdout)
        assert gap and int(gap[1]) > 8 * 10, done.stdout  # past the window, as intended
        assert srv.stop() == 0


def test_a_new_version_that_cannot_start_leaves_the_server_as_it_was(tree, tmp_path):
    data = tmp_path / "data"
    with server(tree, data) as srv:
        player = Reader(tcp(srv.port, st.Hello()))
        pump_for([player], 0.5)
        deploy(tree, ("import argparse\n", "import argparse\nraise SystemExit('broken')\n"))
        done = upgrade("--data", str(data))
        assert done.returncode != 0
        assert "cannot take this server over" in done.stderr or "check" in done.stderr, \
            done.stderr
        deploy(tree, (f"HANDOVER_VERSION = {st.HANDOVER_VERSION}",
                      f"HANDOVER_VERSION = {st.HANDOVER_VERSION + 1}"))
        done = upgrade("--data", str(data))
        assert done.returncode != 0 and "version" in done.stderr, done.stderr
        before = len(player.of(st.TickMsg))
        pump_for([player], 1.0)
        assert not player.closed and len(player.of(st.TickMsg)) > before + 5
        assert srv.stop() == 0


def test_upgrade_requests_from_another_user_and_while_one_runs_are_refused(tree, tmp_path):
    data = tmp_path / "data"
    # The new code takes 3 s over its check: time for a second request meanwhile.
    check = "def check_handover(fd: int) -> int:\n"
    deploy(tree, (check, check + "    time.sleep(3)\n"))
    with server(tree, data) as srv:
        pid = srv.proc.pid
        first = socket.socket(socket.AF_UNIX)
        first.connect(st.control_address(pid))
        first.sendall(b"upgrade\n")
        time.sleep(0.5)
        second = upgrade("--pid", str(pid))
        assert second.returncode != 0 and "already under way" in second.stderr, second.stderr
        first.settimeout(60)
        said = b""
        while b"ok:" not in said and b"error:" not in said:
            chunk = first.recv(4096)
            if not chunk:
                break
            said += chunk
        assert b"ok:" in said, said
        assert srv.stop() == 0


# -- the cluster: a gateway, and the authority, on a real redis-server ----------------


def test_a_gateway_upgrades_and_its_players_play_on(world):
    from clusterkit import Player, http_get, wait_for

    world.game("--tick-ms", "100")
    gw = world.gateway("--tick-ms", "100")
    wait_for(lambda: http_get(gw.admin, "/healthz")[0] == 200)
    players = [Player(gw.port) for _ in range(4)] + [Player(gw.port, version=st.PROTOCOL_VERSION)]
    for p in players:
        p.until(lambda p=p: p.welcome is not None and p.last_tick() > 0)
    before = {p.welcome.player_id for p in players}
    done = upgrade("--pid", str(gw.proc.pid))
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr
    start = max(p.last_tick() for p in players)
    for p in players:
        p.until(lambda p=p: p.last_tick() > start + 10)
    assert gw.proc.poll() is None
    assert {p.welcome.player_id for p in players} == before
    assert all(p.welcomes == 1 and not p.closed and not p.errors for p in players)
    for p in players:  # TICKs go on: at most a few missed while the bus resynchronised
        numbers = sorted(p.ticks)
        assert max(b - a for a, b in zip(numbers, numbers[1:])) <= 10, numbers
    wait_for(lambda: http_get(gw.admin, "/healthz")[0] == 200)


def test_the_authority_upgrades_with_its_lease_and_store_and_the_world_plays_on(world):
    from clusterkit import Player, http_get, wait_for

    a = world.game("--tick-ms", "100")
    gw = world.gateway("--tick-ms", "100")
    wait_for(lambda: http_get(gw.admin, "/healthz")[0] == 200)
    players = [Player(gw.port, name=f"p{i}".encode()) for i in range(4)]
    for p in players:
        p.until(lambda p=p: p.welcome is not None and p.last_tick() > 0)
    epoch = json.loads(http_get(a.admin, "/stats.json")[1])["cluster"]["epoch"]
    done = upgrade("--data", os.path.join(world.directory, "data"))
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr
    start = max(p.last_tick() for p in players)
    for p in players:
        p.until(lambda p=p: p.last_tick() > start + 10)
    assert a.proc.poll() is None
    assert all(p.welcomes == 1 and not p.closed and not p.errors for p in players)
    snap = json.loads(http_get(a.admin, "/stats.json")[1])
    assert snap["players"] == 4 and snap["cluster"]["holding"]
    assert snap["cluster"]["epoch"] > epoch  # the same holder took the lease back


def test_an_upgrade_under_attack_leaves_the_attackers_limited_and_the_crowd_ticking():
    """Squatters from one address at its pending limit, and WebSocket pingers, while the
    server upgrades: the crowd ticks on through it, the address is still at its limit
    afterwards (its 17th connection refused), and a ping flood after it is closed 1008."""
    from hostilekit import Crowd, HostileServer, connect

    with HostileServer("--exempt", "") as server, \
            Crowd(server.port) as crowd:
        since = crowd.mark()
        squatters = [connect(server.port, source="127.0.13.1") for _ in range(16)]
        pingers = [websocket(server.port, st.Hello()) for _ in range(5)]
        time.sleep(0.3)
        done = upgrade("--pid", str(server.pid))
        assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr
        refused = connect(server.port, source="127.0.13.1")
        refused.settimeout(5)
        said = refused.recv(4096)
        assert b"pending-per-address" in said, said
        ping = ws.frame(b"p" * 125, ws.PING, mask_key=b"abcd") * 500
        for sock in pingers:
            sock.settimeout(5)
            try:
                for _ in range(10):
                    sock.sendall(ping)
            except OSError:
                pass  # closed before the last of it: what it sent says why
            said = read_until_closed(sock)
            assert b"\x88" in said and (1008).to_bytes(2, "big") in said, said[-64:]
        time.sleep(max(0.0, since + 3.0 - time.monotonic()))
        crowd.assert_ticking(since=since)
        assert "ping" not in server.log() or server.alive()
        for s in squatters + pingers + [refused]:
            s.close()
        assert server.stop() == 0


def test_tls_players_are_told_to_come_back_and_find_their_seat(tree, tmp_path, pki):
    """``ssl`` cannot hand a session over: a TLS player gets ERROR(SHUTDOWN) "server
    upgrading", its seat waits for its token, and it resumes as itself on the new
    code (which read the certificate again). Plain players on the same port play on."""
    data = tmp_path / "data"
    with server(tree, data, "--tls-cert", pki.cert, "--tls-key", pki.key) as srv:
        ctx = pki.client_context()
        secure = tls_connect(srv.port, ctx)
        secure.sendall(st.frame(st.Hello(st.PROTOCOL_V2, name=b"secure")))
        welcome = st.decode(read_frames(secure, 1)[0])
        assert isinstance(welcome, st.Welcome) and welcome.token
        plain = Reader(tcp(srv.port, st.Hello(st.PROTOCOL_V2, name=b"plain")))
        pump_for([plain], 0.5)
        deploy(tree)
        done = upgrade("--data", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "moved 1 players" in done.stdout, done.stdout
        assert "1 that cannot move (TLS) told to come back" in done.stdout, done.stdout
        said = [st.decode(f) for f in FrameParser(65535).feed(read_until_closed(secure))]
        assert said[-1] == st.Error(st.ErrorCode.SHUTDOWN, "server upgrading: come back"), said
        again = tls_connect(srv.port, ctx)
        again.sendall(st.frame(st.Hello(st.PROTOCOL_V2, token=welcome.token, name=b"secure")))
        back = st.decode(read_frames(again, 1)[0])
        assert isinstance(back, st.Welcome), back
        assert (back.player_id, back.resumed) == (welcome.player_id, st.RESUMED)
        again.close()
        pump_for([plain], 1.0)
        assert not plain.closed and len(plain.of(st.Welcome)) == 1
        numbers = [t.number for t in plain.of(st.TickMsg)]
        assert set(b - a for a, b in zip(numbers, numbers[1:])) == {1}, numbers
        assert srv.stop() == 0


def test_the_bundle_the_units_run_upgrades_in_place(tree, tmp_path):
    """The units run ``python3 -I spelltraction.pyz``: a new .pyz moved over the old
    one, then SIGUSR2 (``systemctl kill -s USR2``), and the same process runs it."""
    pyz = tmp_path / "spelltraction.pyz"
    subprocess.run([sys.executable, str(tree / "spelltraction.py"), "bundle", "-o", str(pyz)],
                   check=True, capture_output=True, timeout=60)
    data = tmp_path / "data"
    with Spawned([sys.executable, "-I", str(pyz), "serve", "--host", "127.0.0.1", "--port", "0",
                  "--tick-ms", "100", "--data", str(data), "--admin-port", "0"]) as srv:
        admin = srv.admin_port()
        player = Reader(tcp(srv.port, st.Hello(st.PROTOCOL_V2, name=b"unit")))
        pump_for([player], 0.5)
        deploy(tree)
        staged = tmp_path / "spelltraction.pyz.new"
        subprocess.run([sys.executable, str(tree / "spelltraction.py"), "bundle", "-o",
                        str(staged)], check=True, capture_output=True, timeout=60)
        os.replace(staged, pyz)
        os.kill(srv.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while version_of(admin) == st.__version__ and time.monotonic() < deadline:
            pump_for([player], 0.2)
        assert version_of(admin) == f"{st.__version__}+next"
        assert srv.proc.poll() is None
        pump_for([player], 1.0)
        assert not player.closed and len(player.of(st.Welcome)) == 1
        numbers = [t.number for t in player.of(st.TickMsg)]
        assert set(b - a for a, b in zip(numbers, numbers[1:])) == {1}, numbers
        assert srv.stop() == 0
