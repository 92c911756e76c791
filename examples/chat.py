#!/usr/bin/env python3
"""A browser chat room on netcore: one HTML page and WebSocket text broadcast.

    python3 examples/chat.py --host 127.0.0.1 --port 8000

Open ``http://HOST:PORT/`` in two browser tabs. Every text message a
client sends over ``ws://HOST:PORT/ws`` goes to everyone in the room (its
sender included), framed once for all of them. Binary messages are refused
(Close 1003), messages over 4 KiB too (Close 1009). It prints ``listening
on HOST:PORT`` when ready; Ctrl-C drains and stops.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

_here = os.path.dirname(os.path.abspath(__file__))  # netcore/ beside this file or examples/
sys.path[:0] = [d for d in (_here, os.path.dirname(_here)) if os.path.isdir(d + "/netcore")][:1]

from netcore import (  # noqa: E402 - after finding netcore
    WEBSOCKET, CloseCode, Connection, EventLoop, Handler, ServerConfig, TCPServer, Text, WebConfig,
    WebFront,
)
from netcore.process import run_server  # noqa: E402
from netcore.websocket import TEXT, frame_header  # noqa: E402

MAX_MESSAGE = 4096

PAGE = b"""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>netcore chat</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:2em auto}
#log{border:1px solid #ccc;height:20em;overflow-y:auto;padding:.5em;white-space:pre-wrap}
form{display:flex;gap:.5em;margin-top:.5em}#text{flex:1}</style>
<h1>netcore chat</h1><div id="log"></div>
<form id="form"><input id="text" autocomplete="off" maxlength="1000" autofocus>
<button>Send</button></form>
<script>
const log = document.getElementById("log"), text = document.getElementById("text");
const name = (sessionStorage.name ||= "guest" + Math.floor(Math.random() * 1000));
const sock = new WebSocket(`ws://${location.host}/ws`);
function show(line) { log.textContent += line + "\\n"; log.scrollTop = log.scrollHeight; }
sock.onopen = () => show(`* connected as ${name}`);
sock.onmessage = (e) => show(e.data);
sock.onclose = (e) => show(`* disconnected (${e.code})`);
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  if (text.value && sock.readyState === 1) sock.send(`${name}: ${text.value}`);
  text.value = "";
};
</script></html>
"""


class Room(Handler):
    def __init__(self) -> None:
        self.server: Optional[TCPServer] = None
        self.members: Dict[Connection, None] = {}

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        if protocol == WEBSOCKET:
            self.members[conn] = None
            self.say(f"* someone joined ({len(self.members)} here)")

    def on_message(self, conn: Connection, payload: bytes) -> None:
        if not isinstance(payload, Text):
            conn.goodbye(CloseCode.UNSUPPORTED_DATA, "text messages only")
            return
        self.say(payload.decode())

    def on_close(self, conn: Connection, reason: str) -> None:
        if self.members.pop(conn, 0) is None:
            self.say(f"* someone left ({len(self.members)} here)")

    def say(self, line: str) -> None:
        """One text frame, built once, to everyone (a list: a failed send closes)."""
        data = line.encode("utf-8")
        assert self.server is not None
        self.server.broadcast(frame_header(len(data), TEXT) + data, list(self.members))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port")
    args = ap.parse_args(argv)

    def page() -> Tuple[str, bytes]:
        return "text/html; charset=utf-8", PAGE

    room = Room()
    front = WebFront(WebConfig(routes={"/": page}, ws_path="/ws", max_message=MAX_MESSAGE))
    room.server = TCPServer(EventLoop(), room, ServerConfig(hosts=[args.host], port=args.port),
                            codec_factory=front)
    run_server(room.server)
    return 0

if __name__ == "__main__":
    sys.exit(main())
