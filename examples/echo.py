#!/usr/bin/env python3
"""An echo server on netcore: u16-framed TCP and WebSocket on one port.

    python3 examples/echo.py --host 127.0.0.1 --port 9000 [--max-message BYTES]

- TCP: each u16-length-prefixed frame comes back as it was. Frames of up to
  16,639 bytes (0x40FF): on a port shared with HTTP a longer frame's first
  length byte could be an HTTP method's first letter.
- WebSocket at ``ws://HOST:PORT/`` (any path): every text message comes
  back as text, every binary message as binary (what conformance suites
  expect), up to ``--max-message`` bytes (default 1 MiB; 1009 past it).

It prints ``listening on HOST:PORT`` when ready; Ctrl-C (or SIGTERM) drains
and stops, a second one stops at once. It needs nothing but ``netcore/``,
found beside this file or beside its directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

_here = os.path.dirname(os.path.abspath(__file__))  # netcore/ beside this file or examples/
sys.path[:0] = [d for d in (_here, os.path.dirname(_here)) if os.path.isdir(d + "/netcore")][:1]

from netcore import (  # noqa: E402 - after finding netcore
    Connection, EventLoop, FrameParser, Handler, ServerConfig, TCPServer, WebConfig, WebFront,
)
from netcore.process import run_server  # noqa: E402
from netcore.sniff import MAX_BINARY_FRAME  # noqa: E402


class Echo(Handler):
    def on_message(self, conn: Connection, payload: bytes) -> None:
        conn.send(payload)  # a Text goes back as text, bytes as binary


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000, help="0: any free port")
    ap.add_argument("--max-message", type=int, default=1 << 20,
                    help="largest WebSocket message, bytes (default 1 MiB)")
    args = ap.parse_args(argv)

    loop = EventLoop()
    front = WebFront(WebConfig(ws_path="*", max_message=args.max_message),
                     binary=lambda: FrameParser(MAX_BINARY_FRAME))
    run_server(TCPServer(loop, Echo(), ServerConfig(hosts=[args.host], port=args.port),
                         codec_factory=front))
    return 0

if __name__ == "__main__":
    sys.exit(main())
