#!/usr/bin/env python3
"""Round trips to an echo server, on a netcore outbound connection.

    python3 examples/echo.py --port 9000 &
    python3 examples/rtt.py --host 127.0.0.1 --port 9000 --count 1000 [--size 64] [--ws]

Connects with :class:`netcore.TCPClient` (u16 frames, or WebSocket binary
messages with ``--ws``), sends one message of ``--size`` bytes at a time,
waits for it to come back unchanged, and prints the round-trip times
(min, p50, p99, max, in ms). Exits 1 if the connection fails or an echo
is wrong or missing. ``--host`` must be a numeric address or localhost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

_here = os.path.dirname(os.path.abspath(__file__))  # netcore/ beside this file or examples/
sys.path[:0] = [d for d in (_here, os.path.dirname(_here)) if os.path.isdir(d + "/netcore")][:1]

from netcore import (  # noqa: E402 - after finding netcore
    WEBSOCKET, Connection, EventLoop, FrameParser, Handler, TCPClient, percentile, websocket_client,
)
from netcore.sniff import MAX_BINARY_FRAME  # noqa: E402


class Pinger(Handler):
    def __init__(self, loop: EventLoop, count: int, size: int, ws: bool) -> None:
        self.loop = loop
        self.count = count
        self.payload = bytes(i & 0xFF for i in range(size))
        self.ws = ws
        self.rtts: List[float] = []
        self.sent_at = 0.0
        self.error = ""

    def on_connect(self, conn: Connection) -> None:
        if not self.ws:
            self.ping(conn)  # a WebSocket first waits for its handshake

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        if protocol == WEBSOCKET:
            self.ping(conn)

    def ping(self, conn: Connection) -> None:
        self.sent_at = time.perf_counter()
        conn.send_binary(self.payload)

    def on_message(self, conn: Connection, payload: bytes) -> None:
        self.rtts.append(time.perf_counter() - self.sent_at)
        if payload != self.payload:
            self.fail(conn, f"echo {len(self.rtts)} differs ({len(payload)} bytes)")
        elif len(self.rtts) == self.count:
            conn.goodbye(1000, "done")
        else:
            self.ping(conn)

    def fail(self, conn: Optional[Connection], why: str) -> None:
        self.error = self.error or why
        if conn is not None:
            conn.close("error", why)
        self.loop.stop()

    def on_close(self, conn: Connection, reason: str) -> None:
        if len(self.rtts) < self.count:
            self.fail(None, f"closed ({reason}) after {len(self.rtts)} of {self.count}")
        self.loop.stop()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64, help="message bytes (TCP: 1..16639)")
    ap.add_argument("--ws", action="store_true", help="WebSocket binary messages, not frames")
    ap.add_argument("--timeout", type=float, default=30.0, help="give up after this many s")
    args = ap.parse_args(argv)
    if args.count < 1 or args.size < 1:
        ap.error("--count and --size must be at least 1")

    loop = EventLoop()
    pinger = Pinger(loop, args.count, args.size, args.ws)
    codec = (websocket_client(f"{args.host}:{args.port}", "/", max_message=max(args.size, 1 << 20))
             if args.ws else lambda conn: FrameParser(MAX_BINARY_FRAME))
    client = TCPClient(loop, pinger)
    client.connect(args.host, args.port, codec_factory=codec,
                   on_failed=lambda exc: pinger.fail(None, f"connect failed: {exc}"))
    loop.call_later(args.timeout, lambda: pinger.fail(None, f"timed out after {args.timeout:g} s"))
    loop.run()
    client.close()
    loop.close()
    if pinger.error:
        print(f"rtt: FAILED: {pinger.error}", file=sys.stderr)
        return 1
    ms = sorted(r * 1000 for r in pinger.rtts)
    kind = "WebSocket" if args.ws else "TCP"
    print(f"rtt: {len(ms)} round trips of {args.size} bytes over {kind} to "
          f"{args.host}:{args.port}: min {ms[0]:.3f} ms, p50 {percentile(ms, 50):.3f} ms, "
          f"p99 {percentile(ms, 99):.3f} ms, max {ms[-1]:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
