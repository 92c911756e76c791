"""RFC 6455 conformance of netcore's WebSocket server, against examples/echo.py.

A real echo.py process (16 MiB messages allowed) and raw sockets that send
exactly the frames each case needs, as conformance suites do: fragmented
text and binary, control frames between fragments, invalid UTF-8 (whole,
split across fragments, and inside one frame before it ends), bad close
codes, reserved bits, unmasked frames, oversize messages, floods. Every
close the server starts must carry a Close frame with the right code.
"""

import base64
import os
import signal
import socket
import struct
import sys
import time

import pytest

from netcore import websocket as ws
from netcore.framing import FrameParser, encode_frame
from netcore.testing import spawn_listening, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO = os.path.join(ROOT, "examples", "echo.py")
MAX = 16 << 20


def start_echo(*args, cwd=ROOT, script=ECHO, env=None):
    proc, _, port = spawn_listening(
        [sys.executable, script, "--host", "127.0.0.1", "--port", "0", *args], cwd=cwd, env=env)
    return proc, port


def stop(proc):
    stop_process(proc)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def echo():
    proc, port = start_echo("--max-message", str(MAX))
    yield port
    stop(proc)


class Peer:
    """A blocking WebSocket client that sends whatever frames it is told to."""

    def __init__(self, port, path="/", headers=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(ws.client_handshake(f"127.0.0.1:{port}", path, key, headers))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the handshake: {head!r}"
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        assert self.head.startswith("HTTP/1.1 101"), self.head
        assert ws.accept_key(key) in self.head
        self.parser = ws.WebSocketParser(max_message=MAX + 1, client=True,
                                         control_burst=10 ** 6)
        self.events = list(self.parser.parse(rest)) if rest else []

    def send_frame(self, payload, opcode=ws.BINARY, fin=True, rsv=0, masked=True):
        data = ws.frame(payload, opcode, fin, os.urandom(4) if masked else None)
        if rsv:
            data = bytes([data[0] | rsv]) + data[1:]
        self.sock.sendall(data)

    def next_event(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not self.events:
            left = deadline - time.monotonic()
            assert left > 0, "no event in time"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            assert data, "connection closed without a Close frame"
            self.events += self.parser.parse(data)
        return self.events.pop(0)

    def expect_close(self, code, timeout=10.0):
        """The server's Close frame (skipping messages), then its FIN."""
        while True:
            event = self.next_event(timeout)
            if isinstance(event, ws.Close):
                break
        assert event.code == code, event
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return event

    def close(self):
        self.sock.close()


def message(peer):
    event = peer.next_event()
    assert isinstance(event, ws.Message), event
    return event


def test_text_comes_back_as_text_and_binary_as_binary(echo):
    p = Peer(echo)
    p.send_frame("héllo wörld ✓".encode(), ws.TEXT)
    p.send_frame(b"\x00\xffbinary", ws.BINARY)
    p.send_frame(b"", ws.TEXT)
    p.send_frame(b"", ws.BINARY)
    assert message(p) == ws.Message("héllo wörld ✓".encode(), True)
    assert message(p) == ws.Message(b"\x00\xffbinary", False)
    assert message(p) == ws.Message(b"", True)
    assert message(p) == ws.Message(b"", False)
    p.close()


@pytest.mark.parametrize("opcode", [ws.TEXT, ws.BINARY])
def test_fragmented_messages_come_back_whole(echo, opcode):
    p = Peer(echo)
    parts = ["frag", "ment", "ed ✓ ", ""]
    p.send_frame(parts[0].encode(), opcode, fin=False)
    for part in parts[1:-1]:
        p.send_frame(part.encode(), ws.CONTINUATION, fin=False)
    p.send_frame(b"", ws.CONTINUATION, fin=True)
    assert message(p) == ws.Message("".join(parts).encode(), opcode == ws.TEXT)
    p.close()


def test_control_frames_between_fragments_are_answered_at_once(echo):
    p = Peer(echo)
    p.send_frame(b"one ", ws.TEXT, fin=False)
    p.send_frame(b"ping payload", ws.PING)
    assert p.next_event() == ws.Pong(b"ping payload")  # before the message ends
    p.send_frame(b"unsolicited", ws.PONG)  # ignored, as the RFC allows
    p.send_frame(b"two", ws.CONTINUATION, fin=True)
    assert message(p) == ws.Message(b"one two", True)
    p.close()


def test_a_utf8_character_split_across_fragments_is_fine(echo):
    p = Peer(echo)
    data = "€uro".encode()  # € is 3 bytes
    p.send_frame(data[:1], ws.TEXT, fin=False)
    p.send_frame(data[1:2], ws.CONTINUATION, fin=False)
    p.send_frame(data[2:], ws.CONTINUATION, fin=True)
    assert message(p) == ws.Message(data, True)
    p.close()


ONE_FRAME_CASES = [
    # (what, payload, opcode, keywords for send_frame, the close code that answers)
    ("invalid UTF-8 in a whole text message", b"ok \xc3\x28 not", ws.TEXT, {}, 1007),
    ("a Close without a code", b"", ws.CLOSE, {}, 1000),
    ("a Close reason that is not UTF-8", struct.pack(">H", 1000) + b"\xff", ws.CLOSE, {}, 1007),
    ("RSV1", b"x", ws.TEXT, {"rsv": 0x40}, 1002),
    ("RSV2", b"x", ws.TEXT, {"rsv": 0x20}, 1002),
    ("RSV3", b"x", ws.TEXT, {"rsv": 0x10}, 1002),
    ("reserved data opcode 0x3", b"x", 0x3, {}, 1002),
    ("reserved data opcode 0x7", b"x", 0x7, {}, 1002),
    ("reserved control opcode 0xB", b"x", 0xB, {}, 1002),
    ("reserved control opcode 0xF", b"x", 0xF, {}, 1002),
    ("an unmasked client frame", b"x", ws.BINARY, {"masked": False}, 1002),
    ("a control payload over 125 bytes", b"x" * 126, ws.PING, {}, 1002),
    ("a fragmented control frame", b"x", ws.PING, {"fin": False}, 1002),
]


@pytest.mark.parametrize("what,payload,opcode,kw,code", ONE_FRAME_CASES,
                         ids=[case[0] for case in ONE_FRAME_CASES])
def test_one_frame_gets_the_right_close_code(echo, what, payload, opcode, kw, code):
    p = Peer(echo)
    p.send_frame(payload, opcode, **kw)
    p.expect_close(code)


def test_invalid_utf8_split_across_fragments_is_1007(echo):
    p = Peer(echo)
    p.send_frame(b"fine \xe2\x82", ws.TEXT, fin=False)  # a valid start of €...
    p.send_frame(b"\x28 bad", ws.CONTINUATION, fin=True)  # ...that goes wrong
    p.expect_close(ws.CloseCode.INVALID_DATA)


def test_a_text_message_that_ends_inside_a_character_is_1007(echo):
    p = Peer(echo)
    p.send_frame(b"cut \xe2\x82", ws.TEXT, fin=False)
    p.send_frame(b"", ws.CONTINUATION, fin=True)
    p.expect_close(ws.CloseCode.INVALID_DATA)


def test_invalid_utf8_fails_before_its_frame_ends(echo):
    """Fail fast: the Close comes while most of the frame is still unsent."""
    p = Peer(echo)
    size = 1 << 20
    key = os.urandom(4)
    head = ws.frame_header(size, ws.TEXT, True, key)
    start = b"\xff" + b"a" * 999
    p.sock.sendall(head + ws.mask(start, key))  # 1,000 of 1,048,576 bytes
    p.expect_close(ws.CloseCode.INVALID_DATA, timeout=5)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1100, 2000, 2999, 5000])
