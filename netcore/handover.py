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
names any still open in ``state["left"]`` (the exec closes them). The
format is versioned (``FORMAT``): a successor refuses a state it does not
know rather than guess. Rows go as columns (``pack_rows``), so that the
successor parses a few large strings rather than thousands of small objects.

Everything here reads and writes the internals of netcore's own classes
(codecs, parsers, the server's tables): it lives in netcore so that they can
change together.
"""

from __future__ import annotations

import os
import socket
from array import array

from .addrlimit import AddressLimits
from .connection import CLOSING, OPEN, CloseReason, Connection, _CLOSING
from .framing import FrameParser, StreamFrames, WholeFrames
from .loop import EVENT_READ
from .sniff import ProtocolSniffer
from .typing_shim import TYPE_CHECKING, cast
from .websocket import WebSocketParser, _Frame, _Message
from .wscodec import WebSocketCodec

if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

    from .codec import Codec
    from .server import TCPServer

__all__ = ["FORMAT", "HandoverError", "export_server", "keep_open", "pack_rows",
           "release_server", "restore_server", "unmovable", "unpack_columns", "unpack_rows"]

#: The state's format: a successor refuses any other.
FORMAT = 2

#: A connection's row in the state (see :func:`pack_rows`).
_CONN_FIELDS = ("fd", "family", "codec", "out", "closing", "key", "pending", "proxied", "xff")

# The stats counters that go on across an exec (the rest are gauges, recounted).
_COUNTERS = ("accepted", "closed", "refused_full", "refused_fd_limit", "accept_errors",
             "bytes_in", "bytes_out", "frames_in", "frames_out", "sends", "slow_consumers")


class HandoverError(Exception):
    """A state this netcore cannot take (another format, a codec it does not know)."""


def keep_open(fds: Sequence[int]) -> None:
    """Let these descriptors survive an exec (clear their close-on-exec flag)."""
    for fd in fds:
        os.set_inheritable(fd, True)


# -- rows as columns -------------------------------------------------------------------
#
# A hand-over of 15,000 players as 15,000 small lists (or dicts) is 25 MB of small
# objects in the successor, and the objects it builds from them land between
# them: once the lists are freed, their memory stays mapped for the process's
# life (a third more RSS than a fresh start). As columns it is a few large
# strings: ints and floats packed, any other value once in a table, each row
# naming it by number.


def pack_rows(rows: Sequence[Sequence[Any]]) -> Dict[str, Any]:
    """``rows`` (equal length, values JSON can carry) as columns, plain data.

    A column of ints (or of floats) is packed in machine order (the successor
    runs on the same machine); a column of ``bytes`` of one length is one hex
    string; any other column is a table of its distinct values and each row's
    number in it. :func:`unpack_rows` gives the rows back.
    """
    columns: List[Dict[str, Any]] = []
    for column in (zip(*rows) if rows else ()):
        kinds = set(map(type, column))
        if kinds == {int}:
            try:
                columns.append({"q": array("q", column).tobytes().hex()})
                continue
            except OverflowError:
                pass  # past 64 bits: a table
        if kinds == {float}:
            columns.append({"d": array("d", column).tobytes().hex()})
        elif kinds == {bytes} and len(set(map(len, column))) == 1:
            columns.append({"bytes": len(column[0]), "hex": b"".join(column).hex()})
        else:
            columns.append(_table(column, kinds))
    return {"rows": len(rows), "columns": columns}


def _table(column: Sequence[Any], kinds: Set[type]) -> Dict[str, Any]:
    """A column as a table of its distinct values and each row's number in it."""
    numbers: Dict[Any, int] = {}
    if not kinds & {int, float, dict, list}:  # str, None, bool: each value its own key
        index = array("q", [numbers.setdefault(v, len(numbers)) for v in column])
        return {"table": list(numbers), "index": index.tobytes().hex()}
    # Mixed, or dicts and lists: told apart by type and by their repr (an object
    # shared between rows is looked at once).
    table: List[Any] = []
    seen: Dict[int, Any] = {}
    index = array("q")
    for v in column:
        key = seen.get(id(v))
        if key is None:
            key = seen[id(v)] = repr(v) if isinstance(v, (dict, list)) else (type(v).__name__, v)
        at = numbers.get(key)
        if at is None:
            at = numbers[key] = len(table)
            table.append(v)
        index.append(at)
    return {"table": table, "index": index.tobytes().hex()}


class _Column:
    """One column of :func:`pack_rows`, as a sequence: a table and each row's number."""

    __slots__ = ("table", "index")

    def __init__(self, table: List[Any], index: "array[int]") -> None:
        self.table = table
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.table[self.index[i]]

    def __iter__(self) -> Iterator[Any]:
        table = self.table
        return (table[i] for i in self.index)


def unpack_columns(packed: Dict[str, Any], width: int = 0) -> List[Sequence[Any]]:
    """The columns :func:`pack_rows` made, each a sequence of its rows' values
    (values from a table are shared between rows: do not change them); no rows
    have no columns, unless ``width`` says how many empty ones."""
    if not packed["columns"]:
        return [() for _ in range(width)]
    out: List[Sequence[Any]] = []
    for column in packed["columns"]:
        if "q" in column or "d" in column:
            code = "q" if "q" in column else "d"
            values = array(code)
            values.frombytes(bytes.fromhex(column[code]))
            out.append(values)
        elif "bytes" in column:
            raw, width = bytes.fromhex(column["hex"]), column["bytes"]
            out.append([raw[i:i + width] for i in range(0, len(raw), width)])
        else:
            index = array("q")
            index.frombytes(bytes.fromhex(column["index"]))
            out.append(cast("Sequence[Any]", _Column(column["table"], index)))
    return out


def unpack_rows(packed: Dict[str, Any]) -> Iterator[Tuple[Any, ...]]:
    """The rows :func:`pack_rows` was given, one tuple at a time."""
    columns = unpack_columns(packed)
    return zip(*columns) if columns else (() for _ in range(packed["rows"]))


# -- exporting ------------------------------------------------------------------------


def unmovable(server: TCPServer) -> List[Connection]:
    """The connections :func:`export_server` would leave behind (a TLS session, a
    codec it cannot describe). The application says goodbye to them and closes
    them before it exports anything, so that its own state no longer names them."""
    return [conn for conn in list(server.connections.values())
            if conn.state not in (OPEN, CLOSING) or conn.tls is not None
            or _export_codec(conn.codec) is None]


def export_server(server: TCPServer) -> Tuple[Dict[str, Any], List[int]]:
    """``server``'s listeners and connections as plain data, and the descriptors to keep
    open across the exec. A connection that cannot move is listed in ``"left"`` (by fd)."""
    conns: List[Tuple[Any, ...]] = []
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
        "connections": pack_rows(conns),
        "left": left,
        "stats": {name: getattr(stats, name) for name in _COUNTERS},
        "closed_by_reason": dict(stats.closed_by_reason),
        "limits": dict(stats.limits),
    }
    fds = [l.sock.fileno() for l in server.listeners] + [c[0] for c in conns]
    return state, fds


