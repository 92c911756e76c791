"""netcore: a small event-driven TCP core on the standard library alone.

Copy this folder into any project (Python 3.8+, no dependencies; see
README.md beside this file). Modules, in dependency order (each imports only
modules above it):

- :mod:`netcore.typing_shim`: ``NamedTuple``, ``Protocol`` and ``cast`` without
  importing ``typing`` (0.45 MB of RSS); the other typing names are imported
  for type checkers only.
- :mod:`netcore.ringbuffer`: ``RingBuffer``, the capped lazy byte FIFO.
- :mod:`netcore.codec`: the ``Codec`` protocol and ``ProtocolError``.
- :mod:`netcore.digest`: SHA-1 without loading OpenSSL (saves ~3.5 MB of RSS).
- :mod:`netcore.stats`: counters, histograms, percentiles.
- :mod:`netcore.tick`: ``TickScheduler``, a fixed-rate tick that never drifts.
- :mod:`netcore.poller`: ``make_poller``: epoll driven directly (Linux,
  edge-triggered where asked) or any ``selectors`` selector, one interface.
- :mod:`netcore.loop`: ``EventLoop`` on a poller, timers, ticks, signals.
- :mod:`netcore.framing`: ``FrameParser``, sans-IO u16-length-prefixed frames
  (``StreamFrames``: the same, one instance shared by all connections).
- :mod:`netcore.http`: ``RequestParser``, sans-IO HTTP/1.1 request heads.
- :mod:`netcore.websocket`: ``WebSocketParser``, RFC 6455 handshake and frames.
- :mod:`netcore.resp`: ``RespParser`` and ``encode_command``, sans-IO RESP2
  (the Redis protocol), error replies as values.
- :mod:`netcore.proxyproto`: ``ProxyHeaderReader``, the PROXY protocol v1/v2
  (the client behind a trusted proxy).
- :mod:`netcore.addrlimit`: ``AddressLimits``, connections and pending
  connections per client address (IPv6 by /64), exempt networks.
- :mod:`netcore.connection`: ``Connection``, nonblocking I/O and backpressure,
  and ``Owner``, what a connection needs from whoever owns it.
- :mod:`netcore.tls`: TLS under a connection's codec (``ssl.SSLObject`` over
  memory BIOs, driven by the loop); ``server_context`` from certbot's PEM
  files, ``client_context``. Imported (with ``ssl``) only when TLS is used.
- :mod:`netcore.sniff`: one port for several protocols, decided by the first
  byte (TLS, HTTP, binary).
- :mod:`netcore.handler`: ``Handler``, the application's callbacks, their
  order and what may re-enter.
- :mod:`netcore.server`: ``TCPServer``, listeners, limits and ``broadcast``.
- :mod:`netcore.client`: ``TCPClient``, outbound connections (numeric
  addresses, IPv4/IPv6, a connect timeout, failures reported once).
- :mod:`netcore.static`: ``StaticFiles``, GET/HEAD of a directory, with ETags.
- :mod:`netcore.wscodec`: WebSocket codecs for connections, server end
  and client end (``websocket_client``); text and binary messages.
- :mod:`netcore.web`: ``WebFront``, HTTP and WebSocket on a server's port.
- :mod:`netcore.handover`: a server's listeners and connections handed to
  its successor across an ``exec`` (an upgrade with nobody disconnected).
- :mod:`netcore.logs`: JSON/text log formatters, rate limits, churn summaries.
- :mod:`netcore.metrics`: Prometheus text exposition, process figures.
- :mod:`netcore.process`: process plumbing: open-files limit, ``malloc_trim``,
  the two-signal shutdown.
- :mod:`netcore.lease`: ``RedisLease``, one holder at a time with a fencing
  epoch, on any link that runs Lua scripts.
- :mod:`netcore.redis`: ``Redis`` and ``RedisSubscriber``, nonblocking
  commands, pipelining and pub/sub with AUTH and reconnects on the loop.
- :mod:`netcore.hostcheck`: can this host hold N clients? Its limits, sysctls
  and memory, one check per limit with its fix; a Redis probe (for a
  command-line tool; a server never imports it).
- :mod:`netcore.testing`: helpers for tests (run a loop until a condition,
  a bound listening socket); never needed at run time.
"""

