"""examples/: each one runs, does what its docstring says, and netcore travels alone."""

import asyncio
import base64
import os
import shutil
import subprocess
import sys

import pytest

from conftest import require_module
from netcore import websocket as ws
from netcore.framing import FrameParser, encode_frame
from netcore.testing import spawn_listening, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


def stop(proc):
    stop_process(proc)
    out, err = proc.communicate()
    return proc.returncode, out, err


def example(name, *args, **popen):
    return spawn_listening([sys.executable, os.path.join(EXAMPLES, name),
                            "--host", "127.0.0.1", "--port", "0", *args], **popen)


def tcp_echo(port, frames):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(encode_frame(f) for f in frames))
        parser = FrameParser(0xFFFF)
        got = []
        while len(got) < len(frames):
            data = s.recv(65536)
            assert data, "closed early"
            got += parser.feed(data)
    return got


def ws_echo(port, messages):
    """(data, is_text) pairs sent, the pairs that came back, with netcore's own parser."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(ws.client_handshake(f"127.0.0.1:{port}", "/any/path", key))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101") and ws.accept_key(key).encode() in head
        for data, text in messages:
            s.sendall(ws.frame(data, ws.TEXT if text else ws.BINARY, mask_key=os.urandom(4)))
        parser = ws.WebSocketParser(client=True)
        events = parser.parse(rest) if rest else []
        while len(events) < len(messages):
            events += parser.parse(s.recv(65536))
    return [(e.data, e.text) for e in events]


def test_netcore_copied_alone_runs_echo_in_isolation(tmp_path):
    """Only the copy and the standard library: python3 -I (no env, no user site,
    no script directory) -S (no site-packages at all)."""
    shutil.copytree(os.path.join(ROOT, "netcore"), tmp_path / "netcore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(EXAMPLES, "echo.py"), tmp_path / "echo.py")
    assert (tmp_path / "netcore" / "LICENSE").exists() and (tmp_path / "netcore" / "README.md").exists()
    proc, host, port = spawn_listening(
        [sys.executable, "-I", "-S", "echo.py", "--host", "127.0.0.1", "--port", "0"],
        cwd=str(tmp_path), env={"PATH": os.environ.get("PATH", "")})
    try:
        assert tcp_echo(port, [b"tcp", b"x" * 0x40FF]) == [b"tcp", b"x" * 0x40FF]
        sent = [("text ✓".encode(), True), (b"\x00\x01binary", False)]
        assert ws_echo(port, sent) == sent
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    # It really ran from the copy: nothing else could be imported.
    check = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys; sys.path.insert(0, '.'); import netcore, netcore.web, netcore.client; "
         "print(netcore.__file__); print('spelltraction' in sys.modules)"],
        cwd=str(tmp_path), capture_output=True, text=True, env={}, timeout=30)
    assert check.returncode == 0, check.stderr
    lines = check.stdout.split()
    assert lines[0].startswith(str(tmp_path)) and lines[1] == "False"


def test_echo_runs_from_the_repository_root():
    proc, host, port = spawn_listening(
        [sys.executable, "examples/echo.py", "--host", "127.0.0.1", "--port", "0"], cwd=ROOT)
    try:
        assert ws_echo(port, [(b"root", True)]) == [(b"root", True)]
    finally:
        stop(proc)


def test_the_websockets_library_exchanges_text_and_binary_with_echo():
    client = require_module("websockets.asyncio.client")
    proc, host, port = example("echo.py", "--max-message", str(4 << 20))
    big = os.urandom(3 << 20)

    async def talk():
        async with client.connect(f"ws://127.0.0.1:{port}/", max_size=8 << 20) as sock:
            await sock.send("héllo ✓")
            text = await sock.recv()
            await sock.send(b"\x00\xff")
            binary = await sock.recv()
            await sock.send(big)
            large = await sock.recv()
            await sock.send(["frag", "mented"])  # a fragmented text message
            fragmented = await sock.recv()
            await sock.ping(b"are you there")  # answered: ping() waits for the pong
            return text, binary, large, fragmented

    try:
        text, binary, large, fragmented = asyncio.run(asyncio.wait_for(talk(), 30))
    finally:
        code, _, err = stop(proc)
    assert text == "héllo ✓" and isinstance(text, str)
    assert binary == b"\x00\xff" and isinstance(binary, bytes)
    assert large == big
    assert fragmented == "fragmented"
    assert code == 0, err


def test_chat_serves_its_page_and_two_clients_see_each_others_text():
    client = require_module("websockets.asyncio.client")
    proc, host, port = example("chat.py")

    async def talk():
        async with client.connect(f"ws://127.0.0.1:{port}/ws") as alice:
            assert (await alice.recv()).startswith("* someone joined (1 here)")
            async with client.connect(f"ws://127.0.0.1:{port}/ws") as bob:
                assert await alice.recv() == "* someone joined (2 here)"
                assert await bob.recv() == "* someone joined (2 here)"
                await alice.send("alice: hi bob ✓")
                heard = [await bob.recv(), await alice.recv()]
                await bob.send(b"binary")  # refused: text only
                with pytest.raises(Exception) as closed:
                    await bob.recv()
                # the Close frame bob received (close_code is websockets 14+;
                # py38 gets 13.1, whose ConnectionClosed carries it as rcvd)
                rcvd = getattr(closed.value, "rcvd", None)
                code = rcvd.code if rcvd is not None else None
            left = await alice.recv()
            return heard, code, closed.value, left

    try:
        import urllib.request

        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        html = page.read().decode()
        assert page.status == 200 and "new WebSocket" in html
        heard, code, exc, left = asyncio.run(asyncio.wait_for(talk(), 30))
    finally:
        stop(proc)
    assert heard == ["alice: hi bob ✓", "alice: hi bob ✓"]
    assert code == 1003, exc
    assert left == "* someone left (1 here)"


@pytest.mark.slow
def test_chat_in_the_browser(browser):
    proc, host, port = example("chat.py")
    try:
        page_a = browser.new_page()
        page_b = browser.new_page()
        for page in (page_a, page_b):
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('log').textContent.includes('connected as')")
        page_a.fill("#text", "from a browser ✓")
        page_a.press("#text", "Enter")
        page_b.wait_for_function(
            "document.getElementById('log').textContent.includes('from a browser ✓')", timeout=10000)
        page_a.close()
        page_b.wait_for_function(
            "document.getElementById('log').textContent.includes('someone left (1 here)')",
            timeout=10000)
        page_b.close()
    finally:
        stop(proc)


@pytest.mark.parametrize("extra", [[], ["--ws", "--size", "2000"]])
def test_rtt_measures_round_trips_against_echo(extra):
    proc, host, port = example("echo.py")
    try:
        run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "rtt.py"), "--host",
                              "127.0.0.1", "--port", str(port), "--count", "200", *extra],
                             capture_output=True, text=True, timeout=60)
    finally:
        stop(proc)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("rtt: 200 round trips of")
    assert ("WebSocket" if extra else "TCP") in run.stdout and "p99" in run.stdout


def test_rtt_reports_a_refused_connection_once_and_fails(refused_port):
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "rtt.py"), "--host",
                          "127.0.0.1", "--port", str(refused_port), "--count", "3"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.count("connect failed") == 1 and "refused" in run.stderr


def readme_blocks():
    with open(os.path.join(ROOT, "netcore", "README.md"), encoding="utf-8") as f:
        text = f.read()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_the_readme_echo_server_is_ten_lines_and_echoes(tmp_path):
    code = readme_blocks()[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    shutil.copytree(os.path.join(ROOT, "netcore"), tmp_path / "netcore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "echo10.py").write_text(code)
    proc, host, port = spawn_listening([sys.executable, "-I", "-S", "echo10.py"],
                                       cwd=str(tmp_path))
    try:
        assert tcp_echo(port, [b"ten", b"lines"]) == [b"ten", b"lines"]
    finally:
        proc.kill()
        proc.communicate()


def test_the_readme_line_codec_works_on_a_server():
    from netcore import EventLoop, Handler, ServerConfig, TCPServer
    from netcore.testing import LoopClient, run_until

    namespace = {}
    exec(readme_blocks()[1], namespace)
    Lines = namespace["Lines"]
    codec = Lines(max_line=16)
    assert codec.feed(b"one\ntw") == [b"one"] and codec.feed(b"o\n") == [b"two"]
    with pytest.raises(Exception, match="line over 16"):
        codec.feed(b"x" * 17)

    class Shout(Handler):
        def on_message(self, conn, payload):
            conn.send(payload.upper())

    loop = EventLoop()
    server = TCPServer(loop, Shout(), ServerConfig(hosts=["127.0.0.1"]),
                       codec_factory=lambda conn: Lines())
    server.listen()
    client = LoopClient(server.port)
    client.send(b"hello\nwor")
    client.send(b"ld\n")
    got = bytearray()
    run_until(loop, lambda: got.extend(client.read_available()) or got.count(b"\n") == 2)
    assert bytes(got) == b"HELLO\nWORLD\n"
    client.close()
    server.close()
    loop.close()
