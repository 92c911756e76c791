"""Static files, /healthz and HTTP errors on the game's own port."""

import os

import pytest

import spelltraction as st
from netcore.web import HttpCodec
from webkit import RawConn

FILES = {
    "index.html": b"<!doctype html><title>t</title>",
    "app.js": b"console.log(1);",
    "style.css": b"body{}",
    "img/pic.png": b"\x89PNG\r\n\x1a\nfake",
    "icon.svg": b"<svg/>",
    "data.bin": b"\x00\x01",
    ".secret": b"hidden",
}


@pytest.fixture
def root(tmp_path):
    web = tmp_path / "web"
    for name, data in FILES.items():
        path = web / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "outside.txt").write_bytes(b"not yours")
    os.symlink(tmp_path / "outside.txt", web / "link.txt")
    return web


@pytest.fixture
def h(root, make_harness):
    return make_harness(web_root=str(root), handshake_timeout=0.4)


@pytest.mark.parametrize("path, ctype, name", [
    ("/", "text/html; charset=utf-8", "index.html"),
    ("/index.html", "text/html; charset=utf-8", "index.html"),
    ("/app.js", "text/javascript; charset=utf-8", "app.js"),
    ("/style.css", "text/css; charset=utf-8", "style.css"),
    ("/img/pic.png", "image/png", "img/pic.png"),
    ("/icon.svg?v=3", "image/svg+xml", "icon.svg"),
    ("/data.bin", "application/octet-stream", "data.bin"),
])
def test_files_with_content_types(h, path, ctype, name):
    c = RawConn(h)
    r = c.request(path)
    assert r.status == 200
    assert r.headers["content-type"] == ctype
    assert r.body == FILES[name]
    assert r.headers["content-length"] == str(len(FILES[name]))
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["etag"].startswith('"') and r.headers["etag"].endswith('"')


def test_etag_and_if_none_match(h, root):
    c = RawConn(h)
    etag = c.request("/app.js").headers["etag"]
    for header in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
        r = c.request("/app.js", headers=[("If-None-Match", header)])
        assert r.status == 304 and r.body == b"", header
        assert r.headers["etag"] == etag
        assert "content-length" not in r.headers
    assert c.request("/app.js", headers=[("If-None-Match", '"other"')]).status == 200
    # An edited file gets a new ETag at once, and the old one no longer matches.
    (root / "app.js").write_bytes(b"console.log(2); // changed")
    r = c.request("/app.js", headers=[("If-None-Match", etag)])
    assert r.status == 200 and r.body == b"console.log(2); // changed"
    assert r.headers["etag"] != etag


def test_head_has_the_headers_and_no_body(h):
    c = RawConn(h)
    r = c.request("/index.html", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert r.headers["content-length"] == str(len(FILES["index.html"]))
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    # Nothing followed the head: the next response on this connection parses cleanly.
    assert c.request("/style.css").body == FILES["style.css"]
    assert c.buf == b""


@pytest.mark.parametrize("path, status", [
    ("/../outside.txt", 403),
    ("/%2e%2e/outside.txt", 403),
    ("/img/%2E%2E/%2E%2E/outside.txt", 403),
    ("/img/..%2f..%2foutside.txt", 403),
    ("/link.txt", 403),  # a symlink out of the root
    ("/.secret", 404),
    ("/img/../.secret", 403),
    ("/nothing.html", 404),
    ("/img/", 404),  # a directory without index.html
    ("/a%00b", 400),
    ("/a%5c..%5coutside.txt", 400),  # backslashes
    ("/%ff", 400),  # not UTF-8
])
def test_paths_outside_or_hidden_are_refused(h, path, status):
    r = RawConn(h).request(path)
    assert r.status == status, r
    assert b"not yours" not in r.body and b"hidden" not in r.body


def test_healthz(h):
    c = RawConn(h)
    r = c.request("/healthz")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    assert c.request("/healthz", method="HEAD").body == b""


def test_methods_other_than_get_and_head_are_405(h):
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        r = RawConn(h).request("/", method=method)
        assert r.status == 405, method
        assert r.headers["allow"] == "GET, HEAD"


def test_a_request_body_is_refused_and_the_connection_closed(h):
    c = RawConn(h)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd")
    r = c.responses(1)[0]
    assert r.status == 405 and r.headers["connection"] == "close"
    c.wait_closed()


@pytest.mark.parametrize("raw, status", [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Flood: y\r\n" * 100 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: t\r\nCookie: " + b"c" * 20000 + b"\r\n\r\n", 431),
])
def test_bad_requests_get_a_short_answer_and_a_close(h, raw, status):
    c = RawConn(h)
    c.send(raw)
    r = c.responses(1)[0]
    assert r.status == status
    assert r.headers["connection"] == "close"
    assert len(r.body) < 200 and r.body.startswith(str(status).encode())
    c.wait_closed()
    assert h.server.front.web.stats.bad_requests == 1


def test_header_flood_is_refused_before_it_ends(h):
    c = RawConn(h)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Flood: y\r\n" * 70)  # no blank line yet
    assert c.responses(1)[0].status == 431
    c.wait_closed()


def test_keep_alive_and_close(h):
    c = RawConn(h)
    for _ in range(3):
        assert c.request("/app.js").status == 200
    r = c.request("/style.css", headers=[("Connection", "close")])
    assert r.status == 200 and r.headers["connection"] == "close"
    c.wait_closed()
    old = RawConn(h)
    r = old.request("/", version="HTTP/1.0")
    assert r.status == 200 and r.headers["connection"] == "close"
    old.wait_closed()


