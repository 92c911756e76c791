#!/usr/bin/env python3
"""SpellTraction: a massively multiplayer letter game on netcore.

Players move markers on a 4x3 board of letters. Wherever the crowd is
biggest, the attractor goes; hold a cell long enough and its letter scores
for everyone who holds it. The original (2012) ran 15,000+ players in one
ActionScript process; this is the same game in Python, standard library
only, server-authoritative, and built so the bytes per player per tick stay
bounded however many play.

One file, read top-down: protocol -> rules -> server -> bots -> clients -> CLI.

    python3 spelltraction.py                    # serve on 0.0.0.0:12150
    python3 spelltraction.py bots --count 2000  # load-test it
"""

from __future__ import annotations

import argparse
import base64
import errno
import heapq
import json
import logging
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import time
from array import array
from typing import IO, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from netcore import (
    CloseReason,
    Connection,
    EventLoop,
    Handler,
    ProtocolError,
    ServerConfig,
    TCPServer,
    Tick,
    WebConfig,
    WebFront,
    WebSocketCodec,
    WholeFrames,
    encode_frame,
)
from netcore import websocket as ws
from netcore.sniff import HTTP, WEBSOCKET

__version__ = "0.1.0"

log = logging.getLogger("spelltraction")

# =============================================================================
# Protocol (docs/PROTOCOL.md): constants, messages, encode/decode. Sans-IO.
# =============================================================================

PROTOCOL_VERSION = 1
DEFAULT_PORT = 12150
WS_PATH = "/ws"  # WebSocket: binary messages carry the same frames as TCP
WS_MAX_MESSAGE = 4096  # largest WebSocket message from a client: whole frames only
WEB_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
COLS, ROWS, CELL_PX = 4, 3, 117
CELLS = COLS * ROWS
BOARD_W, BOARD_H = COLS * CELL_PX, ROWS * CELL_PX
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # all 26: the original never dealt 'Z'
HAND_SIZE = 3
HOLD_TICKS = 20  # the attractor scores when it has held a cell for more than this
STATS_EVERY = 51  # ticks between STATS broadcasts, as the original
MAX_MOVERS = 16  # K: most movers (and most departures) one TICK lists
MAX_CLIENT_FRAME = 256
MAX_ERROR_TEXT = 200
PARKED = 0xFF
ANY_SHAPE = 0xFF
ANY_COLOUR = 0xFFFFFFFF
SHAPES = ("circle", "square", "triangle", "diamond")
MOVE_BUCKET = 4  # moves a player may bank; refilled by one per tick
FLOOD_MESSAGES = 32  # more than this many messages in one tick: disconnect

# Message types: high bit set = server -> client.
HELLO, MOVE = 0x01, 0x02
WELCOME, TICK, SCORED, YOU, STATS, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x8F


class ErrorCode:
    VERSION = 1
    BAD_MESSAGE = 2
    SERVER_FULL = 3
    SHUTDOWN = 4
    FLOOD = 5
    HELLO_TIMEOUT = 6
    BAD_FRAME = 7


# The WebSocket close code that follows each ERROR (BAD_FRAME takes the
# code of the framing error itself: 1002, 1007, 1009...).
WS_CLOSE_CODES = {
    ErrorCode.VERSION: ws.CloseCode.PROTOCOL_ERROR,
    ErrorCode.BAD_MESSAGE: ws.CloseCode.PROTOCOL_ERROR,
    ErrorCode.SERVER_FULL: ws.CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SHUTDOWN: ws.CloseCode.GOING_AWAY,
    ErrorCode.FLOOD: ws.CloseCode.POLICY_VIOLATION,
    ErrorCode.HELLO_TIMEOUT: ws.CloseCode.POLICY_VIOLATION,
    ErrorCode.BAD_FRAME: ws.CloseCode.PROTOCOL_ERROR,
}


class BadMessage(ProtocolError):
    """A frame that is not a valid message (type, length or content)."""

    reason = "bad-message"


class Hello(NamedTuple):
    version: int = PROTOCOL_VERSION
    shape: int = ANY_SHAPE
    colour: int = ANY_COLOUR


class Move(NamedTuple):
    seq: int
    x: int
    y: int


class Welcome(NamedTuple):
    player_id: int
    shape: int
    colour: int
    version: int = PROTOCOL_VERSION
    tick_ms: int = 250
    cols: int = COLS
    rows: int = ROWS
    cell_px: int = CELL_PX
    hold_ticks: int = HOLD_TICKS
    stats_every: int = STATS_EVERY
    max_movers: int = MAX_MOVERS


class Mover(NamedTuple):
    player_id: int
    x: int
    y: int
    shape: int
    colour: int


class TickMsg(NamedTuple):
    number: int
    attractor: int  # cell, or PARKED
    held: int
    board: str  # 12 letters, cell 0 first
    players: int
    counts: Tuple[int, ...]  # 12 per-cell player counts
    movers: Tuple[Mover, ...] = ()
    gone: Tuple[int, ...] = ()


class Scored(NamedTuple):
    cell: int
    old: str
    new: str
    scorers: int


class You(NamedTuple):
    seq: int
    x: int
    y: int
    score: int
    letters: str


class Stats(NamedTuple):
    connections: int
    players: int
    uptime_s: int
    rss_kb: int
    start_rss_kb: int
    tick_p99_us: int


class Error(NamedTuple):
    code: int
    text: str


Message = Union[Hello, Move, Welcome, TickMsg, Scored, You, Stats, Error]

_HELLO = struct.Struct(">BHBI")
_MOVE = struct.Struct(">BHHH")
_WELCOME = struct.Struct(">BHIBIHBBHBBB")
_TICK_HEAD = struct.Struct(">BIBB12sI12IB")
_MOVER = struct.Struct(">IHHBBBB")
_SCORED = struct.Struct(">BBBBI")
_YOU = struct.Struct(">BHHHI3s")
_STATS = struct.Struct(">B6I")
_ERROR_HEAD = struct.Struct(">BB")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
# YOU with its frame header: the one message encoded per player.
_YOU_FRAMED = struct.Struct(">HBHHHI3s")
_YOU_FRAME_LEN = _YOU.size


def _rgb(colour: int) -> Tuple[int, int, int]:
    return (colour >> 16) & 0xFF, (colour >> 8) & 0xFF, colour & 0xFF


def _letters(raw: bytes, what: str) -> str:
    if any(not 65 <= b <= 90 for b in raw):
        raise BadMessage(f"{what}: letters must be A-Z, got {raw!r}")
    return raw.decode("ascii")


def encode(msg: Message) -> bytes:
    """The payload of one message (frame it with ``encode_frame``)."""
    if isinstance(msg, Hello):
        return _HELLO.pack(HELLO, msg.version, msg.shape, msg.colour)
    if isinstance(msg, Move):
        return _MOVE.pack(MOVE, msg.seq, msg.x, msg.y)
    if isinstance(msg, Welcome):
        return _WELCOME.pack(
            WELCOME, msg.version, msg.player_id, msg.shape, msg.colour, msg.tick_ms,
            msg.cols, msg.rows, msg.cell_px, msg.hold_ticks, msg.stats_every, msg.max_movers,
        )
    if isinstance(msg, TickMsg):
        parts = [
            _TICK_HEAD.pack(
                TICK, msg.number, msg.attractor, msg.held, msg.board.encode("ascii"),
                msg.players, *msg.counts, len(msg.movers),
            )
        ]
        for m in msg.movers:
            parts.append(_MOVER.pack(m.player_id, m.x, m.y, m.shape, *_rgb(m.colour)))
        parts.append(_U8.pack(len(msg.gone)))
        parts.extend(_U32.pack(g) for g in msg.gone)
        return b"".join(parts)
    if isinstance(msg, Scored):
        return _SCORED.pack(SCORED, msg.cell, ord(msg.old), ord(msg.new), msg.scorers)
    if isinstance(msg, You):
        return _YOU.pack(YOU, msg.seq, msg.x, msg.y, msg.score, msg.letters.encode("ascii"))
    if isinstance(msg, Stats):
        return _STATS.pack(
            STATS, msg.connections, msg.players, msg.uptime_s, msg.rss_kb,
            msg.start_rss_kb, msg.tick_p99_us,
        )
    if isinstance(msg, Error):
        text = msg.text.encode("utf-8")[:MAX_ERROR_TEXT]
        return _ERROR_HEAD.pack(ERROR, msg.code) + text
    raise TypeError(f"not a message: {msg!r}")


