"""What fuzzing the sans-IO parsers feeds them, and the rule they must keep.

The rule: **whatever bytes arrive, a parser returns results or raises its own
``ProtocolError``** (netcore's ``FrameError``, ``HttpError``,
``WebSocketError``, the game's ``BadMessage``), never anything else. Each
*driver* here pushes one input through one parser the way the server does,
split into chunks at the given cut points, and uses what comes out (a
parsed HTTP request's body framing, keep-alive, WebSocket handshake), so a
bug that only shows when a result is used is found too.

Two users: the hypothesis tests (tests/test_server_fuzz_parsers.py,
tests/test_protocol_fuzz.py), bounded and quick, and ``bench/fuzz.py``,
which mutates :data:`CORPUS` a million times per parser.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Callable, Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/fuzz.py imports this file from outside pytest
    sys.path.insert(0, ROOT)

import spelltraction as st  # noqa: E402
from netcore import FrameParser, ProtocolError, WholeFrames  # noqa: E402
from netcore import http, websocket as ws  # noqa: E402

Driver = Callable[[bytes, Sequence[int]], None]


def chunks(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    """``data`` cut at the offsets ``cuts`` (any ints: taken modulo its length + 1)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def drive_frames(data: bytes, cuts: Sequence[int]) -> None:
    """The game's TCP framing (max 256), streamed; and WholeFrames on the whole."""
    parser = FrameParser(max_frame=st.MAX_CLIENT_FRAME)
    try:
        for chunk in chunks(data, cuts):
            for payload in parser.feed(chunk):
                assert 1 <= len(payload) <= st.MAX_CLIENT_FRAME
    except ProtocolError:
        pass
    try:
        WholeFrames(st.MAX_CLIENT_FRAME).feed(data)
    except ProtocolError:
        pass


def drive_http(data: bytes, cuts: Sequence[int]) -> None:
    """Request heads, streamed; each request's framing used as the server uses it."""
    parser = http.RequestParser()
    try:
        for chunk in chunks(data, cuts):
            parser.feed(chunk)
            while True:
                request = parser.next_request()
                if request is None:
                    break
                _ = (request.path, request.keep_alive, request.has_body,
                     request.tokens("connection"), request.header("host"))
                if "websocket" in request.tokens("upgrade"):
                    ws.handshake_response(request)
                    parser.take_rest()
    except ProtocolError:
        pass


def drive_ws_server(data: bytes, cuts: Sequence[int]) -> None:
    """A server's WebSocket parser (masked frames in), at the game's 4 KiB message cap."""
    _drive_ws(ws.WebSocketParser(max_message=st.WS_MAX_MESSAGE), data, cuts)


def drive_ws_client(data: bytes, cuts: Sequence[int]) -> None:
    """A client's WebSocket parser (unmasked frames in), as bots and the kit use it."""
    _drive_ws(ws.WebSocketParser(max_message=1 << 16, client=True), data, cuts)


def _drive_ws(parser: ws.WebSocketParser, data: bytes, cuts: Sequence[int]) -> None:
    try:
        for chunk in chunks(data, cuts):
            for event in parser.parse(chunk):
                if isinstance(event, ws.Message) and not event.text:
                    WholeFrames(st.MAX_CLIENT_FRAME).feed(event.data)
    except ProtocolError:
        pass


def drive_decode(data: bytes, cuts: Sequence[int] = ()) -> None:
    """The game's message decoder on one payload."""
    try:
        msg = st.decode(data)
    except ProtocolError:
        return
    assert st.encode(msg) == data or isinstance(msg, st.Error), (data, msg)


# -- the cluster bus: what arrives through Redis, from anyone who can PUBLISH -----


def drive_bus(data: bytes, cuts: Sequence[int] = ()) -> None:
    """The bus decoders alone: the head, the entries from any offset, the checks."""
    try:
        st.bus_head(data)
    except st.BadMessage:
        pass
    for offset in [st.BUS_HEAD.size] + [c % (len(data) + 1) for c in cuts]:
        try:
            entries = st.bus_entries(data, offset)
        except st.BadMessage:
            continue
        assert b"".join(st.bus_entry(*e) for e in entries) == data[offset:]
        try:
            st.check_private_entries(entries)
        except st.BadMessage:
            pass
    for check in (st.bus_gateway, st.check_tick_message):
        try:
            check(data)
        except st.BadMessage:
            pass


