"""The game server's TLS against real peers, not our own client (issue 24, "Done when"):
``openssl s_client`` (TLS 1.2 and 1.3, the game's binary protocol and https on
the game port, a chain it cannot verify refused), the ``websockets`` library
over ``wss://``, and Chromium loading the page over https (native TLS, no
nginx) and playing."""

import json
import os
import select
import subprocess
import time

import pytest

import spelltraction as st
from browserkit import CHROMIUM, CHROMIUM_ARGS, require_browser, wait_for
from conftest import loopback_only, require_module, require_tool
from gamekit import Player
from hostilekit import HostileServer
from netcore import FrameParser
from tlsgamekit import tls_connect

pytestmark = pytest.mark.slow  # a server process (and a browser) per test


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """One TLS game server (with a plain crowd's port) for the module; its PKI too."""
    import tlskit

    files = tlskit.PKIFiles(str(tmp_path_factory.mktemp("pki-peers")))
    with HostileServer("--tls-cert", files.cert, "--tls-key", files.key,
                       "--tick-ms", "100") as server:
        server.pki = files
        yield server


def s_client(port, *args, data=b""):
    openssl = require_tool("openssl")
    return subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-verify_return_error", "-brief", "-ign_eof", *args],
        input=data, capture_output=True, timeout=30)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_plays_the_binary_protocol_and_gets_https(tls_server, version):
    files = tls_server.pki
    openssl = require_tool("openssl")
    # The game: s_client sends a HELLO and a MOVE; WELCOME and TICKs come back.
    proc = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-servername",
         "localhost", "-verify_return_error", "-brief", "-quiet", version, "-CAfile", files.root],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(st.frame(st.Hello(st.PROTOCOL_V2, name=b"openssl"))
                         + st.frame(st.Move(1, 100, 100)))
        proc.stdin.flush()
        parser, frames = FrameParser(65535), []
        deadline = time.monotonic() + 15
        while sum(isinstance(st.decode(f), st.TickMsg) for f in frames) < 2:
            assert time.monotonic() < deadline, frames
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, proc.stderr.read()
                frames += parser.feed(chunk)
        assert isinstance(st.decode(frames[0]), st.Welcome)
    finally:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    want = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert f"Protocol version: {want}" in err and "Verification: OK" in err, err
    # https on the same port (what a browser gets: ALPN http/1.1, checked below).
    page = s_client(tls_server.port, version, "-CAfile", files.root, "-alpn", "http/1.1",
                    data=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith(b"HTTP/1.1 200 OK\r\n") and b"<html" in page.stdout.lower()
    ctx = files.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # as a browser offers them
    with tls_connect(tls_server.port, ctx) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


@pytest.mark.parametrize("check", ["wrong CA", "wrong name"])
def test_openssl_s_client_refuses_the_game_s_certificate_it_cannot_verify(tls_server, check):
    files = tls_server.pki
    args = (["-CAfile", files.stranger.root] if check == "wrong CA"
            else ["-CAfile", files.root, "-verify_hostname", "wrong.example"])
    done = s_client(tls_server.port, *args)
    assert done.returncode != 0 and "certificate verify failed" in done.stderr.decode()
    assert tls_server.alive()


def test_the_websockets_library_plays_over_wss(tls_server):
    """Its asyncio client: the sync one reads in a thread while it writes from
    another, which OpenSSL does not allow (see core/test_tls.py)."""
    require_module("websockets")
    import asyncio
    import ssl

    import websockets

    async def play():
        async with websockets.connect(
                f"wss://localhost:{tls_server.port}/ws", open_timeout=10,
                ssl=ssl.create_default_context(cafile=tls_server.pki.root),
                origin=f"https://localhost:{tls_server.port}",
                **loopback_only(websockets.connect)) as ws:
            await ws.send(st.frame(st.Hello(st.PROTOCOL_V2, name=b"websockets")))
            kinds = []
            deadline = time.monotonic() + 10
            while st.TickMsg not in kinds and time.monotonic() < deadline:
                message = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(message, bytes)
                kinds += [type(st.decode(f)) for f in FrameParser(65535).feed(message)]
            stats = json.loads(tls_server.get("/stats.json")[2])
            return kinds, stats

    kinds, stats = asyncio.run(play())
    assert kinds[0] is st.Welcome and st.TickMsg in kinds
    assert stats["tls"]["players"] >= 1


def test_chromium_loads_the_page_over_https_and_plays(tls_server):
    """Native TLS, no nginx: the page comes over https from the game port, opens
    wss:// to the same port (app.js: wss: under https:), joins, sees ticks, and
    a click moves it on the server (a plain TCP observer sees the move)."""
    sync_playwright = require_browser()
    observer = Player(tls_server.port)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The test CA is not in Chromium's store: skip the chain check (the
            # s_client tests above check the chain against the root).
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"https://localhost:{tls_server.port}/")
            wait_for(page, "() => { const s = window.spelltraction.state;"
                           " return s.id > 0 && s.board.length === 12 && s.ticksSeen > 3; }",
                     timeout=20)
            assert page.evaluate("() => location.protocol") == "https:"
            browser_id = page.evaluate("() => window.spelltraction.state.id")
            box = page.locator("#board").bounding_box()
            page.mouse.click(box["x"] + box["width"] * (2.5 / 4),
                             box["y"] + box["height"] * (1.5 / 3))
            observer.ticks_until(lambda t: any(
                m.player_id == browser_id and st.cell_of(m.x, m.y) == 6 for m in t.movers))
            stats = json.loads(tls_server.get("/stats.json")[2])
            assert stats["tls"]["players"] >= 1 and stats["tls"]["handshakes"] >= 1
            assert not errors, errors
        finally:
            browser.close()
            observer.sock.close()
