"""A server's listeners and live connections, handed to its successor (an upgrade).

A process can ``exec`` new code and keep its open files: the listening
sockets and every connection's socket stay open (their close-on-exec flag
cleared), so nobody is disconnected and no connect is refused. What goes
with each connection is plain data: the bytes its codec read and has not
made into messages yet (a frame cut by a read, a pipelined request, a
WebSocket frame or message under way), the bytes queued for it and not yet
sent, and how the per-address limits count it.

    for conn in unmovable(server):           # the predecessor, about to exec:
        conn.close("upgrade")                #   (after a goodbye) what cannot move
    state, fds = export_server(server)
    keep_open(fds)                           # (its application adds its own)
    ...exec...
    conns = restore_server(server, state)    # the successor, its server built anew

``restore_server`` returns the connections in ``state``'s order (None for one
that is gone), so the application can give each its own state back (a
player's seat). A connection whose codec cannot be described here (a TLS
session: ``ssl`` cannot export one) is not exported: ``unmovable`` lists
them, so the application can say goodbye to them first, and ``export_server``
names any still open in ``state["left"]`` (the exec closes them). The format is versioned (``FORMAT``): a successor refuses a state it
does not know rather than guess.

Everything here reads and writes the internals of netcore's own classes
(codecs, parsers, the server's tables): it lives in netcore so that they can
change together.
"""

from __future__ import annotations

import os
import socket

from .addrlimit import AddressLimits
from .connection import CLOSING, OPEN, CloseReason, Connection, _CLOSING
from .framing import FrameParser, StreamFrames, WholeFrames
from .loop import EVENT_READ
from .sniff import ProtocolSniffer
from .typing_shim import TYPE_CHECKING
from .websocket import WebSocketParser, _Frame, _Message
from .wscodec import WebSocketCodec

if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

    from .codec import Codec
    from .server import TCPServer

__all__ = ["FORMAT", "HandoverError", "export_server", "keep_open", "release_server",
           "restore_server", "unmovable"]

#: The state's format: a successor refuses any other.
FORMAT = 1

# The stats counters that go on across an exec (the rest are gauges, recounted).
_COUNTERS = ("accepted", "closed", "refused_full", "refused_fd_limit", "accept_errors",
             "bytes_in", "bytes_out", "frames_in", "frames_out", "sends", "slow_consumers")


class HandoverError(Exception):
    """A state this netcore cannot take (another format, a codec it does not know)."""


def keep_open(fds: Sequence[int]) -> None:
    """Let these descriptors survive an exec (clear their close-on-exec flag)."""
    for fd in fds:
        os.set_inheritable(fd, True)


# -- exporting ------------------------------------------------------------------------


def unmovable(server: TCPServer) -> List[Connection]:
    """The connections :func:`export_server` would leave behind (a TLS session, a
    codec it cannot describe). The application says goodbye to them and closes
    them before it exports anything, so that its own state no longer names them."""
    return [conn for conn in list(server.connections.values())
            if _export_connection(server, conn) is None]


def export_server(server: TCPServer) -> Tuple[Dict[str, Any], List[int]]:
    """``server``'s listeners and connections as plain data, and the descriptors to keep
    open across the exec. A connection that cannot move is listed in ``"left"`` (by fd)."""
    conns: List[Dict[str, Any]] = []
    left: List[int] = []
    for conn in list(server.connections.values()):
        one = _export_connection(server, conn)
        if one is None:
            left.append(conn.fd)
        else:
            conns.append(one)
    stats = server.stats
    state = {
        "format": FORMAT,
        "listeners": [l.sock.fileno() for l in server.listeners],
        "connections": conns,
        "left": left,
        "stats": {name: getattr(stats, name) for name in _COUNTERS},
        "closed_by_reason": dict(stats.closed_by_reason),
        "limits": dict(stats.limits),
    }
    fds = [l.sock.fileno() for l in server.listeners] + [c["fd"] for c in conns]
    return state, fds


def _export_connection(server: TCPServer, conn: Connection) -> Optional[Dict[str, Any]]:
    if conn.state not in (OPEN, CLOSING) or conn.tls is not None:
        return None  # closed, or a TLS session (ssl cannot export its keys)
    codec = _export_codec(conn.codec)
    if codec is None:
        return None
    out = conn.out
    key = server._counted.get(conn)
    pending = key is None and conn in server._counted_pending
    if pending:
        key = server._counted_pending[conn]
    return {
        "fd": conn.fd,
        "codec": codec,
        "out": out.peek_bytes(len(out)).hex() if out is not None else "",
        "closing": _CLOSING.get(conn) if conn.state == CLOSING else None,
        "key": key.hex() if key is not None else None,
        "pending": pending,
        "proxied": server.proxied.get(conn),
        "xff": conn in server._by_xff,
    }


