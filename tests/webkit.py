"""Raw HTTP and WebSocket clients for the in-process game harness (gamekit)."""

import base64
import os
from typing import Dict, List, Optional, Tuple

import spelltraction as st
from conftest import LoopClient, run_until
from gamekit import STEP, Expecting
from netcore import FrameParser
from netcore import websocket as ws


class HttpResponse:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes, raw_head: bytes):
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body
        self.raw_head = raw_head

    def __repr__(self):
        return f"<HttpResponse {self.status} {self.headers} {self.body[:60]!r}>"


def parse_responses(data: bytes, head_only: bool = False) -> Tuple[List[HttpResponse], bytes]:
    """Whole responses at the front of ``data``, and what is left."""
    out = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out, data
        head = data[:end]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(b":", 1)
            headers[k.decode().lower()] = v.decode().strip()
        length = int(headers.get("content-length", "0"))
        if head_only or status in (101, 304):
            length = 0
        if len(data) < end + 4 + length:
            return out, data
        out.append(HttpResponse(status, headers, data[end + 4 : end + 4 + length], head))
        data = data[end + 4 + length :]
        if status == 101:
            return out, data


class RawConn(LoopClient):
    """A nonblocking client socket, pumped together with the harness's loop."""

    def __init__(self, h):
        super().__init__(h.port)
        self.h = h
        self.buf = b""

    def pump(self) -> None:
        self.buf += self.read_available()

    def run_until(self, pred, timeout=5.0, what="condition"):
        def done():
            self.pump()
            return pred()

        run_until(self.h.loop, done, timeout, lambda: f"{what} (have {self.buf[:300]!r})",
                  step=STEP)

    def responses(self, n: int, head_only: bool = False, timeout=5.0) -> List[HttpResponse]:
        got: List[HttpResponse] = []

        def done():
            nonlocal got
            new, self.buf = parse_responses(self.buf, head_only)
            got += new
            return len(got) >= n or self.eof

        self.run_until(done, timeout, f"{n} responses")
        assert len(got) >= n, f"closed after {got}"
        return got

    def request(self, path="/", method="GET", headers=(), version="HTTP/1.1") -> HttpResponse:
        lines = [f"{method} {path} {version}", "Host: test"] + [f"{k}: {v}" for k, v in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return self.responses(1, head_only=method == "HEAD")[0]

    def wait_closed(self, timeout=5.0) -> bytes:
        self.run_until(lambda: self.eof, timeout, "close")
        return self.buf


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


class WsClient(Expecting, RawConn):
    """A WebSocket game client: masked frames out, game messages in."""

    def __init__(self, h, upgrade=True, extra: bytes = b""):
        super().__init__(h)
        self.parser = ws.WebSocketParser(client=True, max_message=1 << 20)
        self.events: List[ws.Event] = []
        self.inbox: List[object] = []
        self.messages: List[bytes] = []  # raw binary messages, in order
        self.response: Optional[HttpResponse] = None
        if upgrade:
            self.key = ws_key()
            self.send(ws.client_handshake("test", "/ws", self.key) + extra)
            self.response = self.responses(1)[0]
            assert self.response.status == 101, self.response
            assert self.response.headers["sec-websocket-accept"] == ws.accept_key(self.key)

    def send_frame(self, payload: bytes, opcode=ws.BINARY, fin=True, masked=True) -> None:
        key = os.urandom(4) if masked else None
        self.send(ws.frame(payload, opcode, fin, mask_key=key))

    def send_msg(self, msg) -> None:
        self.send_frame(st.frame(msg))

    def pump(self) -> None:
        super().pump()
        if self.response is not None and self.buf:
            for event in self.parser.parse(self.buf):
                self.events.append(event)
                if isinstance(event, ws.Message):
                    self.messages.append(event.data)
                    self.inbox += [st.decode(f) for f in FrameParser(65535).feed(event.data)]
            self.buf = b""

    def last_words(self):
        return repr(self.events[-3:])

    def hello(self):
        self.send_msg(st.Hello())
        self.welcome = self.expect(st.Welcome)
        self.you = self.expect(st.You)
        self.stats = self.expect(st.Stats)
        return self

    def wait_closed(self, timeout=5.0):
        """Events until the server closes the TCP connection."""
        super().wait_closed(timeout)
        self.pump()
        return self.events

    def close_event(self) -> ws.Close:
        closes = [e for e in self.events if isinstance(e, ws.Close)]
        assert len(closes) == 1, self.events
        return closes[0]

    def errors(self) -> List[st.Error]:
        return [m for m in self.inbox if isinstance(m, st.Error)]
