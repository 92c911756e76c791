"""netcore: a small event-driven TCP core on the standard library alone.

Copy this folder into any project (Python 3.8+, no dependencies). Pieces,
one module each:

- :mod:`netcore.loop`: ``EventLoop`` on ``selectors``, timers, signals.
- :mod:`netcore.tick`: ``TickScheduler``, a fixed-rate tick that never drifts.
- :mod:`netcore.server`: ``TCPServer``, listeners, limits and ``broadcast``.
- :mod:`netcore.connection`: ``Connection``, nonblocking I/O and backpressure.
- :mod:`netcore.framing`: ``FrameParser``, sans-IO u16-length-prefixed frames.
- :mod:`netcore.ringbuffer`: ``RingBuffer``, the capped lazy byte FIFO.
- :mod:`netcore.stats`: counters, histograms, percentiles.
- :mod:`netcore.http`: ``RequestParser``, sans-IO HTTP/1.1 request heads.
- :mod:`netcore.websocket`: ``WebSocketParser``, RFC 6455 handshake and frames.
- :mod:`netcore.sniff`: one port for two protocols, decided by the first byte.
- :mod:`netcore.static`: ``StaticFiles``, GET/HEAD of a directory, with ETags.
- :mod:`netcore.web`: ``WebFront``, HTTP and WebSocket on a ``TCPServer``'s port.
"""

from .codec import CLOSED_CODEC, Codec, ProtocolError
from .connection import CloseReason, Connection
from .framing import (
    DEFAULT_MAX_FRAME,
    FrameError,
    FrameParser,
    OversizeFrame,
    SplitFrame,
    WholeFrames,
    ZeroLengthFrame,
    encode_frame,
)
from .loop import EventLoop, Readiness, Timer
from .ringbuffer import BufferFull, RingBuffer
from .server import Handler, ServerConfig, TCPServer, bind_listeners
from .stats import Histogram, NetStats, Window, percentile
from .tick import Tick, TickScheduler
from .web import WebConfig, WebFront, WebSocketCodec

__version__ = "0.1.0"

__all__ = [
    "CLOSED_CODEC",
    "DEFAULT_MAX_FRAME",
    "BufferFull",
    "CloseReason",
    "Codec",
    "Connection",
    "EventLoop",
    "FrameError",
    "FrameParser",
    "Handler",
    "Histogram",
    "NetStats",
    "OversizeFrame",
    "ProtocolError",
    "Readiness",
    "RingBuffer",
    "ServerConfig",
    "SplitFrame",
    "TCPServer",
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
    "encode_frame",
    "percentile",
]