def test_a_close_with_a_bad_code_is_1002(echo, code):
    p = Peer(echo)
    p.send_frame(struct.pack(">H", code), ws.CLOSE)
    p.expect_close(ws.CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 4999])
def test_a_valid_close_is_echoed_and_the_server_closes(echo, code):
    p = Peer(echo)
    p.send_frame(struct.pack(">H", code) + "bye ✓".encode(), ws.CLOSE)
    p.expect_close(code)


def test_a_continuation_without_a_message_and_a_message_inside_another_are_1002(echo):
    p = Peer(echo)
    p.send_frame(b"x", ws.CONTINUATION)
    p.expect_close(ws.CloseCode.PROTOCOL_ERROR)
    p = Peer(echo)
    p.send_frame(b"x", ws.TEXT, fin=False)
    p.send_frame(b"y", ws.BINARY)
    p.expect_close(ws.CloseCode.PROTOCOL_ERROR)


def test_an_oversize_message_is_1009_from_its_header(echo):
    p = Peer(echo)
    p.sock.sendall(ws.frame_header(MAX + 1, ws.BINARY, True, os.urandom(4)))  # no payload
    p.expect_close(ws.CloseCode.TOO_BIG, timeout=5)


def test_an_oversize_fragmented_message_is_1009(echo):
    p = Peer(echo)
    p.send_frame(b"a" * (MAX - 10), ws.BINARY, fin=False)
    p.send_frame(b"b" * 11, ws.CONTINUATION, fin=True)
    p.expect_close(ws.CloseCode.TOO_BIG)