def _expect(payload: bytes, size: int, name: str) -> None:
    if len(payload) != size:
        raise BadMessage(f"{name} must be {size} bytes, got {len(payload)}")


def decode(payload: bytes) -> Message:
    """Parse one frame payload; raises :class:`BadMessage` with the reason."""
    if not payload:
        raise BadMessage("empty message")
    kind = payload[0]
    if kind == HELLO:
        _expect(payload, _HELLO.size, "HELLO")
        _, version, shape, colour = _HELLO.unpack(payload)
        return Hello(version, shape, colour)
    if kind == MOVE:
        _expect(payload, _MOVE.size, "MOVE")
        _, seq, x, y = _MOVE.unpack(payload)
        return Move(seq, x, y)
    if kind == WELCOME:
        _expect(payload, _WELCOME.size, "WELCOME")
        (_, version, pid, shape, colour, tick_ms, cols, rows, cell_px, hold, stats_every,
         max_movers) = _WELCOME.unpack(payload)
        return Welcome(pid, shape, colour, version, tick_ms, cols, rows, cell_px, hold,
                       stats_every, max_movers)
    if kind == TICK:
        return _decode_tick(payload)
    if kind == SCORED:
        _expect(payload, _SCORED.size, "SCORED")
        _, cell, old, new, scorers = _SCORED.unpack(payload)
        return Scored(cell, _letters(bytes([old]), "SCORED"), _letters(bytes([new]), "SCORED"),
                      scorers)
    if kind == YOU:
        _expect(payload, _YOU.size, "YOU")
        _, seq, x, y, score, letters = _YOU.unpack(payload)
        return You(seq, x, y, score, _letters(letters, "YOU"))
    if kind == STATS:
        _expect(payload, _STATS.size, "STATS")
        return Stats(*_STATS.unpack(payload)[1:])
    if kind == ERROR:
        if len(payload) < 2:
            raise BadMessage("ERROR must be at least 2 bytes")
        return Error(payload[1], payload[2:].decode("utf-8", "replace"))
    raise BadMessage(f"unknown message type 0x{kind:02x}")


def _decode_tick(payload: bytes) -> TickMsg:
    head = _TICK_HEAD.size
    if len(payload) < head + 1:
        raise BadMessage(f"TICK must be at least {head + 1} bytes, got {len(payload)}")
    fields = _TICK_HEAD.unpack_from(payload)
    number, attractor, held, board, players = fields[1:6]
    counts = tuple(fields[6:18])
    n_movers = fields[18]
    pos = head
    if len(payload) < pos + n_movers * _MOVER.size + 1:
        raise BadMessage(f"TICK lists {n_movers} movers but is {len(payload)} bytes")
    movers = []
    for _ in range(n_movers):
        pid, x, y, shape, r, g, b = _MOVER.unpack_from(payload, pos)
        movers.append(Mover(pid, x, y, shape, (r << 16) | (g << 8) | b))
        pos += _MOVER.size
    n_gone = payload[pos]
    pos += 1
    if len(payload) != pos + 4 * n_gone:
        raise BadMessage(f"TICK lists {n_gone} departures but has {len(payload) - pos} bytes left")
    gone = tuple(_U32.unpack_from(payload, pos + 4 * i)[0] for i in range(n_gone))
    return TickMsg(number, attractor, held, _letters(board, "TICK"), players, counts,
                   tuple(movers), gone)


def frame(msg: Message) -> bytes:
    """One message, encoded and framed, ready to send."""
    return encode_frame(encode(msg))


def error_frame(code: int, text: str) -> bytes:
    return frame(Error(code, text))


