"""A client written from docs/PROTOCOL.md alone.

It imports nothing from the game or netcore: only the socket and struct
modules and what the document says. If this test passes, the document is
enough to write a client from.
"""

import socket
import struct
import time

from serverproc import ServerProcess


class DocClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, payload):
        self.sock.sendall(struct.pack(">H", len(payload)) + payload)

    def hello(self):
        # HELLO: u8 0x01, u16 version 1, u8 shape 0xFF (any), u32 colour 0xFFFFFFFF (any)
        self.send(struct.pack(">BHBI", 0x01, 1, 0xFF, 0xFFFFFFFF))

    def move(self, seq, x, y):
        self.send(struct.pack(">BHHH", 0x02, seq, x, y))

    def next_message(self, deadline):
        while True:
            if len(self.buf) >= 2:
                (length,) = struct.unpack(">H", self.buf[:2])
                if len(self.buf) >= 2 + length:
                    payload = self.buf[2 : 2 + length]
                    self.buf = self.buf[2 + length :]
                    return payload
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            self.buf += data

    def until(self, kind, deadline):
        while time.monotonic() < deadline:
            payload = self.next_message(deadline)
            if payload[0] == kind:
                return payload
        raise AssertionError(f"no message 0x{kind:02x} in time")


def parse_tick(p):
    number, attractor, held = struct.unpack_from(">IBB", p, 1)
    board = p[7:19].decode("ascii")
    (players,) = struct.unpack_from(">I", p, 19)
    counts = struct.unpack_from(">12I", p, 23)
    m = p[71]
    movers = [struct.unpack_from(">IHHBBBB", p, 72 + 12 * i) for i in range(m)]
    g = p[72 + 12 * m]
    gone = struct.unpack_from(f">{g}I", p, 73 + 12 * m)
    assert len(p) == 73 + 12 * m + 4 * g
    return number, attractor, held, board, players, counts, movers, gone


def test_a_doc_written_client_joins_moves_sees_the_attractor_and_a_score():
    with ServerProcess("--tick-ms", "20") as server:
        deadline = time.monotonic() + 30
        a, b = DocClient(server.port), DocClient(server.port)
        ids = []
        for c in (a, b):
            c.hello()
            welcome = c.until(0x81, deadline)
            assert len(welcome) == 21
            version, pid, shape, colour, tick_ms, cols, rows, cell, hold, stats_every, k = \
                struct.unpack(">HIBIHBBHBBB", welcome[1:])
            assert (version, tick_ms, cols, rows, cell, hold, stats_every) == (1, 20, 4, 3, 117, 20, 51)
            ids.append(pid)
            you = c.until(0x84, deadline)
            seq, x, y, score = struct.unpack_from(">HHHI", you, 1)
            letters = you[11:14].decode()
            assert score == 0 and len(set(letters)) == 3
        assert ids[0] != ids[1]

        # Both players walk into cell 6 (column 2, row 1).
        a.move(1, 2 * 117 + 10, 117 + 10)
        b.move(1, 2 * 117 + 50, 117 + 80)
        you = a.until(0x84, deadline)
        assert struct.unpack_from(">HHH", you, 1) == (1, 244, 127), "the move is echoed"

        saw_attractor = False
        board_before = None
        while True:
            payload = b.next_message(deadline)
            if payload[0] == 0x82:
                number, attractor, held, board, players, counts, movers, gone = parse_tick(payload)
                assert players == 2 and sum(counts) == 2
                if attractor == 6:
                    saw_attractor = True
                    board_before = board
                    assert 1 <= held <= 20
            elif payload[0] == 0x83:
                cell, old, new, scorers = struct.unpack(">BBBI", payload[1:])
                assert saw_attractor and cell == 6
                assert chr(old) == board_before[6] and chr(new) != chr(old)
                break
        tick = parse_tick(b.until(0x82, deadline))
        assert tick[3][6] == chr(new), "the board shows the new letter"