from __future__ import annotations

import importlib

from .codec import CLOSED_CODEC, Codec, CodecHandoff, ProtocolError, Text
from .connection import CloseReason, Connection, Owner
from .framing import (
    DEFAULT_MAX_FRAME,
    FrameError,
    FrameParser,
    OversizeFrame,
    SplitFrame,
    StreamFrames,
    WholeFrames,
    ZeroLengthFrame,
    encode_frame,
)
from .loop import EventLoop, LateTick, Readiness, Timer
from .poller import Poller, make_poller
from .ringbuffer import BufferFull, RingBuffer
from .handler import Handler
from .server import ServerConfig, TCPServer, bind_listeners
from .sniff import HTTP, WEBSOCKET
from .stats import Histogram, NetStats, Window, percentile
from .tick import Tick, TickScheduler
from .web import WebConfig, WebFront, WebSocketCodec
from .websocket import CloseCode, close_code_for
from .wscodec import websocket_client
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:  # names for type checkers; at run time, built or imported on first use
    from typing import Any

    from .client import ClientConfig, TCPClient
    from .tls import CertificateError, client_context, server_context
    from .connection import CodecFactory  # a type alias: typing builds it (below)
    from .redis import (
        CommandError,
        ConnectionLost,
        HandshakeError,
        NotConnected,
        Pending,
        Redis,
        RedisAddress,
        RedisConfig,
        RedisError,
        RedisLease,
        RedisSubscriber,
        Script,
    )
    from .resp import ReplyError, RespParser, RespProtocolError, encode_command

# The Redis client is imported when first asked for: a server that never
# talks to Redis does not carry its ~1 MB of code (PEP 562).
_LAZY = {
    **dict.fromkeys(("ClientConfig", "TCPClient"), "client"),  # outbound: a server needs none
    # TLS imports ssl (~4.5 MB of RSS): only for those who ask.
    **dict.fromkeys(("CertificateError", "client_context", "server_context"), "tls"),
    **dict.fromkeys(("CommandError", "ConnectionLost", "HandshakeError", "NotConnected",
                     "Pending", "Redis", "RedisAddress", "RedisConfig", "RedisError", "RedisLease",
                     "RedisSubscriber", "Script"), "redis"),
    **dict.fromkeys(("ReplyError", "RespParser", "RespProtocolError", "encode_command"),
                    "resp"),
}


def __getattr__(name: str) -> Any:
    if name == "CodecFactory":  # a type alias: typing is imported only if asked at run time
        from typing import Callable

        return Callable[[Connection], Codec]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "CLOSED_CODEC",
    "DEFAULT_MAX_FRAME",
    "HTTP",
    "WEBSOCKET",
    "BufferFull",
    "CertificateError",
    "ClientConfig",
    "CloseCode",
    "CloseReason",
    "Codec",
    "CodecFactory",
    "CodecHandoff",
    "CommandError",
    "Connection",
    "ConnectionLost",
    "EventLoop",
    "FrameError",
    "FrameParser",
    "Handler",
    "HandshakeError",
    "Histogram",
    "LateTick",
    "NetStats",
    "NotConnected",
    "OversizeFrame",
    "Owner",
    "Pending",
    "Poller",
    "ProtocolError",
    "Readiness",
    "Redis",
    "RedisAddress",
    "RedisConfig",
    "RedisError",
    "RedisLease",
    "RedisSubscriber",
    "ReplyError",
    "RespParser",
    "RespProtocolError",
    "RingBuffer",
    "Script",
    "ServerConfig",
    "SplitFrame",
    "StreamFrames",
    "TCPClient",
    "TCPServer",
    "Text",
    "Tick",
    "TickScheduler",
    "Timer",
    "WebConfig",
    "WebFront",
    "WebSocketCodec",
    "WholeFrames",
    "Window",
    "ZeroLengthFrame",
    "bind_listeners",
    "client_context",
    "close_code_for",
    "encode_command",
    "encode_frame",
    "make_poller",
    "percentile",
    "server_context",
    "websocket_client",
]