def cell_of(x: int, y: int) -> int:
    return (y // CELL_PX) * COLS + (x // CELL_PX)


def cell_centre(cell: int) -> Tuple[int, int]:
    return (cell % COLS) * CELL_PX + CELL_PX // 2, (cell // COLS) * CELL_PX + CELL_PX // 2


# =============================================================================
# Rules: the game state and one step per tick. Pure: no I/O, seeded RNG.
# =============================================================================


class Player:
    """One player. Slots only: there may be 100,000 of these."""

    __slots__ = (
        "id", "shape", "colour", "x", "y", "cell", "letters", "score", "seq",
        "tokens", "token_tick", "dirty", "moved", "conn",
    )

    def __init__(self, pid: int, shape: int, colour: int, letters: str, x: int, y: int) -> None:
        self.id = pid
        self.shape = shape
        self.colour = colour
        self.letters = letters
        self.x = x
        self.y = y
        self.cell = cell_of(x, y)
        self.score = 0
        self.seq = 0  # last accepted move's seq, echoed in YOU
        self.tokens = MOVE_BUCKET
        self.token_tick = 0
        self.dirty = False  # YOU must be sent at the next tick
        self.moved = False  # listed among this tick's movers already
        self.conn: Any = None  # the server's connection, if any

    def __repr__(self) -> str:
        return f"<Player {self.id} at ({self.x},{self.y}) {self.letters} score={self.score}>"


class StepResult(NamedTuple):
    tick: int
    scored: Optional[Scored]
    movers: List[Player]  # at most MAX_MOVERS, in order of their first move
    gone: List[int]  # at most MAX_MOVERS ids
    dirty: List[Player]  # players whose YOU changed (present players only)


class Game:
    """The board, the players and the attractor, advanced one tick at a time."""

    def __init__(self, rng: Optional[random.Random] = None, hold_ticks: int = HOLD_TICKS,
                 max_movers: int = MAX_MOVERS) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.hold_ticks = hold_ticks
        self.max_movers = max_movers
        self.board: List[str] = self.rng.sample(LETTERS, CELLS)
        self.players: Dict[int, Player] = {}
        self.counts = [0] * CELLS
        self.attractor = PARKED
        self.held = 0
        self.tick = 0
        self.letters_scored = 0
        self.moves_accepted = 0
        self.moves_limited = 0
        self._next_id = 1
        self._movers: List[Player] = []
        self._gone: List[int] = []
        self._dirty: List[Player] = []

    # -- players ------------------------------------------------------------

    def join(self, shape: int = ANY_SHAPE, colour: int = ANY_COLOUR,
             at: Optional[Tuple[int, int]] = None) -> Player:
        rng = self.rng
        if not 0 <= shape < len(SHAPES):
            shape = rng.randrange(len(SHAPES))
        if not 0 <= colour <= 0xFFFFFF:
            colour = rng.choice(PALETTE)
        x, y = at if at is not None else (rng.randrange(BOARD_W), rng.randrange(BOARD_H))
        x, y = _clamp(x, y)
        player = Player(self._next_id, shape, colour, _hand("".join(rng.sample(LETTERS, HAND_SIZE))),
                        x, y)
        player.token_tick = self.tick
        self._next_id += 1
        self.players[player.id] = player
        self.counts[player.cell] += 1
        self._mark_moved(player)  # a newcomer shows up among the tick's movers
        # Not marked dirty: the caller delivers the first YOU with WELCOME.
        return player

    def leave(self, player: Player) -> None:
        if self.players.pop(player.id, None) is None:
            return
        self.counts[player.cell] -= 1
        player.cell = -1  # also tells step() to skip it in movers/dirty
        self._gone.append(player.id)

    def move(self, player: Player, seq: int, x: int, y: int) -> bool:
        """Apply a move, clamped to the board and rate-limited. True if taken."""
        if player.cell < 0:
            return False
        if player.token_tick != self.tick:
            player.tokens = min(MOVE_BUCKET, player.tokens + self.tick - player.token_tick)
            player.token_tick = self.tick
        if player.tokens <= 0:
            self.moves_limited += 1
            return False
        player.tokens -= 1
        self.moves_accepted += 1
        x, y = _clamp(x, y)
        player.x = x
        player.y = y
        player.seq = seq
        cell = cell_of(x, y)
        if cell != player.cell:
            self.counts[player.cell] -= 1
            self.counts[cell] += 1
            player.cell = cell
        self._mark_moved(player)
        self._mark_dirty(player)
        return True

    def _mark_moved(self, player: Player) -> None:
        if not player.moved:
            player.moved = True
            self._movers.append(player)

    def _mark_dirty(self, player: Player) -> None:
        if not player.dirty:
            player.dirty = True
            self._dirty.append(player)

    # -- the tick -----------------------------------------------------------

    def step(self) -> StepResult:
        self.tick += 1
        counts = self.counts
        best = max(counts)
        target = counts.index(best) if best >= 2 and counts.count(best) == 1 else PARKED
        if target == PARKED:
            self.attractor, self.held = PARKED, 0
        elif target == self.attractor:
            self.held += 1
        else:
            self.attractor, self.held = target, 1
        scored = None
        if self.attractor != PARKED and self.held > self.hold_ticks:
            scored = self._score(self.attractor)
            self.attractor, self.held = PARKED, 0

        movers = self._movers
        for p in movers:
            p.moved = False
        present = [p for p in movers if p.cell >= 0]
        dirty = self._dirty
        for p in dirty:
            p.dirty = False
        result = StepResult(
            self.tick,
            scored,
            present[-self.max_movers:],
            self._gone[-self.max_movers:],
            [p for p in dirty if p.cell >= 0],
        )
        self._movers, self._gone, self._dirty = [], [], []
        return result

    def _score(self, cell: int) -> Scored:
        rng = self.rng
        board = self.board
        old = board[cell]
        new = rng.choice([c for c in LETTERS if c not in board])
        board[cell] = new
        scorers = 0
        for p in self.players.values():
            if old in p.letters:
                fresh = rng.choice([c for c in LETTERS if c not in p.letters])
                p.letters = _hand(p.letters.replace(old, fresh))
                p.score += 1
                scorers += 1
                self._mark_dirty(p)
        self.letters_scored += 1
        return Scored(cell, old, new, scorers)

    def check(self) -> None:
        """Assert every invariant (tests call this after each step)."""
        assert len(self.board) == CELLS and len(set(self.board)) == CELLS
        assert all(c in LETTERS for c in self.board)
        counts = [0] * CELLS
        for p in self.players.values():
            assert len(p.letters) == HAND_SIZE and len(set(p.letters)) == HAND_SIZE, p
            assert 0 <= p.x < BOARD_W and 0 <= p.y < BOARD_H, p
            assert p.cell == cell_of(p.x, p.y)
            counts[p.cell] += 1
        assert counts == self.counts
        assert (self.attractor == PARKED) == (self.held == 0)


def _clamp(x: int, y: int) -> Tuple[int, int]:
    return _COORD[min(max(x, 0), BOARD_W - 1)], _COORD[min(max(y, 0), BOARD_H - 1)]


# Server-chosen colours come from a palette: they stay distinct and readable
# on the board, and 15,000 players share 24 int objects instead of owning one.
PALETTE = (
    0xE6194B, 0x3CB44B, 0xFFE119, 0x4363D8, 0xF58231, 0x911EB4, 0x42D4F4, 0xF032E6,
    0xBFEF45, 0xFABED4, 0x469990, 0xDCBEFF, 0x9A6324, 0xFFFAC8, 0x800000, 0xAAFFC3,
    0x808000, 0xFFD8B1, 0x000075, 0xA9A9A9, 0xFF6F61, 0x6B5B95, 0x88B04B, 0x00A4CC,
)

# Every coordinate value as one shared int object. Ints above 256 are not
# cached by CPython, so each player's x and y would otherwise own an object.
_COORD = tuple(range(max(BOARD_W, BOARD_H)))


def _hand(letters: str) -> str:
    """A hand in canonical form: sorted and interned.

    There are only 2,600 three-letter hands, so interning lets players share
    the string objects; sorted, a hand reads like a rack of tiles.
    """
    return sys.intern("".join(sorted(letters)))


# =============================================================================
# Server: the game on netcore. One shared send per tick for everyone.
# =============================================================================


def rss_kb() -> int:
    """Resident set size from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class ServerOptions(NamedTuple):
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    tick_ms: int = 250
    max_clients: int = 15_000
    backlog: int = 4096
    hello_timeout: float = 10.0
    seed: Optional[int] = None
    max_output: int = 64 << 10  # queued bytes past which a client is too slow
    shutdown_grace: float = 1.5  # seconds to flush goodbyes on SIGTERM
    stats_out: str = ""  # write final figures here as JSON on exit (benchmarks)
    web: bool = True  # HTTP (the browser client) and WebSocket on the same port
    web_root: Optional[str] = WEB_ROOT  # None: no static files
    handshake_timeout: float = 10.0  # an HTTP request or WebSocket upgrade must finish in this


# Sent with the browser client's files: it loads nothing from elsewhere.
WEB_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
     "frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)


class GameServer(Handler):
    """SpellTraction on a netcore :class:`TCPServer`."""

    def __init__(self, loop: EventLoop, options: Optional[ServerOptions] = None) -> None:
        self.loop = loop
        self.options = opts = options if options is not None else ServerOptions()
        self.game = Game(random.Random(opts.seed))
        web = None
        if opts.web:
            root = opts.web_root if opts.web_root and os.path.isdir(opts.web_root) else None
            if opts.web_root and root is None:
                log.warning("web root %s is not a directory: serving no files", opts.web_root)
            web = WebFront(WebConfig(
                static_root=root, ws_path=WS_PATH, handshake_timeout=opts.handshake_timeout,
                max_message=WS_MAX_MESSAGE, message_codec=WholeFrames(MAX_CLIENT_FRAME),
                headers=WEB_HEADERS,
            ))
        self.net = TCPServer(
            loop,
            self,
            ServerConfig(
                hosts=[opts.host],
                port=opts.port,
                backlog=opts.backlog,
                max_connections=opts.max_clients,
                max_frame=MAX_CLIENT_FRAME,
                max_output=opts.max_output,
                high_water=opts.max_output // 4,
                low_water=opts.max_output // 16,
                full_message=error_frame(
                    ErrorCode.SERVER_FULL, f"server full ({opts.max_clients} players); try later"
                ),
            ),
            web=web,
        )
        self.pending: Dict[Connection, float] = {}  # connected, no HELLO yet
        # Players who came over WebSocket: the tick sends them the same bytes
        # behind one WebSocket header, built once. TCP players are the rest.
        self.ws_players: Dict[Connection, None] = {}
        self.started = time.time()
        self.start_rss_kb = rss_kb()
        self.ticker: Any = None
        self.stats_frame = b""
        self._stats_tick = -1  # the game tick stats_frame was made at; -1: not yet
        self.msg_counts: Dict[int, int] = {}  # messages this tick, per fd (flood check)
        self.errors_sent: Dict[int, int] = {}
        self.shutting_down = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> List[Tuple[str, int]]:
        addresses = self.net.listen()
        self.ticker = self.loop.start_ticker(self.options.tick_ms / 1000.0, self.on_tick)
        return addresses

    def shutdown(self) -> None:
        """Stop accepting, say goodbye to everyone, flush, stop the loop."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.net.stop_accepting()
        if self.ticker is not None:
            self.loop.stop_ticker(self.ticker)
        text = "server shutting down"
        bye = error_frame(ErrorCode.SHUTDOWN, text)
        for conn in list(self.net.connections.values()):
            # TCP: the frame; WebSocket: in a message, then a close (1001);
            # HTTP: nothing, just finish the response under way.
            last_words = conn.codec.closing(bye, ws.CloseCode.GOING_AWAY, text)
            if last_words:
                conn.write(last_words)
            conn.close_after_flush(CloseReason.SHUTDOWN)
        deadline = self.loop.time() + self.options.shutdown_grace

        def wait_for_flush() -> None:
            if not self.net.connections or self.loop.time() >= deadline:
                self.net.close(CloseReason.SHUTDOWN)
                self.loop.stop()
            else:
                self.loop.call_later(0.02, wait_for_flush)

        wait_for_flush()

    # -- netcore callbacks --------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        self.pending[conn] = self.loop.time()

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        if protocol == HTTP:
            # Not a player (yet): the web front's deadline governs it now.
            self.pending.pop(conn, None)
        elif protocol == WEBSOCKET:
            self.pending[conn] = self.loop.time()  # HELLO due within the timeout from now

    def on_message(self, conn: Connection, payload: bytes) -> None:
        fd = conn.fd
        seen = self.msg_counts.get(fd, 0) + 1
        self.msg_counts[fd] = seen
        if seen > FLOOD_MESSAGES:
            self.reject(conn, ErrorCode.FLOOD, f"more than {FLOOD_MESSAGES} messages in one tick",
                        "flood")
            return
        player = conn.data
        kind = payload[0]
        if player is not None:
            if kind == MOVE and len(payload) == _MOVE.size:
                _, seq, x, y = _MOVE.unpack(payload)
                self.game.move(player, seq, x, y)
                return
            self.reject(conn, ErrorCode.BAD_MESSAGE, _describe_unexpected(payload, "in game"))
            return
        if kind != HELLO or len(payload) != _HELLO.size:
            self.reject(conn, ErrorCode.BAD_MESSAGE, _describe_unexpected(payload, "before HELLO"))
            return
        _, version, shape, colour = _HELLO.unpack(payload)
        if version != PROTOCOL_VERSION:
            self.reject(conn, ErrorCode.VERSION,
                        f"server speaks protocol {PROTOCOL_VERSION}, client sent {version}",
                        "bad-version")
            return
        self.join(conn, shape, colour)

    def on_bad_input(self, conn: Connection, exc: ProtocolError) -> None:
        self.reject(conn, ErrorCode.BAD_FRAME, str(exc), exc.reason, ws.close_code_for(exc))

    def on_close(self, conn: Connection, reason: str) -> None:
        self.pending.pop(conn, None)
        self.ws_players.pop(conn, None)
        player = conn.data
        if player is not None:
            self.game.leave(player)
            conn.data = None
            player.conn = None

    # -- game plumbing ------------------------------------------------------

    def join(self, conn: Connection, shape: int, colour: int) -> None:
        del self.pending[conn]
        player = self.game.join(shape, colour)
        player.conn = conn
        conn.data = player
        if isinstance(conn.codec, WebSocketCodec):
            self.ws_players[conn] = None
        welcome = frame(Welcome(player.id, player.shape, player.colour,
                                tick_ms=self.options.tick_ms))
        if self._stats_tick != self.game.tick:  # at most one refresh per tick in a join storm
            self._update_stats_frame()
        conn.write(conn.codec.wrap(welcome + _you_frame(player) + self.stats_frame), frames=3)

    def reject(self, conn: Connection, code: int, text: str, reason: str = "protocol-error",
               ws_code: int = 0) -> None:
        """Tell the client what it did wrong, then close it. Others play on.

        Over WebSocket the ERROR frame goes in a message, followed by a
        close frame with ``ws_code`` (by default the error's usual code).
        """
        log.info("fd=%d %s: %s: %s", conn.fd, conn.peername(), reason, text)
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1
        last_words = conn.codec.closing(error_frame(code, text),
                                        ws_code or WS_CLOSE_CODES[code], text)
        if last_words and conn.write(last_words):
            conn.close_after_flush(reason, text)
        else:
            conn.close(reason, text)

    def on_tick(self, tick: Tick) -> None:
        game = self.game
        result = game.step()
        shared = [_encode_tick(game, result)]
        if result.scored is not None:
            shared.append(frame(result.scored))
        if game.tick % STATS_EVERY == 0:
            self._update_stats_frame()
            shared.append(self.stats_frame)
        data = b"".join(shared)
        nframes = len(shared)
        dirty = result.dirty
        ws_players = self.ws_players
        private: Any = ()
        if dirty:
            private = set()
            for p in dirty:
                conn = p.conn
                if conn is not None:
                    # One send: the shared frames and this player's YOU,
                    # in one WebSocket message for a WebSocket player.
                    conn.write(conn.codec.wrap(data + _you_frame(p)), frames=nframes + 1)
                    private.add(conn)
            targets = [p.conn for p in game.players.values() if p.conn not in private]
        else:
            # A list, not a view of game.players: a failed send closes its
            # connection, and the player leaves, during the broadcast.
            targets = [p.conn for p in game.players.values()]
        if ws_players:
            # The same bytes for everyone; WebSocket players get them behind
            # one header, built once and shared like the data itself.
            ws_targets = [c for c in ws_players if c not in private]
            targets = [c for c in targets if c not in ws_players]
            if ws_targets:
                self.net.broadcast(ws.frame_header(len(data)) + data, ws_targets, nframes)
        self.net.broadcast(data, targets, nframes)
        self.msg_counts.clear()
        if game.tick % 4 == 0 and self.pending:
            self._expire_pending()

    def _expire_pending(self) -> None:
        limit = self.loop.time() - self.options.hello_timeout
        for conn, since in list(self.pending.items()):
            if since < limit:
                self.reject(conn, ErrorCode.HELLO_TIMEOUT,
                            f"no HELLO within {self.options.hello_timeout:g} s", "hello-timeout")

    def final_stats(self) -> Dict[str, Any]:
        """Figures for benchmarks and the exit summary."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "ticks": self.ticker.snapshot() if self.ticker is not None else {},
            "net": self.net.stats.snapshot(),
            "game": {"tick": self.game.tick, "players": len(self.game.players),
                     "letters_scored": self.game.letters_scored,
                     "moves_accepted": self.game.moves_accepted,
                     "moves_limited": self.game.moves_limited},
            "errors_sent": {str(k): v for k, v in self.errors_sent.items()},
            "ws_players": len(self.ws_players),
            "web": self.net.web.stats.snapshot() if self.net.web is not None else {},
            "rss_kb": rss_kb(),
            "start_rss_kb": self.start_rss_kb,
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
        }

    def _update_stats_frame(self) -> None:
        self._stats_tick = self.game.tick
        p99 = 0.0
        if self.ticker is not None:
            p99 = self.ticker.recent_lateness.percentile(99)
        self.stats_frame = frame(Stats(
            connections=self.net.stats.connections,
            players=len(self.game.players),
            uptime_s=int(time.time() - self.started),
            rss_kb=rss_kb(),
            start_rss_kb=self.start_rss_kb,
            tick_p99_us=min(int(p99 * 1e6), 0xFFFFFFFF),
        ))


def _describe_unexpected(payload: bytes, when: str) -> str:
    kind = payload[0]
    names = {HELLO: "HELLO", MOVE: "MOVE"}
    if kind in names:
        expected = {HELLO: _HELLO.size, MOVE: _MOVE.size}[kind]
        if len(payload) != expected:
            return f"{names[kind]} must be {expected} bytes, got {len(payload)}"
        return f"unexpected {names[kind]} {when}"
    return f"unknown message type 0x{kind:02x} ({len(payload)} bytes) {when}"


def _you_frame(p: Player) -> bytes:
    return _YOU_FRAMED.pack(_YOU_FRAME_LEN, YOU, p.seq, p.x, p.y, p.score,
                            p.letters.encode("ascii"))


def _encode_tick(game: Game, result: StepResult) -> bytes:
    parts = [
        b"",  # frame header, filled in below
        _TICK_HEAD.pack(TICK, result.tick & 0xFFFFFFFF, game.attractor, game.held,
                        "".join(game.board).encode("ascii"), len(game.players), *game.counts,
                        len(result.movers)),
    ]
    pack_mover = _MOVER.pack
    for p in result.movers:
        c = p.colour
        parts.append(pack_mover(p.id, p.x, p.y, p.shape, c >> 16, (c >> 8) & 0xFF, c & 0xFF))
    parts.append(_U8.pack(len(result.gone)))
    parts.extend(_U32.pack(g) for g in result.gone)
    size = sum(len(part) for part in parts)
    parts[0] = size.to_bytes(2, "big")
    return b"".join(parts)


def raise_nofile_limit() -> Tuple[int, int]:
    """Raise RLIMIT_NOFILE soft to hard; returns (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


FD_RESERVE = 32  # descriptors a server needs besides clients: listeners, selector, logs...


def serve(opts: ServerOptions) -> int:
    soft, hard = raise_nofile_limit()
    capacity = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else opts.max_clients
    if capacity < opts.max_clients:
        log.warning(
            "open-files limit is %d (hard %d): only %d clients fit, below --max-clients %d. "
            "Raise it (etc/security/limits.d/spelltraction.conf, or LimitNOFILE= in the "
            "systemd unit); serving at most %d.",
            soft, hard, max(capacity, 0), opts.max_clients, max(capacity, 0),
        )
        opts = opts._replace(max_clients=max(capacity, 0))
    loop = EventLoop()
    server = GameServer(loop, opts)
    try:
        addresses = server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", opts.host, opts.port, exc)
        return 2
    for host, port in addresses:
        print(f"SpellTraction listening on {host}:{port}", flush=True)
    if opts.web and addresses:
        host, port = addresses[0]
        shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "::1") else host
        print(f"play in a browser: http://{shown}:{port}/", flush=True)
    print(f"max {opts.max_clients} clients, tick {opts.tick_ms} ms, open-files limit {soft}; "
          "Ctrl-C stops", flush=True)

    def on_signal(signum: int) -> None:
        if server.shutting_down:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            loop.stop()
            return
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        loop.run()
    finally:
        server.net.close(CloseReason.SHUTDOWN)
        loop.close()
    print(f"stopped after {server.game.tick} ticks; {server.net.stats.accepted} connections "
          f"served, {server.game.letters_scored} letters scored", flush=True)
    if opts.stats_out:
        with open(opts.stats_out, "w") as f:
            json.dump(server.final_stats(), f, indent=1)
    if server.ticker is not None:
        t = server.ticker
        print(f"ticks: {t.fired} fired, {t.late} late (> {t.late_after * 1000:g} ms), "
              f"{t.skipped} skipped; lateness p50 {t.recent_lateness.percentile(50) * 1000:.2f} ms, "
              f"p99 {t.recent_lateness.percentile(99) * 1000:.2f} ms, "
              f"max {t.max_lateness * 1000:.2f} ms; tick work p99 "
              f"{t.recent_duration.percentile(99) * 1000:.1f} ms", flush=True)
    return 0


# =============================================================================
# Bots: the load test. N players over as many processes as the fd limit needs.
# =============================================================================

HELLO_FRAME = frame(Hello())
_INTERVAL_BINS = 2000  # tick-interval histogram: 1 ms bins, the last one is ">= 2 s"


class BotOptions(NamedTuple):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    n_bots: int = 100
    move_every: float = 80.0  # seconds between a bot's moves, as the original's script
    duration: float = 30.0  # seconds to hold once every bot is in (or the ramp timed out)
    procs: int = 0  # 0: as many as the open-files limit needs
    probes: int = 20  # bots that move every second to measure move->echo latency
    ramp_timeout: float = 60.0
    batch: int = 200  # connects started per loop pass, per process
    seed: Optional[int] = None
    json: bool = False
    ws: bool = False  # connect over WebSocket (/ws) instead of the binary protocol


class _Poller:
    """epoll where there is one (cheapest per event), else ``selectors``."""

    def __init__(self) -> None:
        self.epoll: Any = select.epoll() if hasattr(select, "epoll") else None
        if self.epoll is not None:
            self.IN, self.OUT = select.EPOLLIN, select.EPOLLOUT
            self.ERR = select.EPOLLERR | select.EPOLLHUP
        else:
            import selectors

            self.sel = selectors.DefaultSelector()
            self.IN, self.OUT, self.ERR = selectors.EVENT_READ, selectors.EVENT_WRITE, 0

    def register(self, fd: int, mask: int) -> None:
        if self.epoll is not None:
            self.epoll.register(fd, mask)
        else:
            self.sel.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        if self.epoll is not None:
            self.epoll.modify(fd, mask)
        else:
            self.sel.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        try:
            if self.epoll is not None:
                self.epoll.unregister(fd)
            else:
                self.sel.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def poll(self, timeout: float) -> List[Tuple[int, int]]:
        if self.epoll is not None:
            return list(self.epoll.poll(timeout, 4096))
        return [(key.fd, mask) for key, mask in self.sel.select(timeout)]


class BotWorker:
    """One process's share of the bots, on one poller, state in flat arrays."""

    CONNECTING, HELLO_SENT, PLAYING, DONE, UPGRADING = 1, 2, 3, 4, 5

    def __init__(self, host: str, port: int, count: int, move_every: float, probes: int,
                 seed: int, batch: int, websocket: bool = False) -> None:
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        self.family, self.addr = info[0], info[4]
        self.websocket = websocket
        self.host_header = f"{host}:{port}"
        self.ws_keys: Dict[int, str] = {}  # fd -> Sec-WebSocket-Key, while upgrading
        self.ws_rest: Dict[int, bytes] = {}  # fd -> partial WebSocket frame or response
        self.count = count
        self.move_every = max(0.0, move_every)
        self.batch = batch
        self.rng = random.Random(seed)
        self.poller = _Poller()
        self.socks: List[Optional[socket.socket]] = [None] * count
        self.state = bytearray(count)
        self.index: Dict[int, int] = {}  # fd -> bot
        self.rest: Dict[int, bytes] = {}  # fd -> partial frame
        self.ticks = array("l", [0]) * count
        self.first_tick = array("l", [-1]) * count
        self.last_tick = array("l", [-1]) * count
        self.last_at = array("d", [0.0]) * count
        self.hist = [0] * (_INTERVAL_BINS + 1)
        self.moves: List[Tuple[float, int]] = []  # heap of (due, bot)
        self.probes = set(range(min(probes, count)))
        self.probe_sent: Dict[int, Tuple[int, float]] = {}
        self.latencies: List[float] = []
        self.seq = 0
        self.started = 0
        self.connected = self.failed = self.dropped = 0
        self.frames = self.bytes = self.moves_sent = 0
        self.errors: Dict[str, int] = {}

    # -- one pass of the loop ---------------------------------------------

    def step(self, timeout: float) -> None:
        if self.started < self.count:
            self._start_connects()
            timeout = 0.0 if self.started < self.count else timeout
        poller = self.poller
        events = poller.poll(timeout)
        now = time.monotonic()
        IN, OUT = poller.IN, poller.OUT
        for fd, mask in events:
            i = self.index.get(fd)
            if i is None:
                continue
            if mask & IN:
                self._read(fd, i, now)
            elif mask & OUT:
                self._connected(fd, i, now)
            elif mask & poller.ERR:
                self._lost(i, "connection error")
        if self.moves and self.moves[0][0] <= now:
            self._move_due(now)

    def _start_connects(self) -> None:
        end = min(self.count, self.started + self.batch)
        linger = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT left on loopback
        for i in range(self.started, end):
            s = socket.socket(self.family, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            err = s.connect_ex(self.addr)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                s.close()
                self._fail(i, os.strerror(err))
                continue
            self.socks[i] = s
            self.state[i] = self.CONNECTING
            self.index[s.fileno()] = i
            self.poller.register(s.fileno(), self.poller.OUT)
        self.started = end

    def _connected(self, fd: int, i: int, now: float) -> None:
        s = self.socks[i]
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(i, os.strerror(err))
            return
        if self.websocket:
            key = base64.b64encode(self.rng.getrandbits(128).to_bytes(16, "big")).decode()
            self.ws_keys[fd] = key
            first, state = ws.client_handshake(self.host_header, WS_PATH, key), self.UPGRADING
        else:
            first, state = HELLO_FRAME, self.HELLO_SENT
        try:
            s.send(first)
        except OSError as exc:
            self._fail(i, exc.strerror or str(exc))
            return
        self.state[i] = state
        self.poller.modify(fd, self.poller.IN)

    def _send(self, s: socket.socket, stream: bytes) -> None:
        """Send game frames: as they are, or in one masked WebSocket message."""
        if self.websocket:
            stream = ws.frame(stream, ws.BINARY, mask_key=self._mask_key())
        s.send(stream)

    def _mask_key(self) -> bytes:
        """RFC 6455: every client frame is masked with a fresh random key."""
        return self.rng.getrandbits(32).to_bytes(4, "big")

    def _read(self, fd: int, i: int, now: float) -> None:
        s = self.socks[i]
        assert s is not None
        try:
            data = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(i, "closed by server")
            return
        self.bytes += len(data)
        if self.websocket:
            unwrapped = self._unwrap(fd, i, s, data)
            if not unwrapped:
                return
            data = unwrapped
        rest = self.rest.pop(fd, None)
        if rest is not None:
            data = rest + data
        pos, n = 0, len(data)
        while n - pos >= 2:
            end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
            if end > n:
                break
            kind = data[pos + 2]
            if kind == TICK:
                self._tick(i, int.from_bytes(data[pos + 3 : pos + 7], "big"), now)
            elif kind == YOU:
                if i in self.probe_sent:
                    seq, sent = self.probe_sent[i]
                    if (data[pos + 3] << 8) | data[pos + 4] == seq:
                        self.latencies.append(now - sent)
                        del self.probe_sent[i]
            elif kind == WELCOME:
                self.state[i] = self.PLAYING
                self.connected += 1
                if self.move_every > 0 or i in self.probes:
                    first = self.rng.uniform(0, self._period(i))
                    heapq.heappush(self.moves, (now + first, i))
            elif kind == ERROR:
                text = data[pos + 4 : end].decode("utf-8", "replace")
                self.errors[text] = self.errors.get(text, 0) + 1
            self.frames += 1
            pos = end
        if pos < n:
            self.rest[fd] = data[pos:]

    def _unwrap(self, fd: int, i: int, s: socket.socket, data: bytes) -> Optional[bytes]:
        """The game stream inside WebSocket frames (after the upgrade response)."""
        held = self.ws_rest.pop(fd, None)
        if held is not None:
            data = held + data
        if self.state[i] == self.UPGRADING:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 8192:
                    self._fail(i, "WebSocket upgrade: no response head")
                else:
                    self.ws_rest[fd] = data
                return None
            head = data[:end]
            accept = ws.accept_key(self.ws_keys.pop(fd, "")).encode()
            accepted = b"Sec-WebSocket-Accept: " + accept in head
            if not head.startswith(b"HTTP/1.1 101 ") or not accepted:
                status = head.split(b"\r\n")[0].decode("latin-1")
                self._fail(i, f"WebSocket upgrade refused: {status}")
                return None
            self.state[i] = self.HELLO_SENT
            try:
                self._send(s, HELLO_FRAME)
            except OSError as exc:
                self._fail(i, exc.strerror or str(exc))
                return None
            data = data[end + 4 :]
        out = []
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head_len = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head_len = (data[pos + 2] << 8) | data[pos + 3], 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head_len = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:
                self._lost(i, "masked frame from the server")
                return None
            end = pos + head_len + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode in (ws.BINARY, ws.CONTINUATION):
                out.append(data[pos + head_len : end])
            elif opcode == ws.PING:
                self._send_pong(s, data[pos + head_len : end])
            pos = end  # a Close is followed by the server closing: seen as EOF
        if pos < n:
            self.ws_rest[fd] = data[pos:]
        return b"".join(out)

    def _send_pong(self, s: socket.socket, payload: bytes) -> None:
        try:
            s.send(ws.frame(payload, ws.PONG, mask_key=self._mask_key()))
        except OSError:
            pass

    def _tick(self, i: int, number: int, now: float) -> None:
        if self.first_tick[i] < 0:
            self.first_tick[i] = number
        else:
            ms = int((now - self.last_at[i]) * 1000)
            self.hist[ms if ms < _INTERVAL_BINS else _INTERVAL_BINS] += 1
        self.last_at[i] = now
        self.last_tick[i] = number
        self.ticks[i] += 1

    def _period(self, i: int) -> float:
        if i in self.probes:
            # Jittered, so a probe's moves fall at every phase of the tick.
            base = min(self.move_every, 1.0) if self.move_every > 0 else 1.0
            return base * self.rng.uniform(0.8, 1.2)
        return self.move_every

    def _move_due(self, now: float) -> None:
        moves = self.moves
        rng = self.rng
        while moves and moves[0][0] <= now:
            _, i = heapq.heappop(moves)
            s = self.socks[i]
            if s is None or self.state[i] != self.PLAYING:
                continue
            self.seq = (self.seq + 1) & 0xFFFF
            try:
                self._send(s, frame(Move(self.seq, rng.randrange(BOARD_W), rng.randrange(BOARD_H))))
            except OSError:
                continue
            self.moves_sent += 1
            if i in self.probes:
                self.probe_sent[i] = (self.seq, now)
            heapq.heappush(moves, (now + max(self._period(i), 0.001), i))

    def _fail(self, i: int, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1
        self._drop_socket(i)

    def _lost(self, i: int, why: str) -> None:
        if self.state[i] == self.PLAYING:
            self.dropped += 1
            self.connected -= 1
            self.errors[why] = self.errors.get(why, 0) + 1
            self._drop_socket(i)
        else:
            self._fail(i, why)

    def _drop_socket(self, i: int) -> None:
        self.state[i] = self.DONE
        s = self.socks[i]
        if s is not None:
            fd = s.fileno()
            self.poller.unregister(fd)
            self.index.pop(fd, None)
            self.rest.pop(fd, None)
            self.ws_rest.pop(fd, None)
            self.ws_keys.pop(fd, None)
            s.close()
            self.socks[i] = None

    def close(self) -> None:
        for i, s in enumerate(self.socks):
            if s is not None:
                s.close()
                self.socks[i] = None

    # -- reporting ---------------------------------------------------------

    def progress(self) -> Dict[str, Any]:
        return {"type": "progress", "connected": self.connected, "failed": self.failed,
                "dropped": self.dropped, "started": self.started}

    def final(self) -> Dict[str, Any]:
        fractions = []
        for i in range(self.count):
            if self.first_tick[i] >= 0:
                expected = self.last_tick[i] - self.first_tick[i] + 1
                fractions.append(self.ticks[i] / expected)
        return {
            "type": "final", "count": self.count, "connected": self.connected,
            "failed": self.failed, "dropped": self.dropped, "frames": self.frames,
            "bytes": self.bytes, "moves_sent": self.moves_sent,
            "hist": [[ms, n] for ms, n in enumerate(self.hist) if n],
            "latencies": [round(x, 6) for x in self.latencies],
            "tick_fraction_min": min(fractions, default=0.0),
            "tick_fraction_mean": sum(fractions) / len(fractions) if fractions else 0.0,
            "below_95": sum(1 for f in fractions if f < 0.95),
            "errors": self.errors,
        }


def _bot_worker_main(params_json: str) -> None:
    """Entry point of a bot process: runs until stdin closes or its deadline."""
    p = json.loads(params_json)
    raise_nofile_limit()
    worker = BotWorker(p["host"], p["port"], p["count"], p["move_every"], p["probes"],
                       p["seed"], p["batch"], p.get("ws", False))
    deadline = time.monotonic() + p["max_seconds"]
    out = sys.stdout
    stdin_fd = sys.stdin.fileno()  # the parent closes it to say "stop"
    next_report = 0.0
    try:
        while time.monotonic() < deadline:
            if _stdin_closed(worker, stdin_fd):
                break
            worker.step(0.05)
            now = time.monotonic()
            if now >= next_report:
                out.write(json.dumps(worker.progress()) + "\n")
                out.flush()
                next_report = now + 0.25
    finally:
        out.write(json.dumps(worker.final()) + "\n")
        out.flush()
        worker.close()


def _stdin_closed(worker: BotWorker, fd: int) -> bool:
    r, _, _ = select.select([fd], [], [], 0)
    if r:
        return not os.read(fd, 1024)
    return False


def bot_procs(count: int, requested: int) -> int:
    """How many processes ``count`` bots need (``requested`` 0 = auto)."""
    if requested > 0:
        return requested
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd_cap = hard if hard != resource.RLIM_INFINITY else 1 << 20
    per_proc = max(100, min(fd_cap - 64, 8000))
    return max(1, -(-count // per_proc))


def _percentiles_from_hist(hist: Dict[int, int], qs: Sequence[float]) -> List[float]:
    total = sum(hist.values())
    out = []
    for q in qs:
        if total == 0:
            out.append(0.0)
            continue
        rank = max(1, int(-(-q * total // 100)))
        running = 0
        for ms in sorted(hist):
            running += hist[ms]
            if running >= rank:
                out.append(float(ms))
                break
    return out


def run_bots(opts: BotOptions, out: IO[str] = sys.stdout) -> Dict[str, Any]:
    """Run the load test and return its summary (also printed to ``out``)."""
    import subprocess  # only the bots need it; the server stays smaller without

    procs = min(bot_procs(opts.n_bots, opts.procs), max(1, opts.n_bots))
    shares = [opts.n_bots // procs + (1 if i < opts.n_bots % procs else 0) for i in range(procs)]
    probes = [opts.probes // procs + (1 if i < opts.probes % procs else 0) for i in range(procs)]
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    root = os.path.dirname(os.path.abspath(__file__))
    boot = ("import sys; sys.path.insert(0, sys.argv[1]); import spelltraction; "
            "spelltraction._bot_worker_main(sys.argv[2])")
    max_seconds = opts.ramp_timeout + opts.duration + 30
    workers: List["subprocess.Popen[str]"] = []
    transport = "WebSocket" if opts.ws else "TCP"
    print(f"bots: {opts.n_bots} to {opts.host}:{opts.port} ({transport}) over {procs} process(es), "
          f"moving every {opts.move_every:g} s, holding {opts.duration:g} s", file=out, flush=True)
    started = time.monotonic()
    progress: List[Dict[str, Any]] = [{} for _ in range(procs)]
    finals: List[Optional[Dict[str, Any]]] = [None] * procs
    ramp_s: Optional[float] = None
    try:
        for k in range(procs):
            params = {"host": opts.host, "port": opts.port, "count": shares[k],
                      "move_every": opts.move_every, "probes": probes[k], "seed": seed + k,
                      "batch": opts.batch, "max_seconds": max_seconds, "ws": opts.ws}
            workers.append(subprocess.Popen(
                [sys.executable, "-c", boot, root, json.dumps(params)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            ))
        readers = {w.stdout.fileno(): k for k, w in enumerate(workers) if w.stdout is not None}
        buffers = {fd: "" for fd in readers}
        hold_until: Optional[float] = None
        next_print = started + 1.0
        stopping = False
        while any(f is None for f in finals):
            now = time.monotonic()
            if now - started > max_seconds + 15:
                raise TimeoutError("bot workers did not finish in time")
            r, _, _ = select.select(list(buffers), [], [], 0.1)
            for fd in r:
                chunk = os.read(fd, 65536).decode()
                if not chunk:
                    del buffers[fd]
                    continue
                buffers[fd] += chunk
                *lines, buffers[fd] = buffers[fd].split("\n")
                for line in lines:
                    msg = json.loads(line)
                    k = readers[fd]
                    if msg["type"] == "final":
                        finals[k] = msg
                    else:
                        progress[k] = msg
            if not buffers and any(f is None for f in finals):
                raise RuntimeError("a bot worker exited without a report")
            conn = sum(p.get("connected", 0) for p in progress)
            failed = sum(p.get("failed", 0) for p in progress)
            dropped = sum(p.get("dropped", 0) for p in progress)
            now = time.monotonic()
            if ramp_s is None and conn + failed + dropped >= opts.n_bots:
                ramp_s = now - started
                hold_until = now + opts.duration
                print(f"ramp: {conn}/{opts.n_bots} connected in {ramp_s:.1f} s "
                      f"({failed} failed); holding {opts.duration:g} s", file=out, flush=True)
            elif ramp_s is None and now - started > opts.ramp_timeout:
                ramp_s = now - started
                hold_until = now + opts.duration
                print(f"ramp timed out: {conn}/{opts.n_bots} connected after {ramp_s:.1f} s; "
                      f"holding {opts.duration:g} s", file=out, flush=True)
            if now >= next_print and not stopping:
                phase = "ramp" if hold_until is None else "hold"
                print(f"{phase} {now - started:5.1f} s: {conn} connected, {failed} failed, "
                      f"{dropped} dropped", file=out, flush=True)
                next_print = now + (1.0 if hold_until is None else 5.0)
            if hold_until is not None and now >= hold_until and not stopping:
                stopping = True
                for w in workers:
                    if w.stdin is not None:
                        w.stdin.close()
    finally:
        for w in workers:
            if w.poll() is None:
                try:
                    if w.stdin is not None and not w.stdin.closed:
                        w.stdin.close()
                    w.wait(timeout=5)
                except (subprocess.TimeoutExpired, OSError):
                    w.kill()
                    w.wait()
    summary = _summarise([f for f in finals if f is not None], opts, ramp_s)
    _print_summary(summary, out)
    return summary


def _summarise(finals: List[Dict[str, Any]], opts: BotOptions,
               ramp_s: Optional[float]) -> Dict[str, Any]:
    hist: Dict[int, int] = {}
    latencies: List[float] = []
    errors: Dict[str, int] = {}
    for f in finals:
        for ms, n in f["hist"]:
            hist[ms] = hist.get(ms, 0) + n
        latencies += f["latencies"]
        for text, n in f["errors"].items():
            errors[text] = errors.get(text, 0) + n
    p50, p99 = _percentiles_from_hist(hist, (50, 99))
    latencies.sort()

    def lat(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, max(0, int(-(-q * len(latencies) // 100)) - 1))]

    def total(key: str) -> int:
        return sum(int(f[key]) for f in finals)

    return {
        "bots": opts.n_bots,
        "connected": total("connected"),
        "failed": total("failed"),
        "dropped": total("dropped"),
        "frames": total("frames"),
        "bytes": total("bytes"),
        "moves_sent": total("moves_sent"),
        "ramp_s": round(ramp_s, 2) if ramp_s is not None else None,
        "tick_interval_ms_p50": p50,
        "tick_interval_ms_p99": p99,
        "move_latency_ms_p50": round(lat(50) * 1000, 1),
        "move_latency_ms_p99": round(lat(99) * 1000, 1),
        "latency_samples": len(latencies),
        "tick_fraction_min": round(min((f["tick_fraction_min"] for f in finals), default=0.0), 4),
        "bots_below_95pct_ticks": total("below_95"),
        "errors": errors,
    }


def _print_summary(s: Dict[str, Any], out: IO[str]) -> None:
    print(
        f"summary: {s['connected']} connected, {s['failed']} failed, {s['dropped']} dropped; "
        f"ramp {s['ramp_s']} s\n"
        f"  received {s['frames']} frames, {s['bytes']} bytes; sent {s['moves_sent']} moves\n"
        f"  tick interval seen by clients: p50 {s['tick_interval_ms_p50']:.0f} ms, "
        f"p99 {s['tick_interval_ms_p99']:.0f} ms\n"
        f"  move->echo latency ({s['latency_samples']} probes): p50 "
        f"{s['move_latency_ms_p50']} ms, p99 {s['move_latency_ms_p99']} ms\n"
        f"  ticks received per bot: min {s['tick_fraction_min'] * 100:.1f}%, "
        f"{s['bots_below_95pct_ticks']} bots below 95%",
        file=out, flush=True,
    )
    if s["errors"]:
        print(f"  errors: {s['errors']}", file=out, flush=True)


# =============================================================================
# CLI
# =============================================================================


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve", "bots", "-h", "--help", "--version"}
    if not argv or argv[0] not in commands:
        argv.insert(0, "serve")
    parser = argparse.ArgumentParser(
        prog="spelltraction",
        description="SpellTraction: a massively multiplayer letter game on netcore.",
    )
    parser.add_argument("--version", action="version", version=f"spelltraction {__version__}")
    sub = parser.add_subparsers(dest="command")

    sp = sub.add_parser("serve", help="run the game server (the default command)")
    sp.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 12150)")
    sp.add_argument("--tick-ms", type=int, default=250, help="tick period in ms (default 250)")
    sp.add_argument("--max-clients", type=int, default=15_000,
                    help="connection limit; more are told 'server full' (default 15000)")
    sp.add_argument("--seed", type=int, default=None, help="seed the game's RNG (for replays)")
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sp.add_argument("--stats-out", default="", metavar="FILE",
                    help="on exit, write the final figures to FILE as JSON")
    sp.add_argument("--web-root", default=WEB_ROOT, metavar="DIR",
                    help="serve the browser client from DIR (default: web/ beside this file)")
    sp.add_argument("--no-web", action="store_true",
                    help="binary protocol only: no HTTP, no WebSocket")
    sp.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="an HTTP request or WebSocket upgrade must finish within this")

    bp = sub.add_parser("bots", help="load-test a server with bot players")
    bp.add_argument("--host", default="127.0.0.1")
    bp.add_argument("--port", type=int, default=DEFAULT_PORT)
    bp.add_argument("--count", type=int, default=100, help="bot players (default 100)")
    bp.add_argument("--move-every", type=float, default=80.0,
                    help="seconds between each bot's moves (default 80, as the original; "
                         "0.25 = every tick)")
    bp.add_argument("--duration", type=float, default=30.0,
                    help="seconds to hold once all bots are in (default 30)")
    bp.add_argument("--procs", default="auto",
                    help="processes to spread the bots over (default auto: by the fd limit)")
    bp.add_argument("--probes", type=int, default=20,
                    help="bots that move every second to measure move->echo latency")
    bp.add_argument("--ramp-timeout", type=float, default=60.0)
    bp.add_argument("--seed", type=int, default=None)
    bp.add_argument("--json", action="store_true", help="end with one line of JSON figures")
    bp.add_argument("--ws", action="store_true",
                    help="connect over WebSocket (/ws), as browsers do, instead of TCP")
    bp.add_argument("--log-level", default="warning",
                    choices=["debug", "info", "warning", "error"])

    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "bots":
        if args.count < 1:
            parser.error("--count must be at least 1")
        procs = 0 if args.procs == "auto" else int(args.procs)
        summary = run_bots(BotOptions(
            host=args.host, port=args.port, n_bots=args.count, move_every=args.move_every,
            duration=args.duration, procs=procs, probes=args.probes,
            ramp_timeout=args.ramp_timeout, seed=args.seed, json=args.json, ws=args.ws,
        ))
        if args.json:
            print(json.dumps(summary), flush=True)
        return 0 if summary["failed"] == 0 and summary["dropped"] == 0 else 1
    if args.tick_ms < 10 or args.tick_ms > 60_000:
        parser.error("--tick-ms must be between 10 and 60000")
    if args.max_clients < 1:
        parser.error("--max-clients must be at least 1")
    if args.handshake_timeout <= 0:
        parser.error("--handshake-timeout must be positive")
    return serve(ServerOptions(host=args.host, port=args.port, tick_ms=args.tick_ms,
                               max_clients=args.max_clients, seed=args.seed,
                               stats_out=args.stats_out, web=not args.no_web,
                               web_root=args.web_root or None,
                               handshake_timeout=args.handshake_timeout))


if __name__ == "__main__":
    sys.exit(main())
