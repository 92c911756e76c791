"""Messages completed before bad input in the same read reach the handler first.

A peer's good messages are its own, whatever follows them in the same
packet: they are delivered, then on_bad_input, then the close.
"""

import pytest

from netcore import (
    FrameParser, Handler, ServerConfig, StreamFrames, TCPClient, TCPServer, WebConfig, WebFront,
    WholeFrames, encode_frame, websocket_client,
)
from netcore.framing import FrameError
from netcore.testing import LoopClient, run_until


@pytest.mark.parametrize("codec", [FrameParser(), StreamFrames(), WholeFrames()])
def test_frame_codecs_hand_over_the_frames_before_the_error(codec):
    with pytest.raises(FrameError) as err:
        codec.feed(encode_frame(b"one") + encode_frame(b"two") + b"\x00\x00rest")
    assert list(err.value.messages) == [b"one", b"two"]


def test_a_failed_frame_parser_does_not_hand_them_over_twice():
    parser = FrameParser()
    with pytest.raises(FrameError):
        parser.feed(encode_frame(b"one") + b"\xff\xff")
    with pytest.raises(FrameError) as again:
        parser.feed(encode_frame(b"two"))
    assert list(again.value.messages) == []


class Record(Handler):
    def __init__(self):
        self.events = []

    def on_message(self, conn, payload):
        self.events.append(("message", payload))
        conn.send(payload)

    def on_bad_input(self, conn, exc):
        self.events.append(("bad", exc.reason))
        super().on_bad_input(conn, exc)

    def on_close(self, conn, reason):
        self.events.append(("close", reason))

    def closed(self):
        return self.events and self.events[-1][0] == "close"


class WsPeer(Handler):
    """The WebSocket client's side: open once upgraded, keeps what it receives."""

    def __init__(self):
        self.open = False
        self.got = []

    def on_protocol(self, conn, protocol):
        self.open = True

    def on_message(self, conn, payload):
        self.got.append(payload)


def upgraded(loop, handler, config, **client_options):
    """A server with ``handler`` behind a WebFront(``config``) and one client
    upgraded to it: (server, client, peer, the client's connection)."""
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"]),
                       codec_factory=WebFront(config))
    server.listen()
    peer = WsPeer()
    client = TCPClient(loop, peer)
    client.connect("127.0.0.1", server.port,
                   codec_factory=websocket_client("h", "/ws", **client_options))
    run_until(loop, lambda: peer.open)
    (conn,) = client.connections.values()
    return server, client, peer, conn


def test_a_server_delivers_good_frames_then_reports_the_bad_one(loop):
    handler = Record()
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    client = LoopClient(server.port)
    client.send(encode_frame(b"hello") + encode_frame(b"world") + b"\x00\x00")
    run_until(loop, handler.closed)
    assert handler.events == [("message", b"hello"), ("message", b"world"), ("bad", "bad-frame"),
                              ("close", "bad-frame")]
    got = bytearray()
    run_until(loop, lambda: got.extend(client.read_available()) or client.eof)
    assert bytes(got) == encode_frame(b"hello") + encode_frame(b"world")
    client.close()
    server.close()


def test_websocket_messages_before_a_bad_frame_or_a_close_are_delivered(loop):
    handler = Record()
    server, client, _, conn = upgraded(loop, handler, WebConfig(message_codec=WholeFrames()),
                                       inner=FrameParser())
    # One write: a message of two frames, then one whose second frame is bad.
    codec = conn.codec
    conn.write(codec.wrap(encode_frame(b"a") + encode_frame(b"b"))
               + codec.wrap(encode_frame(b"c") + b"\x00\x00"))
    run_until(loop, handler.closed)
    assert handler.events == [("message", b"a"), ("message", b"b"), ("message", b"c"),
                              ("bad", "bad-frame"), ("close", "bad-frame")]
    client.close()
    server.close()


def test_a_websocket_message_and_a_close_in_one_read_both_count(loop):
    handler = Record()
    server, client, peer, conn = upgraded(loop, handler, WebConfig())
    codec = conn.codec
    conn.write(codec.frame(b"last words") + codec.closing(b"", 1000, "bye"))
    run_until(loop, handler.closed)
    assert handler.events == [("message", b"last words"), ("close", "peer-closed")]
    run_until(loop, lambda: not client.connections)
    assert peer.got == [b"last words"]  # the echo went out before the Close answer
    assert codec.peer_close.code == 1000
    server.close()