def _export_codec(codec: Any) -> Optional[Dict[str, Any]]:
    """A codec as plain data, or None if it cannot be described (it cannot move)."""
    kind = type(codec).__name__
    if isinstance(codec, StreamFrames):
        return {"kind": "frames"}  # the shared, stateless binary codec
    if isinstance(codec, FrameParser):  # a binary connection's own: a frame cut by a read
        partial = codec._partial
        held = partial.peek_bytes(len(partial)) if partial is not None else b""
        return {"kind": "frames", "partial": held.hex()}
    if isinstance(codec, ProtocolSniffer):
        return {"kind": "sniff"}
    if kind == "_TLSStart":  # on a port with TLS, nothing read yet
        inner = _export_codec(codec.inner)
        return None if inner is None else {"kind": "tls-start", "trusted": codec.trusted,
                                           "inner": inner}
    if kind == "_UntrustedStart":
        inner = _export_codec(codec.inner)
        return None if inner is None else {"kind": "untrusted", "start": codec.start.hex(),
                                           "inner": inner}
    if kind == "HttpCodec":
        parser = codec.parser
        if parser._done or parser._error is not None or codec.paused:
            return None  # a body ends it, or it is failing, or waiting on its reader: let it go
        return {"kind": "http", "buffered": bytes(parser._buf).hex(), "served": codec.served}
    if isinstance(codec, WebSocketCodec):
        parser = _export_parser(codec)
        inner = None if codec.inner is None else _export_codec(codec.inner)
        if parser is None or (codec.inner is not None and inner is None):
            return None
        close = codec.peer_close
        return {"kind": "websocket", "parser": parser, "inner": inner,
                "subprotocol": codec.subprotocol, "close_sent": codec.close_sent,
                "peer_close": None if close is None else [close.code, close.reason]}
    if isinstance(codec, WholeFrames):
        return {"kind": "whole-frames"}
    return None


def _export_parser(p: WebSocketParser) -> Optional[Dict[str, Any]]:
    if p._state is not None:
        return None  # failed or closed: the connection is on its way out
    frame = p._frame
    msg = p._msg
    return {
        "head": p._head.hex() if p._head is not None else None,
        "frame": None if frame is None else {
            "opcode": frame.opcode, "fin": frame.fin, "left": frame.left, "done": frame.done,
            "key": frame.key.hex() if frame.key is not None else None,
            "ctrl": bytes(frame.ctrl).hex() if frame.ctrl is not None else None,
            "limit": frame.limit},
        "msg": None if msg is None else {
            "buf": bytes(msg.buf[:msg.size]).hex(), "frames": msg.frames,
            "utf8": None if msg.utf8 is None else msg.utf8.getstate()[0].hex()},
        "tokens": p._tokens, "refilled": p._refilled,
    }


def release_server(server: TCPServer) -> None:
    """Let go of ``server``'s sockets without closing them (their descriptors stay
    open for a successor in this process: tests; an exec needs none of this)."""
    loop = server.loop
    for listener in server.listeners:
        loop.unregister(listener.sock)
        listener.sock.detach()
    server.listeners = []
    server.accepting = False
    for conn in list(server.connections.values()):
        loop.unregister(conn.fd)
        conn.sock.detach()
        conn.state = 2  # closed, without closing: the descriptor lives on elsewhere
    server.connections.clear()


# -- restoring ------------------------------------------------------------------------


def restore_server(server: TCPServer, state: Dict[str, Any]) -> List[Optional[Connection]]:
    """Make ``server`` (built anew, not listening) serve what ``state`` describes:
    its listeners, then each connection with its codec, input and output, counted
    as it was. Returns the connections in ``state["connections"]``' order."""
    if state.get("format") != FORMAT:
        raise HandoverError(f"a hand-over of format {state.get('format')!r}; this netcore "
                            f"takes format {FORMAT}")
    server.listen([socket.socket(fileno=fd) for fd in state["listeners"]])
    stats = server.stats
    for name, value in state["stats"].items():
        setattr(stats, name, value)
    stats.closed_by_reason.update(state["closed_by_reason"])
    stats.limits.update(state["limits"])
    restored: List[Optional[Connection]] = []
    for one in state["connections"]:
        restored.append(_restore_connection(server, one))
    return restored