class FakeFront(st.FrontSide):
    """A gateway's Front as far as the bus's paths use one: it records what it is told."""

    def __init__(self) -> None:
        self.told: List[str] = []
        self.v2_conns: Dict[object, None] = {}

    def welcome(self, peer: object, handle: object, frames: bytes, nframes: int,
                v2: bool) -> None:
        self.told.append("welcome")

    def send(self, conn: object, frames: bytes, nframes: int) -> None:
        self.told.append("send")

    def drop(self, peer: object, code: int, text: str, reason: str) -> None:
        assert code in st.WS_CLOSE_CODES, code  # the real Front answers every ERROR code
        self.told.append("drop")

    def tick(self, shared: bytes, nframes: int, news: bytes, yous: List[Tuple[object, bytes]],
             everyone: List[object]) -> None:
        self.told.append("tick")


class BusRoles:
    """An authority and a gateway in this process, with no Redis: fed bus
    messages as their subscribers would feed them. Rebuilt every so often so
    a million inputs do not pile up players, links and queued callbacks."""

    EVERY = 300

    def __init__(self) -> None:
        self.used = self.EVERY

    def fresh(self) -> "BusRoles":
        self.used += 1
        if self.used >= self.EVERY:
            from netcore import EventLoop
            from netcore.redis import RedisAddress

            self.used = 0
            loop = EventLoop()
            opts = st.ServerOptions(data=None, port=0)
            where = RedisAddress("127.0.0.1", 1)
            self.authority = st.Authority(loop, opts, st.ClusterOptions("fuzz"), where)
            self.gateway = st.Gateway(loop, opts, st.ClusterOptions("fuzz"), where)
            self.gateway.bus.redis.execute = lambda *args, **kw: None  # type: ignore[method-assign]
        return self


_ROLES = BusRoles()


def drive_bus_authority(data: bytes, cuts: Sequence[int] = ()) -> None:
    """An up message (a gateway's HELLOs, MOVEs, leaves) into the authority."""
    authority = _ROLES.fresh().authority
    try:
        authority._on_bus_message(authority.bus.up_channel, data)
    except st.BadMessage:
        pass


def drive_bus_gateway(data: bytes, cuts: Sequence[int] = ()) -> None:
    """A TICK or private message into a gateway holding players 1-3 (2 is v2),
    at the message's own epoch (so it is heard, not held), and the TICK sent."""
    gateway = _ROLES.fresh().gateway
    bus = gateway.world_bus
    bus.front = FakeFront()  # type: ignore[assignment]
    seats = {}
    for cid in (1, 2, 3):
        hello = st.frame(st.Hello(st.PROTOCOL_V2 if cid == 2 else st.PROTOCOL_VERSION))[2:]
        seat = seats[cid] = st._Seat(cid, b"\x00" + hello, f"peer-{cid}")  # type: ignore[arg-type]
        seat.welcomed = cid != 3
    bus.seats = seats
    bus.players = {s.peer: None for s in seats.values() if s.welcomed}
    bus.hellos = {s.peer: s for s in seats.values() if not s.welcomed}
    bus._tick_due, bus._held, bus._checking = None, [], False
    if len(data) >= st.BUS_HEAD.size:
        bus.epoch = st.BUS_HEAD.unpack_from(data)[2]
    channel = bus.private if cuts and cuts[0] % 2 else gateway.bus.down_channel
    if len(data) > 1 and data[1] == st.BUS_PRIVATE and not (cuts and cuts[0] % 3 == 0):
        channel = bus.private
    try:
        gateway._on_bus_message(channel, data)
    except st.BadMessage:
        pass
    bus._send_due_tick()  # no error at all: what is due was checked whole


DRIVERS: Dict[str, Driver] = {
    "framing": drive_frames,
    "http": drive_http,
    "websocket-server": drive_ws_server,
    "websocket-client": drive_ws_client,
    "decode": drive_decode,
    "bus": drive_bus,
    "bus-authority": drive_bus_authority,
    "bus-gateway": drive_bus_gateway,
}


