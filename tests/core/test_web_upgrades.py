"""WebFront's upgrade choices: Origin, subprotocols, a per-upgrade hook, codecs."""

from netcore import (
    EventLoop, FrameParser, Handler, ServerConfig, TCPClient, TCPServer, Text, WebConfig, WebFront,
    WholeFrames, websocket_client,
)
from netcore import testing
from netcore.testing import run_until
from netcore.web import Upgrade


class Echo(testing.Echo):
    """Every message back as it came; records each connection's protocol."""

    def __init__(self):
        super().__init__(prefix=b"")
        self.protocols = []

    def on_protocol(self, conn, protocol):
        self.protocols.append(protocol)


class Client(Handler):
    def __init__(self):
        self.events = []
        self.got = []

    def on_protocol(self, conn, protocol):
        self.events.append(("open", conn.codec.subprotocol))

    def on_message(self, conn, payload):
        self.got.append(payload)

    def on_bad_input(self, conn, exc):
        self.events.append(("refused", str(exc)))
        super().on_bad_input(conn, exc)

    def on_close(self, conn, reason):
        self.events.append(("close", reason))


def setup(config):
    loop = EventLoop()
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]),
                       codec_factory=WebFront(config))
    server.listen()
    client_handler = Client()
    client = TCPClient(loop, client_handler)
    return loop, server, client, client_handler


def open_ws(loop, server, client, handler, path="/ws", **kw):
    client.connect("127.0.0.1", server.port,
                   codec_factory=websocket_client(f"127.0.0.1:{server.port}", path, **kw))
    run_until(loop, lambda: handler.events)
    return handler.events[0]


def test_raw_messages_are_the_default_text_and_binary_both_ways():
    loop, server, client, h = setup(WebConfig())
    assert open_ws(loop, server, client, h) == ("open", "")
    (conn,) = client.connections.values()
    conn.send_text("text ✓")
    conn.send_binary(b"\x00bin")
    conn.send(Text("again", "utf-8"))
    run_until(loop, lambda: len(h.got) == 3)
    assert [type(m) for m in h.got] == [Text, bytes, Text]
    assert h.got == [b"text \xe2\x9c\x93", b"\x00bin", b"again"]
    assert h.got[0].decode() == "text ✓"
    server.close()
    loop.close()


def test_an_inner_codec_carries_frames_and_refuses_text_with_1003():
    loop, server, client, h = setup(WebConfig(message_codec=WholeFrames()))
    open_ws(loop, server, client, h, inner=FrameParser())
    (conn,) = client.connections.values()
    conn.send(b"framed")
    run_until(loop, lambda: h.got)
    assert h.got == [b"framed"] and type(h.got[0]) is bytes
    codec = conn.codec
    codec.inner = None  # now send a raw text message, which the server refuses
    conn.send_text("nope")
    run_until(loop, lambda: h.events[-1][0] == "close")
    assert h.events[-1] == ("close", "peer-closed")
    assert codec.peer_close.code == 1003  # the server's Close frame said why
    server.close()
    loop.close()


def test_origins_not_allowed_get_403_and_allowed_ones_upgrade():
    config = WebConfig(allowed_origins=["https://good.example"])
    loop, server, client, h = setup(config)
    ev = open_ws(loop, server, client, h, headers=[("Origin", "https://evil.example")])
    assert ev[0] == "refused" and "403" in ev[1]
    h.events.clear()
    ev = open_ws(loop, server, client, h, headers=[("Origin", "https://GOOD.example/")])
    assert ev == ("open", "")
    h.events.clear()  # no Origin: not a browser's request, allowed with or without a list
    assert open_ws(loop, server, client, h) == ("open", "")
    server.close()
    loop.close()


def test_the_first_of_our_subprotocols_the_client_offers_is_chosen():
    loop, server, client, h = setup(WebConfig(subprotocols=["v2.chat", "v1.chat"]))
    assert open_ws(loop, server, client, h, subprotocols=["v1.chat", "v2.chat"]) == (
        "open", "v2.chat")
    h.events.clear()
    assert open_ws(loop, server, client, h, subprotocols=["other"]) == ("open", "")
    server.close()
    loop.close()


def test_a_hook_chooses_per_upgrade_or_refuses():
    seen = []

    def accept(request):
        seen.append(request.path)
        if request.path == "/frames":
            return Upgrade(WholeFrames())
        if request.path == "/raw":
            return Upgrade(None, "x")
        return 404

    loop, server, client, h = setup(WebConfig(ws_path="*", ws_accept=accept))
    assert open_ws(loop, server, client, h, "/raw", subprotocols=["x"]) == ("open", "x")
    h.events.clear()
    assert open_ws(loop, server, client, h, "/frames", inner=FrameParser())[0] == "open"
    h.events.clear()
    ev = open_ws(loop, server, client, h, "/nothing")
    assert ev[0] == "refused" and "404" in ev[1]
    assert seen == ["/raw", "/frames", "/nothing"]
    conns = list(client.connections.values())
    conns[0].send_text("raw")
    conns[1].send(b"in a frame")
    run_until(loop, lambda: len(h.got) == 2)
    assert sorted(h.got) == [b"in a frame", b"raw"]
    server.close()
    loop.close()


def test_a_message_larger_than_max_output_is_sent_whole():
    """The old trap: one write over max_output was closed as a slow consumer."""
    loop = EventLoop()
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"], max_output=64 << 10,
                                                  high_water=32 << 10, low_water=8 << 10),
                       codec_factory=WebFront(WebConfig(max_message=4 << 20)))
    server.listen()
    h = Client()
    client = TCPClient(loop, h)
    open_ws(loop, server, client, h, max_message=4 << 20)
    (conn,) = client.connections.values()
    big = bytes(range(256)) * (3 << 12)  # 3 MiB, 48 times max_output
    conn.send_binary(big)
    run_until(loop, lambda: h.got, timeout=20)
    assert h.got == [big] and server.stats.slow_consumers == 0
    server.close()
    loop.close()