def _restore_connection(server: TCPServer, one: Dict[str, Any]) -> Optional[Connection]:
    try:
        sock = socket.socket(fileno=one["fd"])
        sock.setblocking(False)
    except OSError:
        return None  # gone: the peer closed meanwhile, or it was never a socket
    conn = Connection(sock, server)
    conn.codec = _restore_codec(server, conn, one["codec"])
    key = bytes.fromhex(one["key"]) if one["key"] is not None else None
    if key is not None:
        _recount(server.address_limits, key, one["pending"])
        (server._counted_pending if one["pending"] else server._counted)[conn] = key
    if one["proxied"] is not None:
        server.proxied[conn] = one["proxied"]
        if one["xff"]:
            server._by_xff.add(conn)
    server.connections[conn.fd] = conn
    server.stats.connections += 1
    server.loop.register(conn.fd, EVENT_READ, conn)
    if one["out"]:
        conn.enqueue(bytes.fromhex(one["out"]))
    if one["closing"] is not None and conn.is_open:
        conn.close_after_flush(one["closing"] or CloseReason.SERVER_CLOSE)
    # Input may have come while nobody read: an edge-triggered poll would not
    # say so again, so each connection gets one read now.
    server.loop.ready_again(conn)
    return conn


def _recount(limits: AddressLimits, key: bytes, pending: bool) -> None:
    limits._open[key] = limits._open.get(key, 0) + 1
    if pending:
        limits._pending[key] = limits._pending.get(key, 0) + 1
        limits.pending += 1


def _restore_codec(server: TCPServer, conn: Connection, state: Dict[str, Any]) -> Codec:
    kind = state["kind"]
    factory: Any = server.codec_factory
    front = factory if hasattr(factory, "set_binary") else None  # a WebFront
    if kind == "frames":
        if state.get("partial"):
            own = FrameParser(server.config.max_frame)
            own.feed(bytes.fromhex(state["partial"]))
            return own
        binary: Codec = front.binary() if front is not None else factory(conn)
        return binary
    if kind == "whole-frames":
        return WholeFrames(server.config.max_frame)
    if kind == "sniff":
        sniffer: Codec = factory(conn)
        return sniffer
    if kind == "tls-start":
        inner_codec = _restore_codec(server, conn, state["inner"])
        if server.config.tls is None:
            return inner_codec  # the successor serves no TLS: it is plain, if anything
        from .server import _TLSStart

        return _TLSStart(conn, server, inner_codec, state["trusted"])
    if kind == "untrusted":
        from .server import _UntrustedStart

        start = _UntrustedStart(conn, server, _restore_codec(server, conn, state["inner"]))
        start.start = bytes.fromhex(state["start"])
        return start
    if front is None:
        raise HandoverError(f"a {kind} connection, and this server has no web front")
    if kind == "http":
        from .web import HttpCodec, _Resume

        http = HttpCodec(conn, front)
        http.served = state["served"]
        if state["buffered"]:
            http.parser.feed(bytes.fromhex(state["buffered"]))
            http.resume = _Resume(http)  # answers what is pipelined, a turn from now
            server.loop.ready_again(http.resume)
        front._watch(conn)
        return http
    if kind == "websocket":
        cfg = front.config
        inner = None
        if state["inner"] is not None:
            inner = _restore_codec(server, conn, state["inner"])
        ws = WebSocketCodec(conn, inner, cfg.max_message, state["subprotocol"],
                            max_fragments=cfg.max_fragments, control_burst=cfg.control_burst,
                            control_rate=cfg.control_rate)
        _restore_parser(ws, state["parser"])
        ws.close_sent = state["close_sent"]
        if state["peer_close"] is not None:
            from .websocket import Close

            ws.peer_close = Close(state["peer_close"][0], state["peer_close"][1])
        if cfg.ping_interval is not None or cfg.idle_timeout is not None:
            front._watch_ws(conn)
        return ws
    raise HandoverError(f"a connection with a codec of kind {kind!r}")


def _restore_parser(p: WebSocketParser, state: Dict[str, Any]) -> None:
    p._head = bytes.fromhex(state["head"]) if state["head"] is not None else None
    f = state["frame"]
    if f is not None:
        frame = _Frame(f["opcode"], f["fin"], f["left"],
                       bytes.fromhex(f["key"]) if f["key"] is not None else None)
        frame.done = f["done"]
        frame.ctrl = bytearray.fromhex(f["ctrl"]) if f["ctrl"] is not None else None
        frame.limit = f["limit"]
        p._frame = frame
    m = state["msg"]
    if m is not None:
        msg = _Message(m["utf8"] is not None)
        msg.buf = bytearray.fromhex(m["buf"])
        msg.size = len(msg.buf)
        msg.frames = m["frames"]
        if msg.utf8 is not None:
            msg.utf8.setstate((bytes.fromhex(m["utf8"]), 0))
        p._msg = msg
    p._tokens = state["tokens"]
    p._refilled = state["refilled"]