@pytest.mark.parametrize("opcode", [ws.TEXT, ws.BINARY])
def test_16_mib_messages_come_back(echo, opcode):
    p = Peer(echo)
    data = (b"0123456789abcdef" * (MAX // 16))[:MAX]
    assert len(data) == MAX
    p.send_frame(data, opcode)
    got = message(p)
    assert got.text == (opcode == ws.TEXT) and got.data == data
    p.close()


def test_4_mib_in_64_byte_fragments_and_ten_pings(echo):
    """The fair-under-attack limits still let an application do this."""
    p = Peer(echo)
    size = 4 << 20
    key = os.urandom(4)
    chunk = b"q" * 64
    frames = [ws.frame(chunk, ws.BINARY, False, key)]
    cont = ws.frame(chunk, ws.CONTINUATION, False, key)
    frames += [cont] * (size // 64 - 2)
    frames.append(ws.frame(chunk, ws.CONTINUATION, True, key))
    p.sock.sendall(b"".join(ws.frame(b"p%d" % i, ws.PING, True, key) for i in range(10)))
    p.sock.sendall(b"".join(frames))
    for i in range(10):
        assert p.next_event() == ws.Pong(b"p%d" % i)
    got = message(p)
    assert got.data == b"q" * size and not got.text
    p.close()


def test_a_ping_flood_is_closed_1008(echo):
    p = Peer(echo)
    key = os.urandom(4)
    p.sock.sendall(b"".join(ws.frame(b"", ws.PING, True, key) for _ in range(500)))
    p.expect_close(ws.CloseCode.POLICY_VIOLATION)


def test_the_tcp_side_echoes_u16_frames_on_the_same_port(echo):
    s = socket.create_connection(("127.0.0.1", echo), timeout=10)
    frames = [b"\x00first", b"x" * 0x40FF, b"last"]
    s.sendall(b"".join(encode_frame(f) for f in frames))
    parser = FrameParser(0xFFFF)
    got = []
    while len(got) < 3:
        got += parser.feed(s.recv(65536))
    assert got == frames
    s.close()


def test_shutdown_says_going_away_1001():
    proc, port = start_echo()
    try:
        p = Peer(port)
        p.send_frame(b"hi", ws.TEXT)
        assert message(p).data == b"hi"
        proc.send_signal(signal.SIGTERM)
        p.expect_close(ws.CloseCode.GOING_AWAY)
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