def _export_connection(server: TCPServer, conn: Connection) -> Optional[Tuple[Any, ...]]:
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
    return (  # _CONN_FIELDS
        conn.fd,
        int(conn.sock.family),
        codec,
        out.peek_bytes(len(out)).hex() if out is not None else "",
        _CLOSING.get(conn) if conn.state == CLOSING else None,
        key.hex() if key is not None else None,
        pending,
        server.proxied.get(conn),
        conn in server._by_xff,
    )


_FRAMES = {"kind": "frames"}  # every idle binary connection's codec: one object for all


def _export_codec(codec: Any) -> Optional[Dict[str, Any]]:
    """A codec as plain data, or None if it cannot be described (it cannot move)."""
    kind = type(codec).__name__
    if isinstance(codec, StreamFrames):
        return _FRAMES  # the shared, stateless binary codec
    if isinstance(codec, FrameParser):  # a binary connection's own: a frame cut by a read
        partial = codec._partial
        if partial is None or not len(partial):
            return _FRAMES
        return {"kind": "frames", "partial": partial.peek_bytes(len(partial)).hex()}
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
    for row in unpack_rows(state["connections"]):
        restored.append(_restore_connection(server, row))
    return restored


def _restore_connection(server: TCPServer, row: Sequence[Any]) -> Optional[Connection]:
    fd, family, codec, out, closing, hexed_key, pending, proxied, xff = row  # _CONN_FIELDS
    try:  # family, type and protocol given: nothing to ask the kernel
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd)
        sock.setblocking(False)
    except OSError:
        return None  # gone: the peer closed meanwhile, or it was never a socket
    conn = Connection(sock, server)
    conn.codec = _restore_codec(server, conn, codec)
    if hexed_key is not None:
        key = bytes.fromhex(hexed_key)
        _recount(server.address_limits, key, pending)
        (server._counted_pending if pending else server._counted)[conn] = key
    if proxied is not None:
        server.proxied[conn] = proxied
        if xff:
            server._by_xff.add(conn)
    server.connections[conn.fd] = conn
    server.stats.connections += 1
    server.loop.register(conn.fd, EVENT_READ, conn)
    if out:
        conn.enqueue(bytes.fromhex(out))
    if closing is not None and conn.is_open:
        conn.close_after_flush(closing or CloseReason.SERVER_CLOSE)
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