# -- the seed corpus: valid inputs, and the known-tricky ones ----------------------

KEY = b"x3JJHMbDL1EzLkh9GBhXDw=="
_MASK = b"\x11\x22\x33\x44"


def _req(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return b"\r\n".join((line,) + fields) + b"\r\n\r\n"


_UPGRADE = (b"Host: x", b"Upgrade: websocket", b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + KEY, b"Sec-WebSocket-Version: 13")

# Content-Length values that tripped int(): the list and neighbours.
TRICKY_LENGTHS = (b"5", b"0", b"\xc2\xb2", b"\xd9\xa3", b"+5", b"-1", b" 5 ", b"1_0",
                  b"0x10", b"5, 5", b"1, 1", b"9" * 4301, b"0" * 5000 + b"1", b"", b"\xb2",
                  b"-5", b"5 5", b"\xa05", b" 5", b"5 ")
# The lengths of those that are one (OWS, SP and HTAB, around a value is not
# part of it; a list of equal values is that value); every other is a 400.
TRICKY_VALID = {b"5": 5, b"0": 0, b" 5 ": 5, b"5, 5": 5, b"1, 1": 1, b" 5": 5, b"5 ": 5}


def _ws_samples(masked: bool) -> List[bytes]:
    key = _MASK if masked else None
    return [
        ws.frame(st.frame(st.Hello()), mask_key=key),
        ws.frame(st.frame(st.Move(1, 2, 3)) * 3, mask_key=key),
        ws.frame(b"ping!", ws.PING, mask_key=key),
        ws.frame(b"", ws.PONG, mask_key=key),
        ws.frame(ws.close_payload(1000, "bye"), ws.CLOSE, mask_key=key),
        ws.frame(b"\x03\xe8\xff", ws.CLOSE, mask_key=key),  # bad UTF-8 reason
        ws.frame(b"ab", ws.BINARY, fin=False, mask_key=key)
        + ws.frame(b"", ws.PING, mask_key=key)
        + ws.frame(b"", ws.CONTINUATION, fin=False, mask_key=key)
        + ws.frame(b"cd", ws.CONTINUATION, mask_key=key),
        ws.frame("h\u00e9".encode(), ws.TEXT, mask_key=key),
        ws.frame(b"\xce", ws.TEXT, fin=False, mask_key=key)
        + ws.frame(b"\xbb", ws.CONTINUATION, mask_key=key),
        ws.frame(b"x" * 200, mask_key=key),
        ws.frame(b"x" * 70000, mask_key=key)[:20],  # a 64-bit length header
        bytes([0x82, 0xFF]) + b"\xff" * 8 + _MASK,
    ]


CORPUS: Dict[str, List[bytes]] = {
    "framing": [
        st.frame(st.Hello()), st.frame(st.Move(7, 100, 200)) * 4, b"\x00\x00",
        b"\x01\x00" + b"x" * 256, b"\x00\xff" + b"y" * 255, b"GET / HTTP/1.1\r\n",
        st.frame(st.Hello())[:3],
    ],
    "http": [
        _req(b"Host: x"),
        _req(b"Host: x", line=b"HEAD /index.html?x=1 HTTP/1.1"),
        _req(b"Host: x") + _req(b"Host: y", line=b"GET /healthz HTTP/1.1"),
        _req(line=b"GET http://x/a HTTP/1.0"),
        _req(*_UPGRADE, line=b"GET /ws HTTP/1.1") + ws.frame(b"\n\n", mask_key=_MASK),
        _req(b"Host: x", b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.1"),
        _req(b"Host: x", b"Connection: keep-alive, close", b"X: \t y"),
        b"\r\n\r\n" + _req(b"Host: x"),
    ] + [_req(b"Host: x", b"Content-Length: " + v, line=b"POST / HTTP/1.1")
         for v in TRICKY_LENGTHS]
      + [_req(b"Host: x", b"Content-Length: 5", b"Content-Length: " + v) for v in (b"5", b"6")],
    "websocket-server": _ws_samples(masked=True),
    "websocket-client": _ws_samples(masked=False),
    "decode": [st.encode(m) for m in (
        st.Hello(), st.Move(1, 2, 3), st.Welcome(1, 2, 3), st.Scored(1, "A", "B", 3),
        st.You(1, 2, 3, 4, "ABC"), st.Stats(1, 2, 3, 4, 5, 6), st.Error(3, "full \u00e9"),
        st.TickMsg(9, 255, 0, "ABCDEFGHIJKL", 2, tuple(range(12)),
                   (st.Mover(1, 2, 3, 0, 0xFF00FF),), (4, 5)),
    )],
}

def _bus_samples() -> Dict[str, List[bytes]]:
    entry, pack = st.bus_entry, st.bus_pack
    me = bytes([4]) + b"gw-1"
    at = bytes([9]) + b"192.0.2.1"  # a HELLO entry: the client's address, then its HELLO
    hello1 = at + st.frame(st.Hello())[2:]
    hello2 = at + st.frame(st.Hello(st.PROTOCOL_V2, token=b"t" * 16, name=b"Ann"))[2:]
    move = st.frame(st.Move(1, 20, 30))[2:]
    up = [pack(st.BUS_BATCH, 1, 2, me + entry(1, st.OP_HELLO, hello1)
               + entry(2, st.OP_HELLO, hello2) + entry(1, st.OP_MOVE, move)
               + entry(3, st.OP_LEAVE)),
          pack(st.BUS_FULL, 1, 1, me + entry(1, st.OP_HELLO, hello1) + entry(2, st.OP_HELLO, hello2)),
          pack(st.BUS_BATCH, 1, 3, me), pack(st.BUS_BATCH, 1, 4, me + entry(1, st.OP_MOVE, move))]
    tick = st.frame(st.TickMsg(9, 0, 0, "ABCDEFGHIJKL", 0, (0,) * 12))
    stats = st.frame(st.Stats(1, 2, 3, 4, 5, 6))
    shared = tick + stats
    fame = st.frame(st.Fame(()))
    welcome1 = st.frame(st.Welcome(7, 1, 2)) + st.frame(st.You(1, 2, 3, 0, "ABC")) + stats
    welcome2 = st.frame(st.Welcome(8, 1, 2, version=st.PROTOCOL_V2, token=b"k" * 16)) \
        + st.frame(st.You(1, 2, 3, 0, "ABC")) + stats + fame
    close = st._BUS_CLOSE.pack(5, 1008, 5, 4) + b"floodtext"
    down = [pack(st.BUS_TICK, 1, 5, st.BUS_TICK_HEAD.pack(9, 2, 3, len(shared), 1.5) + shared
                 + fame),
            pack(st.BUS_PRIVATE, 1, 1, entry(1, st.OP_SEND, b"\x03" + welcome1)
                 + entry(2, st.OP_SEND, b"\x04" + welcome2)
                 + entry(3, st.OP_YOU, st.frame(st.You(1, 2, 3, 4, "ABC")))
                 + entry(1, st.OP_CLOSE, close) + entry(0, st.OP_RESYNC)),
            pack(st.BUS_PRIVATE, 1, 2, entry(2, st.OP_CLOSE, st._BUS_CLOSE.pack(1, 0, 0, 0))
                 + entry(3, st.OP_SEND, b"\x01" + stats))]
    return {"bus": up + down, "bus-authority": up, "bus-gateway": down}


CORPUS.update(_bus_samples())

INTERESTING = [b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b":", b",", b" ", b"\x80", b"\x7f",
               b"\xc2\xb2", b"9" * 40, b"Content-Length: ", b"\x88\x02", b"\x00\x00\x00"]


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    """One to four random edits of ``data``: flips, inserts, deletes, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 2:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 3:
            buf[at:at] = rng.choice(INTERESTING)
        elif op == 4:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            buf[at:] = other[start:]
        elif op == 5 and buf:
            buf[at:at] = buf[at:at + rng.randint(1, 64)] * rng.randint(1, 8)
        else:
            buf[at:at + 1] = bytes([rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))])
    return bytes(buf)
