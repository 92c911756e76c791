#!/usr/bin/env python3
"""SpellTraction served on asyncio (or uvloop): the peer the capacity bench compares with.

The same game as ``spelltraction.py serve``, written the way a good Python
developer would write it on asyncio: one ``asyncio.Protocol`` per client and
a tick task. Only the networking differs. The rules (``Game``), the wire
format (``frame``, ``step_and_encode``, ``you_frame``, ``error_frame``, the
message structs) and the frame parser are the very objects the netcore
server uses, and the per-tick logic mirrors ``GameServer.on_tick`` line for
line: the shared tick bytes are built once and written to every transport,
with YOU appended for the players whose state changed (one write per client
per tick). HELLO handling, error replies, the flood limit, the HELLO timeout,
the connection limit and the output cap (a client that lets 64 KiB queue up
is dropped as a slow consumer) follow the netcore server as far as asyncio's
API allows.

The tick does not drift: tick N sleeps until ``start + N * period`` (a
``netcore.tick.TickScheduler`` serves as the calculator and records lateness
and tick work exactly as netcore's loop does), so the comparison is about
networking, not a naive ``sleep(period)``.

    python3 bench/peers/asyncio_server.py --port 12150
    python3 bench/peers/asyncio_server.py --uvloop --stats-out /tmp/s.json

On SIGTERM/SIGINT it says goodbye to every client, writes ``--stats-out``
(the same JSON shape as ``GameServer.final_stats()``) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import signal
import sys
import time
import os
from typing import Any, Dict, Iterable, List, Optional, Set, cast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from netcore import FrameParser, NetStats, ProtocolError, TickScheduler  # noqa: E402
from netcore.process import raise_nofile  # noqa: E402
from spelltraction import (  # noqa: E402
    FLOOD_MESSAGES,
    HELLO,
    HELLO_STRUCT,
    MAX_CLIENT_FRAME,
    MOVE,
    MOVE_STRUCT,
    PROTOCOL_VERSION,
    YOU_FRAMED,
    ErrorCode,
    Game,
    Player,
    Stats,
    Welcome,
    describe_unexpected,
    error_frame,
    frame,
    rss_kb,
    step_and_encode,
    you_frame,
)

log = logging.getLogger("spelltraction.asyncio")

FD_RESERVE = 32
MAX_OUTPUT = 64 << 10  # as ServerOptions.max_output: past this a client is too slow
HELLO_TIMEOUT = 10.0
SHUTDOWN_GRACE = 1.5


class GameProtocol(asyncio.Protocol):
    """One client. Slots, as a careful developer with 15,000 of them would."""

    __slots__ = ("server", "transport", "parser", "player", "paused", "closing")

    def __init__(self, server: "AsyncioGameServer") -> None:
        self.server = server
        self.transport: Any = None
        self.parser = FrameParser(MAX_CLIENT_FRAME)
        self.player: Optional[Player] = None
        self.paused = False  # above the transport's high-water mark
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.connected(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        server = self.server
        server.stats.bytes_in += len(data)
        try:
            messages = self.parser.feed(data)
        except ProtocolError as exc:
            server.reject(self, ErrorCode.BAD_FRAME, str(exc), exc.reason)
            return
        server.stats.frames_in += len(messages)
        for payload in messages:
            server.on_message(self, payload)
            if self.closing:
                break

    def eof_received(self) -> Optional[bool]:
        return None  # close the transport

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closing = True
        self.server.lost(self, "reset" if exc is not None else "peer-closed")

    def pause_writing(self) -> None:
        self.paused = True
        self.server.paused.add(self)

    def resume_writing(self) -> None:
        self.paused = False
        self.server.paused.discard(self)


class AsyncioGameServer:
    """The game's server half on asyncio: accept, messages, the tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_ms: int, max_clients: int,
                 seed: Optional[int], flavour: str, hello_timeout: float = HELLO_TIMEOUT) -> None:
        self.loop = loop
        self.hello_timeout = hello_timeout
        self.tick_ms = tick_ms
        self.max_clients = max_clients
        self.flavour = flavour
        self.game = Game(random.Random(seed))
        self.stats = NetStats()
        self.protocols: Set[GameProtocol] = set()
        self.pending: Dict[GameProtocol, float] = {}  # connected, no HELLO yet
        self.paused: Set[GameProtocol] = set()
        self.errors_sent: Dict[int, int] = {}
        self.ticker: Optional[TickScheduler] = None
        self.started = time.time()
        self.start_rss_kb = rss_kb()
        self.stats_frame = b""
        self._stats_tick = -1
        self.full_frame = error_frame(
            ErrorCode.SERVER_FULL, f"server full ({max_clients} players); try later")
        self.shutting_down = False

    # -- connections ---------------------------------------------------------

    def connected(self, proto: GameProtocol) -> None:
        stats = self.stats
        transport = proto.transport
        if self.shutting_down or stats.connections >= self.max_clients:
            stats.refused_full += 1
            proto.closing = True
            transport.write(self.full_frame)
            transport.close()
            return
        transport.set_write_buffer_limits(high=MAX_OUTPUT // 4, low=MAX_OUTPUT // 16)
        stats.accepted += 1
        stats.connections += 1
        self.protocols.add(proto)
        self.pending[proto] = self.loop.time()

    def lost(self, proto: GameProtocol, reason: str) -> None:
        if proto not in self.protocols:
            return  # refused at the door
        self.protocols.discard(proto)
        self.pending.pop(proto, None)
        self.paused.discard(proto)
        self.stats.count_close(reason)
        player = proto.player
        if player is not None:
            self.game.leave(player)
            proto.player = None
            player.peer = None

    def on_message(self, proto: GameProtocol, payload: bytes) -> None:
        player = proto.player
        kind = payload[0]
        if player is not None:
            if kind == MOVE and len(payload) == MOVE_STRUCT.size:
                _, seq, x, y = MOVE_STRUCT.unpack(payload)
                self.game.move(player, seq, x, y)
                if player.moves > FLOOD_MESSAGES:  # as GameServer: MOVEs this tick
                    self.reject(proto, ErrorCode.FLOOD,
                                f"more than {FLOOD_MESSAGES} messages in one tick", "flood")
                return
            self.reject(proto, ErrorCode.BAD_MESSAGE, describe_unexpected(payload, "in game"))
            return
        if kind != HELLO or len(payload) != HELLO_STRUCT.size:
            self.reject(proto, ErrorCode.BAD_MESSAGE,
                        describe_unexpected(payload, "before HELLO"))
            return
        _, version, shape, colour = HELLO_STRUCT.unpack(payload)
        if version != PROTOCOL_VERSION:
            self.reject(proto, ErrorCode.VERSION,
                        f"server speaks protocol {PROTOCOL_VERSION}, client sent {version}",
                        "bad-version")
            return
        self.join(proto, shape, colour)

    def join(self, proto: GameProtocol, shape: int, colour: int) -> None:
        del self.pending[proto]
        player = self.game.join(shape, colour)
        player.peer = proto  # the rules never look at it: this server's GameProtocol
        proto.player = player
        welcome = frame(Welcome(player.id, player.shape, player.colour, tick_ms=self.tick_ms))
        if self._stats_tick != self.game.tick:
            self._update_stats_frame()
        data = welcome + you_frame(player) + self.stats_frame
        proto.transport.write(data)
        self.stats.sends += 1
        self.stats.frames_out += 3
        self.stats.bytes_out += len(data)

    def reject(self, proto: GameProtocol, code: int, text: str,
               reason: str = "protocol-error") -> None:
        """Tell the client what it did wrong, then close it. Others play on."""
        log.info("%s: %s: %s", proto.transport.get_extra_info("peername"), reason, text)
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1
        proto.closing = True
        proto.transport.write(error_frame(code, text))
        proto.transport.close()  # flushes what is queued, then closes

    # -- the tick --------------------------------------------------------------

    async def run_ticks(self) -> None:
        """Tick N at start + N * period, whatever the ticks before cost.

        Timed with ``time.monotonic()`` rather than ``loop.time()``: uvloop's
        loop time has millisecond resolution and is cached per iteration, so
        it would under-report lateness. (asyncio's ``loop.time()`` is
        ``time.monotonic()``; netcore's loop uses it too.)
        """
        clock = time.monotonic
        period = self.tick_ms / 1000.0
        sched = self.ticker = TickScheduler(period, clock() + period)
        while not self.shutting_down:
            delay = sched.deadline - clock()
            if delay > 0:
                await asyncio.sleep(delay)
                if self.shutting_down:
                    return
            tick = sched.poll(clock())
            if tick is None:
                continue
            began = clock()
            try:
                self.on_tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the game
                log.exception("tick failed")
            sched.record_duration(clock() - began)

    def on_tick(self) -> None:
        game = self.game
        result, data, nframes = step_and_encode(game, self._fresh_stats_frame)
        # As GameServer: a player whose YOU changed gets data + YOU in one
        # write, in its usual place in the order.
        players: Iterable[Any] = game.players.values()  # conn: a GameProtocol (see join)
        private = {p.peer: data + you_frame(p) for p in result.dirty if p.peer is not None}
        targets = [p.peer.transport for p in players]
        if private:
            protos = [p.peer for p in players]
            for proto, transport in zip(protos, targets):
                transport.write(private.get(proto, data))
        else:
            for transport in targets:
                transport.write(data)
        sends = len(targets)
        stats = self.stats
        stats.sends += sends
        stats.frames_out += sends * nframes + len(private)
        stats.bytes_out += sends * len(data) + len(private) * YOU_FRAMED.size
        if self.paused:
            self._drop_slow_consumers()
        if game.tick % 4 == 0 and self.pending:
            self._expire_pending()

    def _drop_slow_consumers(self) -> None:
        for proto in list(self.paused):
            queued = proto.transport.get_write_buffer_size()
            if queued > MAX_OUTPUT:
                log.warning("%s closed: slow-consumer: %d bytes queued > cap %d",
                            proto.transport.get_extra_info("peername"), queued, MAX_OUTPUT)
                self.stats.slow_consumers += 1
                self.paused.discard(proto)
                proto.closing = True
                proto.transport.abort()

    def _expire_pending(self) -> None:
        limit = self.loop.time() - self.hello_timeout
        for proto, since in list(self.pending.items()):
            if since < limit:
                del self.pending[proto]
                self.reject(proto, ErrorCode.HELLO_TIMEOUT,
                            f"no HELLO within {self.hello_timeout:g} s", "hello-timeout")

    def _fresh_stats_frame(self) -> bytes:
        self._update_stats_frame()
        return self.stats_frame

    def _update_stats_frame(self) -> None:
        self._stats_tick = self.game.tick
        p99 = self.ticker.recent_lateness.percentile(99) if self.ticker is not None else 0.0
        self.stats_frame = frame(Stats(
            connections=self.stats.connections,
            players=len(self.game.players),
            uptime_s=int(time.time() - self.started),
            rss_kb=rss_kb(),
            start_rss_kb=self.start_rss_kb,
            tick_p99_us=min(int(p99 * 1e6), 0xFFFFFFFF),
        ))

    # -- shutdown and figures ----------------------------------------------------

    async def shutdown(self) -> None:
        """Say goodbye to everyone, give them a moment to flush, close."""
        self.shutting_down = True
        bye = error_frame(ErrorCode.SHUTDOWN, "server shutting down")
        for proto in list(self.protocols):
            proto.closing = True
            proto.transport.write(bye)
            proto.transport.close()
        deadline = self.loop.time() + SHUTDOWN_GRACE
        while self.protocols and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for proto in list(self.protocols):
            proto.transport.abort()

    def final_stats(self) -> Dict[str, Any]:
        """The same shape as ``GameServer.final_stats()``."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "server": self.flavour,
            "ticks": self.ticker.snapshot() if self.ticker is not None else {},
            "net": self.stats.snapshot(),
            "game": {"tick": self.game.tick, "players": len(self.game.players),
                     "letters_scored": self.game.letters_scored,
                     "moves_accepted": self.game.moves_accepted,
                     "moves_limited": self.game.moves_limited},
            "errors_sent": {str(int(k)): v for k, v in self.errors_sent.items()},
            "rss_bytes": rss_kb() * 1024,
            "start_rss_bytes": self.start_rss_kb * 1024,
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
            # The peer speaks only the binary protocol: no WebSocket players, no HTTP.
            "ws_players": 0,
            "web": {},
            "loop": {},  # no poll counters: asyncio and uvloop keep none we can read
            # Protocol 1 only, in memory: nothing to resume, no store.
            "resumes": 0,
            "takeovers": 0,
            "store": None,
        }


async def serve(args: argparse.Namespace, flavour: str) -> AsyncioGameServer:
    loop = asyncio.get_running_loop()
    game_server = AsyncioGameServer(loop, args.tick_ms, args.max_clients, args.seed, flavour,
                                    args.hello_timeout)
    server = await loop.create_server(lambda: GameProtocol(game_server), args.host, args.port,
                                      backlog=4096, reuse_address=True)
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        print(f"SpellTraction ({flavour}) listening on {host}:{port}", flush=True)
    print(f"max {args.max_clients} clients, tick {args.tick_ms} ms; Ctrl-C stops", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ticks = asyncio.ensure_future(game_server.run_ticks())
    await stop.wait()
    server.close()
    await game_server.shutdown()
    ticks.cancel()
    try:
        await ticks
    except asyncio.CancelledError:
        pass
    return game_server


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=12150)
    ap.add_argument("--tick-ms", type=int, default=250)
    ap.add_argument("--max-clients", type=int, default=15_000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--hello-timeout", type=float, default=HELLO_TIMEOUT,
                    help="seconds a client may take to send HELLO (default 10)")
    ap.add_argument("--stats-out", default="", metavar="FILE",
                    help="on exit, write the final figures to FILE as JSON")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, _hard = raise_nofile()
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < args.max_clients:
        log.warning("open-files limit %d: serving at most %d clients", soft, soft - FD_RESERVE)
        args.max_clients = max(0, soft - FD_RESERVE)
    flavour = "asyncio"
    if args.uvloop:
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            print("--uvloop: uvloop is not installed (pip install uvloop, or the 'bench' extra)",
                  file=sys.stderr)
            return 2
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        flavour = "uvloop"
    game_server = asyncio.run(serve(args, flavour))
    if args.stats_out:
        with open(args.stats_out, "w") as f:
            json.dump(game_server.final_stats(), f, indent=1)
    t = game_server.ticker
    print(f"stopped after {game_server.game.tick} ticks; {game_server.stats.accepted} "
          f"connections served", flush=True)
    if t is not None:
        print(f"ticks: {t.fired} fired, {t.late} late, {t.skipped} skipped; lateness p99 "
              f"{t.recent_lateness.percentile(99) * 1000:.2f} ms, max "
              f"{t.max_lateness * 1000:.2f} ms; tick work p99 "
              f"{t.recent_duration.percentile(99) * 1000:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