def test_pipelined_requests_are_answered_in_order(h):
    c = RawConn(h)
    c.send(b"GET /app.js HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /style.css HTTP/1.1\r\nHost: t\r\n\r\n")
    got = c.responses(3)
    assert [r.status for r in got] == [200, 404, 200]
    assert got[2].body == FILES["style.css"]


def test_ws_path_without_an_upgrade_is_426(h):
    r = RawConn(h).request("/ws")
    assert r.status == 426
    assert r.headers["upgrade"] == "websocket"
    assert r.headers["sec-websocket-version"] == "13"


def test_slow_request_is_closed_at_the_deadline(h):
    c = RawConn(h)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # ...and never the blank line
    r = c.responses(1, timeout=5.0)[0]
    assert r.status == 408
    c.wait_closed()
    assert h.server.front.web.stats.handshake_timeouts == 1
    assert h.server.front.net.stats.closed_by_reason.get("handshake-timeout") == 1


def test_slow_upgrade_is_closed_at_the_deadline(h):
    c = RawConn(h)
    c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n")
    assert c.responses(1)[0].status == 408
    c.wait_closed()


def test_idle_kept_alive_connection_is_closed_quietly(h):
    c = RawConn(h)
    assert c.request("/").status == 200
    assert c.wait_closed() == b""
    assert h.server.front.web.stats.handshake_timeouts == 1


def test_trickled_request_cannot_outlive_the_deadline(h):
    c = RawConn(h)
    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 200
    for i in range(len(request)):  # a byte every 10 ms: far past the 0.4 s deadline
        c.send(request[i : i + 1])
        h.run(0.01)
        c.pump()
        if c.eof or c.buf:
            break
    assert c.responses(1)[0].status == 408
    c.wait_closed()


def test_http_connections_are_not_players_and_get_no_game_bytes(h):
    player = h.client()
    web = RawConn(h)
    assert web.request("/").status == 200
    h.ticks(3)
    assert len(h.server.world.game.players) == 1
    http_conns = [c for c in h.server.front.net.connections.values() if isinstance(c.codec, HttpCodec)]
    assert len(http_conns) == 1 and http_conns[0].data is None
    assert http_conns[0] not in h.server.front.pending
    web.pump()
    assert web.buf == b""  # no TICK leaked into the HTTP connection
    assert all(c.data is None or c.data.peer is c for c in h.server.front.net.connections.values())
    assert player.expect(st.TickMsg)


def test_hello_timeout_does_not_hit_http_keep_alive(root, make_harness):
    # The game's HELLO timeout is shorter than the HTTP deadline here: a kept-alive
    # HTTP connection must get neither a game ERROR frame nor an early close.
    h = make_harness(web_root=str(root), hello_timeout=0.05, handshake_timeout=3.0)
    c = RawConn(h)
    assert c.request("/").status == 200
    h.run(0.5)
    c.pump()
    assert not c.eof and c.buf == b""
    assert c.request("/app.js").status == 200


def test_binary_players_still_share_the_port(h):
    c = h.client()
    assert c.welcome.player_id >= 1
    assert RawConn(h).request("/healthz").status == 200
    c.send(st.Move(1, 10, 10))
    assert c.expect(st.You).seq == 1


def test_no_web_root_serves_only_healthz_and_upgrades(make_harness):
    h = make_harness(web_root=None)
    assert RawConn(h).request("/").status == 404
    assert RawConn(h).request("/healthz").status == 200


@pytest.mark.parametrize("lengths, status", [
    (["5", "5"], 405),  # identical duplicates merged: a GET with a body is answered, closed
    (["5", "6"], 400),
    (["²"], 400),  # int() takes it: a ValueError traceback and no answer, before
    (["1" * 4301], 400),  # past int()'s digit limit: ValueError, before
])
def test_bad_content_length_gets_an_answer_and_a_close_not_a_traceback(h, caplog, lengths,
                                                                       status):
    c = RawConn(h)
    fields = "".join(f"Content-Length: {v}\r\n" for v in lengths)
    c.send(f"POST / HTTP/1.1\r\nHost: t\r\n{fields}\r\n".encode("utf-8"))
    r = c.responses(1)[0]
    assert r.status == status and r.headers["connection"] == "close"
    c.wait_closed()
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    # The server serves the next client as before.
    assert RawConn(h).request("/").status == 200


def test_a_file_over_the_size_limit_is_413_logged_once_never_500(h, root, caplog):
    (root / "big.bin").write_bytes(b"x" * (2 << 20))  # 2 MiB, over the 1 MiB limit
    caplog.set_level("WARNING", logger="netcore")
    for _ in range(5):
        r = RawConn(h).request("/big.bin")
        assert r.status == 413 and b"over the 1048576-byte limit" in r.body
    warned = [rec for rec in caplog.records if "big.bin" in rec.getMessage()]
    assert len(warned) == 1 and "2097152 bytes" in warned[0].getMessage()
    (root / "big.bin").write_bytes(b"small now")  # a new version is served at once
    r = RawConn(h).request("/big.bin")
    assert r.status == 200 and r.body == b"small now"


def test_a_reader_file_over_the_limit_is_413():
    from netcore.http import Request
    from netcore.static import StaticFiles

    files = StaticFiles(reader=lambda name: b"y" * 100, max_size=10)
    status, data = files.respond(Request("GET", "/a.js", "HTTP/1.1", (("host", "t"),)))
    assert status == 413 and data.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("path, name", [
    ("/./index.html", "index.html"),
    ("/.", "index.html"),
    ("/img/./pic.png", "img/pic.png"),
    ("/./img/././pic.png", "img/pic.png"),
    ("/%2E/app.js", "app.js"),
])
def test_dot_segments_are_removed(h, path, name):
    r = RawConn(h).request(path)
    assert r.status == 200, path
    assert r.body == FILES[name]
