"""What an application implements: the callbacks of its connections.

One :class:`Handler` serves every connection of a server (or of a client):
it is told about each one by the :class:`~netcore.connection.Connection`
it happens to, and keeps per-connection state in ``conn.data``.

Call order, per connection::

    on_connect -> [on_protocol]* -> on_message* -> on_close

with ``on_high_water``/``on_drain`` (paired) and ``on_bad_input`` (at most
once, just before the close it causes) anywhere between ``on_connect`` and
``on_close``. ``on_close`` comes exactly once, last, whoever closed.

Re-entrancy: every callback runs on the loop's thread, one at a time, and
may call anything on any connection, including ``close()``. What a call
from inside a callback can cause at once:

- ``conn.close()`` calls ``on_close(conn)`` before it returns (also from
  inside ``on_message``; the rest of that read's messages are then dropped);
- ``conn.write()``/``send()`` may call ``on_high_water(conn)`` before it
  returns, and ``on_close(conn)`` if the send fails or the output cap is hit
  (a failed write returns False);
- ``TCPServer.broadcast`` may call ``on_close`` for any connection it sends
  to: pass it a list, not a collection ``on_close`` changes.

No callback is ever called for a connection after its ``on_close``.
"""

from __future__ import annotations

from .codec import ProtocolError
from .connection import Connection
from .websocket import close_code_for

__all__ = ["Handler"]


class Handler:
    """Application callbacks. Override what you need; the defaults do little.

    See the module docstring for the call order and what may re-enter.
    """

    def on_connect(self, conn: Connection) -> None:
        """A new connection is registered and ready to read.

        An outbound one (:class:`~netcore.client.TCPClient`) is connected.
        """

    def on_protocol(self, conn: Connection, protocol: str) -> None:
        """With a web front: what ``conn`` turned out to speak.

        ``"binary"`` (:data:`~netcore.sniff.BINARY`: the front's binary
        codec, from the first byte), ``"http"`` (:data:`~netcore.sniff.HTTP`:
        requests the front answers; no messages will come) or ``"websocket"``
        (:data:`~netcore.sniff.WEBSOCKET`: upgraded; messages follow). HTTP
        comes first and WebSocket after it on an upgraded connection.
        """

    def on_message(self, conn: Connection, payload: bytes) -> None:
        """One whole message from ``conn``."""

    def on_close(self, conn: Connection, reason: str) -> None:
        """``conn`` is gone (``reason`` is a :class:`~netcore.connection.CloseReason` value)."""

    def on_bad_input(self, conn: Connection, exc: ProtocolError) -> None:
        """The peer broke its protocol. Default: say why if the codec can
        (a WebSocket Close frame with :func:`~netcore.websocket.close_code_for`
        ``exc``), then close with the error's reason.

        If this returns with ``conn`` still open, it is closed at once.
        """
        conn.goodbye(close_code_for(exc), str(exc), reason=exc.reason)

    def on_high_water(self, conn: Connection) -> None:
        """``conn``'s queued output crossed ``high_water``."""

    def on_drain(self, conn: Connection) -> None:
        """``conn``'s queued output fell back to ``low_water``."""
