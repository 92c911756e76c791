#!/usr/bin/env python3
"""SpellTraction: a massively multiplayer letter game on netcore.

Players move markers on a 4x3 board of letters. Wherever the crowd is
biggest, the attractor goes; hold a cell long enough and its letter scores
for everyone who holds it. The original (2012) ran 15,000+ players in one
ActionScript process; this is the same game in Python, standard library
only, server-authoritative, and built so the bytes per player per tick stay
bounded however many play.

One file, read top-down: protocol -> rules -> store -> world -> front -> server
roles -> upgrade -> bus -> cluster -> bots -> clients -> view -> operations -> CLI.
A server is a Front (the players' connections) and a World (the game) joined by
a narrow seam (World: the seam): serve wires them in one process, the cluster
puts Redis between them.
Each line of the contents below is a banner in the file (``grep -n '^# ====' -A1``
lists the sections, ``grep -n '^# ----' -A1`` their sub-sections); after ``->``,
where to start reading (a class's methods in brackets).

Protocol (docs/PROTOCOL.md): constants, messages, encode/decode. Sans-IO.
    -> ErrorCode, Hello, Move, Welcome, TickMsg, Scored, You, Stats, Error
  Protocol: the wire format. HELLO_STRUCT, MOVE_STRUCT, YOU_FRAMED are shared.
    -> encode, decode, frame
Rules: the game state and one step per tick. Pure: no I/O, seeded RNG.
    -> Game (join, move, leave, step), Player
Store: players and the hall of fame in sqlite3, written off the loop.
    -> Store (open, lookup, stage_player, flush, close), backup_store, default_data_dir
World: the game of one world. The seam to a Front, the players, the tick.
  World: the seam. What a World and a Front say to each other, and nothing else.
    -> WorldSide (hello, move, leave), FrontSide (welcome, drop, tick), parse_hello
  World: the World. Joins and resumes, seats and tokens, fame, scoring, the tick.
    -> World (hello, join_v2, leave, on_tick)
  World: tick encoding, shared by every server of this game (bench/peers too).
    -> step_and_encode, you_frame, describe_unexpected
Front: the players' connections. Listening, web, limits, HELLO, sending frames.
  Front: web assets, and what the web and the limits answer.
    -> read_asset, origin_policy
  Front: the Front. A connection's life, HELLO, limits, and each tick's sends.
    -> Front (on_message, on_close, welcome, tick, reject)
Server: the roles. serve = Front + World; what every server process has.
    -> ServerOptions, Role (start, shutdown, metrics_text, stats_snapshot), GameServer
  Server: process and signals. Limits, memory, signals, serve().
    -> serve, ServerSignals
Upgrade: every connection and the world to the new code, same pid, nobody dropped.
    -> Upgrades (request, _hand_over), check_handover, run_upgrade
Bus: one world over Redis. Channels, messages, the lease; the roles' link.
    -> ClusterOptions, BusStats, bus_pack, bus_entries, BusLink
Cluster: one world's processes. Gateways (Fronts) and an authority (the World).
  Cluster: the authority (game). A World and the bus to its gateways; no sockets.
    -> Authority (on_tick, health), AuthorityBus (on_up, tick)
  Cluster: the gateway. A Front and the bus to the World; no rules here.
    -> Gateway (on_tick), GatewayBus (hello, on_bus, send_up), run_role
Bots: the load test. N players over as many processes as the fd limit needs.
  Bots: one worker process. A poller and flat arrays, no object per bot.
    -> BotWorker
  Bots: the parent. Spread the bots, tell them to hold, sum up.
    -> run_bots
Clients: the desktop client's logic. Its brain and its network driver; no Tk.
  Clients: the brain. Sans-IO: server bytes in, state and MOVEs out.
    -> ClientBrain
  Clients: the network driver. One nonblocking socket, run from a loop.
    -> NetClient
View: the desktop client's window. Its looks, then Tk.
  View: the looks. Layout, colours, shapes; no Tk needed.
    -> view_transform, crowd_heat, crowd_rgb
  View: the Tk window (Tk is imported only here). TkView, run_client().
    -> TkView, run_client
Operations: doctor (can this host hold N clients?) and bundle (one file).
  Operations: doctor, the host's facts. Limits, sysctls, free memory.
    -> doctor_needs, read_host_facts
  Operations: doctor, the checks and the report (the checks: netcore.hostcheck).
    -> doctor_checks, run_doctor
  Operations: doctor, the Redis bus (--redis). Reachable, fast, configured.
    -> redis_checks
  Operations: bundle. The game, netcore and web/ in one .pyz.
    -> build_bundle
CLI: serve (the default), game, gateway, bots, client, doctor, bundle. main().
    -> main
  CLI: the start-up. A server runs as an imported module, not as a script.
    -> _run_as_module

Run it:

    python3 spelltraction.py                    # serve on 0.0.0.0:12150
    python3 spelltraction.py bots --count 2000  # load-test it
    python3 spelltraction.py client             # play it, in a window
    python3 spelltraction.py doctor --clients 50000  # can this host hold them?
    python3 spelltraction.py game --redis redis://127.0.0.1:6379     # a world's authority
    python3 spelltraction.py gateway --redis redis://127.0.0.1:6379  # ...and its gateways
    python3 spelltraction.py bundle             # dist/spelltraction.pyz, one file to copy
"""

from __future__ import annotations

import argparse
import base64
import errno
import heapq
import json
import logging
import math
import operator
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
from collections import OrderedDict
from enum import Enum, IntEnum

# Where this file is: web/ (and, in a source tree, netcore/) sit beside it.
_HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import netcore  # noqa: F401  (the import below names what the game uses)
except ImportError as exc:  # this file copied alone, without the package beside it
    if exc.name != "netcore":
        raise
    _ALONE = (
        f"spelltraction.py needs the netcore/ package beside it, and {_HERE} has none.\n"
        "Either copy netcore/ (and web/, for the browser client) from the source tree\n"
        "beside spelltraction.py, or build the one-file bundle where the source tree is:\n"
        "    python3 spelltraction.py bundle\n"
        "and copy dist/spelltraction.pyz instead (run it: python3 spelltraction.pyz).\n"
    )
    if os.path.isdir(os.path.join(_HERE, "netcore")):  # python -P or -I (3.11+)
        _ALONE = (f"netcore/ is beside spelltraction.py in {_HERE}, but not on the import\n"
                  "path: -P and -I (Python 3.11+) leave the script's directory out. Run\n"
                  "it without them, or install it (pip install .), or use the .pyz bundle.\n")
    if __name__ == "__main__":
        sys.stderr.write(_ALONE)
        sys.exit(2)
    raise ImportError(_ALONE, name="netcore") from None

from netcore import (
    HTTP,
    WEBSOCKET,
    CloseReason,
    Connection,
    EventLoop,
    FrameParser,
    Handler,
    ProtocolError,
    ServerConfig,
    StreamFrames,
    TCPServer,
    Tick,
    TickScheduler,
    Timer,
    WebConfig,
    WebFront,
    WebSocketCodec,
    WholeFrames,
    encode_frame,
)
from netcore import handover, process
from netcore import websocket as ws
from netcore.handover import HandoverError
from netcore.loop import Readiness
from netcore.addrlimit import AddressRates, parse_networks
from netcore.connection import churned
from netcore.loop import DEFAULT_COALESCE
from netcore.poller import DEFAULT_POLLER, EVENT_READ, EVENT_WRITE, POLLERS, make_poller
from netcore.process import raise_nofile, release_freed_memory
from netcore.server import unread_bytes
from netcore.web import SAME_ORIGIN
from netcore.stats import Window
from netcore.http import response as http_response
from netcore.logs import ChurnReporter, JsonFormatter, RateLimitFilter, TextFormatter
from netcore.metrics import (
    CONTENT_TYPE as METRICS_CONTENT_TYPE,
    Exposition,
    add_loop_stats,
    add_net_stats,
    add_process_stats,
    add_tick_stats,
    process_stats,
    rss_bytes,
)
from netcore.typing_shim import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:  # names for type checkers: a server loads neither typing nor these
    import subprocess  # imported at run time only by the bots' parent
    import tkinter  # the client imports it at run time: servers need no Tk
    from typing import (
        IO, Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Set, Tuple, Union,
    )

    import ssl  # imported at run time only with --tls-cert (netcore.tls), or by a TLS client

    from netcore.web import Route

    # Imported at run time where used (doctor --redis, --cluster): a server
    # without Redis does not carry the Redis client's code.
    from netcore.redis import Pending, Redis, RedisAddress, RedisError, RedisSubscriber

__version__ = "0.1.0"
_STARTED_AT = time.monotonic()  # when this code began to run (an upgrade's log says)

# The index: the public names, section by section (the banners below). Type aliases
# (Message, PlayerRow, FameEntry) are for type checkers only, as typing itself is.
__all__ = [
    # Protocol
    "PROTOCOL_VERSION", "DEFAULT_PORT", "ErrorCode", "BadMessage", "Hello", "Move",
    "Welcome", "Mover", "TickMsg", "Scored", "You", "Stats", "Error", "Fame",
    "PROTOCOL_V2", "PROTOCOL_VERSIONS", "PAUSED_P99", "check_name",
    "HELLO_STRUCT", "MOVE_STRUCT", "YOU_FRAMED", "encode", "decode", "frame", "error_frame",
    "cell_of", "cell_centre",
    # Rules
    "Game", "Player", "StepResult", "ScorePlan", "IdsExhausted", "MAX_PLAYER_ID",
    # Store
    "Store", "StoreError", "backup_store", "check_data_directory", "default_data_dir",
    "new_resume_token", "token_hash",
    # World
    "WorldSide", "FrontSide", "HELLO_SENT", "Refused", "parse_hello", "World",
    "step_and_encode", "you_frame", "describe_unexpected",
    # Front
    "Front", "read_asset", "origin_policy", "TLSFilesError", "server_tls_context",
    # Server
    "ServerOptions", "Role", "GameServer", "AdminHandler", "serve", "ServerSignals", "rss_kb",
    "release_freed_memory",
    # Upgrade
    "Upgrades", "check_handover", "run_upgrade", "control_address", "game_file",
    "read_handover", "handover_from_environment",
    # Bus
    "ClusterOptions", "BusStats", "BusLink", "check_world", "bus_pack", "bus_head", "bus_entry",
    "bus_entries", "bus_gateway", "check_tick_message", "check_private_entries",
    # Cluster
    "AuthorityBus", "BusRole", "Authority", "GatewayBus", "Gateway", "run_role",
    # Bots
    "BotOptions", "BotState", "BotWorker", "bot_procs", "bot_sources", "run_bots",
    # Clients
    "ClientBrain", "ClientState", "Marker", "NetClient", "ClientOptions", "client_tls",
    "ClientTokens", "client_state_path",
    # View
    "view_transform", "crowd_rgb", "crowd_heat", "TkView", "run_client",
    # Operations
    "doctor_needs", "read_host_facts", "doctor_checks", "print_doctor_report", "run_doctor",
    "redis_checks",
    "build_bundle",
    # CLI
    "main", "make_loop", "Opt", "build_parser", "parsed_options", "add_redis_options",
    "redis_address",
]

log = logging.getLogger("spelltraction")


# =============================================================================
# Protocol (docs/PROTOCOL.md): constants, messages, encode/decode. Sans-IO.
# =============================================================================

PROTOCOL_VERSION = 1  # what a plain Hello() speaks: the original protocol
PROTOCOL_V2 = 2  # resume tokens, names, the hall of fame
PROTOCOL_VERSIONS = (PROTOCOL_VERSION, PROTOCOL_V2)  # what this server speaks
DEFAULT_PORT = 12150
DEFAULT_TICK_MS = 250  # the original's tick: 4 a second
WS_PATH = "/ws"  # WebSocket: binary messages carry the same frames as TCP
WS_MAX_MESSAGE = 4096  # largest WebSocket message from a client: whole frames only
WS_MAX_FRAGMENTS = 8  # frames in one client message (empty ones count): 1008 past it
WS_CONTROL_BURST = 8  # pings/pongs a client may send at once...
WS_CONTROL_RATE = 2.0  # ...and per second after that: 1008 past it
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
MAX_SERVER_FRAME = 4096  # docs/PROTOCOL.md: a server frame is at most this long
TOKEN_SIZE = 16  # a v2 resume token: 128 random bits
NO_TOKEN = bytes(TOKEN_SIZE)  # a v2 HELLO without a token
MAX_NAME_CHARS = 16
MAX_NAME_BYTES = 64  # 16 characters of at most 4 UTF-8 bytes each
FAME_SIZE = 10  # the hall of fame lists the top 10
MAX_PLAYER_ID = 0xFFFFFFFF  # ids are u32 on the wire, never reused: none is handed out past this
NEW_PLAYER, RESUMED, TOKEN_UNKNOWN = 0, 1, 2  # WELCOME v2: how the player came in
PAUSED_P99 = 0xFFFFFFFF  # v2: STATS' tick-lateness field while the world is paused

# Message types: high bit set = server -> client.
HELLO, MOVE = 0x01, 0x02
WELCOME, TICK, SCORED, YOU, STATS, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x8F
FAME = 0x86  # v2 only


class ErrorCode(IntEnum):
    """The code in an ERROR message (docs/PROTOCOL.md); an int on the wire."""

    VERSION = 1
    BAD_MESSAGE = 2
    SERVER_FULL = 3
    SHUTDOWN = 4
    FLOOD = 5
    HELLO_TIMEOUT = 6
    BAD_FRAME = 7
    TAKEN_OVER = 8  # v2: a newer connection resumed this player; don't reconnect by yourself
    BAD_NAME = 9  # v2

    @classmethod
    def name_of(cls, code: int) -> str:
        """``FLOOD`` (or 5) -> ``"flood"``: the label metrics use; unknown: the number."""
        try:
            return cls(code).name.lower().replace("_", "-")
        except ValueError:
            return str(int(code))


# The WebSocket close code that follows each ERROR (BAD_FRAME takes the
# code of the framing error itself: 1002, 1007, 1009...).
WS_CLOSE_CODES: Dict[int, int] = {
    ErrorCode.VERSION: ws.CloseCode.PROTOCOL_ERROR,
    ErrorCode.BAD_MESSAGE: ws.CloseCode.PROTOCOL_ERROR,
    ErrorCode.SERVER_FULL: ws.CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SHUTDOWN: ws.CloseCode.GOING_AWAY,
    ErrorCode.FLOOD: ws.CloseCode.POLICY_VIOLATION,
    ErrorCode.HELLO_TIMEOUT: ws.CloseCode.POLICY_VIOLATION,
    ErrorCode.BAD_FRAME: ws.CloseCode.PROTOCOL_ERROR,
    ErrorCode.TAKEN_OVER: ws.CloseCode.POLICY_VIOLATION,
    ErrorCode.BAD_NAME: ws.CloseCode.POLICY_VIOLATION,
}


class BadMessage(ProtocolError):
    """A frame that is not a valid message (type, length or content)."""

    reason = "bad-message"


class Hello(NamedTuple):
    version: int = PROTOCOL_VERSION
    shape: int = ANY_SHAPE
    colour: int = ANY_COLOUR
    token: bytes = b""  # v2: a resume token, or b"" (sent as 16 zero bytes)
    name: bytes = b""  # v2: UTF-8 as sent; the server checks it (check_name)


class Move(NamedTuple):
    seq: int
    x: int
    y: int


class Welcome(NamedTuple):
    player_id: int
    shape: int
    colour: int
    version: int = PROTOCOL_VERSION
    tick_ms: int = DEFAULT_TICK_MS
    cols: int = COLS
    rows: int = ROWS
    cell_px: int = CELL_PX
    hold_ticks: int = HOLD_TICKS
    stats_every: int = STATS_EVERY
    max_movers: int = MAX_MOVERS
    resumed: int = NEW_PLAYER  # v2: NEW_PLAYER, RESUMED or TOKEN_UNKNOWN
    token: bytes = b""  # v2: the player's resume token


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


class Fame(NamedTuple):
    """v2: the hall of fame, best first: (player id, score, name or "")."""

    entries: Tuple[Tuple[int, int, str], ...]


if TYPE_CHECKING:
    Message = Union[Hello, Move, Welcome, TickMsg, Scored, You, Stats, Error, Fame]


# -----------------------------------------------------------------------------
# Protocol: the wire format. HELLO_STRUCT, MOVE_STRUCT, YOU_FRAMED are shared.
# -----------------------------------------------------------------------------

# HELLO_STRUCT, MOVE_STRUCT and YOU_FRAMED are public: every server of this
# game (the asyncio peer in bench/ too) parses HELLO and MOVE and packs YOU
# with them. The other structs are this section's own.
HELLO_STRUCT = struct.Struct(">BHBI")
MOVE_STRUCT = struct.Struct(">BHHH")
_HELLO2 = struct.Struct(">BHBI16sB")  # v2: + token, name length; the name follows
_WELCOME2_TAIL = struct.Struct(">B16s")  # v2: after the v1 WELCOME
_FAME_ENTRY = struct.Struct(">IIB")  # id, score, name length; the name follows
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
YOU_FRAMED = struct.Struct(">HBHHHI3s")
_YOU_FRAME_LEN = _YOU.size
_MOVE_SIZE = MOVE_STRUCT.size
_MOVE_UNPACK = MOVE_STRUCT.unpack


def _rgb(colour: int) -> Tuple[int, int, int]:
    return (colour >> 16) & 0xFF, (colour >> 8) & 0xFF, colour & 0xFF


def _letters(raw: bytes, what: str) -> str:
    if any(not 65 <= b <= 90 for b in raw):
        raise BadMessage(f"{what}: letters must be A-Z, got {raw!r}")
    return raw.decode("ascii")


def encode(msg: Message) -> bytes:
    """The payload of one message (frame it with ``encode_frame``)."""
    if isinstance(msg, Hello):
        if msg.version < PROTOCOL_V2:
            return HELLO_STRUCT.pack(HELLO, msg.version, msg.shape, msg.colour)
        return _HELLO2.pack(HELLO, msg.version, msg.shape, msg.colour, msg.token or NO_TOKEN,
                            len(msg.name)) + msg.name
    if isinstance(msg, Move):
        return MOVE_STRUCT.pack(MOVE, msg.seq, msg.x, msg.y)
    if isinstance(msg, Welcome):
        head = _WELCOME.pack(
            WELCOME, msg.version, msg.player_id, msg.shape, msg.colour, msg.tick_ms,
            msg.cols, msg.rows, msg.cell_px, msg.hold_ticks, msg.stats_every, msg.max_movers,
        )
        if msg.version < PROTOCOL_V2:
            return head
        return head + _WELCOME2_TAIL.pack(msg.resumed, msg.token)
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
    if isinstance(msg, Fame):
        parts = [_U8.pack(FAME), _U8.pack(len(msg.entries))]
        for pid, score, name in msg.entries[:FAME_SIZE]:
            raw = name.encode("utf-8")[:MAX_NAME_BYTES]
            parts.append(_FAME_ENTRY.pack(pid, score, len(raw)) + raw)
        return b"".join(parts)
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
        if len(payload) >= 3 and int.from_bytes(payload[1:3], "big") >= PROTOCOL_V2:
            return _decode_hello2(payload)
        _expect(payload, HELLO_STRUCT.size, "HELLO")
        _, version, shape, colour = HELLO_STRUCT.unpack(payload)
        return Hello(version, shape, colour)
    if kind == MOVE:
        _expect(payload, MOVE_STRUCT.size, "MOVE")
        _, seq, x, y = MOVE_STRUCT.unpack(payload)
        return Move(seq, x, y)
    if kind == WELCOME:
        v2 = len(payload) >= 3 and int.from_bytes(payload[1:3], "big") >= PROTOCOL_V2
        _expect(payload, _WELCOME.size + (_WELCOME2_TAIL.size if v2 else 0), "WELCOME")
        (_, version, pid, shape, colour, tick_ms, cols, rows, cell_px, hold, stats_every,
         max_movers) = _WELCOME.unpack_from(payload)
        resumed, token = (_WELCOME2_TAIL.unpack_from(payload, _WELCOME.size) if v2
                          else (NEW_PLAYER, b""))
        return Welcome(pid, shape, colour, version, tick_ms, cols, rows, cell_px, hold,
                       stats_every, max_movers, resumed, token)
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
    if kind == FAME:
        return _decode_fame(payload)
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


def _decode_hello2(payload: bytes) -> Hello:
    if len(payload) < _HELLO2.size:
        raise BadMessage(f"HELLO v2 must be at least {_HELLO2.size} bytes, got {len(payload)}")
    _, version, shape, colour, token, n = _HELLO2.unpack_from(payload)
    _expect(payload, _HELLO2.size + n, "HELLO v2 with its name")
    return Hello(version, shape, colour, b"" if token == NO_TOKEN else token,
                 payload[_HELLO2.size:])


def _decode_fame(payload: bytes) -> Fame:
    if len(payload) < 2:
        raise BadMessage("FAME must be at least 2 bytes")
    entries = []
    pos = 2
    for _ in range(payload[1]):
        if len(payload) < pos + _FAME_ENTRY.size:
            raise BadMessage("FAME is shorter than its entries")
        pid, score, n = _FAME_ENTRY.unpack_from(payload, pos)
        pos += _FAME_ENTRY.size
        if len(payload) < pos + n:
            raise BadMessage("FAME is shorter than its entries")
        entries.append((pid, score, payload[pos:pos + n].decode("utf-8", "replace")))
        pos += n
    if pos != len(payload):
        raise BadMessage(f"FAME has {len(payload) - pos} bytes past its entries")
    return Fame(tuple(entries))


def check_name(raw: bytes) -> str:
    """A v2 HELLO's name, trimmed; raises ValueError saying which rule it broke."""
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"name is longer than {MAX_NAME_CHARS} characters")
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("name is not valid UTF-8") from None
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name is longer than {MAX_NAME_CHARS} characters ({len(name)})")
    if not name.isprintable():
        raise ValueError("name has control or unprintable characters")
    return name


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


def _clamp(x: int, y: int) -> Tuple[int, int]:
    return _COORD[min(max(x, 0), BOARD_W - 1)], _COORD[min(max(y, 0), BOARD_H - 1)]


def _hand(letters: str) -> str:
    """A hand in canonical form: sorted and interned.

    There are only 2,600 three-letter hands, so interning lets players share
    the string objects; sorted, a hand reads like a rack of tiles.
    """
    return sys.intern("".join(sorted(letters)))


_MOVED, _DIRTY = 1, 2  # Player.marks
_MARKED = _MOVED | _DIRTY


class Player:
    """One player. Slots only: there may be 100,000 of these."""

    __slots__ = (
        "id", "shape", "colour", "x", "y", "cell", "letters", "score", "seq",
        "tokens", "token_tick", "moves", "marks", "peer", "name", "resume_hash",
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
        self.token_tick = 0  # the tick tokens were last refilled at
        self.moves = 0  # MOVEs received in token_tick, taken or not (flood check)
        # _MOVED: listed among this tick's movers already; _DIRTY: YOU must be
        # sent at the next tick. One int, not two slots: 8 B less per player.
        self.marks = 0
        # Its connection while the player plays, as the Front names it (a
        # netcore Connection; a gateway's connection, for an authority; the
        # asyncio peer in bench/ keeps its protocol object): Rules never look at it.
        self.peer: Any = None
        self.name = ""  # v2: the name the player chose, or ""
        self.resume_hash = b""  # v2: SHA-256 of the player's resume token (not move tokens)

    def __repr__(self) -> str:
        return f"<Player {self.id} at ({self.x},{self.y}) {self.letters} score={self.score}>"


class ScorePlan(NamedTuple):
    """A scoring step decided but not yet applied: it waits for the store.

    Everything random is drawn when it is decided, so applying it later
    changes nothing but when the players hear of it.
    """

    cell: int
    old: str
    new: str
    scorers: List[Tuple[Player, str, int]]  # (player, new letters, new score)


class StepResult(NamedTuple):
    tick: int
    scored: Optional[Scored]
    movers: List[Player]  # at most MAX_MOVERS, in order of their first move
    gone: List[int]  # at most MAX_MOVERS ids
    dirty: List[Player]  # players whose YOU changed (present players only)


def _jsonable(value: Any) -> Any:
    """Tuples (a random generator's state) as lists, for JSON."""
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    """:func:`_jsonable`, undone."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


class IdsExhausted(Exception):
    """Every player id the protocol can carry (u32) has been handed out."""


class Game:
    """The board, the players and the attractor, advanced one tick at a time."""

    def __init__(self, rng: Optional[random.Random] = None, hold_ticks: int = HOLD_TICKS,
                 max_movers: int = MAX_MOVERS) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.hold_ticks = hold_ticks
        self.max_movers = max_movers
        self.board: List[str] = self.rng.sample(LETTERS, CELLS)
        self.players: Dict[int, Player] = {}
        self.removed = 0  # players who left since ``players`` was last rebuilt (compact)
        self.counts = [0] * CELLS
        self.attractor = PARKED
        self.held = 0
        self.tick = 0
        self.letters_scored = 0
        self.moves_accepted = 0
        self.moves_limited = 0
        self._next_id = 1
        self.take_id: Callable[[], int] = self._take_id  # a store hands out ids instead
        # With a store, a scoring step is planned, written, then applied: the
        # attractor waits on the cell (held = hold_ticks) until release_score().
        self.defer_scoring = False
        self.pending_score: Optional[ScorePlan] = None
        self._score_released = False
        self.last_plan: Optional[ScorePlan] = None  # the last scoring step applied
        self._movers: List[Player] = []
        self._gone: List[int] = []
        self._dirty: List[Player] = []

    # -- players ------------------------------------------------------------

    def join(self, shape: int = ANY_SHAPE, colour: int = ANY_COLOUR,
             at: Optional[Tuple[int, int]] = None) -> Player:
        rng = self.rng  # draws in the order seeded games have always used
        if not 0 <= shape < len(SHAPES):
            shape = rng.randrange(len(SHAPES))
        if not 0 <= colour <= 0xFFFFFF:
            colour = rng.choice(PALETTE)
        if at is None:
            at = (rng.randrange(BOARD_W), rng.randrange(BOARD_H))
        return self.add(self.new_player(shape, colour), at)

    def new_player(self, shape: int = ANY_SHAPE, colour: int = ANY_COLOUR,
                   pid: Optional[int] = None, letters: str = "") -> Player:
        """A player with a fresh id (or ``pid``, resuming), not on the board yet."""
        rng = self.rng
        if not 0 <= shape < len(SHAPES):
            shape = rng.randrange(len(SHAPES))
        if not 0 <= colour <= 0xFFFFFF:
            colour = rng.choice(PALETTE)
        hand = _hand(letters or "".join(rng.sample(LETTERS, HAND_SIZE)))
        player = Player(self.take_id() if pid is None else pid, shape, colour, hand, 0, 0)
        player.cell = -1
        return player

    def _take_id(self) -> int:
        pid = self._next_id
        if pid > MAX_PLAYER_ID:
            raise IdsExhausted(f"player ids are used up (the next would be {pid})")
        self._next_id += 1
        return pid

    def add(self, player: Player, at: Optional[Tuple[int, int]] = None) -> Player:
        """Put a player (new, or back from a dropped connection) on the board."""
        rng = self.rng
        x, y = at if at is not None else (rng.randrange(BOARD_W), rng.randrange(BOARD_H))
        player.x, player.y = _clamp(x, y)
        player.cell = cell_of(player.x, player.y)
        player.token_tick = self.tick
        player.tokens = MOVE_BUCKET
        self.players[player.id] = player
        self.counts[player.cell] += 1
        self._mark_moved(player)  # a newcomer shows up among the tick's movers
        # Not marked dirty: the caller delivers the first YOU with WELCOME.
        return player

    def leave(self, player: Player) -> None:
        if self.players.pop(player.id, None) is None:
            return
        self.removed += 1
        self.counts[player.cell] -= 1
        player.cell = -1  # also tells step() to skip it in movers/dirty
        self._gone.append(player.id)

    def move(self, player: Player, seq: int, x: int, y: int) -> bool:
        """Apply a move, clamped to the board and rate-limited. True if taken.

        Every call counts in ``player.moves`` (this tick's MOVEs), which the
        server checks for floods. This runs for every MOVE of every player,
        so the helpers it would call are written out inline.
        """
        old = player.cell
        if old < 0:
            return False
        tick = self.tick
        if player.token_tick != tick:
            tokens = player.tokens + tick - player.token_tick
            player.tokens = MOVE_BUCKET if tokens > MOVE_BUCKET else tokens
            player.token_tick = tick
            player.moves = 0
        player.moves += 1
        if player.tokens <= 0:
            self.moves_limited += 1
            return False
        player.tokens -= 1
        self.moves_accepted += 1
        # _clamp(), inline; _COORD shares the int objects (see there).
        x = _COORD[0 if x < 0 else BOARD_W - 1 if x >= BOARD_W else x]
        y = _COORD[0 if y < 0 else BOARD_H - 1 if y >= BOARD_H else y]
        player.x = x
        player.y = y
        player.seq = seq
        cell = (y // CELL_PX) * COLS + x // CELL_PX  # cell_of(), inline
        if cell != old:
            counts = self.counts
            counts[old] -= 1
            counts[cell] += 1
            player.cell = cell
        marks = player.marks
        if marks != _MARKED:  # _mark_moved() and _mark_dirty(), inline
            if not marks & _MOVED:
                self._movers.append(player)
            if not marks & _DIRTY:
                self._dirty.append(player)
            player.marks = _MARKED
        return True

    def _mark_moved(self, player: Player) -> None:
        if not player.marks & _MOVED:
            player.marks |= _MOVED
            self._movers.append(player)

    def _mark_dirty(self, player: Player) -> None:
        if not player.marks & _DIRTY:
            player.marks |= _DIRTY
            self._dirty.append(player)

    # -- the tick -----------------------------------------------------------

    def skip(self, ticks: int) -> None:
        """The clock ran ``ticks`` ticks that the game never stepped (a stall).

        The tick count moves on by as many, so the next TICK's number shows
        the gap (docs/PROTOCOL.md: a gap means skipped ticks); nothing else
        happened in them: the attractor held no longer, nobody scored.
        """
        self.tick += ticks

    def compact(self) -> bool:
        """Rebuild ``players`` if enough have left since the last time; True if it did.

        Churn (players leaving and coming back) grows a dict's table to
        twice what it needs (see ``netcore``'s ``OwnerBase.compact``): for
        15,000 players, 0.6 -> 1.3 MB after ~7,000 leaves.
        """
        if not churned(self.removed, len(self.players)):
            return False
        self.players = dict(self.players)
        self.removed = 0
        return True

    def step(self) -> StepResult:
        self.tick += 1
        scored = None
        if self.pending_score is not None:
            # Planned and waiting for the disk: the attractor stays put until
            # then, and the whole step is announced on the tick it lands.
            if self._score_released:
                scored = self._apply_score(self.pending_score)
                self.pending_score, self._score_released = None, False
                self.attractor, self.held = PARKED, 0
        else:
            counts = self.counts
            best = max(counts)
            target = counts.index(best) if best >= 2 and counts.count(best) == 1 else PARKED
            if target == PARKED:
                self.attractor, self.held = PARKED, 0
            elif target == self.attractor:
                self.held += 1
            else:
                self.attractor, self.held = target, 1
            if self.attractor != PARKED and self.held > self.hold_ticks:
                plan = self._plan_score(self.attractor)
                if self.defer_scoring:
                    self.pending_score, self.held = plan, self.hold_ticks
                else:
                    scored = self._apply_score(plan)
                    self.attractor, self.held = PARKED, 0

        # Both lists start again empty: whoever is in either has no mark left.
        movers = self._movers
        for p in movers:
            p.marks = 0
        present = [p for p in movers if p.cell >= 0]
        dirty = self._dirty
        for p in dirty:
            p.marks = 0
        result = StepResult(
            self.tick,
            scored,
            present[-self.max_movers:],
            self._gone[-self.max_movers:],
            [p for p in dirty if p.cell >= 0],
        )
        self._movers, self._gone, self._dirty = [], [], []
        return result

    def release_score(self) -> None:
        """The pending scoring step is on disk: the next step announces it."""
        self._score_released = self.pending_score is not None

    def _plan_score(self, cell: int) -> ScorePlan:
        rng = self.rng
        board = self.board
        old = board[cell]
        new = rng.choice([c for c in LETTERS if c not in board])
        scorers = []
        for p in self.players.values():
            if old in p.letters:
                fresh = rng.choice([c for c in LETTERS if c not in p.letters])
                scorers.append((p, _hand(p.letters.replace(old, fresh)), p.score + 1))
        return ScorePlan(cell, old, new, scorers)

    def _apply_score(self, plan: ScorePlan) -> Scored:
        self.last_plan = plan
        self.board[plan.cell] = plan.new
        for p, letters, score in plan.scorers:
            p.letters = letters
            p.score = score
            self._mark_dirty(p)  # step() sends YOU only to those on the board
        self.letters_scored += 1
        return Scored(plan.cell, plan.old, plan.new, len(plan.scorers))

    # -- the state, for an upgrade that keeps the game going ---------------------------

    #: A player's fields as ``export`` lists them (``cell``: -1 off the board).
    PLAYER_FIELDS = ("id", "shape", "colour", "x", "y", "cell", "letters", "score", "seq",
                     "tokens", "token_tick", "moves", "marks", "name")
    player_row = operator.attrgetter(*PLAYER_FIELDS)  # a player as a row of PLAYER_FIELDS

    def export(self, others: Sequence[Player] = ()) -> Dict[str, Any]:
        """Everything the game is, as plain data: the board, every player on it (and
        ``others``, players off the board that must come back the same, such as
        parked seats), the attractor, the counters, the random generator, the
        scoring step under way and this tick's movers. :meth:`restore` makes the
        same game from it; the next ``step`` does what this game's would have."""
        everyone = list(self.players.values()) + [p for p in others if p.cell < 0]
        plan = self.pending_score
        return {
            "board": list(self.board),
            "players": handover.pack_rows(list(map(self.player_row, everyone))),
            "attractor": self.attractor, "held": self.held, "tick": self.tick,
            "letters_scored": self.letters_scored, "moves_accepted": self.moves_accepted,
            "moves_limited": self.moves_limited, "next_id": self._next_id,
            "defer_scoring": self.defer_scoring,
            "pending_score": None if plan is None else [
                plan.cell, plan.old, plan.new, [[p.id, letters, score]
                                                for p, letters, score in plan.scorers]],
            "score_released": self._score_released,
            "rng": _jsonable(self.rng.getstate()),
            "movers": [p.id for p in self._movers], "gone": list(self._gone),
            "dirty": [p.id for p in self._dirty],
        }

    @classmethod
    def restore(cls, state: Dict[str, Any]) -> Tuple["Game", Dict[int, Player]]:
        """The game :meth:`export` described, and every player it listed by id
        (those off the board too)."""
        game = cls()
        game.board = list(state["board"])
        everyone: Dict[int, Player] = {}
        rest = cls.PLAYER_FIELDS[5:]
        playing, counts = game.players, game.counts
        for values in handover.unpack_rows(state["players"]):
            # PLAYER_FIELDS: id, shape, colour, x, y, then the rest (letters among them)
            pid, shape, colour, x, y = values[:5]
            p = Player(pid, shape, colour, values[6], x, y)
            for name, value in zip(rest, values[5:]):
                setattr(p, name, value)
            everyone[pid] = p
            if p.cell >= 0:
                playing[pid] = p
                counts[p.cell] += 1
        game.attractor, game.held, game.tick = state["attractor"], state["held"], state["tick"]
        game.letters_scored = state["letters_scored"]
        game.moves_accepted = state["moves_accepted"]
        game.moves_limited = state["moves_limited"]
        game._next_id = state["next_id"]
        game.defer_scoring = state["defer_scoring"]
        plan = state["pending_score"]
        if plan is not None:
            game.pending_score = ScorePlan(plan[0], plan[1], plan[2], [
                (everyone[pid], letters, score) for pid, letters, score in plan[3]
                if pid in everyone])
        game._score_released = state["score_released"]
        game.rng.setstate(_tupled(state["rng"]))
        game._movers = [everyone[pid] for pid in state["movers"] if pid in everyone]
        game._gone = list(state["gone"])
        game._dirty = [everyone[pid] for pid in state["dirty"] if pid in everyone]
        return game, everyone

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


# =============================================================================
# Store: players and the hall of fame in sqlite3, written off the loop.
# =============================================================================
#
# The loop never waits for the disk. It stages changes (whole player rows,
# the hall of fame, the id counter) into the current batch; at the end of
# each tick the batch goes to a writer thread through a bounded queue, and
# commits there. Every staged change carries the batch's sequence number;
# ``Store.durable`` is the last committed one. Whatever must not be shown
# before it is on disk (a scoring step, a new player's token) waits for
# ``durable`` to reach its number, checked at the start of every tick.

DATA_FILE = "spelltraction.sqlite3"
LOCK_FILE = "spelltraction.lock"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x53705472  # "SpTr" in the database header: this file is ours
ID_BLOCK = 100_000  # ids reserved on disk ahead of use, so none is ever handed out twice
STORE_QUEUE = 8  # batches waiting for the disk; past this, ticks merge into one batch
DEFAULT_GRACE_S = 300.0  # a dropped player's seat is kept this long
DEFAULT_PRUNE_DAYS = 30.0  # rows of players unseen this long are deleted (fame stays)
STORE_CACHE_KIB = 256  # sqlite's page cache per connection (its default: 2,000 KiB)
SYNC_LEVELS = ("normal", "full")  # PRAGMA synchronous: NORMAL survives kill -9, FULL power loss
TOKEN_BYTES = 16  # 128 random bits

# Each schema version's migration from the one before (index 0 creates v1).
MIGRATIONS = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE players (
        id INTEGER PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,  -- SHA-256 of the resume token, never the token
        letters TEXT NOT NULL,
        score INTEGER NOT NULL,
        shape INTEGER NOT NULL,
        colour INTEGER NOT NULL,
        name TEXT,
        last_seen REAL NOT NULL,  -- unix time
        online INTEGER NOT NULL   -- 1: connected when this row was written
    );
    CREATE INDEX players_last_seen ON players (last_seen);
    CREATE TABLE fame (
        rank INTEGER PRIMARY KEY,  -- 1..10
        id INTEGER NOT NULL,
        name TEXT,
        score INTEGER NOT NULL
    );
    """,
)

# A player's row, column for column: (id, token_hash, letters, score, shape,
# colour, name, last_seen, online).
if TYPE_CHECKING:
    PlayerRow = Tuple[int, bytes, str, int, int, int, Optional[str], float, int]
    FameEntry = Tuple[int, int, str]  # (player id, score, name or "")


from netcore.digest import sha256  # noqa: E402 - beside its one use


def new_resume_token() -> bytes:
    """128 random bits from the OS (what ``secrets`` does, without importing it)."""
    return os.urandom(TOKEN_BYTES)


def token_hash(token: bytes) -> bytes:
    """What the store keeps of a token: a copied database impersonates no one.

    SHA-256 from netcore.digest: the builtin module, not hashlib (OpenSSL, ~3.5 MB of RSS).
    """
    return sha256(token).digest()


def default_data_dir() -> str:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=), else the XDG state dir."""
    state = os.environ.get("STATE_DIRECTORY", "")
    if state:
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "spelltraction")


class StoreError(Exception):
    """The data directory can't be used; the message says which file and why."""


def _user_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid with no name."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_data_directory(directory: str, allow_shared: bool = False) -> None:
    """Refuse a data directory others could write to: world-writable, or not ours.

    Whoever can write there can replace the store, its ``-wal``/``-shm`` or its
    lock before the server opens them (a file or a symlink placed in advance).
    Raises :class:`StoreError` naming the directory and the fix;
    ``allow_shared`` (``--allow-shared-data``) logs a warning and goes on.
    """
    import stat

    try:
        st = os.stat(directory)
    except OSError as exc:
        raise StoreError(f"cannot use data directory {directory}: "
                         f"{exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"data directory {directory} is not a directory")
    problems = []
    me = os.geteuid()
    if st.st_uid != me:
        problems.append((
            f"belongs to {_user_name(st.st_uid)}, not to this server's user "
            f"{_user_name(me)}",
            f"chown {me} {directory} (or run the server as its owner)"))
    if st.st_mode & stat.S_IWOTH:
        problems.append((
            f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod o-w {directory} (0700 is what the server creates)"))
    if not problems:
        return
    why = " and ".join(p[0] for p in problems)
    fix = "; ".join(p[1] for p in problems)
    if allow_shared:
        log.warning("data directory %s %s: others could replace the store or its lock "
                    "(--allow-shared-data: used anyway)", directory, why)
        return
    raise StoreError(
        f"data directory {directory} {why}: others could replace the store or its lock, so "
        f"the server refuses it. Fix: {fix}; or give another --data; or, if every user who "
        f"can write there is trusted, --allow-shared-data")


def _create_private_file(path: str) -> None:
    """Create ``path`` empty with mode 0600 unless it exists; tighten ours if it does.

    sqlite creates a database 0644 (less the umask) and gives its ``-wal`` and
    ``-shm`` the database's mode: made 0600 first, all three stay private.
    Existing files of ours (an older version's, or left by a crash) that others
    may read are made 0600 too; never through a symlink.
    """
    import stat

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        os.close(os.open(path, flags, 0o600))
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from exc
    for name in (path, path + "-wal", path + "-shm"):
        try:
            st = os.lstat(name)
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and mode & 0o077:
            try:
                os.chmod(name, mode & 0o700)
            except OSError as exc:
                log.warning("store: %s is mode %04o and could not be made private: %s",
                            name, mode, exc.strerror or exc)
                continue
            log.info("store: %s was mode %04o, readable by others: now %04o", name, mode,
                     mode & 0o700)


class Store:
    """The game's durable state: one sqlite3 file in WAL mode, in a locked directory."""

    def __init__(self, directory: str, sync: str = "normal", queue_size: int = STORE_QUEUE,
                 clock: Callable[[], float] = time.time, grace: float = DEFAULT_GRACE_S) -> None:
        if sync not in SYNC_LEVELS:
            raise ValueError(f"sync must be one of {SYNC_LEVELS}")
        self.directory = directory
        self.path = os.path.join(directory, DATA_FILE)
        self.sync = sync
        self.clock = clock
        self.grace = grace
        # Players who may come back (seen within the grace period) are read on
        # demand, by token hash, by a reader thread: the loop never waits on a
        # read, and start-up memory does not grow with the rows on disk.
        # ``lookup()`` asks; ``answers()`` gives what was read since.
        self._asks: Any = None
        self._answers: Any = None
        self._reader: Any = None
        self.lookups = 0
        self._queue: Any = None
        self._queue_size = queue_size
        self._lock_fd = -1
        self._thread: Any = None
        self.next_id = 1  # the first id not handed out yet
        self.reserved_id = 1  # ids below this are reserved on disk (committed)
        self.fame: List[FameEntry] = []
        self.meta: Dict[str, int] = {}  # the meta table as loaded, and stage_meta()'s since
        self.seq = 1  # the batch now being staged
        self.durable = 0  # the last batch on disk
        self._batch = self._empty_batch()
        self._staged = False
        self.commits = 0
        self.commit_failures = 0
        self.rows_written = 0
        self.batches_merged = 0  # ticks whose batch waited for room in the queue
        self.pruned = 0
        self.commit_times = Window(1024)
        self.last_error = ""
        self._stopping = False
        self.closed = False

    # -- opening: lock, check, migrate -----------------------------------------

    def open(self, allow_shared: bool = False, lock_fd: int = -1) -> None:
        """Lock the directory, check and migrate the database, start the writer.

        ``lock_fd``: the lock a predecessor held, inherited across an upgrade's
        exec (it must be this directory's lock file): the directory is never
        unlocked in between.

        Raises :class:`StoreError` naming the file for a directory another
        server holds, or a file that is corrupt, foreign, or from a newer
        schema; naming the directory for one that is world-writable or not
        this user's (:func:`check_data_directory`; ``allow_shared``: only a
        warning). Nothing is ever overwritten. The directory is created 0700
        and the database 0600 (its ``-wal`` and ``-shm`` follow its mode).
        """
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self.directory}: "
                             f"{exc.strerror or exc}") from exc
        check_data_directory(self.directory, allow_shared)
        self._lock(lock_fd)
        try:
            _create_private_file(self.path)
            self._check_file()
            db = self._connect()
            try:
                self._check_and_migrate(db)
                self._load(db)
            finally:
                db.close()
        except BaseException:
            self._unlock()
            raise
        import queue
        import threading

        self._queue = queue.Queue(self._queue_size)
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        self._asks = queue.SimpleQueue()
        self._answers = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="store-reader", daemon=True)
        self._reader.start()

    def _lock(self, inherited: int = -1) -> None:
        import fcntl

        path = os.path.join(self.directory, LOCK_FILE)
        if inherited >= 0:
            held, here = os.fstat(inherited), os.stat(path)
            if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
                raise StoreError(f"the lock handed over is not {path}")
            fd = inherited
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as exc:
                raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"another server is using the data directory {self.directory} (its lock "
                f"{path} is held): stop it, or give this one another --data") from exc
        self._lock_fd = fd

    @property
    def lock_fd(self) -> int:
        """The locked descriptor of the data directory's lock file (-1: not locked)."""
        return self._lock_fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def _refuse(self, why: str) -> StoreError:
        return StoreError(f"{self.path}: {why}; refusing to start, and leaving the file as it "
                          f"is: move it away or restore a backup, or give another --data")

    def _check_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._refuse(f"cannot read it ({exc.strerror or exc})") from exc
        if head and head != b"SQLite format 3\x00":
            raise self._refuse("not a SQLite database (corrupt, or some other file)")

    def _connect(self) -> Any:
        import sqlite3

        db = sqlite3.connect(self.path, isolation_level=None)  # transactions by hand
        db.execute("PRAGMA busy_timeout = 1000")  # a locked file is a failed commit, retried
        # sqlite's page cache is 2 MB per connection by default, and the
        # writer's fills as the table grows (19,000 players: ~2 MB of rows),
        # in a server that is 30 MB in all. Commits touch a few pages each,
        # and the rest are in the OS's file cache: 256 KiB is plenty.
        db.execute(f"PRAGMA cache_size = -{STORE_CACHE_KIB}")
        return db

    def _check_and_migrate(self, db: Any) -> None:
        import sqlite3

        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (app_id != 0 or tables):
                raise self._refuse(f"not a SpellTraction database (application_id "
                                   f"0x{app_id:08x}, {tables} schema objects)")
            if version > SCHEMA_VERSION:
                raise self._refuse(f"written by a newer SpellTraction (schema {version}; this "
                                   f"one knows up to {SCHEMA_VERSION}): run the newer version")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise self._refuse(f"corrupt (quick_check: {check})")
            db.execute("PRAGMA journal_mode = WAL")
            for v in range(version, SCHEMA_VERSION):
                db.execute("BEGIN IMMEDIATE")
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {v + 1}")
                db.execute("COMMIT")
                log.info("store %s: schema %d -> %d", self.path, v, v + 1)
        except sqlite3.DatabaseError as exc:
            raise self._refuse(f"unreadable ({exc})") from exc

    def _load(self, db: Any) -> None:
        """The id counter and the hall of fame; reserve the next block of ids."""
        row = db.execute("SELECT value FROM meta WHERE key = 'reserved_id'").fetchone()
        top = db.execute("SELECT max(id) FROM players").fetchone()[0] or 0
        fame_top = db.execute("SELECT max(id) FROM fame").fetchone()[0] or 0
        self.next_id = max(row[0] if row else 1, top + 1, fame_top + 1)
        self.reserved_id = self.next_id + ID_BLOCK
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('reserved_id', ?)",
                   (self.reserved_id,))
        # Who was connected when the server stopped (or died) gets a whole grace
        # period from now: the time the server was down is not theirs to lose.
        db.execute("UPDATE players SET last_seen = ?, online = 0 WHERE online = 1", (now,))
        db.execute("COMMIT")
        self.fame = [(pid, score, name or "") for pid, score, name in
                     db.execute("SELECT id, score, name FROM fame ORDER BY rank")]
        self.meta = {key: value for key, value in db.execute("SELECT key, value FROM meta")}

    # -- the loop's side: reads, and staging changes ---------------------------------

    def lookup(self, hashed: bytes) -> None:
        """Ask for the row of the player with this token hash, if seen within the
        grace period; its answer comes out of :meth:`answers` a moment later."""
        self.lookups += 1
        self._asks.put(hashed)

    def answers(self) -> List[Tuple[bytes, Optional[PlayerRow]]]:
        """(token hash, row or None) for the lookups answered since the last call."""
        import queue

        out = []
        while True:
            try:
                out.append(self._answers.get_nowait())
            except queue.Empty:
                return out

    def _read(self) -> None:
        """The reader thread: one indexed read per lookup, on a connection of its own
        (WAL: reads never wait for the writer)."""
        db = None
        while True:
            hashed = self._asks.get()
            if hashed is None:
                break
            row: Optional[PlayerRow] = None
            try:
                if db is None:
                    db = self._connect()
                found = db.execute(
                    "SELECT id, token_hash, letters, score, shape, colour, name, last_seen, "
                    "online FROM players WHERE token_hash = ? AND last_seen >= ?",
                    (hashed, self.clock() - self.grace)).fetchone()
                row = tuple(found) if found is not None else None
            except Exception as exc:  # unreadable now: this player starts anew
                self.last_error = str(exc)
                log.warning("store: reading a returning player from %s failed: %s",
                            self.path, exc)
                db = None
            self._answers.put((hashed, row))
        if db is not None:
            db.close()

    @staticmethod
    def _empty_batch() -> Dict[str, Any]:
        return {"players": {}, "fame": None, "meta": {}, "prune": None, "delete": set()}

    def stage_player(self, row: PlayerRow) -> int:
        """Write this row (whole): returns the batch number that makes it durable."""
        self._batch["players"][row[0]] = row
        self._batch["delete"].discard(row[0])
        self._staged = True
        return self.seq

    def stage_delete(self, pid: int) -> int:
        """Delete this player's row (a newcomer who left before its WELCOME)."""
        self._batch["players"].pop(pid, None)
        self._batch["delete"].add(pid)
        self._staged = True
        return self.seq

    def stage_fame(self, fame: List[FameEntry]) -> int:
        self._batch["fame"] = list(fame)
        self._staged = True
        return self.seq

    def stage_prune(self, before: float) -> int:
        self._batch["prune"] = before
        self._staged = True
        return self.seq

    def stage_meta(self, key: str, value: int) -> int:
        """A number kept across restarts (the cluster's tick and epoch)."""
        self.meta[key] = value
        self._batch["meta"][key] = value
        self._staged = True
        return self.seq

    def take_id(self) -> int:
        """The next player id; reserves another block on disk when half used.

        Raises :class:`IdsExhausted` past the protocol's range (``MAX_PLAYER_ID``).
        """
        pid = self.next_id
        if pid > MAX_PLAYER_ID:
            raise IdsExhausted(f"player ids are used up in {self.path} (the next would be "
                               f"{pid})")
        self.next_id += 1
        if self.next_id > self.reserved_id - ID_BLOCK // 2:
            reserve = self.next_id + ID_BLOCK
            if reserve > self._batch["meta"].get("reserved_id", 0):
                self._batch["meta"]["reserved_id"] = reserve
                self._staged = True
            if self.next_id >= self.reserved_id:
                log.warning("store: player ids are running ahead of the disk (%d reserved)",
                            self.reserved_id)
        return pid

    def flush(self) -> None:
        """End of a tick: hand the batch to the writer, or keep merging if it is busy."""
        if not self._staged or self._queue is None:
            return
        import queue

        try:
            self._queue.put_nowait((self.seq, self._batch))
        except queue.Full:
            self.batches_merged += 1
            return
        self.seq += 1
        self._batch = self._empty_batch()
        self._staged = False

    @property
    def backlog(self) -> int:
        """Batches staged or queued and not yet on disk."""
        return self.seq - 1 - self.durable + (1 if self._staged else 0)

    # -- the writer thread ---------------------------------------------------------

    WRITER_NICE = 10  # the writer yields the CPU to the loop (on Linux, threads have a nice)

    def _writer(self) -> None:
        # On one core (or a busy box) a commit of thousands of rows competes
        # with the tick for the CPU, and every socket send hands the GIL over:
        # a nicer writer commits in the loop's idle time between ticks instead.
        import threading

        try:  # this thread's kernel id: on Linux each thread has its own nice
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.WRITER_NICE)
        except (AttributeError, OSError):
            pass  # not Linux, or not allowed: commits still run, just less politely
        db = None
        delay = 0.1
        failing_since = 0.0
        item: Any = None
        while True:
            if item is None:
                item = self._queue.get()
                if item is None:
                    break
            seq, batch = item
            try:
                if db is None:
                    db = self._connect()
                    db.execute(f"PRAGMA synchronous = {self.sync.upper()}")
                started = time.perf_counter()
                self._commit(db, batch)
                self.commit_times.add(time.perf_counter() - started)
            except Exception as exc:  # a full disk, a read-only file, an I/O error...
                self.commit_failures += 1
                self.last_error = str(exc)
                now = time.monotonic()
                if not failing_since or now - failing_since > 10:
                    log.error("store: commit to %s failed (%s); the game goes on, scoring "
                              "waits, retrying", self.path, exc)
                    failing_since = now
                try:
                    if db is not None and db.in_transaction:
                        db.execute("ROLLBACK")
                except Exception:
                    db = None  # reconnect next time
                if self._stopping and delay >= 1.0:
                    log.error("store: giving up on batch %d at shutdown: %s", seq, exc)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failing_since:
                log.warning("store: commits to %s work again", self.path)
                failing_since = 0.0
            delay = 0.1
            self.commits += 1
            reserved = batch["meta"].get("reserved_id")
            if reserved is not None and reserved > self.reserved_id:
                self.reserved_id = reserved  # the ids below it are now safe to hand out
            self.durable = seq
            item = None
        if db is not None:
            db.close()

    def _commit(self, db: Any, batch: Dict[str, Any]) -> None:
        db.execute("BEGIN")
        rows = list(batch["players"].values())
        if rows:
            db.executemany(
                "INSERT OR REPLACE INTO players (id, token_hash, letters, score, shape, colour, "
                "name, last_seen, online) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        fame = batch["fame"]
        if fame is not None:
            db.execute("DELETE FROM fame")
            db.executemany("INSERT INTO fame (rank, id, score, name) VALUES (?, ?, ?, ?)",
                           [(rank, pid, score, name or None)
                            for rank, (pid, score, name) in enumerate(fame, 1)])
        for key, value in batch["meta"].items():
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        if batch["prune"] is not None:
            cur = db.execute("DELETE FROM players WHERE online = 0 AND last_seen < ?",
                             (batch["prune"],))
            self.pruned += max(cur.rowcount, 0)
        if batch["delete"]:
            db.executemany("DELETE FROM players WHERE id = ?", [(pid,) for pid in batch["delete"]])
        db.execute("COMMIT")
        self.rows_written += len(rows)

    def wait_durable(self, timeout: float = 10.0) -> bool:
        """Hand what is staged to the writer and wait until it is on disk; True if it is."""
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            if not self._staged and self.durable >= self.seq - 1:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)

    def close(self, timeout: float = 10.0, release_lock: bool = True) -> bool:
        """Commit what is staged, stop the writer, release the lock (``release_lock``
        False: keep it, for a successor that inherits its descriptor, ``lock_fd``).
        True if all landed."""
        if self.closed:
            return True
        self.closed = True
        if self._thread is not None:
            self.flush()
            self._stopping = True
            deadline = time.monotonic() + timeout
            while self._staged and time.monotonic() < deadline:  # the queue was full
                time.sleep(0.01)
                self.flush()
            import queue

            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        if self._reader is not None:
            self._asks.put(None)
            self._reader.join(1.0)  # a read takes milliseconds; daemon thread past that
            self._reader = None
        if release_lock:
            self._unlock()
        done = self.durable >= self.seq - 1 and not self._staged
        if not done:
            log.error("store: %d batch(es) of changes did not reach %s", self.backlog, self.path)
        return done


def backup_store(directory: str, output: str) -> int:
    """Copy a live (or stopped) store with sqlite3's online backup API; returns pages.

    The copy is written in a directory of its own made next to ``output``
    (``<output>.tmp-XXXXXXXX``, mode 0700: no one else can place a file or a
    symlink in it), into a file created exclusively (``O_EXCL``, ``O_NOFOLLOW``)
    with mode 0600, and then renamed over ``output`` (a rename replaces a
    symlink there; it never writes through one). Nothing is ever written
    through a path someone else prepared, and the copy is private like the store.
    """
    import sqlite3
    import tempfile

    source = os.path.join(directory, DATA_FILE)
    if not os.path.isfile(source):
        raise StoreError(f"no database at {source} (is --data right?)")
    out_dir = os.path.dirname(os.path.abspath(output))
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        private = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-", dir=out_dir)
        tmp = os.path.join(private, "backup.sqlite3")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
                getattr(os, "O_CLOEXEC", 0)
            os.close(os.open(tmp, flags, 0o600))
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
                pages = dst.execute("PRAGMA page_count").fetchone()[0]
            finally:
                dst.close()
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)  # on disk before it takes the backup's name
            finally:
                os.close(fd)
            os.replace(tmp, output)
        finally:
            for leftover in os.listdir(private):  # a failed copy, its journal
                os.unlink(os.path.join(private, leftover))
            os.rmdir(private)
    finally:
        src.close()
    return int(pages)


# =============================================================================
# World: the game of one world. The seam to a Front, the players, the tick.
# =============================================================================

# -----------------------------------------------------------------------------
# World: the seam. What a World and a Front say to each other, and nothing else.
# -----------------------------------------------------------------------------
#
# A World (the rules, the store, who is who) and a Front (the players'
# sockets) meet at a seam of five calls. Calls in, Front -> World, for one
# player:  hello -> move* -> leave.  Frames out, World -> Front:  welcome
# (once), then tick (every tick, for everyone), or drop (the World lets it go).
#
#   serve:    Front  <-> World                   in one process
#   gateway:  Front  <-> GatewayBus  ~~Redis~~   AuthorityBus <-> World :game
#
# A *peer* is whatever the Front names a player's connection by (a netcore
# Connection; for the authority, a gateway's connection id): the World keeps
# it as an opaque key and never calls it. A *handle* is what the World gives
# the Front in ``welcome`` to hand back with each ``move`` (a Player; a
# gateway's seat): the Front never looks inside it. Until the welcome, the
# Front holds HELLO_SENT instead.

DEFAULT_NEW_PLAYER_BURST = 64
DEFAULT_NEW_PLAYER_RATE = 1.0  # a second, after the burst
NEW_PLAYERS_LIMIT = "new-players-per-address"  # the limit's name in /metrics and ERRORs


#: What a Front holds for a connection that said HELLO and has no welcome yet.
HELLO_SENT: Any = "hello-sent"


class WorldSide:
    """The World's half of the seam, as a Front calls it (a World, or the bus to one)."""

    def hello(self, peer: Any, hello: Hello, name: str, address: str) -> None:
        """A checked HELLO (see :func:`parse_hello`) from the client at ``address``
        ("": an address the Front exempts from per-address limits)."""
        raise NotImplementedError

    def move(self, handle: Any, payload: bytes) -> int:
        """A MOVE of the player ``handle``; returns its MOVEs this tick (the flood check)."""
        raise NotImplementedError

    def leave(self, peer: Any, handle: Any) -> None:
        """The connection is gone; ``handle`` is what the Front held (maybe HELLO_SENT)."""
        raise NotImplementedError


class FrontSide:
    """The Front's half of the seam, as a World calls it (a Front, or the bus to gateways)."""

    def welcome(self, peer: Any, handle: Any, frames: bytes, nframes: int, v2: bool) -> None:
        """``peer`` plays: hold ``handle`` for its MOVEs; send it ``frames`` (WELCOME...)."""
        raise NotImplementedError

    def drop(self, peer: Any, code: int, text: str, reason: str) -> None:
        """The World holds nothing of ``peer`` any more: tell it ERROR(code, text), close."""
        raise NotImplementedError

    def tick(self, shared: bytes, nframes: int, news: bytes,
             yous: List[Tuple[Any, bytes]], everyone: List[Any]) -> None:
        """This tick to ``everyone``: ``shared``, v2 players also ``news`` (FAME), and
        each of ``yous`` its YOU in the same send."""
        raise NotImplementedError


class Refused(Exception):
    """A client's message the server answers with ERROR(code, text), then closes."""

    def __init__(self, code: int, text: str, reason: str = "protocol-error") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.reason = reason


def parse_hello(payload: bytes) -> Tuple[Hello, str]:
    """A client's first message as a HELLO (version 1 or 2) and its name, checked;
    :class:`Refused` with the ERROR it gets if it is not one."""
    if payload[0] != HELLO or len(payload) < 3:
        raise Refused(ErrorCode.BAD_MESSAGE, describe_unexpected(payload, "before HELLO"))
    version = (payload[1] << 8) | payload[2]
    if version not in PROTOCOL_VERSIONS:
        raise Refused(ErrorCode.VERSION,
                      f"server speaks protocols 1 and 2, client sent {version}", "bad-version")
    if version == PROTOCOL_VERSION:
        if len(payload) != HELLO_STRUCT.size:
            raise Refused(ErrorCode.BAD_MESSAGE, describe_unexpected(payload, "before HELLO"))
        _, _, shape, colour = HELLO_STRUCT.unpack(payload)
        return Hello(PROTOCOL_VERSION, shape, colour), ""
    try:
        hello = _decode_hello2(payload)
    except BadMessage as exc:
        raise Refused(ErrorCode.BAD_MESSAGE, str(exc)) from None
    try:
        name = check_name(hello.name)
    except ValueError as exc:
        raise Refused(ErrorCode.BAD_NAME, str(exc), "bad-name") from None
    return hello, name


# -----------------------------------------------------------------------------
# World: the World. Joins and resumes, seats and tokens, fame, scoring, the tick.
# -----------------------------------------------------------------------------


class World(WorldSide):
    """The game of one world: its rules, its store, who is who, and its tick.

    A player's life in the World: ``hello`` -> a new player (version 1; or
    version 2, with a token written to the store before its WELCOME) or a
    resumed one (its token: in memory, or read from the store) -> ``welcome``
    -> ``move``... -> ``leave`` (a v2 player's seat is parked for ``grace``
    seconds, for its token to resume). Each ``on_tick`` steps the game and
    sends its frames out through ``front`` (:class:`FrontSide`), which the
    role sets: a Front in this process, or the bus to gateways.
    """

    def __init__(self, loop: EventLoop, options: ServerOptions, lock_fd: int = -1) -> None:
        """``lock_fd``: the store's lock, held by a predecessor (an upgrade)."""
        self.loop = loop
        self.options = opts = options
        self.game = Game(random.Random(opts.seed))
        self.front: FrontSide = FrontSide()  # set by the role
        self.connections: Callable[[], int] = lambda: 0  # the players' connections, for STATS
        self.ticker: Optional[TickScheduler] = None  # the role's, for STATS' tick p99
        self.stopping = False  # the server is stopping: players cut off stay "online" on disk
        # v2 players in memory (playing, or dropped and within their grace
        # period) by the hash of their resume token; the store has the rest.
        self.by_token: Dict[bytes, Player] = {}
        self.parked: "OrderedDict[bytes, float]" = OrderedDict()  # hash -> grace ends (loop time)
        # Of those, the seats with nothing scored, oldest first: the first to go
        # when there are more parked seats than the server has room for players
        # (``_park``), so a flood of joins that drop at once cannot grow memory.
        self.parked_unscored: "OrderedDict[bytes, None]" = OrderedDict()
        self.seats_evicted = 0
        self.players_peak = 0  # the most players in the game at a tick, since the start
        # v2 newcomers waiting for their row to be on disk: peer -> (batch, player, token, status)
        self.joining: Dict[Any, Tuple[int, Player, bytes, int]] = {}
        # Resumes waiting for the store's answer: by token hash, and the reverse.
        self.asking: Dict[bytes, List[Tuple[Any, Hello, str, str]]] = {}
        self.waiting: Dict[Any, bytes] = {}
        # New players (new ids, new rows) per client address: a token bucket.
        self.new_players: Optional[AddressRates] = None
        if opts.new_player_burst:
            self.new_players = AddressRates(opts.new_player_burst, opts.new_player_rate,
                                            opts.exempt)
        self.refused: Dict[str, int] = {}  # new players refused, by the limit's name
        self.ids_exhausted_logged = False
        self.resumes = self.takeovers = self.grace_expired = 0
        self.fame: List[FameEntry] = []
        self.store: Optional[Store] = None
        self._planned: Optional[ScorePlan] = None  # the pending scoring step, staged
        self._plan_values: Dict[int, Tuple[str, int]] = {}  # its scorers: id -> (letters, score)
        self._plan_seq = 0  # the store batch that makes it durable
        self._plan_fame: Optional[List[FameEntry]] = None  # the hall of fame once it lands
        self._prune_at = 0.0
        if opts.data is not None:
            self.store = Store(opts.data, opts.sync, grace=opts.grace)
            # Raises StoreError, naming the file or directory.
            self.store.open(allow_shared=opts.allow_shared_data, lock_fd=lock_fd)
            self.game.take_id = self.store.take_id
            self.game.defer_scoring = True
            self.fame = list(self.store.fame)
        self.fame_frame = frame(Fame(tuple(self.fame)))
        self._fame_news = b""  # FAME for v2 clients in this tick's shared frames
        self.stats_frame = b""
        self._stats_tick = -1  # the game tick stats_frame was made at; -1: not yet
        self.started = time.time()
        self.start_rss_kb = rss_kb()
        # The TICK number last stepped and when it was due (on the loop's clock,
        # time.monotonic: CLOCK_MONOTONIC, one clock for every process on the
        # machine), so a bench can tell players' arrivals from the schedule.
        self.last_tick_due: Tuple[int, float] = (0, 0.0)

    def close(self) -> None:
        """Write what is staged and let the data directory go. The closed store stays
        in ``self.store`` for its figures (--stats-out)."""
        if self.store is not None:
            self.store.close()

    # -- the seam: hello, move, leave ----------------------------------------------

    def hello(self, peer: Any, hello: Hello, name: str, address: str) -> None:
        if hello.version == PROTOCOL_VERSION:
            player = self._new_player(peer, address,
                                      lambda: self.game.join(hello.shape, hello.colour))
            if player is not None:
                self._welcome(peer, player, Welcome(player.id, player.shape, player.colour,
                                                    tick_ms=self.options.tick_ms))
        else:
            self.join_v2(peer, hello, name, address)

    def move(self, handle: Any, payload: bytes) -> int:
        _, seq, x, y = _MOVE_UNPACK(payload)
        player: Player = handle
        self.game.move(player, seq, x, y)
        return player.moves

    def leave(self, peer: Any, handle: Any) -> None:
        self.waiting.pop(peer, None)
        newcomer = self.joining.pop(peer, None)
        if newcomer is not None and self.store is not None:
            self.store.stage_delete(newcomer[1].id)  # it never heard its token: nobody's row
        if not isinstance(handle, Player) or handle.peer is not peer:
            return
        player = handle
        self.game.leave(player)
        player.peer = None
        if player.resume_hash:  # v2: the seat is kept for the grace period
            self._park(player)
            if self.store is not None:
                # Cut off by the server stopping: still "online", so after the
                # restart they get a whole grace period (Store._load).
                self.store.stage_player(self._row(player, online=1 if self.stopping else 0))

    # -- joins -------------------------------------------------------------------

    def join_v2(self, peer: Any, hello: Hello, name: str, address: str) -> None:
        """A version-2 player: resumed by its token if it can be, else new.

        A token not in memory may be a player of an earlier run (or one whose
        seat was let go) within its grace period: the store is asked, and the
        join goes on when it answers (``_store_answers``, at the next tick).
        """
        if hello.token:
            hashed = token_hash(hello.token)
            player = self.by_token.get(hashed)
            if player is not None:
                self._resume(peer, player, hello.token, name)
                return
            if self.store is not None:
                asking = self.asking.get(hashed)
                if asking is None:
                    asking = self.asking[hashed] = []
                    self.store.lookup(hashed)
                asking.append((peer, hello, name, address))
                self.waiting[peer] = hashed
                return
            self._new_v2(peer, hello, name, address, TOKEN_UNKNOWN)
            return
        self._new_v2(peer, hello, name, address, NEW_PLAYER)

    def _new_v2(self, peer: Any, hello: Hello, name: str, address: str, status: int) -> None:
        """A new identity: its token, its row (written before its WELCOME goes)."""
        player = self._new_player(peer, address,
                                  lambda: self.game.new_player(hello.shape, hello.colour))
        if player is None:
            return
        token = new_resume_token()
        player.name = name
        player.resume_hash = token_hash(token)
        if self.store is None:
            self._enter(peer, player, token, status)
        else:  # WELCOME once the row is on disk (not online yet): the token survives a crash
            seq = self.store.stage_player(self._row(player, online=0))
            self.joining[peer] = (seq, player, token, status)

    def _new_player(self, peer: Any, address: str,
                    make: Callable[[], Player]) -> Optional[Player]:
        """``make()``: a player with a new id; or None (``peer`` dropped): over the rate
        of new players from its address, or no id left in the protocol's range."""
        rates = self.new_players
        if rates is not None and address and not rates.take(address, self.loop.time()):
            self._refuse(peer, NEW_PLAYERS_LIMIT,
                         f"too many new players from {address} ({NEW_PLAYERS_LIMIT}); try "
                         "later, or come back as yourself with your token")
            return None
        try:
            return make()
        except IdsExhausted as exc:
            if not self.ids_exhausted_logged:
                self.ids_exhausted_logged = True
                log.error("%s: new players are refused; returning players still come back", exc)
            self._refuse(peer, "player-ids", "this server has no player ids left for new "
                         "players; returning players (with a token) still come back")
            return None

    def _refuse(self, peer: Any, limit: str, text: str) -> None:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        self.front.drop(peer, ErrorCode.SERVER_FULL, text, limit)

    def _store_answers(self, store: Store) -> None:
        """Joins that waited for the store: resume the player it found, else a new one."""
        for hashed, row in store.answers():
            for peer, hello, name, address in self.asking.pop(hashed, ()):
                if self.waiting.pop(peer, None) is None:
                    continue  # it left meanwhile
                player = self.by_token.get(hashed)  # another connection brought it back first
                if player is None and row is not None:
                    player = self._from_row(row)
                if player is not None:
                    self._resume(peer, player, hello.token, name)
                else:
                    self._new_v2(peer, hello, name, address, TOKEN_UNKNOWN)

    def _from_row(self, row: PlayerRow) -> Player:
        """A player of an earlier run (or let go from memory), from its row."""
        pid, hashed, letters, score, shape, colour, name, _, _ = row
        player = self.game.new_player(shape, colour, pid=pid, letters=letters)
        player.score = score
        player.name = name or ""
        player.resume_hash = bytes(hashed)
        return player

    def _resume(self, peer: Any, player: Player, token: bytes, name: str) -> None:
        old = player.peer
        if old is not None:  # the newer connection wins; the older is told why
            self.takeovers += 1
            player.peer = None
            self.front.drop(old, ErrorCode.TAKEN_OVER,
                            "this player was resumed by a newer connection (playing elsewhere)",
                            "taken-over")
        else:
            self.parked.pop(player.resume_hash, None)
            self.parked_unscored.pop(player.resume_hash, None)
            self.game.add(player)
        self.resumes += 1
        if name and name != player.name:
            player.name = name
            self._rename_in_fame(player)
        self.by_token[player.resume_hash] = player
        self._welcome(peer, player, Welcome(player.id, player.shape, player.colour, PROTOCOL_V2,
                                            self.options.tick_ms, resumed=RESUMED, token=token))
        if self.store is not None:  # online: after a crash it gets a whole grace period
            self.store.stage_player(self._row(player, online=1))

    def _enter(self, peer: Any, player: Player, token: bytes, status: int) -> None:
        """A new v2 player goes on the board and hears its token."""
        self.game.add(player)
        self.by_token[player.resume_hash] = player
        self._welcome(peer, player, Welcome(player.id, player.shape, player.colour, PROTOCOL_V2,
                                            self.options.tick_ms, resumed=status, token=token))
        if self.store is not None:  # its row was written not online: it is now
            self.store.stage_player(self._row(player, online=1))

    def _welcome(self, peer: Any, player: Player, welcome: Welcome) -> None:
        """WELCOME, YOU and STATS (v2: and FAME) in one send."""
        player.peer = peer
        v2 = welcome.version >= PROTOCOL_V2
        if self._stats_tick != self.game.tick:  # at most one refresh per tick in a join storm
            self._update_stats_frame()
        frames = frame(welcome) + you_frame(player) + self.stats_frame
        self.front.welcome(peer, player, frames + self.fame_frame if v2 else frames,
                           4 if v2 else 3, v2)

    def _park(self, player: Player) -> None:
        """Keep a dropped v2 player's seat for the grace period, within the cap.

        At most as many seats are parked as the server has room for players
        (``--max-clients``), or as it has had players at once, if more (an
        authority's world spans gateways: a gateway that dies parks all its
        players). Past that, the oldest seat with nothing scored goes first
        (there is nothing in it to lose but the place), else the oldest:
        without a cap, a client that joins and drops 5,000 times a second
        would have the server keep a million seats for 300 s.
        """
        hashed = player.resume_hash
        self.parked[hashed] = self.loop.time() + self.options.grace
        self.parked.move_to_end(hashed)
        if not player.score:
            self.parked_unscored[hashed] = None
        cap = max(self.options.max_clients, self.players_peak)
        while len(self.parked) > cap:
            if self.parked_unscored:
                gone, _ = self.parked_unscored.popitem(last=False)
                del self.parked[gone]
            else:
                gone, _ = self.parked.popitem(last=False)
            self.by_token.pop(gone, None)
            self.seats_evicted += 1

    def _expire_parked(self) -> None:
        """Dropped players whose grace period is over are forgotten (the disk keeps them)."""
        now = self.loop.time()
        parked = self.parked
        while parked:
            hashed, until = next(iter(parked.items()))
            if until > now:
                break
            del parked[hashed]
            self.parked_unscored.pop(hashed, None)
            player = self.by_token.pop(hashed, None)
            if player is not None and player.peer is None:
                self.grace_expired += 1

    # -- the tick ------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> None:
        """Step the game and send the tick's frames to everyone through ``front``."""
        game = self.game
        if tick.skipped:  # the loop stalled for 8+ periods: the numbers jump
            log.warning("the tick fell %.1f s behind: skipped %d ticks (TICK numbers jump by "
                        "as many)", tick.skipped * self.options.tick_ms / 1000 + tick.lateness,
                        tick.skipped)
            game.skip(tick.skipped)
        store = self.store
        if store is not None:
            self._store_before_step(store)
        result, data, nframes = step_and_encode(game, self._fresh_stats_frame)
        self.last_tick_due = (game.tick, tick.deadline)  # /stats.json: the schedule, for benches
        news = self._after_step(result)
        # Lists, not views of game.players: a failed send closes its
        # connection, and the player leaves, during the broadcast. Every
        # player in the game has its peer (it is set before it joins the board
        # and cleared after it leaves it).
        everyone = [p.peer for p in game.players.values()]
        yous = [(p.peer, you_frame(p)) for p in result.dirty if p.peer is not None]
        self.front.tick(data, nframes, news, yous, everyone)
        if len(game.players) > self.players_peak:
            self.players_peak = len(game.players)
        if game.tick % 4 == 0:
            if self.parked:
                self._expire_parked()
            if self.new_players is not None:
                self.new_players.forget_full(self.loop.time())
        if store is not None:
            store.flush()

    def _store_before_step(self, store: Store) -> None:
        """What reached the disk since the last tick may now be announced."""
        self._store_answers(store)
        durable = store.durable
        if self._planned is not None and durable >= self._plan_seq:
            self.game.release_score()
        joining = self.joining
        while joining:  # in order of their batches: stop at the first not on disk yet
            peer, (seq, player, token, status) = next(iter(joining.items()))
            if seq > durable:
                break
            del joining[peer]
            self._enter(peer, player, token, status)
        now = time.time()
        if now >= self._prune_at:
            store.stage_prune(now - self.options.prune_days * 86400)
            self._prune_at = now + 3600

    def _after_step(self, result: StepResult) -> bytes:
        """Stage a newly planned scoring step; publish the hall of fame when it lands.

        Returns the FAME frame when the hall of fame changed this tick (sent
        to version-2 players only), else b"".
        """
        game = self.game
        store = self.store
        plan = game.pending_score
        if store is not None and plan is not None and plan is not self._planned:
            self._planned = plan
            self._plan_values = {p.id: (letters, score) for p, letters, score in plan.scorers}
            for p, _, _ in plan.scorers:
                if p.resume_hash:
                    store.stage_player(self._row(p, online=1 if p.peer is not None else 0))
            self._plan_fame = self._fame_after(plan)
            if self._plan_fame is not None:
                store.stage_fame(self._plan_fame)
            self._plan_seq = store.seq
        news = self._fame_news
        self._fame_news = b""
        if result.scored is not None:
            if store is not None:
                fame, self._planned, self._plan_fame = self._plan_fame, None, None
                self._plan_values = {}
            else:
                fame = self._fame_after(game.last_plan) if game.last_plan is not None else None
            if fame is not None:
                news = self._set_fame(fame)
        return news

    def _row(self, p: Player, online: int) -> PlayerRow:
        """The player's row as it must be on disk (a staged score counts already)."""
        letters, score = self._plan_values.get(p.id, (p.letters, p.score))
        return (p.id, p.resume_hash, letters, score, p.shape, p.colour, p.name or None,
                time.time(), online)

    def _fame_after(self, plan: ScorePlan) -> Optional[List[FameEntry]]:
        """The hall of fame once ``plan``'s scores count, or None if it is unchanged."""
        fame = self.fame
        low = fame[-1][1] if len(fame) >= FAME_SIZE else 0
        best = {pid: (pid, score, name) for pid, score, name in fame}
        for p, _, score in plan.scorers:
            if score > low or p.id in best:
                best[p.id] = (p.id, score, p.name)
        top = sorted(best.values(), key=lambda e: (-e[1], e[0]))[:FAME_SIZE]
        return top if top != fame else None

    def _set_fame(self, fame: List[FameEntry]) -> bytes:
        self.fame = fame
        self.fame_frame = frame(Fame(tuple(fame)))
        return self.fame_frame

    def _rename_in_fame(self, player: Player) -> None:
        fame = [(pid, score, player.name if pid == player.id else name)
                for pid, score, name in self.fame]
        if fame != self.fame:
            self._fame_news = self._set_fame(fame)
            if self.store is not None:
                self.store.stage_fame(fame)

    def _fresh_stats_frame(self) -> bytes:
        self._update_stats_frame()
        return self.stats_frame

    def _update_stats_frame(self) -> None:
        self._stats_tick = self.game.tick
        p99 = 0.0
        if self.ticker is not None:
            p99 = self.ticker.recent_lateness.percentile(99)
        self.stats_frame = frame(Stats(
            connections=self.connections(),
            players=len(self.game.players),
            uptime_s=int(time.time() - self.started),
            rss_kb=rss_kb(),
            start_rss_kb=self.start_rss_kb,
            tick_p99_us=min(int(p99 * 1e6), 0xFFFFFFFF),
        ))

    def compact(self) -> None:
        """Rebuild the tables churn has grown (the game's players, tokens)."""
        if self.game.compact():
            self.by_token = dict(self.by_token)

    # -- the state, for an upgrade that keeps everyone playing -------------------------

    def settle_for_handover(self, wait: float = 2.0) -> None:
        """Before :meth:`export`: what waits for the disk is finished. Lookups under
        way are answered (for up to ``wait`` seconds; a join still waiting then
        starts as a new player), then the store commits everything and lets go
        of its writer, so newcomers waiting for their row get their WELCOME."""
        store = self.store
        if store is None:
            return
        deadline = time.monotonic() + wait
        while self.asking and time.monotonic() < deadline:
            time.sleep(0.005)
            self._store_answers(store)
        for hashed in list(self.asking):  # unanswered: as if the token were unknown
            for peer, hello, name, address in self.asking.pop(hashed):
                if self.waiting.pop(peer, None) is not None:
                    self._new_v2(peer, hello, name, address, TOKEN_UNKNOWN)
        store.wait_durable()  # everything staged is on disk now: newcomers' rows too
        for peer, (_seq, player, token, status) in list(self.joining.items()):
            del self.joining[peer]
            self._enter(peer, player, token, status)
        store.wait_durable()  # and their rows marked online

    def export(self, peer_index: Callable[[Any], Optional[int]]) -> Dict[str, Any]:
        """The World as plain data for its successor: the game, every player's token,
        who plays on which connection (``peer_index(peer)``; None for one that does
        not move, which the Front closes first), the parked seats with the grace each
        has left, the hall of fame and the counters. Call :meth:`settle_for_handover`
        first: nothing may wait for the store."""
        now = self.loop.time()
        parked = [self.by_token[h] for h in self.parked if h in self.by_token]
        playing = list(self.game.players.values())
        peers = [(p.id, peer_index(p.peer)) for p in playing if p.peer is not None]
        return {
            "game": self.game.export(parked),
            "peers": handover.pack_rows([pair for pair in peers if pair[1] is not None]),
            "tokens": handover.pack_rows([(p.id, p.resume_hash) for p in playing + parked
                                          if p.resume_hash]),
            "parked": [[h.hex(), until - now, h in self.parked_unscored]
                       for h, until in self.parked.items()],
            "fame": [list(entry) for entry in self.fame],
            "counters": {"resumes": self.resumes, "takeovers": self.takeovers,
                         "grace_expired": self.grace_expired,
                         "seats_evicted": self.seats_evicted,
                         "players_peak": self.players_peak},
            "started": self.started,
            "last_tick_due": list(self.last_tick_due),
        }

    def restore(self, state: Dict[str, Any], peers: Sequence[Any]) -> Dict[int, Player]:
        """Become the World :meth:`export` described; ``peers[i]`` is what peer index
        ``i`` now is. Returns each playing peer's player, by peer index (the Front
        holds them again)."""
        game, everyone = Game.restore(state["game"])
        if self.store is not None:
            game.take_id = self.store.take_id
            game.defer_scoring = True
        self.game = game
        for pid, hashed in handover.unpack_rows(state["tokens"]):
            everyone[pid].resume_hash = hashed
        handles: Dict[int, Player] = {}
        for pid, index in handover.unpack_rows(state["peers"]):
            player = everyone[pid]
            player.peer = peers[index]
            handles[index] = player
        self.by_token = {p.resume_hash: p for p in everyone.values()
                         if p.resume_hash and (p.peer is not None or p.cell < 0)}
        now = self.loop.time()
        self.parked = OrderedDict()
        self.parked_unscored = OrderedDict()
        for hexed, left, unscored in state["parked"]:
            hashed = bytes.fromhex(hexed)
            self.parked[hashed] = now + left
            if unscored:
                self.parked_unscored[hashed] = None
        self.fame = [(pid, score, name) for pid, score, name in state["fame"]]
        self.fame_frame = frame(Fame(tuple(self.fame)))
        counters = state["counters"]
        self.resumes, self.takeovers = counters["resumes"], counters["takeovers"]
        self.grace_expired = counters["grace_expired"]
        self.seats_evicted = counters["seats_evicted"]
        self.players_peak = counters["players_peak"]
        self.started = state["started"]
        self.last_tick_due = (state["last_tick_due"][0], state["last_tick_due"][1])
        return handles

    # -- figures -------------------------------------------------------------------

    def leaderboard(self) -> Dict[str, Any]:
        """The hall of fame, as ``GET /leaderboard.json`` serves it."""
        return {"top": [{"rank": rank, "id": pid, "name": name or None, "score": score}
                        for rank, (pid, score, name) in enumerate(self.fame, 1)]}

    def add_metrics(self, exp: Exposition) -> None:
        game = self.game
        exp.gauge("spelltraction_players", "Players in the game (connections past HELLO).",
                  len(game.players))
        exp.counter("spelltraction_letters_scored_total",
                    "Letters scored (the attractor held a cell long enough).",
                    game.letters_scored)
        exp.counter("spelltraction_moves_accepted_total", "MOVE messages applied.",
                    game.moves_accepted)
        exp.counter("spelltraction_moves_rate_limited_total",
                    "MOVE messages dropped by the per-player move bucket.", game.moves_limited)
        exp.counter("spelltraction_resumes_total",
                    "v2 players who came back as themselves with their token.", self.resumes)
        exp.counter("spelltraction_takeovers_total",
                    "Resumes that took a player over from an older connection.", self.takeovers)
        exp.gauge("spelltraction_players_in_grace",
                  "Dropped v2 players whose seat is kept (the grace period).", len(self.parked))
        exp.counter("spelltraction_seats_evicted_total",
                    "Parked seats let go before their grace period ended: more were parked "
                    "than --max-clients (unscored ones first).", self.seats_evicted)
        store = self.store
        if store is None:
            return
        times = store.commit_times
        exp.gauge("spelltraction_store_commit_p50_seconds",
                  "Store commit time, median of the last 1024 commits.", times.percentile(50))
        exp.gauge("spelltraction_store_commit_p99_seconds",
                  "Store commit time, p99 of the last 1024 commits.", times.percentile(99))
        exp.counter("spelltraction_store_commits_total", "Store batches committed.",
                    store.commits)
        exp.counter("spelltraction_store_commit_failures_total",
                    "Store commits that failed (full disk, read-only file...) and are "
                    "retried.", store.commit_failures)
        exp.counter("spelltraction_store_rows_written_total", "Player rows written.",
                    store.rows_written)
        exp.gauge("spelltraction_store_backlog_batches",
                  "Batches of changes not on disk yet (scoring waits for them).",
                  store.backlog)
        exp.counter("spelltraction_store_pruned_total",
                    "Rows of long-unseen players deleted.", store.pruned)
        exp.counter("spelltraction_store_lookups_total",
                    "Returning players read from the store (tokens not in memory).",
                    store.lookups)

    def add_snapshot(self, snap: Dict[str, Any]) -> None:
        """The World's figures in ``/stats.json``."""
        snap.update({
            "players": len(self.game.players),
            "letters_scored": self.game.letters_scored,
            "game_tick": self.game.tick,
            "resumes": self.resumes,
            "seats_parked": len(self.parked),
            "seats_evicted": self.seats_evicted,
            "store": self.store_stats(),
            "last_tick": {"number": self.last_tick_due[0],
                          "due_monotonic_s": self.last_tick_due[1]},
        })

    def store_stats(self) -> Optional[Dict[str, Any]]:
        store = self.store
        if store is None:
            return None
        return {"path": store.path, "commits": store.commits,
                "commit_failures": store.commit_failures, "backlog": store.backlog,
                "commit_p50_s": store.commit_times.percentile(50),
                "commit_p99_s": store.commit_times.percentile(99),
                "rows_written": store.rows_written, "last_error": store.last_error}

    def add_final_stats(self, stats: Dict[str, Any]) -> None:
        game = self.game
        stats.update({
            "game": {"tick": game.tick, "players": len(game.players),
                     "letters_scored": game.letters_scored,
                     "moves_accepted": game.moves_accepted,
                     "moves_limited": game.moves_limited},
            "resumes": self.resumes,
            "takeovers": self.takeovers,
            "store": self.store_stats(),
        })


# -----------------------------------------------------------------------------
# World: tick encoding, shared by every server of this game (bench/peers too).
# -----------------------------------------------------------------------------


def step_and_encode(game: Game, stats_frame: Callable[[], bytes]) -> Tuple[StepResult, bytes, int]:
    """Advance the game one tick and build that tick's shared frames, once.

    Returns the step's result, the bytes every player gets (TICK, then
    SCORED if a letter scored, then STATS every STATS_EVERY ticks, made by
    ``stats_frame``) and how many frames they hold. Any server of this game
    (netcore's, or the asyncio peer in bench/) sends exactly these bytes.
    """
    result = game.step()
    shared = [_encode_tick(game, result)]
    if result.scored is not None:
        shared.append(frame(result.scored))
    if game.tick % STATS_EVERY == 0:
        shared.append(stats_frame())
    return result, b"".join(shared), len(shared)


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


def you_frame(p: Player) -> bytes:
    return YOU_FRAMED.pack(_YOU_FRAME_LEN, YOU, p.seq, p.x, p.y, p.score,
                            p.letters.encode("ascii"))


def describe_unexpected(payload: bytes, when: str) -> str:
    kind = payload[0]
    names = {HELLO: "HELLO", MOVE: "MOVE"}
    if kind == HELLO and len(payload) >= 3 and payload[1:3] != b"\x00\x01":
        return f"unexpected HELLO {when}"  # v2 HELLOs vary in length
    if kind in names:
        expected = {HELLO: HELLO_STRUCT.size, MOVE: MOVE_STRUCT.size}[kind]
        if len(payload) != expected:
            return f"{names[kind]} must be {expected} bytes, got {len(payload)}"
        return f"unexpected {names[kind]} {when}"
    return f"unknown message type 0x{kind:02x} ({len(payload)} bytes) {when}"


# =============================================================================
# Front: the players' connections. Listening, web, limits, HELLO, sending frames.
# =============================================================================


# -----------------------------------------------------------------------------
# Front: web assets, and what the web and the limits answer.
# -----------------------------------------------------------------------------




def _find_web_root() -> str:
    """Where the browser client's files are.

    Beside this file in a source tree (or a copy of it); under
    ``<prefix>/share/spelltraction/web`` where pip installed them as data
    files. Inside a zipapp neither is a directory, and read_asset() reads
    them through the module's loader instead.
    """
    beside = os.path.join(_HERE, "web")
    if getattr(globals().get("__loader__"), "archive", None) is not None:
        return beside  # a zipapp serves the files it carries
    if os.path.isdir(beside):
        return beside
    for prefix in _install_prefixes():
        where = os.path.join(prefix, "share", "spelltraction", "web")
        if os.path.isdir(where):
            return where
    return beside


def _install_prefixes() -> List[str]:
    """Where pip may have put the data files: the virtual environment, sys.prefix,
    the user's base (``pip install --user``).

    The server re-executes itself with -S (:func:`_run_as_module`), and without
    site.py a virtual environment's ``sys.prefix`` is the base interpreter's:
    the environment is found the way site.py finds it, by the ``pyvenv.cfg``
    beside the interpreter or one folder up.
    """
    import site

    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    venv = os.path.dirname(exe_dir)
    found = any(os.path.isfile(os.path.join(folder, "pyvenv.cfg")) for folder in (exe_dir, venv))
    return ([venv] if found else []) + [sys.prefix, site.getuserbase()]


WEB_ROOT = _find_web_root()


def read_asset(name: str) -> bytes:
    """The bytes of ``web/<name>``, from the source tree or from inside the zipapp.

    In a bundle (``spelltraction.py bundle``) this module is imported from
    the .pyz by ``zipimport``, so ``web/`` is not a directory on disk; the
    module's loader reads it either way (``get_data`` takes the path with
    the archive as a prefix). ``name`` is relative to ``web/``; a name that
    would leave it raises ValueError, a missing one FileNotFoundError.
    """
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ValueError(f"bad asset name {name!r}")
    loader = globals().get("__loader__")
    archive = getattr(loader, "archive", None)  # set by zipimport
    if archive is not None:  # the archive path exactly as zipimport knows it
        path = os.path.join(archive, getattr(loader, "prefix", ""), "web", *parts)
    else:
        path = os.path.join(WEB_ROOT, *parts)
    get_data = getattr(loader, "get_data", None)
    try:
        if get_data is not None:
            return bytes(get_data(path))
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FileNotFoundError(f"no asset web/{name}") from exc


def _bundled_web() -> bool:
    """True when ``web/`` is readable through the module's loader (a zipapp)."""
    try:
        read_asset("index.html")
    except (OSError, ValueError):
        return False
    return True


def origin_policy(spec: str) -> Optional[List[str]]:
    """``--allowed-origins`` for netcore's WebConfig: None for ``*`` (any page)."""
    origins = [o.strip() for o in spec.split(",") if o.strip()]
    if "*" in origins:
        return None
    return origins or [SAME_ORIGIN]


def _address_limit_message(limit: str, address: str) -> bytes:
    """What a client over a per-address limit gets before the close."""
    return error_frame(ErrorCode.SERVER_FULL,
                       f"too many connections from {address} ({limit}); try later")


# Sent with the browser client's files: it loads nothing from elsewhere.
WEB_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
     "frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)
#: A connection closed for one of these reasons hit a limit: counted by name in /metrics.
LIMIT_REASONS = frozenset(("flood", "hello-timeout", NEW_PLAYERS_LIMIT, "player-ids"))


class TLSFilesError(Exception):
    """--tls-cert/--tls-key cannot be used: the message names the file and why."""


def server_tls_context(opts: ServerOptions) -> Optional["ssl.SSLContext"]:
    """The game port's TLS context from ``--tls-cert``/``--tls-key``, or None (plain only).

    Imports :mod:`ssl` (with OpenSSL, ~4.5 MB of RSS) only when a certificate
    is given: a plain server never loads it. Raises :class:`TLSFilesError`
    naming the file and what is wrong with it (at start: exit 2; on SIGHUP:
    logged, and the old context keeps serving).
    """
    if opts.tls_cert is None and opts.tls_key is None:
        if opts.tls_required:
            raise TLSFilesError("--tls-required needs --tls-cert and --tls-key")
        return None
    if opts.tls_cert is None or opts.tls_key is None:
        raise TLSFilesError("--tls-cert and --tls-key go together: give both "
                            "(certbot's fullchain.pem and privkey.pem)")
    from netcore.tls import CertificateError, server_context

    try:
        return server_context(opts.tls_cert, opts.tls_key)
    except CertificateError as exc:
        raise TLSFilesError(str(exc)) from None


# -----------------------------------------------------------------------------
# Front: the Front. A connection's life, HELLO, limits, and each tick's sends.
# -----------------------------------------------------------------------------


class Front(Handler, FrontSide):
    """The players' side of a server: every connection, on a netcore :class:`TCPServer`.

    A connection's life: connect -> pending (``on_connect``; HELLO due
    within ``hello_timeout``) -> HELLO (``on_message``: checked here, then
    ``world.hello``; the connection leaves the pending count) -> the World's
    ``welcome`` -> MOVEs to ``world.move`` -> close (``on_close``:
    ``world.leave``). On the same port the first bytes may say HTTP instead
    (``on_protocol``: the web front answers its requests) or a WebSocket
    upgrade (pending again from the upgrade, then HELLO as over TCP).
    Whatever a client gets wrong ends in ``reject``: an ERROR frame, then
    close. ``world`` is a :class:`World` (serve) or the bus to one (gateway).
    """

    def __init__(self, loop: EventLoop, options: ServerOptions, world: WorldSide,
                 routes: Optional[Mapping[str, "Route"]] = None) -> None:
        self.loop = loop
        self.options = opts = options
        self.world = world
        # One parser for every binary player: a connection gets its own only
        # while a frame of it is split between reads (StreamFrames), which
        # saves an object per player (64 B; bench/player_bytes.py).
        frames = StreamFrames(MAX_CLIENT_FRAME)
        self.web: Optional[WebFront] = None
        if opts.web:
            root = opts.web_root if opts.web_root and os.path.isdir(opts.web_root) else None
            reader = None
            if root is None and opts.web_root == WEB_ROOT and _bundled_web():
                reader = read_asset  # running from the zipapp: web/ is inside it
            elif opts.web_root and root is None:
                log.warning("web root %s is not a directory: serving no files", opts.web_root)
            self.web = WebFront(WebConfig(
                static_root=root, static_reader=reader, routes=routes or {},
                ws_path=WS_PATH, handshake_timeout=opts.handshake_timeout,
                max_message=WS_MAX_MESSAGE, message_codec=WholeFrames(MAX_CLIENT_FRAME),
                headers=WEB_HEADERS,
                # Strict WebSocket limits: a game message is one frame or a few
                # (the browser sends one); pings are the peer's keepalive, rare.
                max_fragments=WS_MAX_FRAGMENTS, control_burst=WS_CONTROL_BURST,
                control_rate=WS_CONTROL_RATE,
                allowed_origins=origin_policy(opts.allowed_origins),
            ), binary=lambda: frames)
        tls = server_tls_context(opts)  # raises TLSFilesError, naming the file
        self.net = TCPServer(
            loop,
            self,
            ServerConfig(
                tls=tls,
                tls_required=opts.tls_required,
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
                max_per_address=opts.max_per_address or None,
                max_pending_per_address=opts.max_pending_per_address or None,
                max_pending=opts.max_pending or None,
                exempt=opts.exempt,
                trusted_proxies=opts.trusted_proxies,
                limit_message=_address_limit_message,
                sndbuf=opts.sndbuf or None,
                send_backlog_limit=opts.send_backlog or None,
                send_backlog_grace=opts.send_backlog_grace,
                refuse_rate=opts.refuse_rate or None,
                # A client's messages are a few bytes: 16 KiB a wake-up is
                # plenty, and bounds what one flooder makes the loop parse.
                read_budget=16 << 10,
                reuse_port=opts.reuse_port,
            ),
            # Without the web front: plain frames, no HTTP.
            codec_factory=self.web if self.web is not None else lambda conn: frames,
        )
        self.pending: Dict[Connection, float] = {}  # connected, no HELLO yet: since when
        # Players who came over WebSocket: the tick sends them the same bytes
        # behind one WebSocket header, built once. TCP players are the rest.
        self.ws_players: Dict[Connection, None] = {}
        self.v2_conns: Dict[Connection, None] = {}  # players who said version 2 (they get FAME)
        self.tls_players: Dict[Connection, None] = {}  # players over TLS (TCP or wss://)
        self.tls_reloads = 0  # certificates reloaded (SIGHUP)
        self.errors_sent: Dict[int, int] = {}
        self.churn = ChurnReporter(self.net.stats, log)

    # -- netcore callbacks --------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        self.pending[conn] = self.loop.time()

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        if protocol == HTTP:
            # Not a player (yet): the web front's deadline governs it now.
            self.pending.pop(conn, None)
        elif protocol == WEBSOCKET:
            self.pending[conn] = self.loop.time()  # HELLO due within the timeout from now

    def on_message(self, conn: Connection, payload: bytes) -> None:
        handle = conn.data
        if handle is not None:
            # In the game MOVE is the only message: anything else closes at
            # once, so counting MOVEs per tick is the whole flood check.
            if payload[0] == MOVE and len(payload) == _MOVE_SIZE and handle is not HELLO_SENT:
                if self.world.move(handle, payload) > FLOOD_MESSAGES:
                    self.reject(conn, ErrorCode.FLOOD,
                                f"more than {FLOOD_MESSAGES} messages in one tick", "flood")
                return
            when = "before WELCOME" if handle is HELLO_SENT else "in game"
            self.reject(conn, ErrorCode.BAD_MESSAGE, describe_unexpected(payload, when))
            return
        try:
            hello, name = parse_hello(payload)
        except Refused as no:
            self.reject(conn, no.code, no.text, no.reason)
            return
        # A HELLO: no longer pending, here (the HELLO timeout) and in netcore's
        # per-address count, exactly once whichever join follows (new, resumed,
        # or waiting for the store).
        self.pending.pop(conn, None)
        self.net.settle(conn)
        conn.data = HELLO_SENT  # until the World's welcome, which may come at once
        address = self.net.client_address(conn)
        if address in self.net.address_limits.exempt:
            address = ""  # --exempt: no per-address limit here, nor in the World (a cluster's)
        self.world.hello(conn, hello, name, address)

    def on_bad_input(self, conn: Connection, exc: ProtocolError) -> None:
        self.reject(conn, ErrorCode.BAD_FRAME, str(exc), exc.reason, ws.close_code_for(exc))

    def on_close(self, conn: Connection, reason: str) -> None:
        self.pending.pop(conn, None)
        self.ws_players.pop(conn, None)
        self.v2_conns.pop(conn, None)
        self.tls_players.pop(conn, None)
        handle = conn.data
        if handle is not None:
            conn.data = None
            self.world.leave(conn, handle)

    # -- the seam: frames from the World --------------------------------------------

    def welcome(self, peer: Any, handle: Any, frames: bytes, nframes: int, v2: bool) -> None:
        conn: Connection = peer
        conn.data = handle
        if isinstance(conn.codec, WebSocketCodec):
            self.ws_players[conn] = None
        if v2:
            self.v2_conns[conn] = None
        if conn.tls is not None:
            self.tls_players[conn] = None
        conn.write(conn.codec.wrap(frames), frames=nframes)

    def send(self, conn: Connection, frames: bytes, nframes: int) -> None:
        """Private frames to one player, outside a tick."""
        conn.write(conn.codec.wrap(frames), frames=nframes)

    def drop(self, peer: Any, code: int, text: str, reason: str) -> None:
        conn: Connection = peer
        conn.data = None  # the World let it go: no leave when it closes
        self.ws_players.pop(conn, None)
        self.v2_conns.pop(conn, None)
        self.tls_players.pop(conn, None)
        self.reject(conn, code, text, reason)

    def tick(self, shared: bytes, nframes: int, news: bytes,
             yous: List[Tuple[Any, bytes]], everyone: List[Any]) -> None:
        """One tick to everyone: the shared frames, and each changed YOU with them."""
        v2 = self.v2_conns if news else None
        # A player whose YOU changed gets the shared frames and its YOU in
        # one send (one WebSocket message), in its usual place in the order.
        if v2 is None and not self.ws_players:
            # The common case (no FAME, no WebSocket player): the frames go
            # as they are, so no per-player wrap (every player's, all moving).
            private = {conn: shared + you for conn, you in yous}
        else:
            private = {}
            for conn, you in yous:
                data = shared + news if v2 is not None and conn in v2 else shared
                private[conn] = conn.codec.wrap(data + you)
        if v2:  # version-2 players also get this tick's FAME; version 1 never does
            self.broadcast(shared, nframes, [c for c in everyone if c not in v2], private)
            self.broadcast(shared + news, nframes + 1, [c for c in everyone if c in v2], private)
        else:
            self.broadcast(shared, nframes, everyone, private)

    def broadcast(self, data: bytes, nframes: int, conns: List[Connection],
                  private: Optional[Dict[Connection, bytes]] = None) -> None:
        """``data`` to each of ``conns`` (``private[conn]`` instead, for those in it)."""
        private = private or {}
        ws_players = self.ws_players
        if ws_players:
            tcp: List[Connection] = []
            web: List[Connection] = []
            for conn in conns:
                (web if conn in ws_players else tcp).append(conn)
            # The same bytes for everyone; WebSocket players get them behind
            # one header, built once and shared like the data itself.
            self.net.broadcast(ws.frame_header(len(data)) + data, web,
                               nframes, private, nframes + 1)
        else:
            tcp = conns
        self.net.broadcast(data, tcp, nframes, private, nframes + 1)

    def reject(self, conn: Connection, code: int, text: str, reason: str = "protocol-error",
               ws_code: int = 0) -> None:
        """Tell the client what it did wrong, then close it. Others play on.

        Over WebSocket the ERROR frame goes in a message, followed by a
        close frame with ``ws_code`` (by default the error's usual code).
        """
        log.debug("fd=%d %s: %s: %s", conn.fd, conn.peername(), reason, text)
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1
        if reason in LIMIT_REASONS:
            self.net.stats.limit(reason)  # "flood", "hello-timeout"...: by name in /metrics
        last_words = conn.codec.closing(error_frame(code, text),
                                        ws_code or WS_CLOSE_CODES[code], text)
        if last_words and conn.write(last_words):
            conn.close_after_flush(reason, text)
        else:
            conn.close(reason, text)

    # -- housekeeping --------------------------------------------------------------

    def after_tick(self, number: int) -> None:
        """Every tick (``number``: the role's tick count): HELLO deadlines, every fourth."""
        if number % 4 == 0 and self.pending:
            self._expire_pending()

    def _expire_pending(self) -> None:
        limit = self.loop.time() - self.options.hello_timeout
        for conn, since in list(self.pending.items()):
            # Input waiting unread: the client spoke, we were too busy to listen.
            if since < limit and not unread_bytes(conn.sock):
                self.reject(conn, ErrorCode.HELLO_TIMEOUT,
                            f"no HELLO within {self.options.hello_timeout:g} s", "hello-timeout")

    def compact(self) -> bool:
        """Rebuild the per-connection tables churn has grown (netcore's, and ours when
        it did): each would otherwise keep the size it grew to at its busiest."""
        rebuilt = self.net.compact()
        if rebuilt:
            self.v2_conns = dict(self.v2_conns)
            self.ws_players = dict(self.ws_players)
            self.pending = dict(self.pending)
        return rebuilt

    # -- an upgrade ------------------------------------------------------------------

    def handover_state(self) -> Tuple[Dict[str, Any], List[int], Dict[Any, int]]:
        """The connections as netcore hands them over, with what the Front knows of each
        (pending since, version 2, said HELLO), the descriptors to keep open, and each
        connection's index in the hand-over (the World names its players by it)."""
        state, fds = handover.export_server(self.net)
        by_fd = self.net.connections
        now = self.loop.time()
        index: Dict[Any, int] = {}
        players = []  # (pending for, or -1.0; version 2; said HELLO; player id, or 0)
        for i, fd in enumerate(fds[len(self.net.listeners):]):
            conn = by_fd[fd]
            index[conn] = i
            since = self.pending.get(conn)
            handle = conn.data
            players.append((-1.0 if since is None else now - since, conn in self.v2_conns,
                            handle is HELLO_SENT,
                            getattr(handle, "id", None) or getattr(handle, "pid", None) or 0))
        state["players"] = handover.pack_rows(players)
        state["moved"] = sum(1 for p in players if p[3])
        return state, fds, index

    def goodbye_to_the_unmovable(self) -> int:
        """Before a hand-over: ERROR(SHUTDOWN) to the connections that cannot move
        (TLS sessions: ``ssl`` cannot export one), sent if the kernel takes it now,
        and each closed at once, so the World sees its player leave (a version 2
        seat waits for its token) before anything is exported. How many."""
        text = "server upgrading: come back"
        told = 0
        for conn in handover.unmovable(self.net):
            last_words = conn.codec.closing(error_frame(ErrorCode.SHUTDOWN, text),
                                            ws.CloseCode.GOING_AWAY, text)
            if last_words:
                conn.write(last_words)
            conn.close("upgrade", text)
            told += 1
        return told

    def resume(self, state: Dict[str, Any]) -> List[Optional[Connection]]:
        """Serve the listeners and connections a predecessor handed over."""
        conns = handover.restore_server(self.net, state)
        now = self.loop.time()
        pending, v2, hello_sent, _ids = handover.unpack_columns(state["players"], 4)
        state["v2"] = v2  # for hold() (and a gateway's seats): which are version 2
        for conn, since, said in zip(conns, pending, hello_sent):
            if conn is None:
                continue
            if since >= 0.0:
                self.pending[conn] = now - since
            if said:
                conn.data = HELLO_SENT
        return conns

    def hold(self, conns: List[Optional[Connection]], handles: Dict[int, Any],
             state: Dict[str, Any]) -> None:
        """After the World's restore: each player's handle on its connection again."""
        for index, handle in handles.items():
            conn = conns[index]
            if conn is None:
                continue
            conn.data = handle
            if state["v2"][index]:
                self.v2_conns[conn] = None
            if isinstance(conn.codec, WebSocketCodec):
                self.ws_players[conn] = None

    def goodbye(self, grace: float, on_done: Callable[[], None]) -> None:
        """Stop accepting; ERROR(SHUTDOWN) to everyone (WebSocket: in a message, then
        close 1001; HTTP: the response under way); ``on_done`` once all have it, or
        after ``grace`` seconds."""
        self.net.stop_accepting()
        text = "server shutting down"
        self.net.shutdown(grace, error_frame(ErrorCode.SHUTDOWN, text),
                          ws.CloseCode.GOING_AWAY, text, on_done=on_done)

    # -- TLS ------------------------------------------------------------------------

    def reload_tls(self) -> bool:
        """Read ``--tls-cert``/``--tls-key`` again (SIGHUP: certbot renewed them).

        New connections get the new certificate; open ones keep theirs (no
        one is dropped). A file that cannot be used is logged and the old
        context keeps serving. Whether the new one is in place.
        """
        opts = self.options
        if opts.tls_cert is None:
            log.info("SIGHUP: no TLS certificate to reload (no --tls-cert): still serving")
            return False
        try:
            context = server_tls_context(opts)
        except TLSFilesError as exc:
            log.error("SIGHUP: TLS reload failed, still serving the certificate loaded "
                      "before: %s", exc)
            return False
        self.net.set_tls(context)
        self.tls_reloads += 1
        log.info("SIGHUP: reloaded the TLS certificate %s and key %s; new connections get "
                 "them, %d TLS players keep theirs", opts.tls_cert, opts.tls_key,
                 len(self.tls_players))
        return True

    # -- figures -------------------------------------------------------------------

    def add_metrics(self, exp: Exposition) -> None:
        add_net_stats(exp, self.net.stats, "spelltraction", self.net.config.max_connections)
        exp.gauge("spelltraction_pending_hellos", "Connections that have not sent HELLO yet.",
                  len(self.pending))
        if self.net.config.tls is not None:
            exp.gauge("spelltraction_tls_players", "Players connected over TLS (TCP or wss://).",
                      len(self.tls_players))
            exp.counter("spelltraction_tls_reloads_total",
                        "Certificates reloaded on SIGHUP (failed reloads are not counted).",
                        self.tls_reloads)
        exp.labelled("spelltraction_errors_sent_total", "counter",
                     "ERROR messages sent to clients, by code.", "code",
                     {ErrorCode.name_of(code): n for code, n in self.errors_sent.items()})

    def add_snapshot(self, snap: Dict[str, Any]) -> None:
        """The Front's figures in ``/stats.json``."""
        net = self.net.stats
        snap.update({
            "connections": net.connections,
            "max_clients": self.net.config.max_connections,
            "accepted": net.accepted,
            "closed": net.closed,
            "closed_by_reason": dict(net.closed_by_reason),
            "bytes_in": net.bytes_in,
            "bytes_out": net.bytes_out,
            "frames_in": net.frames_in,
            "frames_out": net.frames_out,
            "queued_out_bytes": net.queued_out_bytes,
            "slow_consumers": net.slow_consumers,
            "tls": {"enabled": self.net.config.tls is not None,
                    "required": self.net.config.tls_required,
                    "players": len(self.tls_players), "handshakes": net.tls_handshakes,
                    "errors": dict(net.tls_errors), "reloads": self.tls_reloads},
        })

    def add_final_stats(self, stats: Dict[str, Any]) -> None:
        stats.update({
            "net": self.net.stats.snapshot(),
            "errors_sent": {str(int(k)): v for k, v in self.errors_sent.items()},
            "ws_players": len(self.ws_players),
            "web": self.web.stats.snapshot() if self.web is not None else {},
        })

    def status(self, players: int) -> str:
        net = self.net.stats
        return (f"{players} players, {net.connections} connections of "
                f"{self.net.config.max_connections}, {len(self.pending)} before HELLO, "
                f"{len(self.ws_players)} over WebSocket"
                f"{f', {len(self.tls_players)} over TLS' if self.net.config.tls else ''}; "
                f"{net.accepted} accepted, "
                f"{net.closed} closed since start")

    def health_text(self, players: int) -> str:
        used, limit = self.net.stats.connections, self.net.config.max_connections
        state = "full: new players are refused" if used >= limit else "accepting players"
        return f"{state}; {players} players, {used} of {limit} connections"


# =============================================================================
# Server: the roles. serve = Front + World; what every server process has.
# =============================================================================


DEFAULT_MAX_CLIENTS = 15_000  # connections one server holds; more are told SERVER_FULL
DEFAULT_BACKLOG = 4096  # the listen backlog: a reconnect storm's worth


class ServerOptions(NamedTuple):
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    tick_ms: int = DEFAULT_TICK_MS
    max_clients: int = DEFAULT_MAX_CLIENTS
    backlog: int = DEFAULT_BACKLOG
    hello_timeout: float = 10.0
    seed: Optional[int] = None
    max_output: int = 64 << 10  # queued bytes past which a client is too slow
    shutdown_grace: float = 1.5  # seconds to flush goodbyes on SIGTERM
    churn_every: float = 5.0  # seconds between connection-churn log summaries
    stats_out: str = ""  # write final figures here as JSON on exit (benchmarks)
    web: bool = True  # HTTP (the browser client) and WebSocket on the same port
    web_root: Optional[str] = WEB_ROOT  # None: no static files
    handshake_timeout: float = 10.0  # an HTTP request or WebSocket upgrade must finish in this
    data: Optional[str] = None  # the store's directory (serve --data); None: memory only
    grace: float = DEFAULT_GRACE_S  # seconds a dropped v2 player's seat is kept
    prune_days: float = DEFAULT_PRUNE_DAYS  # delete rows of players unseen this long
    sync: str = "normal"  # the store's PRAGMA synchronous: normal or full
    # A data directory others can write to (world-writable, another user's) is
    # refused unless this is set (serve/game --allow-shared-data).
    allow_shared_data: bool = False
    # The admin listener: /healthz, /metrics, /stats(.json) over HTTP on their
    # own port, answered whatever the game port's state (full, flooded).
    admin_port: Optional[int] = None  # None: no admin listener; 0: any free port
    admin_host: str = "127.0.0.1"  # loopback: for probes and scrapers on this host
    # Per client address (IPv6 by /64); 0: off. "Pending": connected, no HELLO
    # yet (HTTP connections, upgraded or not, are pending until they leave).
    max_per_address: int = 64
    max_pending_per_address: int = 16
    max_pending: int = 2048  # pending connections from all addresses together
    exempt: str = "127.0.0.0/8,::1"  # CIDRs the per-address limits never count
    trusted_proxies: str = ""  # CIDRs whose connections start with a PROXY header
    # The kernel memory a client can make us hold, and the slow-consumer rule:
    # SO_SNDBUF of each socket (the kernel doubles it; 0: its autotuning, up to
    # ~4 MB each), and a client whose unsent backlog (our queue and its
    # socket's) stays over send_backlog bytes for send_backlog_grace s is cut.
    sndbuf: int = 32 << 10
    send_backlog: int = 1 << 10  # a few TICKs more than any live link has in flight; 0: off
    send_backlog_grace: float = 4.0
    # A full server refuses this many connects a second at most; the rest
    # wait in the kernel's queue (a connect storm costs the tick nothing). 0: no limit.
    refuse_rate: float = 1000.0
    # WebSocket upgrades from pages of these Origins, comma-separated ("same-origin":
    # the host the request names); "*": any page. Requests with no Origin (not
    # a browser) are always allowed.
    allowed_origins: str = SAME_ORIGIN
    reuse_port: bool = False  # SO_REUSEPORT: gateways of one world only, never serve
    # While busy, read at most once per this many ms: one epoll_wait collects
    # the moves of hundreds of players (applied at the next tick anyway).
    # The most any request, handshake or ping waits for it; 0: off.
    coalesce_ms: float = DEFAULT_COALESCE * 1000
    # The loop's poller (netcore.poller): "epoll" (Linux: driven directly,
    # connections edge-triggered) or "selectors" (selectors.DefaultSelector).
    poller: str = DEFAULT_POLLER
    # New players (each a new id and a new row in the store) per client address:
    # a burst of this many, then new_player_rate a second. A school behind one
    # NAT joins at once; a script making identities is slowed. --exempt is exempt.
    new_player_burst: int = DEFAULT_NEW_PLAYER_BURST  # 0: no limit
    new_player_rate: float = DEFAULT_NEW_PLAYER_RATE
    # /metrics, /stats and /stats.json on the game port too (always on the
    # admin port): off by default, the public port answers the players.
    public_stats: bool = False
    # TLS on the game port, beside plain players (the first byte tells them
    # apart): the certificate chain and its key as certbot writes them
    # (fullchain.pem, privkey.pem), read at start and again on SIGHUP. None: plain only.
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_required: bool = False  # refuse plain players (and plain HTTP) on the game port


ADMIN_MAX_CONNECTIONS = 64  # the admin port's own limit, apart from the players'


class AdminHandler(Handler):
    """The admin port speaks HTTP only: a connection that starts otherwise is closed."""

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        if protocol != HTTP:
            conn.close("not-http", "the admin port speaks HTTP only")


class Role:
    """What every server process has, whatever part of the game it holds.

    The tick (``on_tick``, each role's own), the admin port (``/healthz`` and
    the operator's figures, on a listener of its own), the operator's
    figures made from the role's parts (``parts``: its Front, World, bus),
    the periodic reports, and the shutdown. Subclasses: :class:`GameServer`
    (serve), :class:`Authority` (game), :class:`Gateway`.
    """

    role = "serve"
    can_hand_over = False  # whether an upgrade can hand this role over (else: a restart)

    def __init__(self, loop: EventLoop, options: ServerOptions) -> None:
        self.loop = loop
        self.options = options
        self.started = time.time()
        self.start_rss_kb = rss_kb()
        self.ticker: Optional[TickScheduler] = None  # set by start()
        self.admin: Optional[TCPServer] = None
        self.shutting_down = False
        self.log_limiter: Optional[RateLimitFilter] = None  # flushed with each report
        self._report_timer: Optional[Timer] = None
        self._answers: Dict[str, Tuple[int, bytes]] = {}  # HTTP answers of this tick (answer())
        self.front: Optional[Front] = None
        self.world: Optional[World] = None
        self.upgrades: Optional[Upgrades] = None  # set by _start_server
        self.last_tick_at = 0.0  # loop time of the last tick (an upgrade measures its gap)
        self._resumed: Optional[Dict[str, Any]] = None  # the hand-over, until the first tick
        self.handover_index: Dict[Any, int] = {}  # a hand-over's connections, by connection
        self.resumed_conns: List[Optional[Connection]] = []  # the successor's, in that order

    def parts(self) -> List[Any]:
        """What the figures are made of: objects with add_metrics, add_snapshot,
        add_final_stats (the Front, the World, the bus)."""
        return [part for part in (self.front, self.world) if part is not None]

    # -- lifecycle ------------------------------------------------------------------

    def _open_admin(self) -> None:
        """The admin listener: a small HTTP-only server of its own on the same loop.

        Its connections don't count against ``max_clients`` and players'
        connections don't count against its own limit, so ``/healthz``
        answers (and says so) when the game port is full.
        """
        opts = self.options
        if opts.admin_port is None:
            return
        routes: Dict[str, Route] = dict(self.ops_routes(public=False))
        routes["/healthz"] = self.health
        front = WebFront(WebConfig(routes=routes, ws_path=None, health_path=None,
                                   handshake_timeout=opts.handshake_timeout))
        busy = http_response(503, [("Content-Type", "text/plain; charset=utf-8")],
                             b"admin port busy: try again\n", close=True)
        self.admin = TCPServer(self.loop, AdminHandler(), ServerConfig(
            hosts=[opts.admin_host], port=opts.admin_port or 0, backlog=64,
            max_connections=ADMIN_MAX_CONNECTIONS, full_message=busy,
        ), codec_factory=front)

    def start(self) -> List[Tuple[str, int]]:
        """Listen (the game port, if any, and the admin port) and start ticking."""
        addresses = self.front.net.listen() if self.front is not None else []
        if self.admin is not None:
            self.admin.listen()
        self.ticker = self.loop.start_ticker(self.options.tick_ms / 1000.0, self.on_tick)
        if self.world is not None:
            self.world.ticker = self.ticker
        self._report_timer = self.loop.call_later(self.options.churn_every, self.report)
        return addresses

    def on_tick(self, tick: Tick) -> None:
        raise NotImplementedError

    def ticked(self) -> None:
        """Every role's tick ends here: when it was, and a successor's first one reported."""
        self.last_tick_at = self.loop.time()
        if self._resumed is not None:
            self._report_resumed()

    # -- an upgrade: this process as plain data, and back -------------------------

    def handover_state(self) -> Tuple[Dict[str, Any], List[int]]:
        """This server as plain data for a successor (see Upgrades), and the
        descriptors that must stay open for it."""
        state: Dict[str, Any] = {"format": HANDOVER_FORMAT, "version": HANDOVER_VERSION,
                                 "role": self.role, "from_version": __version__,
                                 "started": self.started, "start_rss_kb": self.start_rss_kb}
        fds: List[int] = []
        t = self.ticker
        if t is not None:
            state["tick"] = t.state()
        peers: Dict[Any, int] = {}
        if self.front is not None:
            state["front"], front_fds, peers = self.front.handover_state()
            fds += front_fds
        if self.admin is not None:
            state["admin"], admin_fds = handover.export_server(self.admin)
            fds += admin_fds
        self.handover_index = peers  # each connection's place in state["front"]
        if self.world is not None:
            state["world"] = self.world.export(self.peer_index(peers))
        self.add_handover_state(state)
        return state, fds

    def peer_index(self, peers: Dict[Any, int]) -> Callable[[Any], Optional[int]]:
        """How the World's peers are numbered in the hand-over (serve: the Front's;
        None for a connection that cannot move)."""
        return peers.get

    def add_handover_state(self, state: Dict[str, Any]) -> None:
        """A role's own part of the hand-over (the cluster's bus)."""

    def goodbye_to_the_unmovable(self) -> int:
        """Connections that cannot move (TLS sessions) are told SHUTDOWN and closed
        now, before the hand-over is exported; how many."""
        return 0 if self.front is None else self.front.goodbye_to_the_unmovable()

    def resume(self, state: Dict[str, Any]) -> List[Tuple[str, int]]:
        """Instead of :meth:`start`, in an upgrade's successor: serve what the
        predecessor handed over, and tick on its schedule."""
        conns: List[Optional[Connection]] = []
        addresses: List[Tuple[str, int]] = []
        if self.front is not None:
            conns = self.front.resume(state["front"])
            addresses = self.front.net.addresses
        self.resumed_conns = conns
        if self.admin is not None and state.get("admin") is not None:
            handover.restore_server(self.admin, state["admin"])
        if self.world is not None:
            peers = self.resumed_peers(conns, state)
            self.hold(peers, self.world.restore(state["world"], peers), state)
        self.resume_role(state)
        period = self.options.tick_ms / 1000.0
        self.ticker = t = self.loop.start_ticker(period, self.on_tick)
        old = state.get("tick")
        if old is not None:  # the same schedule, the next number now
            t.resume(old, self.loop.time())
        if self.world is not None:
            self.world.ticker = t
        self.started = state["started"]
        self.resumed_conns = []
        front = state.get("front", {})
        self._resumed = {  # what the first tick reports; the rest of the state goes
            "moved": front.get("moved", 0),
            "connections": front["connections"]["rows"] if front else 0,
            "told_to_come_back": state.get("told_to_come_back", 0),
            "reply_fd": state.get("reply_fd"), "requested_at": state.get("requested_at"),
            "marks": state.get("marks", []) + [self.loop.time()],
            "rss_kb": [state.get("read_rss_kb", 0), rss_kb()]}
        self._report_timer = self.loop.call_later(self.options.churn_every, self.report)
        return addresses

    def resumed_peers(self, conns: List[Optional[Connection]],
                      state: Dict[str, Any]) -> Sequence[Any]:
        """What each peer index of the World's hand-over is now (serve: the Front's)."""
        return conns

    def hold(self, peers: Sequence[Any], handles: Dict[int, Any], state: Dict[str, Any]) -> None:
        """The World's handles (its players) back on their peers (serve: connections)."""
        if self.front is not None:
            self.front.hold(self.resumed_conns, handles, state["front"])

    def resume_role(self, state: Dict[str, Any]) -> None:
        """A role's own part of resuming (the cluster's bus)."""

    def _report_resumed(self) -> None:
        """The successor's first tick: one line to the log and to the command that
        asked, with where the time went; then what the hand-over left is freed."""
        said, self._resumed = self._resumed, None
        assert said is not None
        now = time.monotonic()
        marks = said["marks"] + [now]
        gap = now - marks[0] if len(marks) == len(UPGRADE_STEPS) + 1 else 0.0
        wall = now - (said["requested_at"] or now)
        back = said["told_to_come_back"]
        text = (f"ok: upgraded to {__version__}: moved {said['moved']} players "
                f"({said['connections']} connections), "
                + (f"{back} that cannot move (TLS) told to come back, " if back else "") +
                f"{wall * 1000:.0f} ms from the request to this first tick, the largest tick "
                f"gap {gap * 1000:.0f} ms")
        if gap:
            log.info("upgrade: %s; %s", text[4:], ", ".join(
                f"{what} {(end - start) * 1000:.0f}" for what, start, end
                in zip(UPGRADE_STEPS, marks, marks[1:])) + " ms")
        else:
            log.info("upgrade: %s", text[4:])
        fd = said["reply_fd"]
        if fd is not None:
            try:
                reply = socket.socket(fileno=fd)
                reply.setblocking(True)
                reply.settimeout(1.0)
                Upgrades._say(reply, text)
                reply.close()
            except OSError:
                pass
        import gc  # the hand-over's plain data is garbage now: give its pages back

        gc.collect()
        process.release_freed_memory()
        read, restored = said["rss_kb"]
        log.info("upgrade: RSS %.1f MiB with the hand-over read, %.1f MiB restored, %.1f MiB "
                 "after the first tick, the hand-over freed", read / 1024, restored / 1024,
                 rss_kb() / 1024)

    def report(self) -> None:
        """Every few seconds: one log line of connection churn, and suppressed warnings."""
        if self.front is not None:
            self.front.churn.report()
        if self.log_limiter is not None:
            self.log_limiter.flush(log)
        if not self.shutting_down:
            self._report_timer = self.loop.call_later(self.options.churn_every, self.report)

    def shutdown(self) -> None:
        """Stop accepting, say goodbye to everyone, flush, stop the loop."""
        if self.shutting_down:
            return
        self.shutting_down = True
        if self._report_timer is not None:
            self._report_timer.cancel()
        if self.ticker is not None:
            self.loop.stop_ticker(self.ticker)
        if self.world is not None:
            self.world.stopping = True  # players cut off now were still playing
        if self.front is not None:
            self.front.goodbye(self.options.shutdown_grace, self._drained)
        else:
            self._drained()

    def _drained(self) -> None:
        """The game port is empty (or the grace period is over): stop."""
        if self.loop.running:
            self.close()
            self.loop.stop()

    def close(self) -> None:
        """Close every listener and connection, and the store, at once."""
        if self.world is not None:
            self.world.stopping = True
        if self.front is not None:
            self.front.net.close(CloseReason.SHUTDOWN)
        if self.admin is not None:
            self.admin.close(CloseReason.SHUTDOWN)
        self.close_store()

    def close_store(self) -> None:
        if self.world is not None:
            self.world.close()

    def compact(self) -> bool:
        """Rebuild the tables churn has grown (once a minute, before the heap trim)."""
        rebuilt = self.front.compact() if self.front is not None else False
        if self.world is not None:
            self.world.compact()
        return rebuilt

    # -- the operator's figures ------------------------------------------------------

    def health(self) -> Tuple[str, bytes, int]:
        """``/healthz`` on the admin port: (content type, body, status)."""
        return "text/plain; charset=utf-8", self.health_text().encode(), 200

    def health_text(self) -> str:
        raise NotImplementedError

    def players_here(self) -> int:
        return len(self.world.game.players) if self.world is not None else 0

    def metrics_text(self) -> str:
        """The Prometheus text exposition served at ``GET /metrics``.

        Reads counters the hot path keeps anyway; costs one pass over a few
        dozen numbers and a few /proc reads, whenever a scraper asks.
        """
        exp = Exposition()
        exp.family("spelltraction_build_info", "gauge", "The running server's version.",
                   [({"version": __version__, "protocol": str(PROTOCOL_VERSION)}, 1)])
        parts = self.parts()
        if self.front is not None:
            self.front.add_metrics(exp)
        if self.ticker is not None:
            add_tick_stats(exp, self.ticker, "spelltraction")
        add_loop_stats(exp, self.loop, "spelltraction")
        for part in parts:
            if part is not self.front:
                part.add_metrics(exp)
        add_process_stats(exp)
        return exp.text()

    def stats_snapshot(self) -> Dict[str, Any]:
        """Figures for the live page (``GET /stats.json``), polled every second.

        Totals, not rates: the page divides differences by the time between
        snapshots, so a missed poll costs no accuracy.
        """
        proc = process_stats(count_fds=False)  # polled every second: skip the fd listdir
        snap: Dict[str, Any] = {"version": __version__, "time_s": time.time(),
                                "uptime_s": time.time() - self.started}
        for part in self.parts():
            getattr(part, "add_snapshot", lambda snap: None)(snap)
        snap.update({
            "rss_bytes": proc.rss_bytes,
            "python_blocks": sys.getallocatedblocks(),  # live objects: a leak shows here
            "cpu_s": proc.cpu_seconds,
            "tick": self.ticker.snapshot() if self.ticker is not None else {},
        })
        return snap

    def stats_json(self, public: bool = False) -> bytes:
        """``/stats.json``; ``public``: without what names the host's files or errors."""
        snap = self.stats_snapshot()
        if public:
            store = snap.get("store")
            if store:
                snap["store"] = {k: v for k, v in store.items() if k not in ("path", "last_error")}
            snap.get("cluster", {}).pop("redis", None)
        return json.dumps(snap, separators=(",", ":")).encode()

    def final_stats(self) -> Dict[str, Any]:
        """Figures for benchmarks and the exit summary (--stats-out)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats: Dict[str, Any] = {
            "ticks": self.ticker.snapshot() if self.ticker is not None else {},
            # Polls and the ready sockets they returned (coalescing: events per poll).
            "loop": {"polls": self.loop.iterations, "events": self.loop.events,
                     "coalesce_s": self.loop.coalesce},
        }
        for part in self.parts():
            getattr(part, "add_final_stats", lambda stats: None)(stats)
        stats.update({"rss_bytes": rss_bytes(), "start_rss_bytes": self.start_rss_kb * 1024,
                      "cpu_user_s": usage.ru_utime, "cpu_system_s": usage.ru_stime})
        return stats

    def status(self) -> str:
        """One line for the log (SIGUSR1): who is here, how the tick keeps up, memory."""
        net = self.front.net.stats if self.front is not None else None
        proc = process_stats()
        text = (self.front.status(self.players_here()) if self.front is not None
                else f"{self.players_here()} players")
        if self.ticker is not None:
            t = self.ticker
            number = self.world.game.tick if self.world is not None else t.fired
            text += (f"; tick {number}: {t.fired} fired, {t.late} late, {t.skipped} "
                     f"skipped, lateness p99 {t.recent_lateness.percentile(99) * 1000:.1f} ms")
        text += f"; RSS {proc.rss_bytes / 1e6:.1f} MB, {proc.open_fds} fds"
        if net is not None:
            text += (f", queued out {net.queued_out_bytes} B, {net.slow_consumers} slow "
                     "consumers cut")
        if self.shutting_down:
            text += "; shutting down"
        return text

    def ops_routes(self, public: bool) -> Dict[str, Callable[[], Tuple[str, bytes]]]:
        """``path -> () -> (content type, body)``: the admin port's (``public`` False),
        or the game port's (True: the hall of fame, and the figures only with
        ``--public-stats``, without the host's paths and errors).

        Every answer is made at most once per tick and shared by whoever asks
        within it (:meth:`answer`): a scrape costs milliseconds at 15,000
        players (it lists /proc/self/fd), and a hundred pipelined ones must
        not cost a hundred times that. Nothing is made when nobody asks.
        """
        routes: Dict[str, Callable[[], Tuple[str, bytes]]] = {}
        world = self.world
        if world is not None:
            routes["/leaderboard.json"] = lambda: ("application/json", self.answer(
                "leaderboard", lambda: json.dumps(world.leaderboard()).encode()))
        if public and not self.options.public_stats:
            return routes
        key = "public" if public else "admin"
        routes.update({
            "/metrics": lambda: (METRICS_CONTENT_TYPE, self.answer(
                "metrics", lambda: self.metrics_text().encode())),
            "/stats": lambda: ("text/html; charset=utf-8", read_asset("stats.html")),
            "/stats.json": lambda: ("application/json", self.answer(
                "stats-" + key, lambda: self.stats_json(public))),
        })
        return routes

    def answer(self, key: str, make: Callable[[], bytes]) -> bytes:
        """``make()``, made at most once per tick for every request that asks for ``key``."""
        ticker = self.ticker
        now = ticker.fired if ticker is not None else -1
        made = self._answers.get(key)
        if made is not None and made[0] == now:
            return made[1]
        body = make()
        self._answers[key] = (now, body)
        return body


class GameServer(Role):
    """``spelltraction.py serve``: a :class:`Front` and a :class:`World`, wired directly.

    The Front holds the players' connections and the World the game; each
    tick the World steps and hands its frames to the Front (the seam:
    :class:`WorldSide`, :class:`FrontSide`). This is a whole game server in
    one process; the cluster roles put Redis between the two halves.
    """

    can_hand_over = True

    def __init__(self, loop: EventLoop, options: Optional[ServerOptions] = None,
                 handover: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(loop, options if options is not None else ServerOptions())
        lock = handover["world"].get("lock_fd", -1) if handover is not None else -1
        self.world = world = World(loop, self.options, lock)  # raises StoreError, naming the file
        self.front = front = Front(loop, self.options, world, self.ops_routes(public=True))
        world.front = front
        world.connections = lambda: front.net.stats.connections
        self._open_admin()

    def on_tick(self, tick: Tick) -> None:
        world = self.world
        assert world is not None and self.front is not None
        world.on_tick(tick)
        self.front.after_tick(world.game.tick)
        self.ticked()

    def health_text(self) -> str:
        """``/healthz`` on the admin port: alive, and how full (200 either way)."""
        assert self.front is not None
        text = "shutting down" if self.shutting_down else \
            self.front.health_text(self.players_here())
        return f"ok: {text}\n"


# -----------------------------------------------------------------------------
# Server: process and signals. Limits, memory, signals, serve().
# -----------------------------------------------------------------------------


def rss_kb() -> int:
    """Resident set size in KiB, as STATS reports it (0 where there is no /proc)."""
    return rss_bytes() // 1024


FD_RESERVE = 32  # descriptors a server needs besides clients: listeners, selector, logs...
RELEASE_EVERY_S = 60.0  # the C heap's free pages go back to the OS this often (after bursts)


class ServerSignals(process.ShutdownSignals):
    """What each signal an operator or systemd may send does. None kills without the drain.

    - SIGTERM, SIGINT, SIGQUIT: drain (``Role.shutdown``: stop accepting,
      ERROR(SHUTDOWN) to everyone, flush for up to ``shutdown_grace`` seconds,
      exit 0). The first also swaps the Python-level handlers for one that
      restores the default action and re-sends the signal, so a second one
      ends the process by that signal (status 128+N in a shell) even if the
      loop is busy, without waiting for flushes.
    - SIGHUP (``systemctl reload``, certbot's deploy hook, a closed
      terminal): reload the TLS certificate and key (``--tls-cert``,
      ``--tls-key``; :meth:`Front.reload_tls`): new connections get the new
      one, nobody is dropped, and a file that cannot be used is logged and
      the old one kept. Without TLS, logged and nothing else (logs go to
      stderr, the journal, and the web files are re-read when they change).
    - SIGUSR1: one log line with the server's status (:meth:`Role.status`).
    - SIGUSR2: upgrade to the file on disk, keeping every connection
      (:class:`Upgrades`; the same as ``spelltraction.py upgrade``).

    SIGKILL cannot be caught (systemd sends it only after TimeoutStopSec);
    SIGSTOP/SIGCONT pause and resume, and ticks missed meanwhile show as a
    gap in TICK numbers.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)  # these drain

    def __init__(self, loop: EventLoop, server: Role) -> None:
        super().__init__(loop, lambda signum: server.shutdown(), self.SIGNALS)
        self.server = server

    def install(self) -> "ServerSignals":
        super().install()  # SIGNALS: drain, then a second one exits at once
        self.loop.add_signal_handler(signal.SIGUSR1, self.on_status)
        self.loop.add_signal_handler(signal.SIGUSR2, self.on_upgrade)
        self.loop.add_signal_handler(signal.SIGHUP, self.on_reload)
        return self

    def on_signal(self, signum: int) -> None:
        """What the loop runs for each of SIGNALS."""
        self._on_signal(signum)

    def on_status(self, signum: int) -> None:
        log.info("SIGUSR1: status: %s", self.server.status())

    def on_upgrade(self, signum: int) -> None:
        log.info("SIGUSR2: upgrading to %s", game_file())
        if self.server.upgrades is not None:
            self.server.upgrades.request(None)

    def on_reload(self, signum: int) -> None:
        """SIGHUP: reload the game port's TLS certificate and key (the only thing it does)."""
        front = self.server.front
        if front is None:  # the authority (game): no player port, no certificate
            log.info("SIGHUP: no TLS certificate to reload (no player port): still serving")
            return
        front.reload_tls()


def _start_server(loop: EventLoop, make: Callable[[], Role], opts: ServerOptions,
                  log_limiter: Optional[RateLimitFilter], argv: Sequence[str] = (),
                  handed: Optional[Dict[str, Any]] = None,
                  ) -> Optional[Tuple[Any, List[Tuple[str, int]]]]:
    """Make the server, listen (or, an upgrade's successor, take over what ``handed``
    holds), install the signals and the upgrade control: (server, addresses), or
    None (the reason logged) for a data directory or a port that can't be used."""
    try:
        server = make()
    except (StoreError, TLSFilesError) as exc:
        log.error("%s", exc)
        return None
    server.log_limiter = log_limiter
    try:
        addresses = server.resume(handed) if handed is not None else server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", opts.host, opts.port, exc)
        server.close()
        return None
    # Before saying "listening": a SIGTERM right after must find the handlers.
    server.upgrades = Upgrades(server, argv)
    ServerSignals(loop, server).install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # held by a predecessor's exec
    if server.world is not None and server.world.store is not None:
        _write_pid_file(server.world.store.directory)
    _forget_compiled()
    process.map_large_blocks_apart()
    release_freed_memory()
    process.release_freed_memory_every(loop, RELEASE_EVERY_S, before=server.compact)
    # "Memory at start" (STATS, --stats-out) is the server ready to serve, with
    # no player yet: taken before the start-up heap was released it read
    # higher than later figures, a leak in reverse.
    server.start_rss_kb = rss_kb()
    if server.world is not None:
        server.world.start_rss_kb = server.start_rss_kb
    return server, addresses


def _write_pid_file(directory: str) -> None:
    """``<data>/spelltraction.pid``: how ``spelltraction.py upgrade`` finds this server."""
    path = os.path.join(directory, PID_FILE)
    try:
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.warning("cannot write %s (%s): upgrade this server with --pid", path, exc)


def _run_server(loop: EventLoop, server: Role) -> None:
    """Run until stopped; close every listener, the loop and the store, whatever happens."""
    try:
        loop.run()
    finally:
        if server.upgrades is not None:
            server.upgrades.close()
        server.close()
        loop.close()


def serve(opts: ServerOptions, log_limiter: Optional[RateLimitFilter] = None,
          argv: Sequence[str] = ()) -> int:
    """``spelltraction.py serve``: a GameServer until a signal stops it; the exit status.
    ``argv``: its command line, which an upgrade runs again (see Upgrades)."""
    soft, hard = raise_nofile()
    capacity = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else opts.max_clients
    if capacity < opts.max_clients:
        log.warning(
            "open-files limit is %d (hard %d): only %d clients fit, below --max-clients %d. "
            "Raise it (etc/security/limits.d/spelltraction.conf, or LimitNOFILE= in the "
            "systemd unit); serving at most %d.",
            soft, hard, max(capacity, 0), opts.max_clients, max(capacity, 0),
        )
        opts = opts._replace(max_clients=max(capacity, 0))
    loop = make_loop(opts)
    try:
        handed = handover_from_environment()
    except HandoverError as exc:
        log.error("upgrade: %s", exc)
        return 2
    started = _start_server(loop, lambda: GameServer(loop, opts, handed), opts, log_limiter,
                            argv, handed)
    handed = None  # taken over: its megabytes of plain data go (the lambda's too)
    if started is None:
        return 2
    server, addresses = started
    for host, port in addresses:
        print(f"SpellTraction listening on {host}:{port}", flush=True)
    if opts.web and addresses:
        host, port = addresses[0]
        shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "::1") else host
        if opts.tls_cert is not None:
            plain = "" if opts.tls_required else f" (or http://{shown}:{port}/)"
            print(f"play in a browser: https://{shown}:{port}/{plain}", flush=True)
        else:
            print(f"play in a browser: http://{shown}:{port}/", flush=True)
    if server.admin is not None:
        for host, port in server.admin.addresses:
            print(f"admin (/healthz, /metrics, /stats) on http://{host}:{port}/", flush=True)
    print(f"max {opts.max_clients} clients, tick {opts.tick_ms} ms, open-files limit {soft}; "
          "Ctrl-C stops", flush=True)
    where = (f"data in {opts.data} (synchronous={opts.sync})" if opts.data is not None
             else "no data directory: scores live in memory only (--no-data)")
    print(f"{where}; dropped players are kept {opts.grace:g} s", flush=True)
    _run_server(loop, server)
    server.front.churn.report()
    if log_limiter is not None:
        log_limiter.flush(log, force=True)
    game = server.world.game
    print(f"stopped after {game.tick} ticks; {server.front.net.stats.accepted} connections "
          f"served, {game.letters_scored} letters scored", flush=True)
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
# Upgrade: every connection and the world to the new code, same pid, nobody dropped.
# =============================================================================
#
# ``spelltraction.py upgrade`` (or SIGUSR2) runs the file the server was
# started from, read afresh, in place of the running code, and nobody notices:
#
#   1. check:  a child process imports the new file and parses a hand-over of
#              this version's format (check_handover); if it cannot, the server
#              goes on as it was and the command says why;
#   2. settle: what waits for the disk lands (newcomers' rows, returning
#              players' reads); the store commits everything and stops its
#              threads, keeping its lock;
#   3. exec:   the listeners, every connection's socket, the store's lock and
#              the command's own connection stay open across an ``exec`` of the
#              new file, with the state (netcore's: codecs, unsent bytes, limits;
#              the game's: every player, seat, token, score, the tick's schedule)
#              in a memfd named by SPELLTRACTION_HANDOVER;
#   4. resume: the new code rebuilds the server from it, ticks on the old
#              schedule, and tells the command how it went.
#
# An exec keeps the pid: systemd, and whoever watches the process, see the
# same server. Connections that cannot move (a TLS session: ``ssl`` cannot
# export one) are told SHUTDOWN first and come back by themselves (v2) or
# start over (v1). A successor that cannot read the format (a rollback to a
# version without it, or an older one) is caught at step 1: that is a restart.

HANDOVER_ENV = "SPELLTRACTION_HANDOVER"
#: Signals held back across the exec (see Upgrades._hand_over); released at start.
HELD_SIGNALS = {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
HANDOVER_FORMAT = "spelltraction-handover"
HANDOVER_VERSION = 2  # 2: rows as columns (netcore.handover.pack_rows)
UPGRADE_CHECK_S = 30.0  # the new code must pass its check within this
#: Where the largest tick gap goes, in the log line of an upgrade's first tick.
UPGRADE_STEPS = ("the last tick to the hand-over", "goodbyes and the store", "export",
                 "write and exec", "imports and read", "restore", "the first tick")
UPGRADE_REPLY_S = 60.0  # the upgrade command waits this long for the successor's tick
PID_FILE = "spelltraction.pid"  # in the data directory: how `upgrade` finds the server
COMPILE_TO_ENV = "SPELLTRACTION_COMPILE_TO"  # the check's "FD:FORMAT": compile yourself there
COMPILED_FORMAT = 1  # what _write_compiled writes and _AS_MODULE reads
#: What the check child runs: the new file, imported from its own folder (or .pyz).
_CHECK_HANDOVER = ("import sys; sys.path[:] = [sys.argv.pop(1)] + [p for p in sys.path if p]; "
                   "import spelltraction; sys.exit(spelltraction.check_handover(int(sys.argv[1])))")


def control_address(pid: int) -> str:
    """The upgrade control socket of server ``pid`` (Linux's abstract namespace)."""
    return f"\0spelltraction-control-{pid}"


def game_file() -> str:
    """The file this process runs the game from: a ``.pyz``, or spelltraction.py."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    return str(archive) if archive else os.path.join(_HERE, "spelltraction.py")


def _interpreter_flags() -> List[str]:
    """This interpreter's options, to run the next one the same way, plus ``-P``
    where it exists (3.11+): with ``-c``, Python 3.13 imports ``linecache`` before
    the command runs, and without ``-P`` the current directory comes first."""
    flags = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    for flag, on in (("-I", sys.flags.isolated), ("-E", sys.flags.ignore_environment),
                     ("-s", sys.flags.no_user_site), ("-B", sys.flags.dont_write_bytecode)):
        if on:
            flags.append(flag)
    if sys.version_info >= (3, 11):
        flags.append("-P")
    return flags + [f"-W{w}" for w in sys.warnoptions]


def _memfd(data: bytes, name: str) -> int:
    """``data`` in an unlinked file (a memfd on Linux), at offset 0; its descriptor."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, 0)
    else:  # pragma: no cover - not Linux
        import tempfile

        fd, path = tempfile.mkstemp()
        os.unlink(path)
    os.write(fd, data)
    return fd


def read_handover(fd: int) -> Dict[str, Any]:
    """The hand-over in ``fd``; :class:`HandoverError` if it is not one this code reads."""
    size = os.fstat(fd).st_size
    try:
        state = json.loads(os.pread(fd, size, 0))
    except ValueError as exc:
        raise HandoverError(f"the hand-over is not JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != HANDOVER_FORMAT:
        raise HandoverError("that is not a SpellTraction hand-over")
    if state.get("version") != HANDOVER_VERSION:
        raise HandoverError(f"a hand-over of version {state.get('version')!r}; this code "
                            f"({__version__}) reads version {HANDOVER_VERSION}: a restart, "
                            "not an upgrade, goes between these two")
    if state.get("role") not in ("serve", "game", "gateway"):
        raise HandoverError(f"a hand-over from a {state.get('role')!r}")
    return state


def check_handover(fd: int) -> int:
    """What the new code runs first, in a child: can it read this hand-over? 0 if so.

    Asked to (``SPELLTRACTION_COMPILE_TO=FD:FORMAT``, a format of
    :func:`_write_compiled` it writes), it also compiles itself into FD, so that
    its successor starts without compiling while the players wait."""
    try:
        state = read_handover(fd)
        if "world" in state:
            Game.restore(state["world"]["game"])
        for part in ("front", "admin"):
            if state.get(part) is not None and state[part].get("format") != handover.FORMAT:
                raise HandoverError(f"netcore's hand-over of format "
                                    f"{state[part].get('format')!r}, not {handover.FORMAT}")
    except (HandoverError, KeyError, TypeError, ValueError) as exc:
        print(f"cannot take this server over: {exc}", file=sys.stderr)
        return 1
    target, _, form = os.environ.get(COMPILE_TO_ENV, "").partition(":")
    if target and form == str(COMPILED_FORMAT) \
            and os.path.isfile(os.path.join(_HERE, "spelltraction.py")):
        try:
            _write_compiled(int(target))
        except (OSError, SyntaxError, ValueError):
            os.ftruncate(int(target), 0)  # then it starts as a script, compiling
    return 0


def _peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (-1: unknown)."""
    cred = getattr(socket, "SO_PEERCRED", None)
    if cred is None:  # pragma: no cover - not Linux
        return -1
    pid_uid_gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, cred,
                                                      struct.calcsize("3i")))
    return int(pid_uid_gid[1])


class Upgrades(Readiness):
    """A server's upgrade: its control socket, the check, the hand-over and the exec.

    The control socket is this process's, in Linux's abstract namespace
    (:func:`control_address`); a client of another user is refused (its
    peer credentials). One request at a time: a second while one runs is
    told so. See the section's comment for the steps.
    """

    def __init__(self, role: Role, argv: Sequence[str]) -> None:
        self.role = role
        self.loop = role.loop
        self.argv = list(argv)  # the server's command-line arguments, for the exec
        self.busy = False
        self.reply: Optional[socket.socket] = None
        self.requested_at = 0.0
        self._child: Any = None
        self._probe_fd = -1
        self._code_fd = -1  # the new code, compiled by its check (see check_handover)
        self._child_deadline = 0.0
        self.sock: Optional[socket.socket] = None
        if sys.platform.startswith("linux"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.bind(control_address(os.getpid()))
                self.sock.listen(4)
                self.sock.setblocking(False)
                self.loop.register(self.sock, EVENT_READ, self)
            except OSError as exc:
                log.warning("no upgrade control socket: %s (SIGUSR2 still upgrades)", exc)
                self.sock.close()
                self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.loop.unregister(self.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.sock.close()
            self.sock = None

    # -- the control socket --------------------------------------------------------

    def on_ready(self, mask: int) -> None:
        assert self.sock is not None
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        client.settimeout(1.0)
        try:
            uid = _peer_uid(client)
            request = client.recv(64)
        except OSError:
            client.close()
            return
        if uid != os.geteuid():
            log.warning("upgrade control: a request from uid %d refused (this server is uid "
                        "%d)", uid, os.geteuid())
            self._say(client, "error: only the server's own user may upgrade it")
            client.close()
            return
        if request.strip() != b"upgrade":
            self._say(client, "error: unknown request (this socket takes: upgrade)")
            client.close()
            return
        self.request(client)

    def on_error(self, exc: BaseException) -> None:
        log.error("upgrade control: %s", exc, exc_info=exc)

    @staticmethod
    def _say(client: Optional[socket.socket], line: str) -> None:
        if client is not None:
            try:
                client.sendall(line.encode() + b"\n")
            except OSError:
                pass

    # -- the upgrade ---------------------------------------------------------------

    def request(self, reply: Optional[socket.socket]) -> None:
        """Upgrade to the file on disk (``reply``: where to say how it goes, if anyone asks)."""
        if self.busy:
            self._say(reply, "error: an upgrade is already under way")
            if reply is not None:
                reply.close()
            return
        if not self.role.can_hand_over or self.role.shutting_down:
            why = "is shutting down" if self.role.shutting_down else \
                f"is a {self.role.role}, which cannot hand over yet: restart it instead"
            self._say(reply, f"error: the server {why}")
            if reply is not None:
                reply.close()
            return
        self.busy = True
        self.reply = reply
        self.requested_at = self.loop.time()
        path = game_file()
        log.info("upgrade: checking %s", path)
        self._say(reply, f"checking the new code: {path}")
        try:
            state, _fds = self.role.handover_state()
            self._probe_fd = _memfd(json.dumps(state).encode(), "spelltraction-probe")
            self._code_fd = _memfd(b"", "spelltraction-code")
            import subprocess

            folder = path if path.endswith(".pyz") else os.path.dirname(path)
            env = dict(os.environ, **{COMPILE_TO_ENV: f"{self._code_fd}:{COMPILED_FORMAT}"})
            self._child = subprocess.Popen(
                [sys.executable, *_interpreter_flags(), "-S", "-c", _CHECK_HANDOVER, folder,
                 str(self._probe_fd)], pass_fds=[self._probe_fd, self._code_fd], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except Exception as exc:  # the probe could not be written or the child started
            self._failed(f"the check could not start: {exc}")
            return
        self._child_deadline = self.loop.time() + UPGRADE_CHECK_S
        self.loop.call_later(0.02, self._checked)

    def _checked(self) -> None:
        child = self._child
        if child.poll() is None:
            if self.loop.time() < self._child_deadline:
                self.loop.call_later(0.02, self._checked)
                return
            child.kill()
            child.wait()
            self._failed(f"the new code did not pass its check in {UPGRADE_CHECK_S:g} s")
            return
        said = child.stderr.read().decode("utf-8", "replace").strip()
        child.stderr.close()
        os.close(self._probe_fd)
        if child.returncode != 0:
            self._failed("the new code cannot take this server over: " +
                         (said.splitlines()[-1] if said else f"exit {child.returncode}"))
            return
        self._hand_over()

    def _failed(self, why: str) -> None:
        if self._code_fd >= 0:
            os.close(self._code_fd)
            self._code_fd = -1
        log.error("upgrade: %s; still serving with the running code", why)
        self._say(self.reply, f"error: {why}; the server goes on with the running code")
        if self.reply is not None:
            self.reply.close()
        self.reply = None
        self.busy = False

    def _hand_over(self) -> None:
        role = self.role
        world = role.world
        began = time.monotonic()  # CLOCK_MONOTONIC: the successor's clock too
        left = role.goodbye_to_the_unmovable()  # first: the World sees them leave
        if world is not None:
            world.settle_for_handover()
        settled = time.monotonic()
        state, fds = role.handover_state()
        state["requested_at"] = self.requested_at
        state["told_to_come_back"] = left
        state["marks"] = [role.last_tick_at, began, settled, time.monotonic()]
        if self.reply is not None:
            state["reply_fd"] = self.reply.fileno()
            fds.append(self.reply.fileno())
        front = state.get("front")
        moved = front["moved"] if front else 0
        log.info("upgrade: handing over %d connections (%d players; %d cannot move) to %s",
                 front["connections"]["rows"] if front else 0, moved, left, game_file())
        self._say(self.reply, f"handing over {moved} players")
        if world is not None and world.store is not None:
            world.store.close(release_lock=False)
            state["world"]["lock_fd"] = world.store.lock_fd
            fds.append(world.store.lock_fd)
        blob = _memfd(json.dumps(state).encode(), "spelltraction-handover")
        handover.keep_open(fds + [blob])
        sys.stdout.flush()
        sys.stderr.flush()
        env = dict(os.environ, **{HANDOVER_ENV: str(blob)})
        env.pop("SPELLTRACTION_AS_MODULE", None)
        # The new code as its check compiled it, if it did (a folder install): the
        # successor starts as a module at once, nothing compiled in the gap.
        path = game_file()
        start = [path]
        if os.fstat(self._code_fd).st_size > 0:
            os.set_inheritable(self._code_fd, True)
            start = ["-S", "-c", _AS_MODULE, os.path.dirname(path), str(self._code_fd)]
            log.info("upgrade: exec, the new code as its check compiled it")
        else:
            log.info("upgrade: exec %s (it compiles itself)", path)
        # Until the successor has its handlers, these would end it (their default):
        # held back (the mask survives the exec), they reach it once it listens.
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            os.execve(sys.executable, [sys.executable, *_interpreter_flags(), *start,
                                       *self.argv], env)
        except OSError as exc:  # the new code was there a moment ago: the disk changed
            log.critical("upgrade: the exec failed (%s); stopping", exc)
            raise SystemExit(1) from exc


def handover_from_environment() -> Optional[Dict[str, Any]]:
    """The hand-over this process was started with (an upgrade's successor), or None."""
    value = os.environ.pop(HANDOVER_ENV, "")
    if not value:
        return None
    fd = int(value)
    try:
        state = read_handover(fd)
    finally:
        os.close(fd)
    state["marks"] = state.get("marks", []) + [_STARTED_AT, time.monotonic()]
    state["read_rss_kb"] = rss_kb()
    return state


def run_upgrade(pid: Optional[int], data: str, timeout: float = UPGRADE_REPLY_S) -> int:
    """``spelltraction.py upgrade``: ask the server (``pid``, or the one whose data
    directory is ``data``) to upgrade to its file on disk; wait until it ticks."""
    if pid is None:
        where = os.path.join(data, PID_FILE)
        try:
            with open(where) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            print(f"upgrade: no server found through {where} ({exc}); give --pid",
                  file=sys.stderr)
            return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(control_address(pid))
        sock.sendall(b"upgrade\n")
        said = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            said += chunk
            for line in said.decode("utf-8", "replace").splitlines():
                if line.startswith(("ok:", "error:")):
                    print(line, file=sys.stdout if line.startswith("ok:") else sys.stderr)
                    return 0 if line.startswith("ok:") else 1
    except socket.timeout:
        print(f"upgrade: no answer from server {pid} within {timeout:g} s", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"upgrade: cannot reach server {pid}: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    print(f"upgrade: server {pid} closed the control connection without saying it ticks: "
          "see its log", file=sys.stderr)
    return 1


# =============================================================================
# Bus: one world over Redis. Channels, messages, the lease; the roles' link.
# =============================================================================
#
# docs/CLUSTER.md has the picture. A world is one authority (``game``: the
# rules, the tick, the store; no player sockets) and any number of gateways
# (``gateway``: the player sockets, exactly as ``serve`` holds them), talking
# through Redis pub/sub on three kinds of channel, ``spelltraction:<world>:``
#
#   down      authority -> every gateway, once per tick: the tick's shared frames
#   gw:<id>   authority -> one gateway, once per tick when there is any: its
#             players' private frames (WELCOME bundles, YOU, ERROR + close)
#   up        gateway -> authority, once per tick: its players' HELLOs, MOVEs
#             (the last per player) and leaves; an empty one is the heartbeat
#
# Each message starts with BUS_HEAD: the bus version, the kind, the
# authority's epoch (0 upward) and a number per sender and channel, so a
# receiver sees a gap (pub/sub is at-most-once) and resynchronises: the
# gateway sends every player it holds (BUS_FULL), the authority makes its
# player set match (idempotent: a HELLO for a seat it has is ignored).
# Keys: ``lease`` (the authority's, with an expiry, renewed every second),
# ``epoch`` (bumped by every new holder: gateways ignore publications
# from an older epoch, so a paused old authority can no longer be heard,
# and take a newer epoch only from the lease, never from a publication)
# and ``tick`` (TICK numbers reserved ahead, written by the holder only).

BUS_VERSION = 2  # 2: a HELLO entry carries the client's address; a CLOSE, its ERROR code
BUS_HEAD = struct.Struct(">BBII")  # bus version, kind, authority epoch, number
BUS_TICK, BUS_PRIVATE, BUS_BATCH, BUS_FULL = 1, 2, 3, 4
# A TICK: game tick, frames in the shared data, world players, len(data),
# publish time (unix s); the data follow, then the v2-only news (FAME).
BUS_TICK_HEAD = struct.Struct(">IHIId")
BUS_ENTRY = struct.Struct(">IBI")  # connection id on its gateway, op, length of the body
# Up: HELLO (len(address) u8, the client's address, its HELLO payload), MOVE
# (the payload), LEAVE (nothing). Down: SEND (a frame count u8, then frames:
# a WELCOME bundle), YOU (the frame), CLOSE (_BUS_CLOSE, the reason, the
# text: ERROR(code, text), then close), RESYNC (send me all your players).
OP_HELLO, OP_MOVE, OP_LEAVE = 1, 2, 3
OP_SEND, OP_YOU, OP_CLOSE, OP_RESYNC = 4, 5, 6, 7
_BUS_CLOSE = struct.Struct(">BHBH")  # ERROR code, WebSocket close code, len(reason), len(text)
LEASE_S = 5.0  # the authority's lease: renewed every LEASE_S / 3
# A gateway not heard from this long is gone, its players too. Generous: a
# gateway whose loop is busy (an accept storm of thousands, a shared CPU) is
# not dead, and dropping its players would make v1 players new players.
HEARTBEAT_LEASE_S = 15.0
PAUSE_AFTER_S = 1.0  # no TICK from the authority this long: the game is paused
PAUSE_EVERY_S = 2.0  # how often a paused gateway says so (to v2 players)
# A publication from an epoch above a gateway's is held until the lease in
# Redis confirms that epoch (a GET of the ``lease`` key: "epoch:holder");
# anyone who can PUBLISH could otherwise fence the real authority for good.
# At most one GET per LEASE_CHECK_EVERY_S, whatever arrives; at most
# HELD_MAX messages (HELD_BYTES bytes) wait for it, the rest are dropped.
LEASE_CHECK_EVERY_S = 0.25
HELD_MAX = 64
HELD_BYTES = 4 << 20
BAD_LOG_EVERY_S = 5.0  # a bad or forged bus message is logged at most this often
TICK_AHEAD = 40  # TICK numbers reserved (on disk, in Redis) ahead: never backwards after a crash
# The ``tick`` key: a TICK number at or above every one the world has sent.
# Fenced (KEYS[1] the lease, ARGV[1] its token): only the holder writes it.
# Taking the world: start above what it holds, reserve ARGV[3] ahead, and
# return {the tick to go on from, the reservation}.
_TICK_TAKE = """
local start = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2]))
redis.call('SET', KEYS[2], start + tonumber(ARGV[3]))
return {start, start + tonumber(ARGV[3])}
"""
# While ticking: raise the reservation to ARGV[2] (never lower it); the reservation.
_TICK_RESERVE = """
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > held then
  held = tonumber(ARGV[2])
  redis.call('SET', KEYS[2], held)
end
return held
"""

class ClusterOptions(NamedTuple):
    world: str = "spelltraction"  # its Redis keys and channels: spelltraction:<world>:...


def check_world(name: str) -> str:
    """A world's name becomes part of Redis keys: 1-64 of [A-Za-z0-9_.-]."""
    if not 0 < len(name) <= 64 or not all(c.isalnum() or c in "_.-" for c in name) \
            or not name.isascii():
        raise ValueError(f"world name must be 1-64 of A-Z a-z 0-9 _ . -, not {name!r}")
    return name


def bus_pack(kind: int, epoch: int, number: int, body: bytes) -> bytes:
    return BUS_HEAD.pack(BUS_VERSION, kind, epoch, number & 0xFFFFFFFF) + body


def bus_head(data: bytes) -> Tuple[int, int, int]:
    """(kind, epoch, number) of a bus message; BadMessage if it is not one we speak."""
    if len(data) < BUS_HEAD.size:
        raise BadMessage(f"bus message of {len(data)} bytes")
    version, kind, epoch, number = BUS_HEAD.unpack_from(data)
    if version != BUS_VERSION:
        raise BadMessage(f"bus version {version}, this process speaks {BUS_VERSION}")
    return kind, epoch, number


def bus_entry(cid: int, op: int, body: bytes = b"") -> bytes:
    return BUS_ENTRY.pack(cid, op, len(body)) + body


def bus_entries(data: bytes, offset: int) -> List[Tuple[int, int, bytes]]:
    """The (connection id, op, body) entries from ``offset`` to the end."""
    out = []
    end = len(data)
    size = BUS_ENTRY.size
    while offset < end:
        if offset + size > end:
            raise BadMessage("a bus entry cut short")
        cid, op, n = BUS_ENTRY.unpack_from(data, offset)
        offset += size
        if offset + n > end:
            raise BadMessage("a bus entry's body cut short")
        out.append((cid, op, data[offset:offset + n]))
        offset += n
    return out


def bus_gateway(data: bytes) -> Tuple[str, int]:
    """An up message's gateway name (1-255 ASCII bytes after the head) and
    where its entries start; BadMessage if it is not there."""
    at = BUS_HEAD.size
    if len(data) <= at or data[at] == 0 or at + 1 + data[at] > len(data):
        raise BadMessage("an up message without its gateway's name")
    end = at + 1 + data[at]
    name = data[at + 1:end]
    if not name.isascii():
        raise BadMessage("a gateway's name that is not ASCII")
    return name.decode("ascii"), end


def check_tick_message(data: bytes) -> None:
    """A down TICK's head and shared data are all there; BadMessage if not."""
    at = BUS_HEAD.size
    if len(data) < at + BUS_TICK_HEAD.size:
        raise BadMessage(f"a bus TICK of {len(data)} bytes")
    n = BUS_TICK_HEAD.unpack_from(data, at)[3]
    if at + BUS_TICK_HEAD.size + n > len(data):
        raise BadMessage(f"a bus TICK's {n} bytes of frames cut short")


def check_private_entries(entries: List[Tuple[int, int, bytes]]) -> None:
    """Each private entry's body is whole for its op; BadMessage if not."""
    for _cid, op, body in entries:
        if op == OP_SEND:
            if not body:
                raise BadMessage("a bus SEND without its frame count")
            frames = body[1:]
            if len(frames) > 2 + _WELCOME.size and frames[2] == WELCOME \
                    and int.from_bytes(frames[3:5], "big") >= PROTOCOL_V2 \
                    and len(frames) < 2 + _WELCOME.size + 1 + TOKEN_BYTES:
                raise BadMessage("a bus WELCOME without its token")
        elif op == OP_CLOSE:
            if len(body) < _BUS_CLOSE.size:
                raise BadMessage(f"a bus CLOSE of {len(body)} bytes")
            code, _ws_code, nr, nt = _BUS_CLOSE.unpack_from(body)
            if code not in WS_CLOSE_CODES:
                raise BadMessage(f"a bus CLOSE with an unknown ERROR code {code}")
            if _BUS_CLOSE.size + nr + nt > len(body):
                raise BadMessage("a bus CLOSE's reason cut short")
        elif op not in (OP_YOU, OP_RESYNC):
            raise BadMessage(f"bus op {op} on a gateway's channel")


class BusStats:
    """What the bus costs one process: messages and bytes each way, per tick."""

    def __init__(self) -> None:
        self.messages_out = self.bytes_out = self.messages_in = self.bytes_in = 0
        self.gaps = self.resyncs = self.fenced = self.bad = 0
        self.forged = 0  # gateway: from an epoch the lease in Redis did not confirm
        self.coalesced = 0  # gateway: TICKs read behind a newer one, so never sent
        # Gateway, seconds: authority publish -> sent to every player here, and
        # its two parts: publish -> the first send (the bus and our loop turn:
        # a few ms) and the first send -> the last (the broadcast itself,
        # O(players here), as long as serve's).
        self.latency = Window(1024)
        self.to_first = Window(1024)
        self.broadcast = Window(1024)
        self.broadcast_cpu = Window(1024)  # this process's CPU in it: wall - CPU = waiting for a core

    def snapshot(self, ticks: int) -> Dict[str, Any]:
        per = max(ticks, 1)
        return {"messages_out": self.messages_out, "bytes_out": self.bytes_out,
                "messages_in": self.messages_in, "bytes_in": self.bytes_in,
                "messages_per_tick": (self.messages_out + self.messages_in) / per,
                "bytes_per_tick": (self.bytes_out + self.bytes_in) / per,
                "gaps": self.gaps, "resyncs": self.resyncs, "fenced": self.fenced,
                "bad": self.bad, "forged": self.forged, "coalesced": self.coalesced,
                "latency_p50_s": self.latency.percentile(50),
                "latency_p99_s": self.latency.percentile(99),
                "to_first_send_p50_s": self.to_first.percentile(50),
                "to_first_send_p99_s": self.to_first.percentile(99),
                "broadcast_p50_s": self.broadcast.percentile(50),
                "broadcast_p99_s": self.broadcast.percentile(99),
                "broadcast_cpu_p50_s": self.broadcast_cpu.percentile(50),
                "broadcast_cpu_p99_s": self.broadcast_cpu.percentile(99)}

    def add_metrics(self, exp: Exposition) -> None:
        exp.counter("spelltraction_bus_messages_total", "Bus messages published and received.",
                    self.messages_out + self.messages_in)
        exp.counter("spelltraction_bus_bytes_total", "Bus bytes published and received.",
                    self.bytes_out + self.bytes_in)
        exp.counter("spelltraction_bus_gaps_total",
                    "Bus publications missed (a number skipped): each one resynchronises.",
                    self.gaps)
        exp.counter("spelltraction_bus_resyncs_total", "Full player-set resynchronisations.",
                    self.resyncs)
        exp.counter("spelltraction_bus_bad_total",
                    "Bus messages dropped as malformed (cut short, unknown kind or op).",
                    self.bad)
        exp.counter("spelltraction_bus_fenced_total",
                    "Bus messages dropped as from an older epoch (a deposed authority).",
                    self.fenced)
        exp.counter("spelltraction_bus_forged_total",
                    "Bus messages dropped as from an epoch the lease in Redis did not confirm.",
                    self.forged)
        exp.counter("spelltraction_bus_ticks_coalesced_total",
                    "TICKs a gateway read behind a newer one and skipped (it was behind).",
                    self.coalesced)
        exp.gauge("spelltraction_bus_latency_p50_seconds",
                  "Tick publish by the authority -> sent to players here, median.",
                  self.latency.percentile(50))
        exp.gauge("spelltraction_bus_latency_p99_seconds",
                  "Tick publish by the authority -> sent to players here, p99.",
                  self.latency.percentile(99))
        for q in (50, 99):
            exp.gauge(f"spelltraction_bus_to_first_send_p{q}_seconds",
                      f"Tick publish by the authority -> the first player's send here, p{q}.",
                      self.to_first.percentile(q))
        for q in (50, 99):
            exp.gauge(f"spelltraction_tick_broadcast_p{q}_seconds",
                      f"A TICK's sends to every player here, first to last, p{q}.",
                      self.broadcast.percentile(q))


class BusLink:
    """A role's two Redis connections and the bus on them (the authority's, a gateway's).

    Publications go out on one connection (``publish``); the other is
    subscribed, and each message read is handed to ``on_message`` through
    :meth:`judge`: a malformed one (BadMessage) is counted and logged,
    summarised, never raised. The figures are ``stats`` (:class:`BusStats`).
    """

    def __init__(self, loop: EventLoop, cluster: ClusterOptions, address: "RedisAddress",
                 name: str, on_message: Callable[[bytes, bytes], None],
                 on_ready: Callable[[], None], on_bus_ready: Callable[[], None]) -> None:
        from netcore.redis import Redis, RedisConfig, RedisSubscriber

        self.loop = loop
        self.cluster = cluster
        self.prefix = f"spelltraction:{cluster.world}:"
        self.down_channel = (self.prefix + "down").encode()
        self.up_channel = (self.prefix + "up").encode()
        self.stats = BusStats()
        self.on_message = on_message
        self._said_at: Dict[str, float] = {}  # warn()'s last time, per kind
        # Keepalive PINGs every 10 s: a frozen Redis is noticed within ~20 s, and
        # a loop slowed by load (or a reply behind a big publication) is not.
        self.redis = Redis(loop, address, RedisConfig(name + "-commands", ping_interval=10.0),
                           on_ready=on_ready, on_lost=self._lost)
        self.sub = RedisSubscriber(loop, address, self.received,
                                   RedisConfig(name + "-bus", ping_interval=10.0),
                                   on_ready=on_bus_ready, on_lost=self._lost)
        self.lost_hooks: List[Callable[[str], None]] = []

    @property
    def ready(self) -> bool:
        return self.redis.ready and self.sub.ready

    def start(self, *channels: bytes) -> None:
        self.sub.subscribe(*channels)
        self.redis.start()
        self.sub.start()

    def close(self) -> None:
        self.redis.close()
        self.sub.close()

    def private_channel(self, gateway: str) -> bytes:
        return (self.prefix + "gw:" + gateway).encode()

    def publish(self, channel: bytes, message: bytes) -> None:
        self.stats.messages_out += 1
        self.stats.bytes_out += len(message)
        self.redis.execute("PUBLISH", channel, message)

    def received(self, channel: bytes, data: bytes) -> None:
        """A message the subscriber read (tests feed it too): counted, then judged."""
        self.stats.messages_in += 1
        self.stats.bytes_in += len(data)
        self.judge(channel, data)

    def judge(self, channel: bytes, data: bytes) -> None:
        """``on_message``; a malformed message is counted and logged (summarised), not raised."""
        try:
            self.on_message(channel, data)
        except (BadMessage, struct.error, UnicodeDecodeError) as exc:
            self.stats.bad += 1
            self.warn("bad", "a bad bus message on %s (%d bytes): %s",
                      channel.decode("ascii", "replace"), len(data), exc)

    def warn(self, what: str, fmt: str, *args: Any) -> None:
        """Log at most once per BAD_LOG_EVERY_S per ``what``, with the count so far:
        whoever can PUBLISH must not be able to fill the log."""
        said = self._said_at
        now = self.loop.time()
        if now - said.get(what, -BAD_LOG_EVERY_S) >= BAD_LOG_EVERY_S:
            said[what] = now
            log.warning(fmt + " (%d %s so far)", *args, getattr(self.stats, what), what)

    def _lost(self, reason: str) -> None:
        log.warning("redis %s: connection lost (%s); reconnecting with backoff",
                    self.redis.address.url(), reason)
        for hook in self.lost_hooks:
            hook(reason)

    def add_metrics(self, exp: Exposition) -> None:
        self.stats.add_metrics(exp)


# =============================================================================
# Cluster: one world's processes. Gateways (Fronts) and an authority (the World).
# =============================================================================

# -----------------------------------------------------------------------------
# Cluster: the authority (game). A World and the bus to its gateways; no sockets.
# -----------------------------------------------------------------------------


class _GatewayLink:
    """One gateway as the authority knows it: its players and its outbox."""

    __slots__ = ("gateway", "channel", "conns", "out", "number", "sent", "heard")

    def __init__(self, gateway: str, channel: bytes, now: float) -> None:
        self.gateway = gateway
        self.channel = channel
        self.conns: Dict[int, _RemotePeer] = {}
        self.out: List[bytes] = []  # this tick's private entries
        self.number = 0  # the last up message heard; 0: none yet (resync first)
        self.sent = 0  # private messages sent to it
        self.heard = now


class _RemotePeer:
    """A player's connection on a gateway, as the World knows it: a key, and the
    player the World welcomed on it (what its MOVEs go to)."""

    __slots__ = ("link", "cid", "player")

    def __init__(self, link: _GatewayLink, cid: int) -> None:
        self.link = link
        self.cid = cid
        self.player: Any = HELLO_SENT


class AuthorityBus(FrontSide):
    """The World's frames to the gateways, and the gateways' players to the World.

    The World sees it as its Front (:class:`FrontSide`): a welcome or a drop
    becomes a private entry for the player's gateway, and each tick goes
    out as one message per gateway with private entries (YOUs among them)
    and the shared frames once, on ``down``. From ``up`` it reads the
    gateways' HELLOs, MOVEs and leaves and calls the World with them.
    """

    def __init__(self, link: BusLink, world: World, epoch: Callable[[], int]) -> None:
        self.link = link
        self.world = world
        self.epoch = epoch
        self.links: Dict[str, _GatewayLink] = {}
        self.down_number = 0
        self.errors_sent: Dict[int, int] = {}

    def connections(self) -> int:
        """The players' connections on every gateway (STATS describes the world)."""
        return sum(len(link.conns) for link in self.links.values())

    # -- frames out (FrontSide) --------------------------------------------------------

    def welcome(self, peer: Any, handle: Any, frames: bytes, nframes: int, v2: bool) -> None:
        rp: _RemotePeer = peer
        rp.player = handle
        rp.link.out.append(bus_entry(rp.cid, OP_SEND, bytes([min(nframes, 255)]) + frames))

    def drop(self, peer: Any, code: int, text: str, reason: str) -> None:
        rp: _RemotePeer = peer
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1
        r, t = reason.encode()[:255], text.encode()[:MAX_ERROR_TEXT]
        rp.link.out.append(bus_entry(rp.cid, OP_CLOSE, _BUS_CLOSE.pack(
            code, WS_CLOSE_CODES[code], len(r), len(t)) + r + t))
        rp.link.conns.pop(rp.cid, None)
        rp.player = None

    def tick(self, shared: bytes, nframes: int, news: bytes,
             yous: List[Tuple[Any, bytes]], everyone: List[Any]) -> None:
        """Private entries first (one message per gateway), then the shared frames once."""
        for peer, you in yous:
            rp: _RemotePeer = peer
            rp.link.out.append(bus_entry(rp.cid, OP_YOU, you))
        epoch = self.epoch()
        for link in self.links.values():
            if link.out:
                link.sent += 1
                self.link.publish(link.channel, bus_pack(BUS_PRIVATE, epoch, link.sent,
                                                         b"".join(link.out)))
                link.out = []
        self.down_number += 1
        game = self.world.game
        head = BUS_TICK_HEAD.pack(game.tick, nframes, len(game.players), len(shared),
                                  time.time())
        self.link.publish(self.link.down_channel, bus_pack(BUS_TICK, epoch, self.down_number,
                                                           head + shared + news))

    # -- the gateways' players in ------------------------------------------------------

    def on_up(self, data: bytes, now: float) -> None:
        """One message on ``up``: a gateway's batch (or its whole player set)."""
        kind, _epoch, number = bus_head(data)
        if kind not in (BUS_BATCH, BUS_FULL):
            raise BadMessage(f"bus kind {kind} on the up channel")
        gateway, offset = bus_gateway(data)
        entries = bus_entries(data, offset)
        for _cid, op, body in entries:
            if op not in (OP_HELLO, OP_MOVE, OP_LEAVE) or (op == OP_MOVE and not body) \
                    or (op == OP_HELLO and (not body or 1 + body[0] > len(body))):
                raise BadMessage(f"bus op {op} with {len(body)} bytes on the up channel")
        link = self.links.get(gateway)
        if link is None:
            link = self.links[gateway] = _GatewayLink(gateway, self.link.private_channel(gateway),
                                                      now)
            log.info("gateway %s joined world %s", gateway, self.link.cluster.world)
        link.heard = now
        if kind == BUS_FULL:
            self.link.stats.resyncs += 1
            link.number = number
            self._reconcile(link, entries)
            return
        if link.number == 0 or number != (link.number + 1) & 0xFFFFFFFF:
            if link.number:
                self.link.stats.gaps += 1
            link.out.append(bus_entry(0, OP_RESYNC))  # send me all your players
        link.number = number
        world = self.world
        for cid, op, body in entries:
            rp = link.conns.get(cid)
            if op == OP_HELLO:
                if rp is None:
                    self._hello(link, cid, body)
            elif rp is not None:
                if op == OP_MOVE:
                    if rp.player is not HELLO_SENT and len(body) == _MOVE_SIZE \
                            and body[0] == MOVE:
                        world.move(rp.player, body)  # the gateway sends a player's last only
                elif op == OP_LEAVE:
                    del link.conns[cid]
                    world.leave(rp, rp.player)

    def _hello(self, link: _GatewayLink, cid: int, body: bytes) -> None:
        """A gateway's HELLO entry: the client's address, then its HELLO as it sent it."""
        rp = _RemotePeer(link, cid)
        link.conns[cid] = rp
        address = body[1:1 + body[0]].decode("ascii", "replace")
        try:
            hello, name = parse_hello(body[1 + body[0]:] or b"\x00")
        except Refused as no:
            self.drop(rp, no.code, no.text, no.reason)
            return
        self.world.hello(rp, hello, name, address)

    def _reconcile(self, link: _GatewayLink, entries: List[Tuple[int, int, bytes]]) -> None:
        """A gateway's whole player set: make ours match it (idempotent)."""
        seen = set()
        for cid, op, body in entries:
            if op != OP_HELLO:
                continue
            seen.add(cid)
            if cid not in link.conns:
                self._hello(link, cid, body)
        for cid in [c for c in link.conns if c not in seen]:
            rp = link.conns.pop(cid)
            self.world.leave(rp, rp.player)

    def expire(self, now: float, deaf_since: float) -> None:
        """A gateway unheard of for HEARTBEAT_LEASE_S: its players leave (v2: park)."""
        if deaf_since < 0 or now - deaf_since < HEARTBEAT_LEASE_S:
            return  # we are the deaf one, or have just been: no verdicts
        for gateway, link in list(self.links.items()):
            if now - link.heard < HEARTBEAT_LEASE_S:
                continue
            log.warning("gateway %s silent for %.1f s: its %d players leave the world",
                        gateway, now - link.heard, len(link.conns))
            del self.links[gateway]
            for rp in list(link.conns.values()):
                self.world.leave(rp, rp.player)
            link.conns.clear()

    def resync_all(self) -> None:
        for link in self.links.values():
            link.number = 0  # everyone resynchronises

    def add_metrics(self, exp: Exposition) -> None:
        exp.labelled("spelltraction_gateway_players", "gauge",
                     "Players on each gateway, as the authority has them.", "gateway",
                     {g: len(link.conns) for g, link in self.links.items()})
        exp.labelled("spelltraction_errors_sent_total", "counter",
                     "ERROR messages sent to clients, by code.", "code",
                     {ErrorCode.name_of(code): n for code, n in self.errors_sent.items()})
        exp.labelled("spelltraction_limits_total", "counter",
                     "New players refused, by the limit's name.", "limit",
                     dict(self.world.refused))


class BusRole(Role):
    """A role of a world on Redis (the authority, a gateway): its :class:`BusLink`,
    named ``spelltraction-WORLD-NAME`` in Redis's client list, and its figures."""

    def __init__(self, loop: EventLoop, options: ServerOptions, cluster: ClusterOptions,
                 address: "RedisAddress", name: str) -> None:
        super().__init__(loop, options)
        self.cluster = cluster
        self.bus = BusLink(loop, cluster, address, f"spelltraction-{cluster.world}-{name}",
                           self._on_bus_message, self._redis_ready, self._bus_ready)

    def close(self) -> None:
        self.bus.close()
        super().close()

    def _redis_ready(self) -> None:
        log.info("redis %s: connected", self.bus.redis.address.url())

    def _bus_ready(self) -> None:
        """Subscribed (again): what was missed meanwhile must be caught up."""

    def _on_bus_message(self, channel: bytes, data: bytes) -> None:
        raise NotImplementedError

    def _waiting_for_redis(self) -> str:
        """/healthz's text while Redis is away ("" once the bus is up)."""
        return "" if self.bus.ready else \
            f"not ready: waiting for Redis at {self.bus.redis.address.url()}"

    def bus_figures(self) -> Dict[str, Any]:
        """/stats.json's ``bus`` and ``redis`` entries, for the role's ``cluster``."""
        return {"bus": self.bus.stats.snapshot(self.ticker.fired if self.ticker else 0),
                "redis": self.bus.redis.stats()}


class Authority(BusRole):
    """``spelltraction.py game``: one world's :class:`World`, its players on gateways.

    The World is the same code as ``serve``'s; its Front is the bus
    (:class:`AuthorityBus`): each tick it publishes the shared frames once
    (``down``) and one message of private entries per gateway that has any,
    and it listens to ``up``. It ticks only while it holds the world's lease
    (a Redis key with an expiry, fenced with an epoch).
    """

    role = "game"
    can_hand_over = True

    def __init__(self, loop: EventLoop, options: ServerOptions, cluster: ClusterOptions,
                 address: "RedisAddress", handover: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(loop, options._replace(web=False, reuse_port=False), cluster, address,
                         "authority")
        lock = handover["world"].get("lock_fd", -1) if handover is not None else -1
        self.world = world = World(loop, self.options, lock)  # raises StoreError, naming the file
        self.bus.lost_hooks.append(self._redis_lost)
        self.gateways = AuthorityBus(self.bus, world, lambda: self.epoch)
        world.front = self.gateways
        world.connections = self.gateways.connections
        self.epoch = 0  # the lease's, while held: on every publication (the fence)
        self.refused = ""  # set when another authority holds the world: exit non-zero
        self._waited_for = ""  # the other holder's token whose lease we waited out once
        self.bus_ready_at = -1.0  # loop time the subscription was (re)made; -1: not now
        self._acquiring = False
        store = world.store
        data = os.path.realpath(options.data) if options.data is not None else ""
        # Who holds the lease: a restart of this same authority (host and data
        # directory; the store's lock proves the old process gone) may take it
        # back at once; anything else waits for it to expire.
        self.holder = f"{socket.gethostname()}:{data}" if data else \
            f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        if handover is not None:  # an upgrade's successor: the same holder takes it back
            self.holder = handover["authority"]["holder"]
        from netcore.redis import RedisLease

        self.lease = RedisLease(self.bus.redis, self.bus.prefix + "lease", self.holder,
                                ttl=LEASE_S, on_lost=self._lease_lost)
        # Past any epoch this world had, even if Redis forgot (no persistence).
        self.lease.min_epoch = store.meta.get("epoch", 0) if store is not None else 0
        self._tick_reserved = store.meta.get("tick", 0) if store is not None else 0
        world.game.tick = self._tick_reserved  # TICK numbers go on where they stopped
        # The same reservation in Redis (the ``tick`` key), so TICK numbers go
        # on after a restart without a data directory too: no tick is sent
        # above what Redis has confirmed (``_tick_held``; 0 until the world
        # is taken, see _take_tick).
        self.tick_key = self.bus.prefix + "tick"
        self._tick_take = self.lease.fenced(_TICK_TAKE)
        self._tick_reserve = self.lease.fenced(_TICK_RESERVE)
        self._tick_held = 0
        self._tick_asking = False
        self._remote_index: Dict[Any, int] = {}  # a hand-over's numbering of remote peers
        self._open_admin()

    def parts(self) -> List[Any]:
        return [self.world, self.gateways, self.bus]

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> List[Tuple[str, int]]:
        """Connect to Redis (in the background, forever), the admin port, the ticker."""
        self.bus.start(self.bus.up_channel)
        return super().start()

    def shutdown(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        if self.ticker is not None:
            self.loop.stop_ticker(self.ticker)
        if self.lease.token is not None and self.bus.redis.ready:  # a successor may start at once
            self.lease.release()
            self.loop.call_later(0.2, self._drained)
        else:
            self._drained()

    def holding(self) -> bool:
        return self.lease.valid()

    # -- an upgrade: the world's gateways and their players, and the lease ----------

    def peer_index(self, peers: Dict[Any, int]) -> Callable[[Any], Optional[int]]:
        """The World's peers are the gateways' players: numbered across the links."""
        self._remote_index = {rp: i for i, rp in enumerate(
            rp for link in self.gateways.links.values() for rp in link.conns.values())}
        return self._remote_index.get

    def add_handover_state(self, state: Dict[str, Any]) -> None:
        index = self._remote_index
        state["authority"] = {
            "holder": self.holder, "epoch": self.epoch, "tick_reserved": self._tick_reserved,
            "down_number": self.gateways.down_number,
            "links": [[g, link.number, link.sent, handover.pack_rows(
                [(cid, index[rp]) for cid, rp in link.conns.items()])]
                for g, link in self.gateways.links.items()]}

    def resumed_peers(self, conns: List[Optional[Connection]],
                      state: Dict[str, Any]) -> Sequence[Any]:
        """The gateways' players as the predecessor numbered them."""
        a = state["authority"]
        now = self.loop.time()
        peers: Dict[int, _RemotePeer] = {}
        for gateway, number, sent, players in a["links"]:
            link = self.gateways.links[gateway] = _GatewayLink(
                gateway, self.bus.private_channel(gateway), now)
            link.number, link.sent = number, sent
            for cid, at in handover.unpack_rows(players):
                peers[at] = link.conns[cid] = _RemotePeer(link, cid)
        return [peers.get(i) for i in range(max(peers, default=-1) + 1)]

    def hold(self, peers: Sequence[Any], handles: Dict[int, Any], state: Dict[str, Any]) -> None:
        for at, player in handles.items():
            peers[at].player = player

    def resume_role(self, state: Dict[str, Any]) -> None:
        """The bus again; the same holder takes the lease back at once (see _acquired)."""
        self._tick_reserved = state["authority"]["tick_reserved"]
        self.gateways.down_number = state["authority"]["down_number"]
        self.bus.start(self.bus.up_channel)

    def health(self) -> Tuple[str, bytes, int]:
        waiting = self._waiting_for_redis()
        if self.refused:
            text, status = f"not ready: the world is held by another authority ({self.refused})", 503
        elif waiting:
            text, status = waiting, 503
        elif not self.holding():
            text, status = "not ready: taking the world's lease", 503
        else:
            text, status = (f"ok: authority of {self.cluster.world}, epoch {self.epoch}; "
                            f"{self.players_here()} players on {len(self.gateways.links)} "
                            "gateways"), 200
        return "text/plain; charset=utf-8", (text + "\n").encode(), status

    # -- the lease ------------------------------------------------------------

    def _redis_ready(self) -> None:
        super()._redis_ready()
        self._acquire()

    def _acquire(self) -> None:
        if self.lease.token is None and not self._acquiring and not self.refused:
            self._acquiring = True
            self.lease.acquire(self._acquired, reclaim=True)

    def _acquired(self, got: bool, token: str) -> None:
        self._acquiring = False
        if not got and not token.split(":", 1)[0].isdigit():  # no answer: try again
            log.warning("taking the lease of world %s failed (%s); retrying",
                        self.cluster.world, token)
            self.loop.call_later(1.0, self._acquire)
            return
        if not got and token != self._waited_for:
            # A holder that died (kill -9, no data directory to prove it: a
            # lock) lets its lease expire; a live one renews it. Wait out what
            # is left once: then take the world, or refuse.
            self._waited_for = token
            log.warning("world %s is held by another authority (epoch:holder %s): waiting "
                        "%.1f s for its lease to expire", self.cluster.world, token,
                        self.lease.remaining)
            self.loop.call_later(self.lease.remaining + 0.5, self._acquire)
            return
        if not got:
            self.refused = token
            log.error("world %s is held by another authority (epoch:holder %s, %.1f s left on "
                      "its lease, renewed while we waited): refusing to start. One authority "
                      "per world: stop that one first.", self.cluster.world,
                      token, self.lease.remaining)
            self.loop.stop()
            return
        world = self.world
        assert world is not None
        self.epoch = self.lease.epoch
        self.lease.min_epoch = self.epoch
        if world.store is not None:
            world.store.stage_meta("epoch", self.epoch)
        log.info("world %s: this authority holds the lease, epoch %d; tick %d",
                 self.cluster.world, self.epoch, world.game.tick)
        self.gateways.resync_all()  # everyone resynchronises with the new epoch
        self._take_tick()

    def _take_tick(self) -> None:
        """Go on above the world's last TICK number in Redis; tick once it is known."""
        token = self.lease.token
        self._tick_held = 0
        if token is None:
            return
        game = self.world.game if self.world is not None else None
        assert game is not None

        def answered(pending: "Pending") -> None:
            reply = pending.reply
            if self.lease.token != token:
                return  # the lease went meanwhile: the next holding asks again
            if not pending.ok or not isinstance(reply, list) or len(reply) != 2 \
                    or not all(isinstance(x, int) for x in reply):
                log.warning("world %s: reading the TICK number from Redis failed (%s); "
                            "retrying", self.cluster.world, pending.error or reply)
                self.loop.call_later(0.5, self._take_tick)
                return
            start, held = cast("List[int]", reply)
            if start > game.tick:
                log.info("world %s: TICK numbers go on from %d (Redis)", self.cluster.world,
                         start)
                game.tick = start
            self._tick_held = held

        self.bus.redis.run(self._tick_take, (self.lease.key, self.tick_key),
                           (token, game.tick, TICK_AHEAD), answered)

    def _reserve_ticks(self) -> None:
        """Half the reservation used: reserve TICK_AHEAD ahead again (fenced)."""
        token = self.lease.token
        if token is None or self._tick_asking or self.world is None:
            return
        self._tick_asking = True

        def answered(pending: "Pending") -> None:
            self._tick_asking = False
            if self.lease.token == token and pending.ok and isinstance(pending.reply, int):
                self._tick_held = max(self._tick_held, pending.reply)
            elif self.lease.token == token:  # the lease is being lost, or Redis is: not past it
                log.warning("world %s: reserving TICK numbers in Redis failed (%s)",
                            self.cluster.world, pending.error or pending.reply)

        self.bus.redis.run(self._tick_reserve, (self.lease.key, self.tick_key),
                           (token, self.world.game.tick + TICK_AHEAD), answered)

    def _lease_lost(self, reason: str) -> None:
        """Not renewed in time (Redis away), gone (Redis restarted empty) or taken:
        try again; a lease another authority holds ends this one (refused)."""
        log.warning("world %s: the lease was lost (%s); the world pauses", self.cluster.world,
                    reason)
        self._tick_held = 0  # what Redis confirmed may be gone with it: ask again
        if self.bus.redis.ready:
            self._acquire()

    # -- the bus ----------------------------------------------------------------

    def _bus_ready(self) -> None:
        now = self.loop.time()
        self.bus_ready_at = now
        for link in self.gateways.links.values():  # what we missed meanwhile: resynchronise
            link.number = 0
            link.heard = now

    def _redis_lost(self, reason: str) -> None:
        if not self.bus.sub.ready:
            self.bus_ready_at = -1.0

    def _on_bus_message(self, channel: bytes, data: bytes) -> None:
        if channel != self.bus.up_channel:
            raise BadMessage(f"a bus message on {channel.decode('ascii', 'replace')}")
        self.gateways.on_up(data, self.loop.time())

    # -- the tick ---------------------------------------------------------------

    def on_tick(self, tick: Tick) -> None:
        world = self.world
        assert world is not None
        game = world.game
        if not self.holding() or not self.bus.sub.ready or game.tick >= self._tick_held:
            # No lease (or deaf), or no TICK number confirmed in Redis yet:
            # the world is paused, TICK numbers wait.
            if game.tick >= self._tick_held and self._tick_held and self.holding():
                self._reserve_ticks()
            return
        self.gateways.expire(self.loop.time(), self.bus_ready_at)
        world.on_tick(tick._replace(skipped=0))
        self.ticked()
        if game.tick + TICK_AHEAD // 2 >= self._tick_held:
            self._reserve_ticks()
        store = world.store
        if store is not None and game.tick + TICK_AHEAD // 2 >= self._tick_reserved:
            self._tick_reserved = game.tick + TICK_AHEAD
            store.stage_meta("tick", self._tick_reserved)

    # -- figures ------------------------------------------------------------------

    def add_snapshot(self, snap: Dict[str, Any]) -> None:
        snap["connections"] = self.gateways.connections()
        snap["cluster"] = {
            "role": "authority", "world": self.cluster.world, "epoch": self.epoch,
            "holding": self.holding(),
            "gateways": {g: len(link.conns) for g, link in self.gateways.links.items()},
            **self.bus_figures()}

    def stats_snapshot(self) -> Dict[str, Any]:
        snap = super().stats_snapshot()
        self.add_snapshot(snap)
        return snap

    def metrics_text(self) -> str:
        text = super().metrics_text()
        exp = Exposition()
        exp.gauge("spelltraction_authority_epoch", "The lease epoch held (0: none).",
                  self.epoch if self.holding() else 0)
        return text + exp.text()


# -----------------------------------------------------------------------------
# Cluster: the gateway. A Front and the bus to the World; no rules here.
# -----------------------------------------------------------------------------


class _Seat:
    """A player's connection on a gateway: its id on the bus, and how to re-join."""

    __slots__ = ("cid", "hello", "peer", "pid", "welcomed", "moves")

    def __init__(self, cid: int, hello: bytes, peer: Connection) -> None:
        self.cid = cid
        self.hello = hello  # what a resync sends (the address, then the HELLO: v2 with its token)
        self.peer = peer
        self.pid = 0
        self.welcomed = False
        self.moves = 0  # MOVEs this tick (the flood check)


class GatewayBus(WorldSide):
    """The World over the bus, as a gateway's :class:`Front` sees it.

    A player's HELLO, MOVEs and leaving go to the authority in one message
    per tick (MOVEs: the last of each player's); the authority's private
    entries (WELCOME bundles, YOUs, closes) and each TICK come back and go
    to the Front (``welcome``, ``drop``, ``tick``): one ``send`` per player
    per tick, its YOU in the same send.
    """

    def __init__(self, loop: EventLoop, link: BusLink, gateway: str) -> None:
        self.loop = loop
        self.link = link
        self.gateway = gateway
        self.me = bytes([len(gateway)]) + gateway.encode()
        self.private = link.private_channel(gateway)
        self.front: Optional[Front] = None  # set by the role
        self.ticked: Callable[[], None] = lambda: None  # the role's, after each TICK sent
        self.seats: Dict[int, _Seat] = {}  # connection id -> seat
        self.hellos: Dict[Connection, _Seat] = {}  # said HELLO, no WELCOME yet
        self.players: Dict[Connection, None] = {}  # welcomed: the tick's broadcast list
        self._next_cid = 1
        self.up_hellos: List[bytes] = []
        self.up_moves: Dict[int, bytes] = {}  # the last MOVE of each player this tick
        self.up_leaves: List[bytes] = []
        self.yous: Dict[int, bytes] = {}  # YOU frames for the next TICK
        self.moved: List[_Seat] = []
        self.number = 0  # our up messages
        self.epoch = 0  # the authority's, highest the lease confirmed
        self.down_number = 0
        self.private_number = 0
        self.full_due = True
        self.world_players = 0
        self.world_connections = 0  # from the authority's last STATS: a paused STATS says it
        self.world_tick = -1
        self.ticks_in = 0
        # The newest TICK read and not yet sent (see on_bus), the YOUs that go
        # with it, and who got private frames after it came (not sent it).
        self._tick_due: Optional[bytes] = None
        self._due_yous: Dict[int, bytes] = {}
        self._after_due: Set[Connection] = set()
        self.last_tick_at = loop.time()
        self.paused = False  # no TICK from the authority for PAUSE_AFTER_S
        # Publications from an epoch above ours, waiting for the lease in
        # Redis to confirm it (see on_bus); one check at a time.
        self.lease_key = link.prefix + "lease"
        self._held: List[Tuple[bytes, bytes]] = []
        self._held_bytes = 0
        self._checking = False
        self._checked_at = -LEASE_CHECK_EVERY_S
        self.lease_checks = 0

    # -- the seam: players in (WorldSide) -----------------------------------------------

    def hello(self, peer: Any, hello: Hello, name: str, address: str) -> None:
        cid = self._next_cid
        self._next_cid = cid % 0xFFFFFFFF + 1
        a = address.encode("ascii", "replace")[:255]
        seat = _Seat(cid, bytes([len(a)]) + a + encode(hello), peer)
        self.seats[cid] = seat
        self.hellos[peer] = seat
        self.up_hellos.append(bus_entry(cid, OP_HELLO, seat.hello))

    def move(self, handle: Any, payload: bytes) -> int:
        seat: _Seat = handle
        seat.moves += 1
        if seat.moves == 1:
            self.moved.append(seat)
        self.up_moves[seat.cid] = payload
        return seat.moves

    def leave(self, peer: Any, handle: Any) -> None:
        seat = self.hellos.pop(peer, None) if handle is HELLO_SENT else handle
        if seat is None:
            return
        self.players.pop(peer, None)
        if self.seats.pop(seat.cid, None) is None:
            return  # the authority dropped it already: no LEAVE
        self.up_moves.pop(seat.cid, None)
        self.yous.pop(seat.cid, None)
        self._due_yous.pop(seat.cid, None)
        self._after_due.discard(peer)
        self.up_leaves.append(bus_entry(seat.cid, OP_LEAVE))

    # -- up: once per tick --------------------------------------------------------------

    def send_up(self) -> None:
        """This tick's HELLOs, the last MOVE of each player, the leaves (the heartbeat)."""
        for seat in self.moved:
            seat.moves = 0
        self.moved = []
        link = self.link
        if link.redis.ready:
            if self.full_due:
                self.full_due = False
                link.stats.resyncs += 1
                self.up_hellos, self.up_leaves = [], []
                self.number += 1
                link.publish(link.up_channel, bus_pack(BUS_FULL, self.epoch, self.number,
                                                       self.me + b"".join(
                    bus_entry(cid, OP_HELLO, seat.hello) for cid, seat in self.seats.items())))
            body = b"".join(self.up_hellos) + b"".join(
                bus_entry(cid, OP_MOVE, move) for cid, move in self.up_moves.items()) + \
                b"".join(self.up_leaves)
            self.number += 1
            link.publish(link.up_channel, bus_pack(BUS_BATCH, self.epoch, self.number,
                                                   self.me + body))
        else:
            self.number += 1  # lost: the authority sees the gap and asks for everything
        self.up_hellos, self.up_leaves = [], []
        self.up_moves = {}

    def bus_ready(self) -> None:
        self.full_due = True  # Redis (re)connected: whatever it lost, send all we hold
        self.down_number = self.private_number = 0

    # -- down: the authority's publications ---------------------------------------------

    def on_bus(self, channel: bytes, data: bytes) -> None:
        self._on_bus(channel, data, held=False)

    def _on_bus(self, channel: bytes, data: bytes, held: bool) -> None:
        """A publication on ``down`` or ours: checked whole before it has any
        effect (BadMessage), heard only from the epoch the lease confirmed."""
        kind, epoch, number = bus_head(data)
        entries: List[Tuple[int, int, bytes]] = []
        if kind == BUS_TICK and channel == self.link.down_channel:
            check_tick_message(data)
        elif kind == BUS_PRIVATE and channel == self.private:
            entries = bus_entries(data, BUS_HEAD.size)
            check_private_entries(entries)
        else:
            raise BadMessage(f"bus kind {kind} on {channel.decode('ascii', 'replace')}")
        stats = self.link.stats
        if epoch < self.epoch:
            stats.fenced += 1  # an authority that lost the world: not heard
            return
        if epoch > self.epoch:
            if held:  # the lease was asked since it came, and said otherwise
                stats.forged += 1
                self.link.warn("forged", "a bus message of epoch %d on %s, but the lease in "
                               "Redis says epoch %d: dropped", epoch,
                               channel.decode("ascii", "replace"), self.epoch)
                return
            self._hold(channel, data)
            return
        if kind == BUS_TICK:
            if self.down_number and number != (self.down_number + 1) & 0xFFFFFFFF:
                stats.gaps += 1  # a tick missed: players see a jump in TICK numbers
            self.down_number = number
            # Sent once this loop turn's reading is done, and only the newest:
            # a gateway that fell behind (a join storm, a starved CPU) reads a
            # backlog of TICKs in one go, and broadcasting each of them would
            # cost more than a tick period per tick: it would fall further
            # behind every turn, for seconds, with its heartbeat and Redis
            # PINGs waiting (the authority then drops all its players).
            # Players see a jump in TICK numbers, as for a gap; scores come
            # in YOU, the newest of which goes with the TICK that is sent.
            if self._tick_due is None:
                self.loop.call_soon(self._send_due_tick)
            else:
                stats.coalesced += 1
            self._tick_due = data
            self._due_yous.update(self.yous)
            self.yous = {}
            self._after_due.clear()
        else:
            if self.private_number and number != (self.private_number + 1) & 0xFFFFFFFF:
                stats.gaps += 1  # WELCOMEs or closes lost: resynchronise
                self.full_due = True
            self.private_number = number
            self._on_private(entries)

    def _hold(self, channel: bytes, data: bytes) -> None:
        """A publication from a higher epoch: kept until the lease is read."""
        if len(self._held) >= HELD_MAX or self._held_bytes + len(data) > HELD_BYTES:
            self.link.stats.forged += 1  # a flood of them while the lease is read: not all kept
            self.link.warn("forged", "more than %d bus messages from an unconfirmed epoch "
                           "on %s: dropped", HELD_MAX, channel.decode("ascii", "replace"))
            return
        self._held.append((channel, data))
        self._held_bytes += len(data)
        if not self._checking:
            self._checking = True
            wait = self._checked_at + LEASE_CHECK_EVERY_S - self.loop.time()
            if wait > 0:
                self.loop.call_later(wait, self._check_lease)
            else:
                self._check_lease()

    def _check_lease(self) -> None:
        self.lease_checks += 1
        self.link.redis.execute("GET", self.lease_key, callback=self._lease_read)

    def _lease_read(self, pending: "Pending") -> None:
        """The lease ("epoch:holder"): raise our epoch to its, then judge what was held."""
        self._checking = False
        self._checked_at = self.loop.time()
        reply = pending.reply if pending.ok else None
        epoch = 0
        if isinstance(reply, bytes):
            head = reply.split(b":", 1)[0]
            if head.isdigit() and len(head) <= 10:
                epoch = int(head)
        if epoch > self.epoch:
            if self.epoch:
                log.info("world %s: a new authority, epoch %d", self.link.cluster.world, epoch)
            self.epoch = epoch
            self.down_number = self.private_number = 0
        held, self._held, self._held_bytes = self._held, [], 0
        for channel, data in held:
            self._judge_held(channel, data)

    def _judge_held(self, channel: bytes, data: bytes) -> None:
        try:
            self._on_bus(channel, data, held=True)
        except (BadMessage, struct.error, UnicodeDecodeError) as exc:  # checked once already
            self.link.stats.bad += 1
            self.link.warn("bad", "a bad bus message on %s (%d bytes): %s",
                           channel.decode("ascii", "replace"), len(data), exc)

    def _on_private(self, entries: List[Tuple[int, int, bytes]]) -> None:
        front = self.front
        assert front is not None
        seats = self.seats
        for cid, op, body in entries:
            if op == OP_RESYNC:
                self.full_due = True
                continue
            seat = seats.get(cid)
            if seat is None:
                continue  # gone meanwhile: its LEAVE is on its way
            conn = seat.peer
            if self._tick_due is not None and op != OP_YOU:
                self._after_due.add(conn)  # its frames came after that TICK: not sent it
            if op == OP_YOU:
                self.yous[cid] = body
            elif op == OP_SEND:
                self._send_now(seat, body[1:], body[0])
            elif op == OP_CLOSE:
                code, _ws_code, nr, nt = _BUS_CLOSE.unpack_from(body)
                at = _BUS_CLOSE.size
                reason = body[at:at + nr].decode("utf-8", "replace")
                text = body[at + nr:at + nr + nt].decode("utf-8", "replace")
                self.players.pop(conn, None)
                self.hellos.pop(conn, None)
                del seats[cid]  # the authority has dropped it already: no LEAVE
                front.drop(conn, code, text, reason or "closed")

    def _send_now(self, seat: _Seat, frames: bytes, nframes: int) -> None:
        """A WELCOME bundle (or a rejoin's): learn the player's id and token, pass it on."""
        front = self.front
        assert front is not None
        conn = seat.peer
        if len(frames) > 2 + _WELCOME.size and frames[2] == WELCOME:
            size = int.from_bytes(frames[:2], "big")
            version = int.from_bytes(frames[3:5], "big")
            pid = int.from_bytes(frames[5:9], "big")
            v2 = version >= PROTOCOL_V2
            if v2:
                at = 2 + _WELCOME.size + 1
                token = frames[at:at + TOKEN_BYTES]
                _, _, shape, colour = HELLO_STRUCT.unpack_from(seat.hello, 1 + seat.hello[0])
                seat.hello = seat.hello[:1 + seat.hello[0]] + _HELLO2.pack(
                    HELLO, PROTOCOL_V2, shape, colour, token, 0)
            if seat.welcomed and pid == seat.pid:  # a resync's re-join: the client knows
                frames, nframes = frames[2 + size:], nframes - 1
            elif not seat.welcomed:
                seat.pid, seat.welcomed = pid, True
                self.hellos.pop(conn, None)
                self.players[conn] = None
                front.welcome(conn, seat, frames, max(nframes, 1), v2)
                return
        if frames:
            front.send(conn, frames, max(nframes, 1))

    def _send_due_tick(self) -> None:
        data, self._tick_due = self._tick_due, None
        if data is not None:
            self._on_tick_message(data)

    def _on_tick_message(self, data: bytes) -> None:
        front = self.front
        assert front is not None
        at = BUS_HEAD.size
        tick, nframes, players, n, published = BUS_TICK_HEAD.unpack_from(data, at)
        at += BUS_TICK_HEAD.size
        shared, news = data[at:at + n], data[at + n:]
        self.world_tick, self.world_players = tick, players
        if nframes > 1:  # TICK, then SCORED and/or STATS (every 51 ticks)
            at = 0
            while at + 3 <= len(shared):
                size = int.from_bytes(shared[at:at + 2], "big")
                if shared[at + 2] == STATS and size == _STATS.size \
                        and at + 2 + size <= len(shared):
                    self.world_connections = _STATS.unpack_from(shared, at + 2)[1]
                at += 2 + size
        self.ticks_in += 1
        self.last_tick_at = self.loop.time()
        if self.paused:
            self.paused = False
            log.info("world %s: ticking again (tick %d)", self.link.cluster.world, tick)
        seats = self.seats
        after = self._after_due
        yous = []
        for cid, you in self._due_yous.items():
            seat = seats.get(cid)
            if seat is not None and seat.peer in self.players:
                if seat.peer in after:
                    self.yous.setdefault(cid, you)  # with its next TICK
                else:
                    yous.append((seat.peer, you))
        self._due_yous = {}
        everyone = [c for c in self.players if c not in after] if after else list(self.players)
        after.clear()
        stats = self.link.stats
        first, cpu = time.time(), time.thread_time()
        front.tick(shared, nframes, news, yous, everyone)
        self.ticked()
        if not everyone:
            return  # sent to nobody: no figure (an empty gateway would make the p50 0)
        last = time.time()
        stats.broadcast_cpu.add(time.thread_time() - cpu)
        stats.to_first.add(max(first - published, 0.0))
        stats.broadcast.add(last - first)
        stats.latency.add(max(last - published, 0.0))

    def compact(self) -> None:
        self.seats = dict(self.seats)
        self.players = dict(self.players)


class Gateway(BusRole):
    """``spelltraction.py gateway``: one world's players' sockets; the rules are elsewhere.

    A :class:`Front`, exactly as ``serve`` has it (binary, HTTP, WebSocket
    on one port, the same limits, the same ERRORs), with the bus to the
    authority as its World (:class:`GatewayBus`). While no TICK comes (the
    authority restarting, Redis down), every socket stays open and
    version-2 players get a STATS whose tick-lateness field is 0xFFFFFFFF
    every 2 s: the game is paused.
    """

    role = "gateway"
    can_hand_over = True

    def __init__(self, loop: EventLoop, options: ServerOptions, cluster: ClusterOptions,
                 address: "RedisAddress", handover: Optional[Dict[str, Any]] = None) -> None:
        # The name the authority knows this gateway by: an upgrade keeps it (and its seats).
        self.gateway = handover["gateway"]["name"] if handover is not None else \
            f"{socket.gethostname()[:40]}-{os.getpid()}-{os.urandom(3).hex()}"
        super().__init__(loop, options._replace(data=None, reuse_port=True), cluster, address,
                         self.gateway)
        self.world_bus = GatewayBus(loop, self.bus, self.gateway)
        self.front = Front(loop, self.options, self.world_bus, self.ops_routes(public=True))
        self.world_bus.front = self.front
        self.world_bus.ticked = self.ticked
        self._paused_said = 0.0
        self._open_admin()

    def parts(self) -> List[Any]:
        return [self.front, self.bus]

    def players_here(self) -> int:
        return len(self.world_bus.players)

    def start(self) -> List[Tuple[str, int]]:
        self.bus.start(self.bus.down_channel, self.world_bus.private)
        return super().start()  # the ticker is ours: the up batch, the pause

    def add_handover_state(self, state: Dict[str, Any]) -> None:
        """The seats (which connection is which bus id), and what waits to go up."""
        wb = self.world_bus
        seats = []
        for seat in wb.seats.values():
            at = self.handover_index.get(seat.peer)
            if at is not None:
                seats.append((at, seat.cid, seat.hello.hex(), seat.pid or 0, seat.welcomed))
        state["gateway"] = {
            "name": self.gateway, "next_cid": wb._next_cid, "epoch": wb.epoch,
            "seats": handover.pack_rows(seats), "world_players": wb.world_players, "world_tick": wb.world_tick,
            "up": [e.hex() for e in wb.up_hellos + wb.up_leaves],
            "moves": [[cid, move.hex()] for cid, move in wb.up_moves.items()],
            "yous": [[cid, you.hex()] for cid, you in {**wb._due_yous, **wb.yous}.items()]}

    def resume_role(self, state: Dict[str, Any]) -> None:
        """The seats on the connections handed over; the bus again, which resynchronises."""
        wb = self.world_bus
        g = state["gateway"]
        conns = self.resumed_conns
        for at, cid, hello, pid, welcomed in handover.unpack_rows(g["seats"]):
            conn = conns[at]
            if conn is None:
                wb.up_leaves.append(bus_entry(cid, OP_LEAVE))  # gone during the exec
                continue
            seat = _Seat(cid, bytes.fromhex(hello), conn)
            seat.pid, seat.welcomed = pid, welcomed
            wb.seats[cid] = seat
            if welcomed:
                conn.data = seat
                wb.players[conn] = None
                if state["front"]["v2"][at] and self.front is not None:
                    self.front.v2_conns[conn] = None
                if isinstance(conn.codec, WebSocketCodec) and self.front is not None:
                    self.front.ws_players[conn] = None
            else:
                conn.data = HELLO_SENT
                wb.hellos[conn] = seat
        wb._next_cid = g["next_cid"]
        wb.epoch = g["epoch"]
        wb.world_players, wb.world_tick = g["world_players"], g["world_tick"]
        wb.up_hellos += [bytes.fromhex(e) for e in g["up"]]
        wb.up_moves = {cid: bytes.fromhex(m) for cid, m in g["moves"]}
        wb.yous = {cid: bytes.fromhex(y) for cid, y in g["yous"]}
        wb.last_tick_at = self.loop.time()
        self.bus.start(self.bus.down_channel, wb.private)

    def compact(self) -> bool:
        rebuilt = super().compact()
        if rebuilt:
            self.world_bus.compact()
        return rebuilt

    def _bus_ready(self) -> None:
        self.world_bus.bus_ready()

    def _on_bus_message(self, channel: bytes, data: bytes) -> None:
        self.world_bus.on_bus(channel, data)

    def health(self) -> Tuple[str, bytes, int]:
        assert self.front is not None
        wb = self.world_bus
        waiting = self._waiting_for_redis()
        if waiting:
            text, status = waiting, 503
        elif wb.paused or wb.world_tick < 0:
            text, status = "not ready: no tick from the authority (the world is paused)", 503
        elif self.shutting_down:
            text, status = "shutting down", 503
        else:
            net = self.front.net
            text, status = (f"ok: gateway {self.gateway} of {self.cluster.world}; "
                            f"{len(wb.players)} players here, {wb.world_players} in the "
                            f"world, {net.stats.connections} of {net.config.max_connections} "
                            "connections"), 200
        return "text/plain; charset=utf-8", (text + "\n").encode(), status

    # -- our tick: the up batch, the hello timeouts, the pause ---------------

    def on_tick(self, tick: Tick) -> None:
        assert self.front is not None
        wb = self.world_bus
        wb.send_up()
        self.front.after_tick(tick.number)
        now = self.loop.time()
        if now - wb.last_tick_at > PAUSE_AFTER_S:
            if not wb.paused:
                wb.paused = True
                log.warning("no tick from the authority of %s for %.1f s: the game is paused",
                            self.cluster.world, now - wb.last_tick_at)
            if now - self._paused_said >= PAUSE_EVERY_S:
                self._paused_said = now
                self._say_paused()

    def _say_paused(self) -> None:
        """Version-2 players hear that the game is paused: STATS with p99 = 0xFFFFFFFF."""
        assert self.front is not None
        v2 = [c for c in self.world_bus.players if c in self.front.v2_conns]
        if not v2:
            return
        wb = self.world_bus
        data = frame(Stats(wb.world_connections, wb.world_players,
                           int(time.time() - self.started), rss_kb(), self.start_rss_kb,
                           PAUSED_P99))
        self.front.broadcast(data, 1, v2)

    # -- figures ------------------------------------------------------------------

    def stats_snapshot(self) -> Dict[str, Any]:
        snap = super().stats_snapshot()
        wb = self.world_bus
        snap["players"] = len(wb.players)
        snap["game_tick"] = wb.world_tick
        snap["cluster"] = {
            "role": "gateway", "world": self.cluster.world, "gateway": self.gateway,
            "epoch": wb.epoch, "players_here": len(wb.players),
            "world_players": wb.world_players, "world_tick": wb.world_tick,
            "ticks_in": wb.ticks_in, "paused": wb.paused, **self.bus_figures()}
        return snap

    def metrics_text(self) -> str:
        text = super().metrics_text()
        exp = Exposition()
        wb = self.world_bus
        exp.gauge("spelltraction_gateway_players", "Players on this gateway.", len(wb.players))
        exp.gauge("spelltraction_world_players", "Players in the world (the authority's count).",
                  wb.world_players)
        exp.gauge("spelltraction_world_paused", "1 while no tick comes from the authority.",
                  int(wb.paused))
        return text + exp.text()


def run_role(role: str, opts: ServerOptions, cluster: ClusterOptions, address: RedisAddress,
             log_limiter: Optional[RateLimitFilter] = None, argv: Sequence[str] = ()) -> int:
    """``game`` or ``gateway``: like :func:`serve`, for one role of a world on Redis."""
    soft, _hard = raise_nofile()
    if role == "gateway" and soft != resource.RLIM_INFINITY and soft - FD_RESERVE < opts.max_clients:
        log.warning("open-files limit %d: serving at most %d clients", soft, soft - FD_RESERVE)
        opts = opts._replace(max_clients=max(soft - FD_RESERVE, 0))
    loop = make_loop(opts)
    try:
        handed = handover_from_environment()
    except HandoverError as exc:
        log.error("upgrade: %s", exc)
        return 2
    make: Callable[[], Role] = (lambda: Authority(loop, opts, cluster, address, handed)) \
        if role == "game" else (lambda: Gateway(loop, opts, cluster, address, handed))
    started = _start_server(loop, make, opts, log_limiter, argv, handed)
    handed = None  # taken over: its megabytes of plain data go (the lambdas' too)
    if started is None:
        return 2
    server, addresses = started
    what = f"{'authority' if role == 'game' else 'gateway'} of world {cluster.world}"
    for host, port in addresses:
        print(f"SpellTraction {what} listening on {host}:{port}", flush=True)
    if server.admin is not None:
        for host, port in server.admin.addresses:
            if role == "game":
                print(f"SpellTraction {what}: admin listening on {host}:{port}", flush=True)
            else:
                print(f"admin (/healthz, /metrics, /stats) on http://{host}:{port}/", flush=True)
    elif role == "game":
        print(f"SpellTraction {what}: no admin port", flush=True)
    print(f"redis {address.url()}; tick {opts.tick_ms} ms", flush=True)
    _run_server(loop, server)
    if isinstance(server, Authority) and server.refused:
        return 3
    return 0


# =============================================================================
# Bots: the load test. N players over as many processes as the fd limit needs.
# =============================================================================

# -----------------------------------------------------------------------------
# Bots: one worker process. A poller and flat arrays, no object per bot.
# -----------------------------------------------------------------------------

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
    state: str = ""  # protocol 2: resume tokens and last shown scores in this file
    # Source addresses to spread the bots over, comma-separated; "auto": past
    # SOURCE_SPREAD bots toward a 127.x target, 127.0.0.2, 127.0.0.3, ... (one
    # source address has ~28,000 ephemeral ports toward one server port).
    sources: str = "auto"
    tls: bool = False  # speak TLS (TCP or wss://), the certificate checked unless insecure
    ca: Optional[str] = None  # trust this CA file (PEM) instead of the system's
    insecure: bool = False  # TLS without checking the certificate (a load test's own server)


SOURCE_SPREAD = 20_000  # bots per loopback source address when spreading


def bot_sources(host: str, count: int, spec: str = "auto") -> List[str]:
    """The source addresses bots bind before connecting ([]: the kernel's choice).

    ``spec``: "auto", "none", or addresses ("127.0.0.2,127.0.0.3"). Auto
    spreads only a loopback IPv4 target with more bots than one address's
    ephemeral ports hold comfortably (the whole 127/8 is local on Linux).
    """
    if spec in ("", "none"):
        return []
    if spec != "auto":
        return [a.strip() for a in spec.split(",") if a.strip()]
    if not host.startswith("127.") or count <= SOURCE_SPREAD:
        return []
    return [f"127.0.0.{2 + k}" for k in range(-(-count // SOURCE_SPREAD))]


RETRY_FIRST, RETRY_MAX = 0.5, 8.0  # a dropped --state bot reconnects after these (doubling)


class BotState:
    """``bots --state FILE``: each bot's resume token, id and the last score it was shown.

    Bot ``i`` is entry ``i``: a second run with the same file resumes them
    all (a larger --count makes the rest new players; a smaller one leaves
    the rest in the file). Written atomically (a temporary file, then a
    rename), mode 0600: the tokens are the players.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.players: List[List[Any]] = []  # [token hex, id, shown score]
        self.dirty = False
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        self.players = [[str(p["token"]), int(p["id"]), int(p["score"])]
                        for p in data.get("players", [])]

    def slice(self, start: int, count: int) -> List[List[Any]]:
        return [list(p) for p in self.players[start:start + count]]

    def update(self, offset: int, changes: List[List[Any]]) -> None:
        """Merge one worker's news: [bot index within the worker, token hex, id, score]."""
        players = self.players
        for i, token, pid, score in changes:
            k = offset + i
            while len(players) <= k:
                players.append(["", 0, -1])
            players[k] = [token, pid, score]
        self.dirty = self.dirty or bool(changes)

    def save(self) -> None:
        if not self.dirty:
            return
        process.write_private_json(self.path, {"version": 1, "players": [
            {"token": t, "id": pid, "score": score} for t, pid, score in self.players]})
        self.dirty = False


BOT_TLS_OPENING = 256  # TLS bots on their way in (connect, handshake, HELLO) at once, per process


class BotWorker:
    """One process's share of the bots, on one poller, state in flat arrays.

    ``tls``: a client context; each bot then speaks TLS through an
    ``ssl.SSLObject`` on two memory BIOs over its nonblocking socket (the
    handshake advanced as its answers arrive, ``HANDSHAKING``), so thousands
    of TLS bots share one poller as the plain ones do.
    """

    CONNECTING, HELLO_SENT, PLAYING, DONE, UPGRADING, RETRYING, HANDSHAKING = 1, 2, 3, 4, 5, 6, 7

    def __init__(self, host: str, port: int, count: int, move_every: float, probes: int,
                 seed: int, batch: int, websocket: bool = False,
                 resume: Optional[List[List[Any]]] = None, sources: Sequence[str] = (),
                 offset: int = 0, tls: Optional["ssl.SSLContext"] = None) -> None:
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        self.family, self.addr = info[0], info[4]
        self.tls = tls
        self.server_hostname = host
        # fd -> (SSLObject, incoming BIO, outgoing BIO) of each TLS bot's connection.
        self.tls_conns: Dict[int, Tuple["ssl.SSLObject", "ssl.MemoryBIO", "ssl.MemoryBIO"]] = {}
        self.tls_handshakes = 0
        self.sources = list(sources)  # bot i binds sources[(offset + i) % n] first
        self.offset = offset
        self.websocket = websocket
        self.host_header = f"{host}:{port}"
        self.ws_keys: Dict[int, str] = {}  # fd -> Sec-WebSocket-Key, while upgrading
        self.ws_rest: Dict[int, bytes] = {}  # fd -> partial WebSocket frame or response
        self.count = count
        self.move_every = max(0.0, move_every)
        self.batch = batch
        self.rng = random.Random(seed)
        self.poller = make_poller()  # epoll where there is one: level-triggered, as selectors
        self.socks: List[Optional[socket.socket]] = [None] * count
        self.state = bytearray(count)
        self.index: Dict[int, int] = {}  # fd -> bot
        self.rest: Dict[int, bytes] = {}  # fd -> partial frame
        self.ticks = array("l", [0]) * count
        self.first_tick = array("l", [-1]) * count
        self.last_tick = array("l", [-1]) * count
        self.last_at = array("d", [0.0]) * count
        self.hist = [0] * (_INTERVAL_BINS + 1)
        self.hold_started = 0.0  # intervals are measured from here (start_hold)
        self.moves: List[Tuple[float, int]] = []  # heap of (due, bot)
        self.probes = set(range(min(probes, count)))
        self.probe_sent: Dict[int, Tuple[int, float]] = {}
        self.latencies: List[float] = []
        self.seq = 0
        self.started = 0
        self.connected = self.failed = self.dropped = 0
        self.frames = self.bytes = self.moves_sent = 0
        self.errors: Dict[str, int] = {}
        # Protocol 2 (bots --state): tokens, and reconnects with backoff.
        self.v2 = resume is not None
        self.tokens: List[bytes] = [b""] * count
        self.ids = array("l", [0]) * count
        self.shown = array("l", [-1]) * count  # the last score a YOU showed; -1: none yet
        for i, (token, pid, score) in enumerate((resume or [])[:count]):
            self.tokens[i] = bytes.fromhex(token) if token else b""
            self.ids[i], self.shown[i] = pid, score
        self.changed: Dict[int, None] = {}  # bots whose token or score changed since reported
        self.resumed = bytearray(count)  # came back as themselves at least once
        self.regressed = bytearray(count)  # came back with less than they were shown
        self.awaiting_you = bytearray(count)  # WELCOME seen; its YOU will say the score
        self.lost = bytearray(count)  # dropped and not back (yet)
        self.give_up = bytearray(count)  # told not to come back (TAKEN_OVER, VERSION...)
        self.backoff = array("d", [0.0]) * count
        self.retries: List[Tuple[float, int]] = []  # heap of (due, bot)
        self.reconnected = 0

    # -- one pass of the loop ---------------------------------------------

    def step(self, timeout: float) -> None:
        if self.started < self.count:
            if self._start_connects():
                timeout = 0.0 if self.started < self.count else timeout
            else:  # TLS: as many handshakes under way as it may have
                timeout = min(timeout, 0.005)
        poller = self.poller
        events = poller.poll(timeout)
        now = time.monotonic()
        for fd, mask in events:  # an error or a hang-up comes as readable (writable, connecting)
            i = self.index.get(fd)
            if i is None:
                continue
            if mask & EVENT_READ:
                self._read(fd, i, now)
            elif mask & EVENT_WRITE:
                self._connected(fd, i, now)
        if self.moves and self.moves[0][0] <= now:
            self._move_due(now)
        if self.retries and self.retries[0][0] <= now:
            self._retry_due(now)

    def _start_connects(self) -> bool:
        """Open the next batch of connections; False if none could start (TLS: as
        many are still on their way in as :data:`BOT_TLS_OPENING` allows)."""
        end = min(self.count, self.started + self.batch)
        if self.tls is not None:
            # A handshake costs both ends about a millisecond of CPU: thousands at
            # once would wait past the server's handshake timeout. A few hundred
            # on their way in at a time, as players arriving over a minute do.
            opening = self.started - self.connected - self.failed - self.dropped
            end = min(end, self.started + max(0, BOT_TLS_OPENING - opening))
        for i in range(self.started, end):
            self._open(i)
        started, self.started = self.started, end
        return end > started

    _LINGER = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT left on loopback

    def _open(self, i: int) -> None:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self._LINGER)
        if self.sources:
            # The port is picked at connect() (IP_BIND_ADDRESS_NO_PORT, Linux
            # 4.2+), per destination: each source address gets its own range.
            s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            try:
                s.bind((self.sources[(self.offset + i) % len(self.sources)], 0))
            except OSError as exc:
                s.close()
                self._fail(i, f"bind: {exc.strerror or exc}")
                return
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            s.close()
            self._fail(i, os.strerror(err))
            return
        self.socks[i] = s
        self.state[i] = self.CONNECTING
        self.index[s.fileno()] = i
        self.poller.register(s.fileno(), EVENT_WRITE, s.fileno())

    def _hello(self, i: int) -> bytes:
        if not self.v2:
            return HELLO_FRAME
        return frame(Hello(PROTOCOL_V2, token=self.tokens[i]))

    def _retry_due(self, now: float) -> None:
        """Dropped --state bots whose backoff is over try again (with their token)."""
        retries = self.retries
        opened = 0
        while retries and retries[0][0] <= now and opened < self.batch:
            _, i = heapq.heappop(retries)
            if self.state[i] == self.RETRYING:
                self._open(i)
                opened += 1

    def _schedule_retry(self, i: int, now: float) -> None:
        delay = min(RETRY_MAX, max(RETRY_FIRST, self.backoff[i] * 2))
        self.backoff[i] = delay
        self.state[i] = self.RETRYING
        heapq.heappush(self.retries, (now + delay * self.rng.uniform(0.8, 1.2), i))

    def _connected(self, fd: int, i: int, now: float) -> None:
        s = self.socks[i]
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(i, os.strerror(err))
            return
        self.poller.modify(fd, EVENT_READ, fd)
        if self.tls is not None:
            import ssl

            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = self.tls.wrap_bio(incoming, outgoing, server_hostname=self.server_hostname)
            self.tls_conns[fd] = (obj, incoming, outgoing)
            self.state[i] = self.HANDSHAKING
            self._handshake(fd, i, s)
            return
        self._begin(fd, i, s)

    def _begin(self, fd: int, i: int, s: socket.socket) -> None:
        """Connected (and through TLS): the HELLO, or the WebSocket upgrade first."""
        if self.websocket:
            key = base64.b64encode(self.rng.getrandbits(128).to_bytes(16, "big")).decode()
            self.ws_keys[fd] = key
            first, state = ws.client_handshake(self.host_header, WS_PATH, key), self.UPGRADING
        else:
            first, state = self._hello(i), self.HELLO_SENT
        try:
            self._send_raw(s, first)
        except OSError as exc:
            self._fail(i, exc.strerror or str(exc))
            return
        self.state[i] = state

    def _handshake(self, fd: int, i: int, s: socket.socket) -> bool:
        """Advance bot ``i``'s TLS handshake; whether it is done (then it has begun)."""
        import ssl

        obj, _, outgoing = self.tls_conns[fd]
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self._fail(i, f"TLS: {getattr(exc, 'verify_message', None) or exc.reason or exc}")
            return False
        try:
            if outgoing.pending:
                s.send(outgoing.read())
        except OSError as exc:
            self._fail(i, exc.strerror or str(exc))
            return False
        if done:
            self.tls_handshakes += 1
            self._begin(fd, i, s)
        return done

    def _decrypt(self, fd: int, i: int, s: socket.socket, data: bytes) -> Optional[bytes]:
        """The plaintext in ``data`` from bot ``i``'s TLS connection (None: it is over)."""
        from netcore.tls import read_plaintext

        obj, incoming, outgoing = self.tls_conns[fd]
        incoming.write(data)
        if self.state[i] == self.HANDSHAKING and not self._handshake(fd, i, s):
            return None
        plain, ended = read_plaintext(obj)
        if ended is not None:
            self._lost(i, "closed by server" if ended == "closed" else ended)
            return None
        if outgoing.pending:  # a key update answered
            try:
                s.send(outgoing.read())
            except OSError:
                pass
        return plain

    def _send_raw(self, s: socket.socket, data: bytes) -> None:
        """Send bytes of the stream: encrypted first on a TLS bot's connection."""
        conn = self.tls_conns.get(s.fileno())
        if conn is not None:
            obj, _, outgoing = conn
            obj.write(data)
            data = outgoing.read()
        s.send(data)

    def _send(self, s: socket.socket, stream: bytes) -> None:
        """Send game frames: as they are, or in one masked WebSocket message."""
        if self.websocket:
            stream = ws.frame(stream, ws.BINARY, mask_key=self._mask_key())
        self._send_raw(s, stream)

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
        if self.tls is not None:
            plain = self._decrypt(fd, i, s, data)
            if not plain:
                return
            data = plain
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
                if self.v2:
                    self._score_shown(i, int.from_bytes(data[pos + 9 : pos + 13], "big"))
            elif kind == WELCOME:
                if self.v2:
                    self._welcomed(i, data[pos + 2 : end])
                self.state[i] = self.PLAYING
                self.connected += 1
                if self.move_every > 0 or i in self.probes:
                    first = self.rng.uniform(0, self._period(i))
                    heapq.heappush(self.moves, (now + first, i))
            elif kind == ERROR:
                text = data[pos + 4 : end].decode("utf-8", "replace")
                self.errors[text] = self.errors.get(text, 0) + 1
                if data[pos + 3] in (ErrorCode.TAKEN_OVER, ErrorCode.VERSION, ErrorCode.BAD_NAME):
                    self.give_up[i] = 1  # retrying cannot help, or would fight another client
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
                self._send(s, self._hello(i))
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

    def _welcomed(self, i: int, payload: bytes) -> None:
        """A v2 WELCOME: keep the token; a resumed bot's YOU is checked against its last score."""
        welcome = decode(payload)
        assert isinstance(welcome, Welcome)
        if welcome.resumed == RESUMED:
            self.resumed[i] = 1
        self.awaiting_you[i] = 1
        self.tokens[i] = welcome.token
        self.ids[i] = welcome.player_id
        self.changed[i] = None
        if self.lost[i]:
            self.lost[i] = 0
            self.reconnected += 1
        self.backoff[i] = 0.0
        self.first_tick[i] = -1  # the tick count restarts with a restarted server:
        self.ticks[i] = 0  # count this connection's ticks afresh

    def _score_shown(self, i: int, score: int) -> None:
        if self.awaiting_you[i]:
            self.awaiting_you[i] = 0
            if score < self.shown[i]:  # back (as itself or not) with less than it was shown
                self.regressed[i] = 1
        if score != self.shown[i]:
            self.shown[i] = score
            self.changed[i] = None

    def state_changes(self) -> List[List[Any]]:
        """[bot, token hex, id, score] for the bots whose entry changed since the last call."""
        out = [[i, self.tokens[i].hex(), self.ids[i], self.shown[i]] for i in self.changed]
        self.changed = {}
        return out

    def _send_pong(self, s: socket.socket, payload: bytes) -> None:
        try:
            self._send_raw(s, ws.frame(payload, ws.PONG, mask_key=self._mask_key()))
        except OSError:
            pass

    def start_hold(self, now: float) -> None:
        """Every bot is in: from now on, measure the steady state only.

        Tick intervals and move latencies seen while thousands of bots were
        still joining (and this process was busy connecting them) describe
        the ramp, not the game; they are dropped here.
        """
        self.hold_started = now
        self.hist = [0] * (_INTERVAL_BINS + 1)
        self.latencies = []
        self.probe_sent.clear()

    def _tick(self, i: int, number: int, now: float) -> None:
        if self.first_tick[i] < 0:
            self.first_tick[i] = number
        elif self.last_at[i] >= self.hold_started:
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
        if self.lost[i] and not self.give_up[i]:  # a reconnect that did not work (yet)
            self._drop_socket(i)
            self._schedule_retry(i, time.monotonic())
            return
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1
        self._drop_socket(i)

    def _lost(self, i: int, why: str) -> None:
        if self.state[i] == self.PLAYING:
            self.connected -= 1
            self.errors[why] = self.errors.get(why, 0) + 1
            self._drop_socket(i)
            if self.v2 and not self.give_up[i]:  # --state: come back as ourselves
                self.lost[i] = 1
                self._schedule_retry(i, time.monotonic())
            else:
                self.dropped += 1
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
            self.tls_conns.pop(fd, None)
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
                "dropped": self.dropped + sum(self.lost), "started": self.started,
                "resumed": sum(self.resumed), "reconnected": self.reconnected}

    def final(self) -> Dict[str, Any]:
        fractions = []
        for i in range(self.count):
            if self.first_tick[i] >= 0:
                expected = self.last_tick[i] - self.first_tick[i] + 1
                fractions.append(self.ticks[i] / expected)
        return {
            "type": "final", "count": self.count, "connected": self.connected,
            "failed": self.failed, "dropped": self.dropped + sum(self.lost),
            "resumed": sum(self.resumed), "score_regressions": sum(self.regressed),
            "reconnected": self.reconnected, "frames": self.frames,
            "bytes": self.bytes, "moves_sent": self.moves_sent,
            "hist": [[ms, n] for ms, n in enumerate(self.hist) if n],
            "latencies": [round(x, 6) for x in self.latencies],
            "tick_fraction_min": min(fractions, default=0.0),
            "tick_fraction_mean": sum(fractions) / len(fractions) if fractions else 0.0,
            "below_95": sum(1 for f in fractions if f < 0.95),
            "errors": self.errors,
            "tls_handshakes": self.tls_handshakes,
        }


def _bot_worker_main(params_json: str) -> None:
    """Entry point of a bot process: runs until stdin closes or its deadline."""
    p = json.loads(params_json)
    raise_nofile()
    resume = BotState(p["state"]).slice(p["offset"], p["count"]) if p.get("state") else None
    tls = None
    if p.get("tls"):
        from netcore.tls import client_context

        tls = client_context(p.get("ca"), insecure=p.get("insecure", False))
    worker = BotWorker(p["host"], p["port"], p["count"], p["move_every"], p["probes"],
                       p["seed"], p["batch"], p.get("ws", False), resume,
                       p.get("sources", ()), p.get("offset", 0), tls)
    deadline = time.monotonic() + p["max_seconds"]
    out = sys.stdout
    stdin_fd = sys.stdin.fileno()  # the parent writes "hold", then closes it to say "stop"
    next_report = 0.0

    def report_state() -> None:
        changes = worker.state_changes()
        if changes:
            out.write(json.dumps({"type": "state", "changes": changes}) + "\n")

    try:
        while time.monotonic() < deadline:
            if _parent_says_stop(worker, stdin_fd):
                break
            worker.step(0.05)
            now = time.monotonic()
            if now >= next_report:
                if worker.v2:
                    report_state()  # tokens and shown scores: the parent keeps the file
                out.write(json.dumps(worker.progress()) + "\n")
                out.flush()
                next_report = now + 0.25
    finally:
        if worker.v2:
            report_state()
        out.write(json.dumps(worker.final()) + "\n")
        out.flush()
        worker.close()


def _parent_says_stop(worker: BotWorker, fd: int) -> bool:
    """Read the parent's word, if any: "hold" starts the hold, EOF means stop."""
    r, _, _ = select.select([fd], [], [], 0)
    if not r:
        return False
    said = os.read(fd, 1024)
    if b"hold" in said:
        worker.start_hold(time.monotonic())
    return not said


# -----------------------------------------------------------------------------
# Bots: the parent. Spread the bots, tell them to hold, sum up.
# -----------------------------------------------------------------------------


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
    boot = ("import sys; sys.path.insert(0, sys.argv[1]); import spelltraction; "
            "spelltraction._bot_worker_main(sys.argv[2])")
    max_seconds = opts.ramp_timeout + opts.duration + 30
    workers: List["subprocess.Popen[str]"] = []
    transport = ("WebSocket" if opts.ws else "TCP") + (" over TLS" if opts.tls else "")
    state = BotState(opts.state) if opts.state else None
    offsets = [sum(shares[:k]) for k in range(procs)]
    sources = bot_sources(opts.host, opts.n_bots, opts.sources)
    if sources:
        print(f"bots: from {len(sources)} source addresses ({', '.join(sources)})", file=out,
              flush=True)
    print(f"bots: {opts.n_bots} to {opts.host}:{opts.port} ({transport}) over {procs} process(es), "
          f"moving every {opts.move_every:g} s, holding {opts.duration:g} s", file=out, flush=True)
    if state is not None:
        print(f"bots: protocol 2, resuming {min(len(state.players), opts.n_bots)} from "
              f"{opts.state}", file=out, flush=True)
    saved_at = time.monotonic()
    started = time.monotonic()
    progress: List[Dict[str, Any]] = [{} for _ in range(procs)]
    finals: List[Optional[Dict[str, Any]]] = [None] * procs
    ramp_s: Optional[float] = None
    try:
        for k in range(procs):
            params = {"host": opts.host, "port": opts.port, "count": shares[k],
                      "move_every": opts.move_every, "probes": probes[k], "seed": seed + k,
                      "batch": opts.batch, "max_seconds": max_seconds, "ws": opts.ws,
                      "state": opts.state, "offset": offsets[k], "sources": sources,
                      "tls": opts.tls, "ca": opts.ca, "insecure": opts.insecure}
            workers.append(subprocess.Popen(
                [sys.executable, *_interpreter_flags(), "-c", boot, _HERE, json.dumps(params)],
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
                    elif msg["type"] == "state":
                        if state is not None:
                            state.update(offsets[k], msg["changes"])
                    else:
                        progress[k] = msg
            if state is not None and time.monotonic() - saved_at >= 0.5:
                state.save()  # at least once a second while anything changes
                saved_at = time.monotonic()
            if not buffers and any(f is None for f in finals):
                raise RuntimeError("a bot worker exited without a report")
            conn = sum(p.get("connected", 0) for p in progress)
            failed = sum(p.get("failed", 0) for p in progress)
            dropped = sum(p.get("dropped", 0) for p in progress)
            now = time.monotonic()
            if ramp_s is None and conn + failed + dropped >= opts.n_bots:
                ramp_s = now - started
                hold_until = now + opts.duration
                _tell(workers, b"hold\n")
                print(f"ramp: {conn}/{opts.n_bots} connected in {ramp_s:.1f} s "
                      f"({failed} failed); holding {opts.duration:g} s", file=out, flush=True)
            elif ramp_s is None and now - started > opts.ramp_timeout:
                ramp_s = now - started
                hold_until = now + opts.duration
                _tell(workers, b"hold\n")
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
        if state is not None:
            state.save()
    summary = _summarise([f for f in finals if f is not None], opts, ramp_s)
    _print_summary(summary, out)
    return summary


def _tell(workers: List["subprocess.Popen[str]"], word: bytes) -> None:
    for w in workers:
        if w.stdin is not None and not w.stdin.closed:
            try:
                os.write(w.stdin.fileno(), word)
            except OSError:
                pass  # that worker has gone; its report (or absence) says so


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
        "resumed": total("resumed"),
        "score_regressions": total("score_regressions"),
        "reconnected": total("reconnected"),
        "tls_handshakes": total("tls_handshakes"),
        "frames": total("frames"),
        "bytes": total("bytes"),
        "moves_sent": total("moves_sent"),
        "ramp_s": round(ramp_s, 2) if ramp_s is not None else None,
        "tick_interval_ms_p50": p50,
        "tick_interval_ms_p99": p99,
        "tick_interval_ms_max": max((ms for ms, n in hist.items() if n), default=0),
        "move_latency_ms_p50": round(lat(50) * 1000, 1),
        "move_latency_ms_p99": round(lat(99) * 1000, 1),
        "latency_samples": len(latencies),
        "tick_fraction_min": round(min((f["tick_fraction_min"] for f in finals), default=0.0), 4),
        "tick_fraction_mean": round(sum(f["tick_fraction_mean"] * f["connected"] for f in finals)
                                    / max(1, total("connected")), 4),
        "bots_below_95pct_ticks": total("below_95"),
        "errors": errors,
    }


def _print_summary(s: Dict[str, Any], out: IO[str]) -> None:
    print(
        f"summary: {s['connected']} connected, {s['failed']} failed, {s['dropped']} dropped; "
        f"ramp {s['ramp_s']} s\n"
        f"  received {s['frames']} frames, {s['bytes']} bytes; sent {s['moves_sent']} moves\n"
        f"  tick interval seen by clients while holding: p50 {s['tick_interval_ms_p50']:.0f} ms, "
        f"p99 {s['tick_interval_ms_p99']:.0f} ms\n"
        f"  move->echo latency while holding ({s['latency_samples']} probes): p50 "
        f"{s['move_latency_ms_p50']} ms, p99 {s['move_latency_ms_p99']} ms\n"
        f"  ticks received per bot: min {s['tick_fraction_min'] * 100:.1f}%, "
        f"{s['bots_below_95pct_ticks']} bots below 95%",
        file=out, flush=True,
    )
    if s["resumed"] or s["reconnected"] or s["score_regressions"]:
        print(f"  resumed as themselves: {s['resumed']}; reconnected after a drop: "
              f"{s['reconnected']}; came back with a lower score than shown: "
              f"{s['score_regressions']}", file=out, flush=True)
    if s["errors"]:
        print(f"  errors: {s['errors']}", file=out, flush=True)


# =============================================================================
# Clients: the desktop client's logic. Its brain and its network driver; no Tk.
# =============================================================================

# -----------------------------------------------------------------------------
# Clients: the brain. Sans-IO: server bytes in, state and MOVEs out.
# -----------------------------------------------------------------------------


class Marker:
    """A player's marker as drawn: where it is now, and where it eases to."""

    __slots__ = ("pid", "shape", "colour", "x", "y", "tx", "ty", "seen")

    def __init__(self, pid: int, shape: int, colour: int, x: int, y: int, seen: float) -> None:
        self.pid = pid
        self.shape = shape
        self.colour = colour
        self.x, self.y = float(x), float(y)
        self.tx, self.ty = x, y
        self.seen = seen  # when the server last listed it (markers age out)

    def ease(self, k: float) -> None:
        """Cover fraction ``k`` of the way to the target (snap when close)."""
        dx, dy = self.tx - self.x, self.ty - self.y
        if abs(dx) < 0.3 and abs(dy) < 0.3:
            self.x, self.y = float(self.tx), float(self.ty)
        else:
            self.x += dx * k
            self.y += dy * k


class ClientState(Enum):
    """Where a client is in its connection's life: ``ClientBrain.state``.

    The driver moves it with ``connecting``, ``connected`` and
    ``disconnected``; the server's WELCOME with ``handle``::

        OFFLINE    --connecting()-->  CONNECTING   (TCP connect under way)
        CONNECTING --connected()--->  JOINING      (HELLO sent)
        JOINING    --WELCOME------->  PLAYING
        any        --disconnected(why, retry_at)-->  WAITING   (retry due at retry_at)
                                                     STOPPED   (retry_at None: none planned)
        WAITING    --connecting()-->  CONNECTING

    STOPPED is the end: the driver does not reconnect (``give_up``: the
    server refused this client's protocol version, which retrying cannot
    change). Closing the window stops the driver and leaves the state be.
    """

    OFFLINE = "offline"
    CONNECTING = "connecting"
    JOINING = "joining"
    PLAYING = "playing"
    WAITING = "waiting"
    STOPPED = "stopped"


class ClientBrain:
    """What the client knows, built from server messages. Sans-IO, no Tk.

    A driver reports the connection's life (``connecting``, ``connected``,
    ``disconnected``), feeds received bytes to ``feed`` and sends whatever
    lands in ``outbox``. A view reads the fields, calls ``click`` on input
    and ``animate`` once a frame. Time comes from ``clock``, so tests can age
    markers and flashes without sleeping.
    """

    EASE_PER_S = 8.0  # others' markers cover 1 - e^-1 of the way in 1/8 s
    OWN_EASE_PER_S = 20.0  # our own marker answers a click at once
    PENDING_S = 1.0  # an unechoed move after this was rate-limited: show the server's truth
    FLASH_S = 1.5

    def __init__(self, shape: int = ANY_SHAPE, colour: int = ANY_COLOUR,
                 version: int = PROTOCOL_VERSION, clock: Callable[[], float] = time.monotonic,
                 max_markers: int = 300, marker_ttl: float = 120.0, token: bytes = b"",
                 name: str = "", on_token: Optional[Callable[[bytes], None]] = None) -> None:
        self.clock = clock
        self.hello = Hello(version, shape, colour)
        # Protocol 2: the resume token (kept across reconnects: we come back as
        # ourselves), told to on_token whenever the server hands out a new one.
        self.token = token
        self.name = name
        self.on_token = on_token
        self.resumed = False
        self.fame: Tuple[Tuple[int, int, str], ...] = ()  # the hall of fame, best first
        self.max_markers = max_markers
        self.marker_ttl = marker_ttl
        self.outbox: List[bytes] = []  # frames for the driver to send
        self.state = ClientState.OFFLINE  # see ClientState for the transitions
        self.address = ""
        self.why = ""  # why the last connection ended
        self.retry_at: Optional[float] = None
        self.error = ""  # the server's last ERROR, kept until the next join
        self.error_code = 0
        self.had_game = False  # joined at least once: "server gone", not "no server"
        self.board = ""  # kept across reconnects so the window is never blank
        self.cell_flash = [-1e9] * CELLS  # when each board letter last changed
        self.hand_flash = [-1e9] * HAND_SIZE
        self.score_flash = -1e9
        self._animated = clock()
        self._reset_game()

    def _reset_game(self) -> None:
        """Forget the session: a new connection is a new player."""
        self.parser = FrameParser(MAX_SERVER_FRAME)
        self.welcome: Optional[Welcome] = None
        self.player_id = 0
        self.me: Optional[Marker] = None
        self.server_pos = (0, 0)  # where the server last said we are
        self.letters = ""
        self.score = 0
        self.seq = 0  # seq of the last MOVE sent
        self.pending: Optional[Tuple[int, float]] = None  # (seq, sent at) awaiting its echo
        self.queued: Optional[Tuple[int, int]] = None  # a click waiting for a move token
        self.tokens = MOVE_BUCKET  # mirrors the server's rate limit, so no click is lost
        self.tick = -1
        self.tick_at = 0.0
        self.players = 0
        self.counts: Tuple[int, ...] = (0,) * CELLS
        self.attractor = PARKED
        self.held = 0
        self.markers: "OrderedDict[int, Marker]" = OrderedDict()  # stalest first
        self.stats: Optional[Stats] = None
        self.stats_at = 0.0
        self.scored: Optional[Scored] = None
        self.scored_at = -1e9

    # -- the connection's life (called by the driver) -------------------------

    def connecting(self, address: str) -> None:
        self.state, self.address = ClientState.CONNECTING, address

    def connected(self) -> None:
        """The TCP connection is up: say HELLO (v2: with our token, to come back as ourselves)."""
        self._reset_game()
        self.state = ClientState.JOINING
        hello = self.hello
        if hello.version >= PROTOCOL_V2:
            hello = hello._replace(token=self.token, name=self.name.encode("utf-8"))
        self.outbox = [frame(hello)]

    def disconnected(self, why: str, retry_at: Optional[float]) -> None:
        """The connection ended; ``retry_at`` None means no retry is planned."""
        self._reset_game()
        self.outbox = []
        self.why = why
        self.retry_at = retry_at
        self.state = ClientState.WAITING if retry_at is not None else ClientState.STOPPED

    @property
    def give_up(self) -> bool:
        """The server said it will never take this client (or another took our player over)."""
        return self.error_code in (ErrorCode.VERSION, ErrorCode.TAKEN_OVER, ErrorCode.BAD_NAME)

    @property
    def paused(self) -> bool:
        """v2: the world's authority is away (a STATS said so, no TICK since)."""
        stats = self.stats
        return (stats is not None and stats.tick_p99_us == PAUSED_P99
                and self.stats_at >= self.tick_at)

    # -- input from the server ------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the server, in chunks of any size.

        Raises :class:`ProtocolError` if they are not protocol 1; the driver
        then drops the connection.
        """
        for payload in self.parser.feed(data):
            self.handle(decode(payload))

    def handle(self, msg: Message) -> None:
        now = self.clock()
        if isinstance(msg, TickMsg):
            self._on_tick(msg, now)
        elif isinstance(msg, You):
            self._on_you(msg, now)
        elif isinstance(msg, Welcome):
            self.welcome = msg
            self.player_id = msg.player_id
            self.state = ClientState.PLAYING
            self.had_game = True
            self.error, self.error_code = "", 0
            if msg.version >= PROTOCOL_V2:
                self.resumed = msg.resumed == RESUMED
                if msg.token != self.token:
                    self.token = msg.token
                    if self.on_token is not None:
                        self.on_token(msg.token)
        elif isinstance(msg, Fame):
            self.fame = msg.entries
        elif isinstance(msg, Scored):
            self.scored, self.scored_at = msg, now
            self.cell_flash[msg.cell] = now
        elif isinstance(msg, Stats):
            self.stats, self.stats_at = msg, now
        elif isinstance(msg, Error):
            self.error_code = msg.code
            self.error = msg.text or f"error code {msg.code}"
        else:
            raise BadMessage(f"a server does not send {type(msg).__name__}")

    def _on_tick(self, msg: TickMsg, now: float) -> None:
        if self.board:
            for cell, (old, new) in enumerate(zip(self.board, msg.board)):
                if old != new:
                    self.cell_flash[cell] = now
        self.board = msg.board
        if self.tick >= 0:
            self.tokens = min(MOVE_BUCKET, self.tokens + max(0, msg.number - self.tick))
        self.tick, self.tick_at = msg.number, now
        self.attractor, self.held = msg.attractor, msg.held
        self.players, self.counts = msg.players, msg.counts
        markers = self.markers
        for m in msg.movers:
            if m.player_id == self.player_id:
                continue  # our own position comes from YOU
            marker = markers.get(m.player_id)
            if marker is None:
                markers[m.player_id] = Marker(m.player_id, m.shape, m.colour, m.x, m.y, now)
            else:
                marker.tx, marker.ty, marker.seen = m.x, m.y, now
                marker.shape, marker.colour = m.shape, m.colour
                markers.move_to_end(m.player_id)
        for pid in msg.gone:
            markers.pop(pid, None)
        while len(markers) > self.max_markers:
            markers.popitem(last=False)
        self._send_queued(now)

    def _on_you(self, msg: You, now: float) -> None:
        welcome = self.welcome
        if welcome is None:
            raise BadMessage("YOU before WELCOME")
        if self.me is None:
            self.me = Marker(self.player_id, welcome.shape, welcome.colour, msg.x, msg.y, now)
        else:
            if msg.score != self.score:
                self.score_flash = now
            for i, letter in enumerate(msg.letters):
                if letter not in self.letters:
                    self.hand_flash[i] = now
        self.letters, self.score = msg.letters, msg.score
        self.server_pos = (msg.x, msg.y)
        if self.queued is None and (self.pending is None or msg.seq == self.pending[0]):
            # The echo of our latest move (the server may have clamped it), or
            # news with no move of ours in flight: the server's word is final.
            self.pending = None
            self.me.tx, self.me.ty = msg.x, msg.y

    # -- input from the player --------------------------------------------------

    def click(self, x: float, y: float) -> bool:
        """Move to board pixel (x, y): shown at once, sent as the rate limit allows."""
        me = self.me
        if self.state != ClientState.PLAYING or me is None:
            return False
        bx, by = _clamp(int(x), int(y))
        me.tx, me.ty = bx, by
        self.queued = (bx, by)
        self._send_queued(self.clock())
        return True

    def _send_queued(self, now: float) -> None:
        if self.queued is None or self.tokens <= 0:
            return
        x, y = self.queued
        self.queued = None
        self.tokens -= 1
        self.seq = self.seq % 0xFFFF + 1  # 1..65535: 0 means "no move yet"
        self.pending = (self.seq, now)
        self.outbox.append(frame(Move(self.seq, x, y)))

    # -- time passing -------------------------------------------------------------

    def animate(self) -> None:
        """One animation frame: ease markers, age out the stale, expire the unechoed."""
        now = self.clock()
        dt = min(max(now - self._animated, 0.0), 0.5)
        self._animated = now
        k = 1.0 - math.exp(-dt * self.EASE_PER_S)
        markers = self.markers
        for marker in markers.values():
            marker.ease(k)
        oldest = now - self.marker_ttl
        while markers and next(iter(markers.values())).seen < oldest:
            markers.popitem(last=False)
        me = self.me
        if me is not None:
            pending = self.pending
            if pending is not None and self.queued is None and now - pending[1] > self.PENDING_S:
                self.pending = None  # the move was not taken: back to where the server has us
                me.tx, me.ty = self.server_pos
            me.ease(1.0 - math.exp(-dt * self.OWN_EASE_PER_S))

    # -- derived, for the view ----------------------------------------------------

    @property
    def hold_ticks(self) -> int:
        return self.welcome.hold_ticks if self.welcome is not None else HOLD_TICKS

    def countdown(self) -> float:
        """How far the attractor is towards scoring, 0..1: held / (hold ticks + 1)."""
        if self.attractor == PARKED:
            return 0.0
        return min(1.0, self.held / (self.hold_ticks + 1))

    def seconds_to_score(self) -> float:
        tick_s = (self.welcome.tick_ms if self.welcome is not None else DEFAULT_TICK_MS) / 1000.0
        return max(0, self.hold_ticks + 1 - self.held) * tick_s

    def flash(self, since: float) -> float:
        """1.0 just after an event at time ``since``, fading to 0 over FLASH_S."""
        age = self.clock() - since
        return 0.0 if age < 0 or age >= self.FLASH_S else 1.0 - age / self.FLASH_S

    def uptime_s(self) -> int:
        """The server's uptime now, counted on from its last STATS."""
        if self.stats is None:
            return 0
        return self.stats.uptime_s + int(self.clock() - self.stats_at)

    def status_line(self) -> str:
        state = self.state
        if state == ClientState.CONNECTING:
            return f"Connecting to {self.address}..."
        if state == ClientState.JOINING:
            return f"Connected to {self.address}, joining..."
        if state == ClientState.PLAYING:
            again = " (welcome back)" if self.resumed else ""
            return f"Playing on {self.address} as player #{self.player_id}{again}"
        if state == ClientState.WAITING and self.retry_at is not None:
            wait = max(0.0, self.retry_at - self.clock())
            lost = "Server gone" if self.had_game else f"Cannot reach {self.address}"
            return f"{lost}: {self.why}. Reconnecting in {wait:.1f} s..."
        if state == ClientState.STOPPED and self.error_code == ErrorCode.TAKEN_OVER:
            return "Playing elsewhere: another client resumed this player. Not reconnecting."
        if state == ClientState.STOPPED:
            return f"Disconnected: {self.why}. Not reconnecting."
        return "Not connected"


# -----------------------------------------------------------------------------
# Clients: the network driver. One nonblocking socket, run from a loop.
# -----------------------------------------------------------------------------


if TYPE_CHECKING:
    from netcore.client import Lookup


class NetClient:
    """Drives a :class:`ClientBrain` over one nonblocking socket, never blocking.

    It runs inside someone else's loop: ``schedule(delay, fn)`` is Tk's
    ``after`` in the window, netcore's ``call_later`` in tests. Every
    ``POLL_S`` it advances a connect, reads whatever has arrived through the
    brain's sans-IO frame parser, and sends the brain's outbox. A lost
    connection is retried with exponential backoff (0.5 s doubling to 8 s,
    back to 0.5 s once a join succeeds). Name lookup runs in a thread, so a
    slow DNS server cannot freeze the window either.

    ``tls``: a client context (:func:`netcore.tls.client_context`): once
    connected, TLS runs over the same nonblocking socket through an
    ``ssl.SSLObject`` on two memory BIOs, the handshake advanced by each
    poll like the rest (within ``CONNECT_TIMEOUT_S`` of the connect), the
    server's certificate checked against ``host`` (or ``server_hostname``).
    """

    POLL_S = 0.015
    BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 8.0
    CONNECT_TIMEOUT_S = 5.0
    SILENCE_S = 10.0  # ticks come every 250 ms: this long without data is a dead link
    READS_PER_POLL = 16  # bounded, so a burst of data cannot starve the animation

    def __init__(self, brain: ClientBrain, host: str, port: int,
                 schedule: Callable[[float, Callable[[], None]], object],
                 clock: Callable[[], float] = time.monotonic,
                 tls: Optional["ssl.SSLContext"] = None,
                 server_hostname: Optional[str] = None) -> None:
        self.brain = brain
        self.host, self.port = host, port
        self.tls = tls
        self.server_hostname = server_hostname or host
        # This connection's TLS: the SSLObject and its BIOs (None: plain, or not yet).
        self.tls_obj: Optional["ssl.SSLObject"] = None
        self.tls_in: Optional["ssl.MemoryBIO"] = None
        self.tls_out: Optional["ssl.MemoryBIO"] = None
        self.schedule = schedule
        self.clock = clock
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.sock: Optional[socket.socket] = None
        self.is_connected = False
        self.connect_started = 0.0
        self.last_data = 0.0
        self.failures = 0  # connections in a row that ended before a join
        self.retry_at = 0.0
        self.running = False
        self.out = bytearray()
        self.addresses: List[Any] = []  # numeric addresses still to try
        self.lookup: Optional[Lookup] = None  # the name lookup under way (a thread)

    def start(self) -> None:
        self.running = True
        self._poll()

    def stop(self) -> None:
        self.running = False
        self._close()

    def _poll(self) -> None:
        if not self.running:
            return
        try:
            self.step()
        finally:
            self.schedule(self.POLL_S, self._poll)

    def step(self) -> None:
        """One pass: whatever the connection needs now, without waiting."""
        now = self.clock()
        if self.sock is None:
            if self.brain.state != ClientState.STOPPED and now >= self.retry_at:
                self._connect(now)
        elif not self.is_connected:
            if self.tls_obj is None:
                self._check_connect(now)
            else:
                self._handshake(now)
        else:
            self._read(now)
            self.flush()

    def flush(self) -> None:
        """Send the brain's outbox now (the view calls this right after a click)."""
        sock, brain = self.sock, self.brain
        if sock is None or not self.is_connected:
            return
        if brain.outbox:
            data = b"".join(brain.outbox)
            brain.outbox.clear()
            if self.tls_obj is not None:  # encrypted as it is queued: out holds ciphertext
                assert self.tls_out is not None
                self.tls_obj.write(data)
                data = self.tls_out.read()
            self.out += data
        self._send()

    def _send(self) -> None:
        """Send what ``out`` holds, as much as the socket takes now."""
        sock = self.sock
        if sock is None or not self.out:
            return
        try:
            sent = sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc.strerror or str(exc))
            return
        del self.out[:sent]

    # -- connecting --------------------------------------------------------------

    def _connect(self, now: float) -> None:
        if not self.addresses:
            if self.lookup is None:
                self.brain.connecting(self.address)
                from netcore.client import Lookup

                self.lookup = Lookup(self.host, self.port)
            if not self.lookup.done.is_set():
                return
            lookup, self.lookup = self.lookup, None
            if not lookup.addresses:
                self._lost(f"cannot find {self.host}: {lookup.error}", connected=False)
                return
            self.addresses = list(lookup.addresses)
        self.brain.connecting(self.address)
        addr = self.addresses.pop(0)
        sock = socket.socket(socket.AF_INET6 if len(addr) == 4 else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            self._lost(os.strerror(err).lower(), connected=False)
            return
        self.sock, self.is_connected, self.connect_started = sock, False, now

    def _check_connect(self, now: float) -> None:
        sock = self.sock
        assert sock is not None
        _, writable, failed = select.select([], [sock], [sock], 0)
        if writable or failed:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._lost(os.strerror(err).lower(), connected=False)
                return
            if self.tls is not None:
                import ssl

                self.tls_in, self.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                self.tls_obj = self.tls.wrap_bio(self.tls_in, self.tls_out,
                                                 server_hostname=self.server_hostname)
                self.out.clear()
                self._handshake(now)
                return
            self.is_connected = True
            self.last_data = now
            self.out.clear()
            self.brain.connected()
            self.flush()
        elif now - self.connect_started > self.CONNECT_TIMEOUT_S:
            self._lost(f"no answer within {self.CONNECT_TIMEOUT_S:g} s", connected=False)

    def _handshake(self, now: float) -> None:
        """Advance the TLS handshake with what has arrived; joined as plain once done."""
        import ssl

        sock, obj, incoming = self.sock, self.tls_obj, self.tls_in
        assert sock is not None and obj is not None and incoming is not None
        for _ in range(self.READS_PER_POLL):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lost(f"TLS handshake: {(exc.strerror or str(exc)).lower()}",
                           connected=False)
                return
            if not data:
                self._lost("the server closed the connection during the TLS handshake "
                           "(does it speak TLS?)", connected=False)
                return
            incoming.write(data)
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self._tls_flush()  # our alert, if OpenSSL made one
            why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            self._lost(f"TLS: {why}", connected=False)
            return
        self._tls_flush()
        if done:
            self.is_connected = True
            self.last_data = now
            self.brain.connected()
            self.flush()
        elif now - self.connect_started > self.CONNECT_TIMEOUT_S:
            self._lost(f"no TLS handshake within {self.CONNECT_TIMEOUT_S:g} s",
                       connected=False)

    def _tls_flush(self) -> None:
        """Queue and send what OpenSSL wrote (handshake flights, alerts, key updates)."""
        if self.tls_out is not None and self.tls_out.pending:
            self.out += self.tls_out.read()
            self._send()

    def _decrypt(self, data: bytes) -> Optional[bytes]:
        """The plaintext in ``data`` (None: the connection is over, already said)."""
        from netcore.tls import read_plaintext

        obj, incoming = self.tls_obj, self.tls_in
        assert obj is not None and incoming is not None
        incoming.write(data)
        plain, ended = read_plaintext(obj)
        if ended is not None:
            self._lost("the server closed the connection" if ended == "closed" else ended)
            return None
        self._tls_flush()
        return plain

    # -- playing -----------------------------------------------------------------

    def _read(self, now: float) -> None:
        sock, brain = self.sock, self.brain
        assert sock is not None
        joining = brain.state == ClientState.JOINING
        for _ in range(self.READS_PER_POLL):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lost((exc.strerror or str(exc)).lower())
                return
            if not data:
                self._lost("the server closed the connection")
                return
            self.last_data = now
            if self.tls_obj is not None:
                plain = self._decrypt(data)
                if plain is None:
                    return
                data = plain
            try:
                brain.feed(data)
            except ProtocolError as exc:
                self._lost(f"bad data from the server ({exc})")
                return
        if joining and brain.state == ClientState.PLAYING:
            self.failures = 0
            log.info("joined %s as player %d at %s holding %s%s", self.address, brain.player_id,
                     brain.server_pos, brain.letters, " (resumed)" if brain.resumed else "")
        if now - self.last_data > self.SILENCE_S:
            self._lost(f"nothing from the server for {self.SILENCE_S:g} s")

    def _lost(self, why: str, connected: bool = True) -> None:
        """The attempt or connection is over: try the next address, or back off."""
        self._close()
        brain = self.brain
        if not connected and self.addresses:
            self.retry_at = self.clock()  # another address of the same host: at once
            return
        self.addresses = []
        if brain.give_up:
            log.warning("%s: %s; not reconnecting", why, brain.error)
            brain.disconnected(why, None)
            return
        delay = min(self.BACKOFF_MAX_S, self.BACKOFF_MIN_S * 2 ** min(self.failures, 16))
        self.failures += 1
        self.retry_at = self.clock() + delay
        log.info("%s: %s; retrying in %.1f s", self.address, why, delay)
        brain.disconnected(why, self.retry_at)

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.is_connected = False
        self.out.clear()
        self.tls_obj = self.tls_in = self.tls_out = None


# =============================================================================
# View: the desktop client's window. Its looks, then Tk.
# =============================================================================

# -----------------------------------------------------------------------------
# View: the looks. Layout, colours, shapes; no Tk needed.
# -----------------------------------------------------------------------------

# The window's layout, in logical pixels; the whole picture scales to fit.
VIEW_W, VIEW_H = 760, 470
BOARD_X0, BOARD_Y0 = 20, 20  # the board's top-left corner, as the original's 24,24
PANEL_X, PANEL_W = BOARD_X0 + BOARD_W + 22, 230
# Colours: a dark room, a parchment board that warms up where the crowd is.
TK_BG = "#161b24"
TK_BOX = "#1f2632"
TK_LINE = "#313a48"
TK_TEXT = "#ece8e1"
TK_MUTED = "#8d96a5"
TK_GOOD = "#2fbf71"
TK_BAD = "#ff6b6b"
TK_WARN = "#f5b942"
TK_ATTRACTOR = "#19b5fe"
TK_CELL = (0xF4, 0xEC, 0xDA)
TK_CROWD = ((0xF7, 0xCF, 0x9A), (0xEE, 0x8A, 0x45), (0xC8, 0x3A, 0x2E), (0x8E, 0x1F, 0x3A))
TK_FLASH = (0xFF, 0xF0, 0x6A)
TK_INK = "#2a2118"


if TYPE_CHECKING:
    _Anchor = Literal["nw", "n", "ne", "w", "center", "e", "sw", "s", "se"]


def view_transform(width: float, height: float) -> Tuple[float, float, float]:
    """(scale, x offset, y offset) mapping the logical view into a window."""
    scale = max(0.05, min(width / VIEW_W, height / VIEW_H))
    return scale, (width - VIEW_W * scale) / 2, (height - VIEW_H * scale) / 2


def _hex(rgb: Sequence[float]) -> str:
    return "#%02x%02x%02x" % tuple(max(0, min(255, int(round(c)))) for c in rgb)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Tuple[float, ...]:
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def crowd_rgb(heat: float) -> Tuple[float, ...]:
    """Parchment at 0, through peach (a fair share) and orange to crimson at 1."""
    if heat <= 0:
        return TK_CELL
    stops = (TK_CELL,) + TK_CROWD
    pos = min(heat, 1.0) * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    return _mix(stops[i], stops[i + 1], pos - i)


def crowd_heat(count: int, total: int) -> float:
    """0..1: a cell with three times its fair share of the players is as hot as it gets.

    Read from the complete per-cell counts, so 15,000 players shade the
    board as clearly as 15, with no marker per player.
    """
    if count <= 0 or total <= 0:
        return 0.0
    return min(1.0, count / total * CELLS / 3.0)


def _fmt_duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min {seconds % 60:02d} s"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def _fmt_kib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "n/a"


def _shape_points(shape: int, x: float, y: float, r: float) -> List[float]:
    """A marker's outline: a bounding box for a circle, polygon points otherwise."""
    if shape == 1:  # square
        s = r * 0.86
        return [x - s, y - s, x + s, y - s, x + s, y + s, x - s, y + s]
    if shape == 2:  # triangle
        return [x, y - r * 1.1, x + r, y + r * 0.7, x - r, y + r * 0.7]
    if shape == 3:  # diamond
        return [x, y - r * 1.15, x + r, y, x, y + r * 1.15, x - r, y]
    return [x - r, y - r, x + r, y + r]


# -----------------------------------------------------------------------------
# View: the Tk window (Tk is imported only here). TkView, run_client().
# -----------------------------------------------------------------------------


class TkView:
    """Draws a :class:`ClientBrain` on a Tk canvas, 25 frames a second.

    Items are made once per window size and then only moved and recoloured,
    and only when their looks change, so 300 easing markers stay cheap. A
    click on the board becomes a move.
    """

    FRAME_MS = 40
    OTHER_R, OWN_R = 6.0, 10.5

    def __init__(self, root: "tkinter.Tk", brain: ClientBrain, net: NetClient) -> None:
        import tkinter

        self.root, self.brain, self.net = root, brain, net
        self.canvas = tkinter.Canvas(root, width=VIEW_W, height=VIEW_H, bg=TK_BG,
                                     highlightthickness=0, cursor="crosshair")
        self.canvas.pack(fill="both", expand=True)
        self.canvas.bind("<Configure>", self._on_resize)
        self.canvas.bind("<Button-1>", self._on_click)
        self.size = (VIEW_W, VIEW_H)
        self.scale, self.ox, self.oy = 1.0, 0.0, 0.0
        self.closed = False
        self.title = ""
        self.ids: Dict[str, int] = {}
        self.cells: List[Dict[str, int]] = []
        self.tiles: List[Dict[str, int]] = []
        self.stat_values: List[int] = []
        self.markers: Dict[int, Tuple[int, int]] = {}  # player id -> (item, shape)
        self.who_shape = -1
        self.bar_y = 0.0
        self._looks: Dict[int, Dict[str, Any]] = {}
        self._coords: Dict[int, List[float]] = {}
        self._build()

    # -- geometry ------------------------------------------------------------------

    def _xy(self, x: float, y: float) -> Tuple[float, float]:
        return self.ox + x * self.scale, self.oy + y * self.scale

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> List[float]:
        return [*self._xy(x0, y0), *self._xy(x1, y1)]

    def _font(self, px: float, bold: bool = False) -> Tuple[str, int, str]:
        return ("Helvetica", -max(6, int(round(px * self.scale))), "bold" if bold else "normal")

    def _on_resize(self, event: "tkinter.Event[tkinter.Canvas]") -> None:
        if (event.width, event.height) != self.size:
            self.size = (event.width, event.height)
            self._build()

    def _on_click(self, event: "tkinter.Event[tkinter.Canvas]") -> None:
        bx = (event.x - self.ox) / self.scale - BOARD_X0
        by = (event.y - self.oy) / self.scale - BOARD_Y0
        if 0 <= bx < BOARD_W and 0 <= by < BOARD_H and self.brain.click(bx, by):
            self.net.flush()

    # -- making the items (once per window size) ----------------------------------

    def _text(self, x: float, y: float, px: float, bold: bool = False, anchor: _Anchor = "nw",
              fill: str = TK_TEXT, text: str = "", tags: str = "") -> int:
        return self.canvas.create_text(*self._xy(x, y), text=text, anchor=anchor, tags=tags,
                                       fill=fill, font=self._font(px, bold))

    def _build(self) -> None:
        c = self.canvas
        c.delete("all")
        self._looks.clear()
        self._coords.clear()
        self.markers.clear()
        self.scale, self.ox, self.oy = view_transform(*self.size)
        s = self.scale
        ids = self.ids = {}
        # The board: cells, the letters you hold ringed in green, crowd counts.
        c.create_rectangle(*self._box(BOARD_X0 - 4, BOARD_Y0 - 4, BOARD_X0 + BOARD_W + 4,
                                      BOARD_Y0 + BOARD_H + 4), fill=TK_LINE, outline="")
        self.cells = []
        for cell in range(CELLS):
            x0 = BOARD_X0 + (cell % COLS) * CELL_PX
            y0 = BOARD_Y0 + (cell // COLS) * CELL_PX
            cx, cy = x0 + CELL_PX / 2, y0 + CELL_PX / 2
            self.cells.append({
                "bg": c.create_rectangle(*self._box(x0 + 1, y0 + 1, x0 + CELL_PX - 1,
                                                    y0 + CELL_PX - 1), outline=""),
                "ring": c.create_rectangle(*self._box(x0 + 6, y0 + 6, x0 + CELL_PX - 6,
                                                      y0 + CELL_PX - 6),
                                           outline=TK_GOOD, width=max(1, 3 * s), state="hidden"),
                "letter": self._text(cx, cy + 2, 58, True, "center", tags="top"),
                "count": self._text(x0 + 10, y0 + 9, 13, True, tags="top"),
                "mine": self._text(x0 + CELL_PX - 9, y0 + 7, 11, True, "ne", TK_GOOD, tags="top"),
            })
        # The attractor: a pulsing frame, and a ring that closes as it nears scoring.
        ids["pulse"] = c.create_rectangle(0, 0, 0, 0, outline=TK_ATTRACTOR, state="hidden",
                                          tags="top")
        ids["arc_bg"] = c.create_oval(0, 0, 0, 0, outline="", width=max(1, 7 * s),
                                      state="hidden", tags="top")
        ids["arc"] = c.create_arc(0, 0, 0, 0, style="arc", start=90, outline=TK_ATTRACTOR,
                                  width=max(1, 7 * s), state="hidden", tags="top")
        ids["countdown_bg"] = c.create_rectangle(0, 0, 0, 0, fill=TK_BG, outline=TK_ATTRACTOR,
                                                 state="hidden", tags="top")
        ids["countdown"] = self._text(0, 0, 11, True, "center", TK_ATTRACTOR, tags="top")
        # Our own marker wears a halo, so it is found at a glance in any crowd.
        ids["halo_dark"] = c.create_oval(0, 0, 0, 0, outline="#10141b", width=max(1, 5 * s),
                                         state="hidden", tags="me")
        ids["halo"] = c.create_oval(0, 0, 0, 0, outline="#ffffff", width=max(1, 2.5 * s),
                                    state="hidden", tags="me")
        # A card over the (dimmed) board while there is no game to show.
        mid_x, mid_y = BOARD_X0 + BOARD_W / 2, BOARD_Y0 + BOARD_H / 2
        ids["veil"] = c.create_rectangle(*self._box(mid_x - 200, mid_y - 62, mid_x + 200,
                                                    mid_y + 62),
                                         fill=TK_BOX, width=max(1, 2 * s), tags="veil")
        ids["veil_title"] = self._text(mid_x, mid_y - 10, 26, True, "s", tags="veil")
        ids["veil_text"] = self._text(mid_x, mid_y + 2, 13, False, "n", tags="veil")
        c.itemconfigure(ids["veil_text"], width=370 * s, justify="center")
        # Below the board: the connection's status, the server's error, a hint.
        y = BOARD_Y0 + BOARD_H + 22
        ids["dot"] = c.create_oval(*self._box(BOARD_X0, y - 5, BOARD_X0 + 10, y + 5), outline="")
        ids["status"] = self._text(BOARD_X0 + 18, y, 13, False, "w")
        ids["error"] = self._text(BOARD_X0, y + 22, 12, False, "w", TK_BAD)
        ids["hint"] = self._text(BOARD_X0, y + 44, 11, False, "w", TK_MUTED,
                                 "Click to move. Crowd into a cell whose letter you hold: "
                                 "it scores when the blue ring closes.")
        c.itemconfigure(ids["hint"], width=BOARD_W * s)
        self._build_panel()

    def _build_panel(self) -> None:
        c, ids, x = self.canvas, self.ids, PANEL_X
        right = x + PANEL_W
        self._text(x, BOARD_Y0 - 4, 25, True, text="SpellTraction")
        ids["who"] = self._text(x + 20, BOARD_Y0 + 40, 12, False, "w", TK_MUTED)
        ids["who_mark"] = c.create_oval(0, 0, 0, 0, state="hidden")
        self.who_shape = -1
        self._text(x, BOARD_Y0 + 62, 11, True, fill=TK_MUTED, text="YOUR LETTERS")
        self.tiles = []
        tile, gap = 64, (PANEL_W - 3 * 64) / 2
        for i in range(HAND_SIZE):
            tx = x + i * (tile + gap)
            ty = BOARD_Y0 + 80
            self.tiles.append({
                "bg": c.create_rectangle(*self._box(tx, ty, tx + tile, ty + tile),
                                         width=max(1, 3 * self.scale)),
                "letter": self._text(tx + tile / 2, ty + tile / 2 + 1, 40, True, "center", TK_INK),
            })
        y = BOARD_Y0 + 160
        self._text(x, y + 14, 11, True, "w", TK_MUTED, "SCORE")
        ids["score"] = self._text(right, y + 14, 28, True, "e")
        y += 44
        self._text(x, y, 11, True, fill=TK_MUTED, text="ATTRACTOR")
        ids["attr_text"] = self._text(x, y + 18, 12)
        self.bar_y = y + 40
        ids["bar_bg"] = c.create_rectangle(*self._box(x, y + 40, right, y + 48), fill=TK_BOX,
                                           outline="")
        ids["bar"] = c.create_rectangle(0, 0, 0, 0, fill=TK_ATTRACTOR, outline="")
        ids["scored"] = self._text(x, y + 56, 12, True)
        y += 86
        c.create_rectangle(*self._box(x, y, right, VIEW_H - 20), fill=TK_BOX, outline=TK_LINE)
        self._text(x + 12, y + 10, 11, True, fill=TK_MUTED, text="SERVER")
        self.stat_values = []
        for i, label in enumerate(("Players", "Connections", "Uptime", "Memory now",
                                   "Memory at start", "Tick lateness p99")):
            row = y + 34 + i * 20
            self._text(x + 12, row, 12, False, "w", TK_MUTED, label)
            self.stat_values.append(self._text(right - 12, row, 12, True, "e"))

    # -- each frame: move and recolour what changed --------------------------------

    def _set(self, item: int, **looks: Any) -> None:
        old = self._looks.setdefault(item, {})
        changed = {k: v for k, v in looks.items() if old.get(k) != v}
        if changed:
            self.canvas.itemconfigure(item, **changed)
            old.update(changed)

    def _move(self, item: int, coords: List[float]) -> None:
        coords = [round(v, 1) for v in coords]
        if self._coords.get(item) != coords:
            self.canvas.coords(item, *coords)
            self._coords[item] = coords

    def start(self) -> None:
        self._frame()

    def close(self) -> None:
        self.closed = True

    def _frame(self) -> None:
        if self.closed:
            return
        try:
            self.brain.animate()
            self.draw()
        finally:
            self.root.after(self.FRAME_MS, self._frame)

    def draw(self) -> None:
        b = self.brain
        playing = b.state == ClientState.PLAYING
        self._draw_board(b, playing)
        self._draw_attractor(b, playing)
        self._draw_markers(b)
        self._draw_panel(b, playing)
        self._draw_status(b, playing)
        title = (f"SpellTraction: player #{b.player_id} on {b.address}" if playing
                 else "SpellTraction")
        if title != self.title:
            self.title = title
            self.root.title(title)

    def _draw_board(self, b: ClientBrain, playing: bool) -> None:
        total = sum(b.counts)
        hand = set(b.letters)
        for cell, it in enumerate(self.cells):
            count = b.counts[cell]
            heat = crowd_heat(count, total)
            rgb = _mix(crowd_rgb(heat), TK_FLASH, b.flash(b.cell_flash[cell]))
            letter = b.board[cell] if b.board else ""
            yours = playing and letter in hand
            ink = "#fffaf0" if heat > 0.55 else TK_INK
            if not playing:  # the last board we saw, dimmed: it may be out of date
                rgb, ink = _mix(TK_CELL, (0x16, 0x1B, 0x24), 0.78), "#5d6470"
            self._set(it["bg"], fill=_hex(rgb))
            self._set(it["letter"], text=letter, fill=ink)
            self._set(it["count"], text=f"{count:,}" if count else "",
                      fill="#fffaf0" if heat > 0.55 else "#5c4a36")
            self._set(it["ring"], state="normal" if yours else "hidden")
            self._set(it["mine"], text="yours" if yours else "")

    def _draw_attractor(self, b: ClientBrain, playing: bool) -> None:
        ids = self.ids
        parts = ("pulse", "arc_bg", "arc", "countdown_bg", "countdown")
        if not playing or b.attractor == PARKED or not 0 <= b.attractor < CELLS:
            for name in parts:
                self._set(ids[name], state="hidden")
            return
        x0 = BOARD_X0 + (b.attractor % COLS) * CELL_PX
        y0 = BOARD_Y0 + (b.attractor // COLS) * CELL_PX
        cx, cy = x0 + CELL_PX / 2, y0 + CELL_PX / 2
        pulse = 0.5 + 0.5 * math.sin(b.clock() * 2 * math.pi * 1.4)
        inset = 2 + 2 * pulse
        self._move(ids["pulse"], self._box(x0 + inset, y0 + inset, x0 + CELL_PX - inset,
                                           y0 + CELL_PX - inset))
        self._set(ids["pulse"], width=max(1.0, round((2.5 + 3 * pulse) * self.scale, 1)))
        r = 40
        self._move(ids["arc_bg"], self._box(cx - r, cy - r, cx + r, cy + r))
        self._move(ids["arc"], self._box(cx - r, cy - r, cx + r, cy + r))
        cell_fill = crowd_rgb(crowd_heat(b.counts[b.attractor], sum(b.counts)))
        self._set(ids["arc_bg"], outline=_hex(_mix(cell_fill, (0, 0, 0), 0.14)))
        self._set(ids["arc"], extent=-min(359.9, 360 * b.countdown()))
        label_y = y0 + CELL_PX - 13
        self._move(ids["countdown_bg"], self._box(cx - 21, label_y - 8, cx + 21, label_y + 8))
        self._move(ids["countdown"], list(self._xy(cx, label_y)))
        self._set(ids["countdown"], text=f"{b.seconds_to_score():.1f} s")
        for name in parts:
            self._set(ids[name], state="normal")

    def _draw_markers(self, b: ClientBrain) -> None:
        seen = set()
        for m in b.markers.values():
            self._draw_marker(m.pid, m, self.OTHER_R, "#1d1d1d", 1.0)
            seen.add(m.pid)
        me = b.me
        for name in ("halo_dark", "halo"):
            self._set(self.ids[name], state="hidden" if me is None else "normal")
        if me is not None:
            self._draw_marker(0, me, self.OWN_R, "#10141b", 2.0)  # ids start at 1: 0 is us
            seen.add(0)
            r = self.OWN_R + 7
            halo = self._box(BOARD_X0 + me.x - r, BOARD_Y0 + me.y - r, BOARD_X0 + me.x + r,
                             BOARD_Y0 + me.y + r)
            self._move(self.ids["halo_dark"], halo)
            self._move(self.ids["halo"], halo)
        for pid in [p for p in self.markers if p not in seen]:
            self.canvas.delete(self.markers.pop(pid)[0])
        # Stacking, bottom up: cells, others' markers, letters and the attractor,
        # our own marker, and the veil that covers the board when offline.
        self.canvas.tag_raise("top")
        self.canvas.tag_raise("me")
        if 0 in self.markers:
            self.canvas.tag_raise(self.markers[0][0])
        self.canvas.tag_raise("veil")

    def _draw_marker(self, key: int, m: Marker, r: float, outline: str, width: float) -> None:
        x, y = self._xy(BOARD_X0 + m.x, BOARD_Y0 + m.y)
        points = _shape_points(m.shape, x, y, r * self.scale)
        known = self.markers.get(key)
        if known is None or known[1] != m.shape:
            if known is not None:
                self.canvas.delete(known[0])
            make = self.canvas.create_oval if len(points) == 4 else self.canvas.create_polygon
            item = make(*points, outline=outline, width=max(1.0, width * self.scale))
            self.markers[key] = (item, m.shape)
        item = self.markers[key][0]
        self._move(item, points)
        self._set(item, fill=_hex(_rgb(m.colour)))

    def _draw_panel(self, b: ClientBrain, playing: bool) -> None:
        ids = self.ids
        w = b.welcome
        who = (f"player #{b.player_id}, {SHAPES[w.shape] if w.shape < len(SHAPES) else 'marker'}"
               if playing and w is not None else "not in a game")
        self._set(ids["who"], text=who)
        if playing and w is not None and self.who_shape != w.shape:
            self.canvas.delete(ids["who_mark"])
            pts = _shape_points(w.shape, *self._xy(PANEL_X + 7, BOARD_Y0 + 40), 6 * self.scale)
            make = self.canvas.create_oval if len(pts) == 4 else self.canvas.create_polygon
            ids["who_mark"] = make(*pts, fill=_hex(_rgb(w.colour)), outline="#ffffff")
            self.who_shape = w.shape
        self._set(ids["who_mark"], state="normal" if playing else "hidden")
        board = set(b.board)
        for i, tile in enumerate(self.tiles):
            letter = b.letters[i] if i < len(b.letters) else ""
            flash = b.flash(b.hand_flash[i])
            self._set(tile["bg"], fill=_hex(_mix(TK_CELL if letter else (0x1F, 0x26, 0x32), TK_FLASH, flash)),
                      outline=TK_GOOD if letter and letter in board else TK_LINE)
            self._set(tile["letter"], text=letter)
        self._set(ids["score"], text=f"{b.score:,}" if playing else "-",
                  fill=_hex(_mix((0xEC, 0xE8, 0xE1), TK_FLASH, b.flash(b.score_flash))))
        self._draw_countdown(b, playing)
        stats = b.stats
        values = ["-"] * 6
        if stats is not None:
            values = [f"{b.players or stats.players:,}", f"{stats.connections:,}",
                      _fmt_duration(b.uptime_s()), _fmt_kib(stats.rss_kb),
                      _fmt_kib(stats.start_rss_kb), f"{stats.tick_p99_us / 1000:.1f} ms"]
        for item, value in zip(self.stat_values, values):
            self._set(item, text=value)

    def _draw_countdown(self, b: ClientBrain, playing: bool) -> None:
        ids = self.ids
        holding = playing and b.attractor != PARKED and 0 <= b.attractor < CELLS
        if holding:
            letter = b.board[b.attractor] if b.board else "?"
            text = f"holding {letter}: scores in {b.seconds_to_score():.1f} s"
        elif playing:
            text = "parked: waiting for one biggest crowd"
        else:
            text = "-"
        self._set(ids["attr_text"], text=text, fill=TK_TEXT if holding else TK_MUTED)
        fill = b.countdown() if holding else 0.0
        self._move(ids["bar"], self._box(PANEL_X, self.bar_y, PANEL_X + PANEL_W * fill,
                                         self.bar_y + 8))
        self._set(ids["bar"], state="normal" if fill > 0 else "hidden")
        scored = b.scored
        if scored is not None and playing:
            players = "player" if scored.scorers == 1 else "players"
            flash = b.flash(b.scored_at)
            self._set(ids["scored"], text=f"{scored.old} scored for {scored.scorers:,} {players}",
                      fill=_hex(_mix((0x8D, 0x96, 0xA5), TK_FLASH, flash)))
        else:
            self._set(ids["scored"], text="")

    def _draw_status(self, b: ClientBrain, playing: bool) -> None:
        ids = self.ids
        state = b.state
        colour = TK_GOOD if playing else TK_WARN if state in (ClientState.CONNECTING, ClientState.JOINING) else TK_BAD
        self._set(ids["dot"], fill=colour)
        self._set(ids["status"], text=b.status_line())
        self._set(ids["error"], text=f"Server said: {b.error}" if b.error else "")
        if b.fame:  # the hall of fame takes the hint's place once there is one
            top = " · ".join(f"{i}. {name or f'#{pid}'} {score}"
                             for i, (pid, score, name) in enumerate(b.fame[:5], 1))
            self._set(ids["hint"], text=f"Hall of fame: {top}", fill=TK_ATTRACTOR)
        veiled = "hidden" if playing else "normal"
        for name in ("veil", "veil_title", "veil_text"):
            self._set(ids[name], state=veiled)
        if not playing:
            title = {ClientState.WAITING: "Server gone" if b.had_game else "No server",
                     ClientState.STOPPED: "Disconnected"}.get(state, "Connecting...")
            lines = [b.status_line()] + ([f"Server said: {b.error}"] if b.error else [])
            self._set(ids["veil_title"], text=title, fill=colour)
            self._set(ids["veil"], outline=colour)
            self._set(ids["veil_text"], text="\n".join(lines))


class ClientOptions(NamedTuple):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    shape: int = ANY_SHAPE
    colour: int = ANY_COLOUR
    geometry: str = ""  # Tk geometry, e.g. "760x470+0+0"
    name: str = ""  # shown in the hall of fame
    state: str = ""  # the resume-token file; "" = client_state_path()
    new_player: bool = False  # ignore the saved token: start as a new player
    tls: bool = False  # speak TLS to the server (its certificate checked, unless insecure)
    ca: Optional[str] = None  # trust this CA file (PEM) instead of the system's
    insecure: bool = False  # TLS without checking the certificate at all


def client_state_path() -> str:
    """Where the desktop client keeps its resume tokens: the XDG state directory."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "spelltraction", "client.json")


class ClientTokens:
    """The desktop client's resume tokens, one per server (``host:port``), in a small file.

    Written atomically, mode 0600 (a token is the player). A missing or
    unreadable file is no token: the client plays as a new player.
    """

    def __init__(self, path: str, server: str) -> None:
        self.path = path
        self.server = server

    def _all(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return dict(data) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def load(self) -> bytes:
        entry = self._all().get("servers", {}).get(self.server, {})
        try:
            token = bytes.fromhex(entry.get("token", ""))
        except (ValueError, AttributeError):
            return b""
        return token if len(token) == TOKEN_SIZE else b""

    def save(self, token: bytes) -> None:
        data = self._all()
        data.setdefault("servers", {})[self.server] = {"token": token.hex(), "saved": time.time()}
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            process.write_private_json(self.path, data)
        except OSError as exc:
            log.warning("cannot save the resume token to %s: %s", self.path, exc)


def client_tls(opts: Union[ClientOptions, BotOptions]) -> Optional["ssl.SSLContext"]:
    """The client's (or the bots') TLS context from --tls, --ca, --insecure (None: plain).

    Raises ValueError saying what is wrong (a CA file that cannot be read, by name).
    """
    if not opts.tls:
        if opts.ca or opts.insecure:
            raise ValueError("--ca and --insecure are for TLS: add --tls")
        return None
    if opts.ca and opts.insecure:
        raise ValueError("--ca or --insecure, not both: --insecure checks nothing")
    from netcore.tls import client_context

    return client_context(opts.ca, insecure=opts.insecure)


def run_client(opts: ClientOptions) -> int:
    """Open the window and play until it is closed (or SIGINT/SIGTERM)."""
    try:
        tls = client_tls(opts)
    except ValueError as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2
    try:
        import tkinter
    except ImportError:
        print("the client needs Tk (Debian/Ubuntu: apt-get install python3-tk)", file=sys.stderr)
        return 2
    try:
        root = tkinter.Tk(className="SpellTraction")
    except tkinter.TclError as exc:
        print(f"cannot open a window: {exc}", file=sys.stderr)
        return 2
    root.title("SpellTraction")
    root.configure(bg=TK_BG)
    root.minsize(VIEW_W // 2, VIEW_H // 2)
    if opts.geometry:
        root.geometry(opts.geometry)
    tokens = ClientTokens(opts.state or client_state_path(), f"{opts.host}:{opts.port}")
    brain = ClientBrain(opts.shape, opts.colour, PROTOCOL_V2, name=opts.name,
                        token=b"" if opts.new_player else tokens.load(), on_token=tokens.save)
    net = NetClient(brain, opts.host, opts.port,
                    lambda delay, fn: root.after(max(1, int(delay * 1000)), fn), tls=tls)
    view = TkView(root, brain, net)

    def close(*_: object) -> None:
        if view.closed:
            return  # the window's close button and a signal may both ask
        view.close()
        net.stop()
        root.destroy()

    root.protocol("WM_DELETE_WINDOW", close)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: root.after_idle(close))
    net.start()
    view.start()
    root.mainloop()
    return 0


# =============================================================================
# Operations: doctor (can this host hold N clients?) and bundle (one file).
# =============================================================================

# -----------------------------------------------------------------------------
# Operations: doctor, the host's facts. Limits, sysctls, free memory.
# -----------------------------------------------------------------------------

# The host's facts are read, and judged, by netcore.hostcheck (imported when
# doctor runs: a server never carries it); the game gives its figures, where
# its fixes go, and the sentences that name its own tools.
if TYPE_CHECKING:
    from netcore.hostcheck import Check, HostFacts, HostNeeds, RedisProbe

SYSCTL_FILE = "/etc/sysctl.d/60-spelltraction.conf"
LIMITS_FILE = "/etc/security/limits.d/spelltraction.conf"
UNIT_FILE = "/etc/systemd/system/spelltraction.service"

# Memory budgets per client connection behind doctor's estimates, with room
# over what a 2-core Linux 6.x box measured: this server ~0.9 KB of RSS per
# player (898 B, ``python3 bench/capacity.py --server all``: "RSS per
# player"), the kernel ~3.5 KB of slab per idle TCP socket (3,490 B median,
# ``python3 bench/kernel_per_socket.py``); buffers hold a tick or two of frames.
USER_BYTES_PER_CLIENT = 2048
KERNEL_BYTES_PER_SOCKET = 6144
BUFFER_BYTES_PER_SOCKET = 4096
BASE_BYTES = 64 << 20  # the interpreter, the game, headroom


def doctor_needs(clients: int, backlog: int = DEFAULT_BACKLOG) -> HostNeeds:
    """What one game server holding ``clients`` needs of its host, in doctor's words."""
    from netcore.hostcheck import HostNeeds

    return HostNeeds(
        clients, FD_RESERVE, backlog, USER_BYTES_PER_CLIENT, KERNEL_BYTES_PER_SOCKET,
        BUFFER_BYTES_PER_SOCKET, BASE_BYTES, SYSCTL_FILE, LIMITS_FILE, "spelltraction",
        UNIT_FILE,
        spread="spread them over {processes} server processes, each on its own --port with "
               "--max-clients {per_process} (each is its own game)",
        port_users="`bots` from 127.0.0.1 here, or nginx proxying WebSockets to the game "
                   "port (one upstream connection per client)",
        file_max_note="bots on the same host need as many again")


def read_host_facts(root: str = "/", clients: int = 0,
                    rlimit: Optional[Callable[[], Tuple[int, int]]] = None,
                    may_raise: Optional[Callable[[int], bool]] = None) -> HostFacts:
    """Everything doctor checks, from ``root``/proc (a fake tree in tests); ``rlimit``
    and ``may_raise`` stand in for this process's open-files limit."""
    from netcore import hostcheck

    return hostcheck.read_host_facts(root, clients + FD_RESERVE,
                                     rlimit or hostcheck.nofile_limits,
                                     may_raise or hostcheck.may_raise_nofile_hard)


# -----------------------------------------------------------------------------
# Operations: doctor, the checks and the report (the checks: netcore.hostcheck).
# -----------------------------------------------------------------------------


def doctor_checks(facts: HostFacts, clients: int, backlog: int = DEFAULT_BACKLOG) -> List[Check]:
    """What will and will not let ``clients`` connect to one server process."""
    from netcore.hostcheck import host_checks

    return host_checks(facts, doctor_needs(clients, backlog))


def print_doctor_report(checks: Sequence[Check], clients: int, facts: HostFacts,
                        out: IO[str]) -> None:
    from netcore.hostcheck import verdict, write_checks

    w = out.write
    w(f"SpellTraction doctor: {clients} clients in one server process on this host?\n")
    w("(read from /proc/sys and the limits of this shell; under systemd the unit's "
      "LimitNOFILE= applies instead)\n\n")
    write_checks(checks, out)
    w("\n")
    wheres = {f.where for c in checks for f in c.fixes}
    if any(where.startswith(SYSCTL_FILE) for where in wheres):
        w(f"sysctl lines: add them to {SYSCTL_FILE} (see etc/sysctl.d/ in the source), "
          "then run: sysctl --system\n")
    if any(where.startswith(UNIT_FILE) for where in wheres):
        w("unit lines: systemctl daemon-reload && systemctl restart spelltraction\n")
    w(verdict(checks, clients) + "\n")


def run_doctor(clients: int, out: Optional[IO[str]] = None, as_json: bool = False,
               root: str = "/", rlimit: Optional[Callable[[], Tuple[int, int]]] = None,
               may_raise: Optional[Callable[[int], bool]] = None,
               redis: Optional[RedisAddress] = None) -> int:
    """Print the report; 1 if anything blocks ``clients`` (or the Redis bus), else 0."""
    from netcore.hostcheck import BLOCK, checks_json, probe_redis

    out = out if out is not None else sys.stdout
    facts = read_host_facts(root, clients, rlimit, may_raise)
    checks = doctor_checks(facts, clients)
    if redis is not None:
        checks += redis_checks(probe_redis(redis, name="spelltraction-doctor"), redis)
    if as_json:
        out.write(checks_json(checks, clients) + "\n")
    else:
        print_doctor_report(checks, clients, facts, out)
    return 1 if any(c.status == BLOCK for c in checks) else 0


# -----------------------------------------------------------------------------
# Operations: doctor, the Redis bus (--redis). Reachable, fast, configured.
# -----------------------------------------------------------------------------

REDIS_CONF = "/etc/redis/spelltraction.conf (etc/redis/ in the source)"
# PING round trips past these make the bus a visible part of a 250 ms tick.
REDIS_MEDIAN_MS, REDIS_WORST_MS = 2.0, 20.0
REDIS_MIN_PUBSUB_HARD = 8 << 20  # a stalled gateway's backlog of ticks


def redis_checks(probe: RedisProbe, address: RedisAddress) -> List[Check]:
    """The bus's checks: it answers (BLOCK if not), quickly, and keeps what it must."""
    from netcore import hostcheck

    return hostcheck.redis_checks(probe, address, hostcheck.RedisNeeds(
        REDIS_CONF, REDIS_MEDIAN_MS, REDIS_WORST_MS, REDIS_MIN_PUBSUB_HARD,
        unreachable="game and gateway retry with backoff and wait, but no world runs "
                    "without the bus. Check that redis-server runs, its bind and port, and the "
                    "password (--redis-password-file or --redis-password-env).",
        slow="every tick crosses the bus twice (moves in, tick out): its round trip is "
             "added to what players see as tick lateness.",
        eviction="the lease and heartbeat keys expire on their own and must never be "
                 "evicted: a full Redis should refuse writes instead.",
        pubsub="Redis cuts a gateway whose unread ticks pass this; it then reconnects and "
               "resynchronises, and its players miss ticks meanwhile."))

# -----------------------------------------------------------------------------
# Operations: bundle. The game, netcore and web/ in one .pyz.
# -----------------------------------------------------------------------------


def build_bundle(output: str, source: str = _HERE) -> List[str]:
    """Write a zipapp of the game, netcore and web/ to ``output``; returns its members.

    Run it with ``python3 spelltraction.pyz [serve|bots|doctor] ...``: the
    one file to copy to an embedded or ARM box (stdlib only, any Python 3.8+).
    """
    import shutil
    import tempfile
    import zipapp

    if not os.path.isfile(os.path.join(source, "spelltraction.py")):
        raise FileNotFoundError(f"bundle builds from the source tree; {source} is not one")
    with tempfile.TemporaryDirectory() as stage:
        shutil.copy2(os.path.join(source, "spelltraction.py"), stage)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
        shutil.copytree(os.path.join(source, "netcore"), os.path.join(stage, "netcore"),
                        ignore=ignore)
        web = os.path.join(source, "web")
        if os.path.isdir(web):
            shutil.copytree(web, os.path.join(stage, "web"), ignore=ignore)
        with open(os.path.join(stage, "__main__.py"), "w") as f:
            f.write("import sys\nimport spelltraction\n\nsys.exit(spelltraction.main())\n")
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        zipapp.create_archive(stage, output, interpreter="/usr/bin/env python3",
                              compressed=True)
    import zipfile

    with zipfile.ZipFile(output) as z:
        return sorted(z.namelist())


# =============================================================================
# CLI: serve (the default), game, gateway, bots, client, doctor, bundle. main().
# =============================================================================


def _setup_logging(level: str, fmt: str = "text") -> RateLimitFilter:
    """Log to stderr, one line per event (``fmt`` "json": one JSON object per line).

    Returns the filter that rate-limits repeated warnings, so the server can
    report what it held back.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    limiter = RateLimitFilter()
    handler.addFilter(limiter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return limiter


def make_loop(opts: ServerOptions) -> EventLoop:
    """The event loop a server process runs on, as ``opts`` asks (poller, coalescing)."""
    return EventLoop(coalesce=opts.coalesce_ms / 1000.0, poller=opts.poller)


def _parse_colour(text: str) -> int:
    try:
        value = int(text.lstrip("#"), 16)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFF or len(text.lstrip("#")) != 6:
        raise argparse.ArgumentTypeError(f"colour must be 6 hex digits RRGGBB, got {text!r}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, without its ``import shutil`` to learn the width.

    That import brings fnmatch, bz2 and lzma into every server that parses
    its command line: 0.6 MiB of a process that runs with ``-S`` (see
    ``_run_as_module``), for a width only ``--help`` uses. The width
    comes from where ``shutil.get_terminal_size`` would look.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        if width is None:
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(1).columns  # standard output
                except (ValueError, OSError):
                    width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and its subcommands' parsers) laid out by ``_HelpFormatter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def add_redis_options(parser: argparse.ArgumentParser, help_url: str) -> None:
    """--redis URL and where its password comes from (never argv)."""
    parser.add_argument("--redis", metavar="URL", default=None,
                        help=help_url + "; redis://[user@]host:port[/db] (a numeric host, or a "
                        "name resolved once at start); rediss://... speaks TLS (Redis' "
                        "tls-port), checking the server's certificate and name")
    parser.add_argument("--redis-ca", metavar="FILE", default=None,
                        help="rediss://: trust the CA certificates in FILE (PEM) for the Redis "
                        "server's certificate instead of the system's")
    parser.add_argument("--redis-password-file", metavar="FILE", default=None,
                        help="the Redis password: the first line of FILE")
    parser.add_argument("--redis-password-env", metavar="VAR", default=None,
                        help="the Redis password: environment variable VAR")


def redis_address(args: argparse.Namespace) -> Optional[RedisAddress]:
    """The --redis options as an address (names resolved: this blocks), or None."""
    if args.redis is None:
        if args.redis_password_file or args.redis_password_env or args.redis_ca:
            raise ValueError("--redis-password-file/--redis-password-env/--redis-ca need --redis")
        return None
    if args.redis_password_file and args.redis_password_env:
        raise ValueError("give the password by file or by environment, not both")
    from netcore.redis import RedisAddress

    address = RedisAddress.from_url(args.redis, password_file=args.redis_password_file,
                                    password_env=args.redis_password_env,
                                    ca_file=args.redis_ca)
    address.tls_context()  # a CA file that cannot be read: said now (a ValueError)
    return address.resolve()


# -- the options, each written once -----------------------------------------------------------

_FROM_OPTIONS = object()  # Opt.default: the field's default in the options tuple
_REQUIRED = object()  # Opt.default: the option must be given


class Opt(NamedTuple):
    """One command-line option, written once: its flag, default, help, check and the field it sets.

    ``default``: left out, the default of ``field`` in the command's options
    tuple (``ServerOptions``, ``BotOptions``, ``ClientOptions``), so the value
    is written in one place; the help says it with ``%(default)s``. A
    function is called when the parser is built (a default read from the
    environment); ``_REQUIRED``: there is none, the option must be given.
    ``field``: the options field it sets ("" : the flag's name, "-": none).
    ``to(value, args)``: the field's value from the parsed flag (default:
    the value as parsed). ``check(value)``: what is wrong with it ("must be
    at least 1"), or None.
    """

    flag: str
    help: str
    default: Any = _FROM_OPTIONS
    type: Any = None  # argparse's type=, or "store_true"
    field: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None
    to: Optional[Callable[[Any, argparse.Namespace], Any]] = None
    metavar: Optional[str] = None
    choices: Optional[Sequence[Any]] = None
    short: str = ""  # "-o"

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def target(self) -> str:
        return self.field or self.dest


def _at_least(low: float) -> Callable[[float], Optional[str]]:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def _positive(v: float) -> Optional[str]:
    return None if v > 0 else "must be positive"


def _networks(v: str) -> Optional[str]:
    try:
        parse_networks(v)
    except ValueError as exc:
        return f"is not a list of networks: {exc}"
    return None


def _poller_here(kind: str) -> Optional[str]:
    return "epoll needs Linux: use --poller selectors" if (
        kind == "epoll" and not hasattr(select, "epoll")) else None


def _player_name(name: str) -> Optional[str]:
    try:
        check_name(name.encode("utf-8"))
    except ValueError as exc:
        return f"is not a name: {exc}"
    return None


def _procs(text: str) -> int:
    if text == "auto":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto or a number, not {text!r}") from None


_LOG_LEVELS = ("debug", "info", "warning", "error")
_DATA_HELP = ("directory for the players, scores and hall of fame (sqlite3, one server per "
              "directory; created if missing). Default: $STATE_DIRECTORY when set (systemd's "
              "StateDirectory=), else $XDG_STATE_HOME/spelltraction, i.e. "
              "~/.local/state/spelltraction; here: %(default)s")

# The player side (serve, gateway).
NET_OPTS = (
    Opt("--host", "address to listen on (default %(default)s)"),
    Opt("--port", "port (default %(default)s)", type=int),
    Opt("--max-clients", "connection limit; more are told 'server full' (default %(default)s)",
        type=int, check=_at_least(1)),
    Opt("--web-root", "serve the browser client from DIR (default: web/ beside this file)",
        metavar="DIR", to=lambda v, a: v or None),
    Opt("--no-web", "binary protocol only: no HTTP, no WebSocket", False, "store_true",
        field="web", to=lambda v, a: not v),
    Opt("--handshake-timeout", "an HTTP request or WebSocket upgrade must finish within this",
        type=float, metavar="SECONDS", check=_positive),
    Opt("--max-per-address", "connections from one address (IPv6: one /64); 0: no limit "
        "(default %(default)s)", type=int, metavar="N", check=_at_least(0)),
    Opt("--max-pending-per-address", "connections from one address that have not said HELLO "
        "yet (HTTP ones included); 0: no limit (default %(default)s)", type=int, metavar="N",
        check=_at_least(0)),
    Opt("--max-pending", "such pending connections from all addresses together; 0: no limit "
        "(default %(default)s)", type=int, metavar="N", check=_at_least(0)),
    Opt("--exempt", "networks the per-address limits never count (default %(default)s: local "
        "bots); '' to exempt nobody", metavar="CIDR,...", check=_networks),
    Opt("--trusted-proxies", "proxies whose connections may start with a PROXY protocol header "
        "(v1/v2; nginx: proxy_protocol on;) and whose HTTP X-Forwarded-For is believed: either "
        "names the client, whom the per-address limits then count (default: none; the shipped "
        "nginx files connect from 127.0.0.2). From anyone else a PROXY header is refused and "
        "X-Forwarded-For ignored, logged and counted", metavar="CIDR,...", check=_networks),
    Opt("--allowed-origins", "browsers may join from pages of these Origins only, e.g. "
        "https://play.example.org; same-origin: pages of the host the browser asked for (its "
        "Host header); '*': any page. Requests with no Origin (bots, native clients) are always "
        "allowed (default %(default)s)", metavar="ORIGIN,..."),
    Opt("--new-player-burst", "new players (new ids and saved rows) one address may make at "
        "once; --exempt networks are not counted; 0: no limit (default %(default)s)", type=int,
        metavar="N", check=_at_least(0)),
    Opt("--new-player-rate", "...and a second after that burst; returning players are never "
        "counted (default %(default)g)", type=float, metavar="PER_SECOND", check=_at_least(0)),
    Opt("--public-stats", "serve /metrics, /stats and /stats.json on the game port too "
        "(default: only on --admin-port, which is this host's alone)", False, "store_true"),
    Opt("--sndbuf", "SO_SNDBUF of each client socket; the kernel doubles it (default "
        "%(default)s; 0: kernel autotuning, up to ~4 MB each)", type=int, metavar="BYTES",
        check=_at_least(0)),
    Opt("--send-backlog", "cut a client whose unsent backlog stays over this for "
        "--send-backlog-grace seconds (default %(default)s; 0: off)", type=int,
        metavar="BYTES", check=_at_least(0)),
    Opt("--send-backlog-grace", "see --send-backlog (default %(default)g)", type=float,
        metavar="SECONDS", check=_positive),
    Opt("--refuse-rate", "at --max-clients, refuse at most this many connects a second with "
        "SERVER_FULL; the rest wait in the kernel's queue, costing the tick nothing (default "
        "%(default)g; 0: no limit)", type=float, metavar="PER_SECOND", check=_at_least(0)),
    Opt("--tls-cert", "serve TLS (https://, wss://, TLS players) on the game port too, with "
        "this certificate chain (PEM, leaf first: certbot's fullchain.pem); plain players "
        "still join on the same port. SIGHUP reloads it (default: no TLS)", metavar="FILE"),
    Opt("--tls-key", "the private key of --tls-cert (PEM: certbot's privkey.pem)",
        metavar="FILE"),
    Opt("--tls-required", "refuse plain players on the game port (HTTP ones are told to use "
        "https://); needs --tls-cert", False, "store_true"),
)

# Every server process (serve, game, gateway).
COMMON_OPTS = (
    Opt("--tick-ms", "tick period in ms (default %(default)s)", type=int,
        check=lambda v: None if 10 <= v <= 60_000 else "must be between 10 and 60000"),
    Opt("--coalesce-ms", "while busy, read sockets at most once per MS ms, so one poll collects "
        "many players' moves; the most a request or ping waits for it (default %(default)g; 0: "
        "read as soon as anything arrives)", type=float, metavar="MS", check=_at_least(0)),
    Opt("--poller", "what the event loop waits on: epoll (Linux: driven directly, connections "
        "edge-triggered) or selectors (the standard library's selectors.DefaultSelector, "
        "level-triggered) (default %(default)s)", choices=POLLERS, check=_poller_here),
    Opt("--log-level", "(default %(default)s)", "info", field="-", choices=_LOG_LEVELS),
    Opt("--log-format", "text lines, or one JSON object per line (default %(default)s)", "text",
        field="-", choices=("text", "json")),
    Opt("--stats-out", "on exit, write the final figures to FILE as JSON", metavar="FILE"),
    Opt("--admin-port", "serve /healthz, /metrics and /stats on this port too, answered "
        "whatever the game port's state, even when full (default: none; 0: any free port)",
        type=int, metavar="PORT",
        check=lambda v: None if v is None or 0 <= v <= 65535 else "must be 0..65535"),
    Opt("--admin-host", "the admin port's address (default %(default)s: this host only)",
        metavar="ADDRESS"),
)

# The world's rules and store (serve, game).
RULES_OPTS = (
    Opt("--seed", "seed the game's RNG (for replays)", type=int),
    Opt("--data", _DATA_HELP, default_data_dir, metavar="DIR",
        to=lambda v, a: None if a.no_data else v),
    Opt("--allow-shared-data", "use a --data directory that is writable by every user or owned "
        "by another user (refused by default: whoever can write there can replace the store or "
        "its lock)", False, "store_true"),
    Opt("--no-data", "keep everything in memory: a restart forgets every player and score",
        False, "store_true", field="-"),
    Opt("--grace", "how long a dropped player can come back as itself (default %(default)g s)",
        type=float, metavar="SECONDS", check=_at_least(0)),
    Opt("--prune-days", "delete players unseen this long; the hall of fame keeps them (default "
        "%(default)g)", type=float, metavar="DAYS", check=_positive),
    Opt("--sync", "normal (default): every commit survives the server being killed, not a power "
        "cut; full: survives power loss too, an fsync per commit", choices=SYNC_LEVELS),
)

# A world's processes on Redis (game, gateway); --redis and its password: add_redis_options.
CLUSTER_OPTS = (
    Opt("--world", "the world's name: its Redis keys and channels (default %(default)s)",
        "spelltraction", metavar="NAME", field="-"),
)

BOT_OPTS = (
    Opt("--host", "the server (default %(default)s)"),
    Opt("--port", "its port (default %(default)s)", type=int),
    Opt("--count", "bot players (default %(default)s)", type=int, field="n_bots",
        check=_at_least(1)),
    Opt("--move-every", "seconds between each bot's moves (default %(default)g, as the original; "
        f"{DEFAULT_TICK_MS / 1000:g} = every tick)", type=float),
    Opt("--duration", "seconds to hold once all bots are in (default %(default)g)", type=float),
    Opt("--procs", "processes to spread the bots over (default auto: by the fd limit)", "auto",
        type=_procs),
    Opt("--probes", "bots that move every second to measure move->echo latency (default "
        "%(default)s)", type=int),
    Opt("--ramp-timeout", "seconds for every bot to get in (default %(default)g)", type=float),
    Opt("--seed", "seed the bots' RNG", type=int),
    Opt("--json", "end with one line of JSON figures", type="store_true"),
    Opt("--ws", "connect over WebSocket (/ws), as browsers do, instead of TCP",
        type="store_true"),
    Opt("--state", "protocol 2: keep each bot's resume token and last shown score in FILE "
        "(mode 0600, rewritten at least every second); a second run with the same FILE resumes "
        "them, and dropped bots reconnect with backoff", metavar="FILE"),
    Opt("--tls", "speak TLS (TCP, or wss:// with --ws) to a server started with --tls-cert, "
        "checking its certificate against the system's CAs and --host", type="store_true"),
    Opt("--ca", "with --tls: trust the CA certificates in FILE (PEM) instead of the system's",
        metavar="FILE"),
    Opt("--insecure", "with --tls: check no certificate (your own server under test)",
        type="store_true"),
    Opt("--source-addresses", "bind each bot to one of these source addresses, in turn (one "
        "address has ~28,000 ephemeral ports toward one server port); auto (default): "
        f"127.0.0.2, 127.0.0.3, ... for a loopback target past {SOURCE_SPREAD} bots",
        field="sources", metavar="auto|none|ADDR,..."),
    Opt("--log-level", "(default %(default)s)", "warning", field="-", choices=_LOG_LEVELS),
    Opt("--log-format", "(default %(default)s)", "text", field="-", choices=("text", "json")),
)

CLIENT_OPTS = (
    Opt("--host", "server to play on (default %(default)s)"),
    Opt("--port", "its port (default %(default)s)", type=int),
    Opt("--shape", "your marker's shape (default: the server chooses)", None, choices=SHAPES,
        to=lambda v, a: ANY_SHAPE if v is None else SHAPES.index(v)),
    Opt("--colour", "your marker's colour, e.g. ff8800 (default: the server chooses)",
        type=_parse_colour, metavar="RRGGBB"),
    Opt("--geometry", "Tk window geometry, e.g. 760x470+0+0"),
    Opt("--name", "your name in the hall of fame (16 characters)", check=_player_name,
        to=lambda v, a: v.strip()),
    Opt("--new-player", "start as a new player instead of resuming the one saved for this "
        "server (the new one is saved in its place)", type="store_true"),
    Opt("--state", "where to keep the resume token (default: "
        "$XDG_STATE_HOME/spelltraction/client.json)", metavar="FILE"),
    Opt("--tls", "speak TLS to the server (one started with --tls-cert), checking its "
        "certificate against the system's CAs and --host", type="store_true"),
    Opt("--ca", "with --tls: trust the CA certificates in FILE (PEM) instead of the system's",
        metavar="FILE"),
    Opt("--insecure", "with --tls: check nothing (any certificate, any name): encrypted, but "
        "anyone in the middle can read it", type="store_true"),
    Opt("--log-level", "(default %(default)s)", "info", field="-", choices=_LOG_LEVELS),
)

DOCTOR_OPTS = (
    Opt("--clients", "clients one server process should hold (default: the server's default "
        "--max-clients, %(default)s)", DEFAULT_MAX_CLIENTS, int, check=_at_least(1)),
    Opt("--json", "the checks as JSON", False, "store_true"),
    Opt("--root", "read proc/ under this directory instead of / (a fake tree, for tests); the "
        "open-files limit is still this process's", "/"),
)

BUNDLE_OPTS = (
    Opt("--output", "where to write it (default %(default)s)",
        os.path.join("dist", "spelltraction.pyz"), short="-o"),
)

BACKUP_OPTS = (
    Opt("--data", "the server's data directory (default %(default)s)", default_data_dir,
        metavar="DIR"),
    Opt("--output", "where to write the copy (a sqlite3 database)", _REQUIRED, metavar="FILE",
        short="-o"),
)

UPGRADE_OPTS = (
    Opt("--pid", "the server's process id (default: the one whose --data directory is "
        "--data)", None, int, metavar="PID"),
    Opt("--data", "the server's data directory, where it keeps its pid (default %(default)s)",
        default_data_dir, metavar="DIR"),
    Opt("--timeout", "seconds to wait for the upgraded server's first tick (default "
        "%(default)g)", UPGRADE_REPLY_S, float, check=_positive),
)

#: The subcommands: (help, option groups, the options tuple their fields fill, --redis help).
COMMANDS: Dict[str, Tuple[str, Tuple[Tuple[Opt, ...], ...], Any, str]] = {
    "serve": ("run the game server (the default command)",
              (NET_OPTS, COMMON_OPTS, RULES_OPTS), ServerOptions, ""),
    "game": ("a world's authority on Redis: the rules, the tick, the store (no player sockets; "
             "see docs/CLUSTER.md)", (COMMON_OPTS, RULES_OPTS, CLUSTER_OPTS), ServerOptions,
             "the world's Redis (required)"),
    "gateway": ("a world's gateway on Redis: player sockets (binary, HTTP, WebSocket); "
                "gateways on one host share the port", (NET_OPTS, COMMON_OPTS, CLUSTER_OPTS),
                ServerOptions, "the world's Redis (required)"),
    "bots": ("load-test a server with bot players", (BOT_OPTS,), BotOptions, ""),
    "client": ("play in a window (the Tk desktop client)", (CLIENT_OPTS,), ClientOptions, ""),
    "doctor": ("check this host's kernel and limits for N clients", (DOCTOR_OPTS,), None,
               "also check this Redis (the bus of game and gateway): reachable, latency, "
               "maxmemory-policy"),
    "bundle": ("build a single-file zipapp of the game", (BUNDLE_OPTS,), None, ""),
    "backup": ("copy a server's data, safely, even while it runs", (BACKUP_OPTS,), None, ""),
    "upgrade": ("run the server's file on disk in place of its code, keeping every player "
                "connected (also: SIGUSR2)", (UPGRADE_OPTS,), None, ""),
}


def _add_opts(parser: argparse.ArgumentParser, opts: Sequence[Opt], options: Any) -> None:
    """Add each of ``opts`` to ``parser``, its default from ``options`` where it has none."""
    for o in opts:
        default = o.default
        if default is _FROM_OPTIONS:
            default = options._field_defaults[o.target]
        elif callable(default):
            default = default()
        names = [o.short, o.flag] if o.short else [o.flag]
        kwargs: Dict[str, Any] = {"help": o.help}
        if default is _REQUIRED:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if o.type == "store_true":
            kwargs["action"] = "store_true"
        else:
            if o.type is not None:
                kwargs["type"] = o.type
            if o.metavar is not None:
                kwargs["metavar"] = o.metavar
            if o.choices is not None:
                kwargs["choices"] = o.choices
        parser.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``COMMANDS``, each with its option groups."""
    parser = _ArgumentParser(
        prog="spelltraction",
        description="SpellTraction: a massively multiplayer letter game on netcore.",
    )
    parser.add_argument("--version", action="version", version=f"spelltraction {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, (help_text, groups, options, redis_help) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for group in groups:
            _add_opts(p, group, options)
        if redis_help:
            add_redis_options(p, redis_help)
    return parser


def parsed_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The command's options tuple from ``args``, every option checked (or ``parser.error``)."""
    _help, groups, options, _redis = COMMANDS[args.command]
    fields: Dict[str, Any] = {}
    for group in groups:
        for o in group:
            value = getattr(args, o.dest)
            problem = o.check(value) if o.check is not None else None
            if problem:
                parser.error(f"{o.flag} {problem}")
            if o.field != "-" and options is not None:
                fields[o.target] = value if o.to is None else o.to(value, args)
    return options(**fields) if options is not None else None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "serve")  # the default command: spelltraction.py --port P serves
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    opts = parsed_options(parser, args)
    if command == "doctor":
        try:
            redis = redis_address(args)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
        return run_doctor(args.clients, as_json=args.json, root=args.root, redis=redis)
    if command == "backup":
        return _backup(args.data, args.output)
    if command == "upgrade":
        return run_upgrade(args.pid, args.data, args.timeout)
    if command == "bundle":
        members = build_bundle(args.output)
        size = os.path.getsize(args.output)
        print(f"wrote {args.output}: {size} bytes, {len(members)} files; "
              f"run it with: python3 {args.output} --port {DEFAULT_PORT}")
        return 0
    if command in ("client", "bots"):
        try:
            client_tls(opts)  # --ca/--insecure without --tls, an unreadable CA file
        except ValueError as exc:
            parser.error(str(exc))
    limiter = _setup_logging(args.log_level, getattr(args, "log_format", "text"))
    if command == "client":
        return run_client(opts)
    if command == "bots":
        summary = run_bots(opts)
        if args.json:
            print(json.dumps(summary), flush=True)
        return 0 if summary["failed"] == 0 and summary["dropped"] == 0 else 1
    if command == "serve":
        return serve(opts, limiter, argv)
    if args.redis is None:
        parser.error(f"{command} needs --redis URL: the world's Redis")
    try:
        check_world(args.world)
        address = redis_address(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    assert address is not None
    if address.password is not None and not (args.redis_password_file
                                             or args.redis_password_env):
        log.warning("the Redis password is on the command line, where ps shows it: use "
                    "--redis-password-file or --redis-password-env")
    return run_role(command, opts, ClusterOptions(args.world), address, limiter, argv)


def _backup(data: str, output: str) -> int:
    try:
        pages = backup_store(data, output)
    except (StoreError, OSError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # sqlite3.Error, without importing sqlite3 here
        print(f"backup of {data} failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output}: {os.path.getsize(output)} bytes ({pages} pages) "
          f"from {os.path.join(data, DATA_FILE)}")
    return 0


# -----------------------------------------------------------------------------
# CLI: the start-up. A server runs as an imported module, not as a script.
# -----------------------------------------------------------------------------

#: What a server started as a script runs instead (see _run_as_module), with
#: argv: the game's folder, a descriptor holding the game's modules compiled,
#: then the server's arguments. ``sys`` is built in: the path is fixed before
#: anything else is imported, so nothing comes from the current directory.
_AS_MODULE = """\
import sys
sys.path[:] = [sys.argv.pop(1)] + [p for p in sys.path if p]  # never the current directory
import marshal, os
from importlib.machinery import ModuleSpec


class Compiled:
    # Finds and loads the modules the script compiled; index: name -> (file,
    # package, offset, size), the offsets from the end of the index.
    fd = int(sys.argv.pop(1))
    size = int.from_bytes(os.pread(fd, 8, 0), 'little')
    index = marshal.loads(os.pread(fd, size, 8))
    base = 8 + size

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls.index:
            return None
        file, package, _, _ = cls.index[name]
        spec = ModuleSpec(name, cls, origin=file, is_package=package)
        spec.has_location = True
        if package:
            spec.submodule_search_locations = [os.path.dirname(file)]
        return spec

    @staticmethod
    def create_module(spec):
        return None

    @classmethod
    def exec_module(cls, module):
        _, _, at, size = cls.index.pop(module.__name__)
        exec(marshal.loads(os.pread(cls.fd, size, cls.base + at)), module.__dict__)


sys.meta_path.insert(0, Compiled)
import spelltraction
sys.exit(spelltraction.main())
"""
_SHORT_LIVED = ("bots", "client", "doctor", "bundle", "backup", "upgrade", "-h", "--help",
                "--version")


def _run_as_module(argv: List[str]) -> None:
    """Re-run ``python3 spelltraction.py [serve ...]`` as ``import spelltraction``.

    Same pid, same arguments and interpreter options; ``bench/startup_rss.py``
    measures what each of the three parts saves:

    - **A module, not a script.** CPython keeps the syntax tree of the script
      it runs until the script ends: 14-18 MiB of a server's 19, for its
      whole life. A module's tree is freed once it is compiled.
    - **Compiled here.** Compiling leaves the compiler's garbage in the heap
      for good (about 1 MiB); where no bytecode cache can be read
      (``PYTHONDONTWRITEBYTECODE``, a read-only install) the server would
      compile itself. This process compiles the game and netcore (or reads
      their cache) into a memfd, which ``_AS_MODULE``'s ``Compiled`` imports
      them from; ``_forget_compiled`` closes it once the server listens.
    - **-S.** The server needs only the standard library; other projects'
      ``.pth`` files import their code into every interpreter (3.2 MiB here).

    ``SPELLTRACTION_AS_MODULE=1`` keeps the script as it is.
    """
    if (argv and argv[0] in _SHORT_LIVED) or os.environ.get("SPELLTRACTION_AS_MODULE") \
            or not os.path.isfile(os.path.join(_HERE, "spelltraction.py")):
        return
    try:
        fd = _write_compiled()
    except (OSError, SyntaxError, ValueError):
        return  # run as a script after all
    flags = _interpreter_flags()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *flags, "-S", "-c", _AS_MODULE, _HERE,
                                  str(fd), *argv])
    except OSError:
        os.close(fd)  # run as a script after all


def _write_compiled(fd: int = -1) -> int:
    """The game and netcore compiled, in an inheritable descriptor (``fd``, or a new
    one): 8 bytes of the index's size, the index ({module: (file, package, offset,
    size)}), the code (:data:`COMPILED_FORMAT`)."""
    import marshal
    from importlib.machinery import SourceFileLoader

    modules = [("spelltraction", os.path.join(_HERE, "spelltraction.py"), False)]
    for entry in sorted(os.listdir(os.path.join(_HERE, "netcore"))):
        if entry.endswith(".py"):
            name = "netcore" if entry == "__init__.py" else "netcore." + entry[:-3]
            modules.append((name, os.path.join(_HERE, "netcore", entry), name == "netcore"))
    index: Dict[str, Tuple[str, bool, int, int]] = {}
    code = []
    at = 0
    for name, path, package in modules:  # get_code: the bytecode cache where it is fresh
        code.append(marshal.dumps(SourceFileLoader(name, path).get_code(name)))
        index[name] = (path, package, at, len(code[-1]))
        at += len(code[-1])
    head = marshal.dumps(index)
    if fd < 0 and hasattr(os, "memfd_create"):  # Linux: in memory, no writable /tmp needed
        fd = os.memfd_create("spelltraction-code", 0)
    elif fd < 0:
        import tempfile

        fd, path = tempfile.mkstemp()
        os.unlink(path)
    os.write(fd, len(head).to_bytes(8, "little") + head + b"".join(code))
    os.set_inheritable(fd, True)
    return fd


def _forget_compiled() -> None:
    """Once the server listens: stop importing from the descriptor, and close it."""
    for finder in [f for f in sys.meta_path if getattr(f, "__name__", "") == "Compiled"]:
        sys.meta_path.remove(finder)
        try:
            os.close(getattr(finder, "fd"))
        except (AttributeError, OSError):
            pass


if __name__ == "__main__":
    if __spec__ is None:  # run as a script, not with -m
        _run_as_module(sys.argv[1:])
    sys.exit(main())
