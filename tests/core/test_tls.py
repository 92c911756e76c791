"""TLS in netcore: server and client, against Python's ssl, openssl s_client and websockets.

Every server here runs on a loop in the test's thread; the blocking peers
(Python's ``ssl`` client, ``websockets``) run in a thread of their own, and
``openssl s_client`` in a process.
"""

import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings

import pytest

from conftest import loopback_only, require_module, require_tool
from netcore import (
    EventLoop, FrameParser, Handler, ServerConfig, TCPServer, WebConfig, WebFront, encode_frame,
)
from netcore.client import TCPClient
from netcore.metrics import Exposition, add_net_stats
from netcore.testing import Echo, LoopClient, run_until
from netcore.tls import CertificateError, client_context, server_context
from netcore.wscodec import websocket_client
from tlskit import MemoryClient, pki  # noqa: F401 - pki is a fixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class InThread:
    """Run ``fn`` in a thread; ``done`` once it returned or raised."""

    def __init__(self, fn, *args):
        self.result = None
        self.error = None
        self.done = False
        self.thread = threading.Thread(target=self._run, args=(fn,) + args, daemon=True)
        self.thread.start()

    def _run(self, fn, *args):
        try:
            self.result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.done = True

    def wait(self, loop, timeout=10.0):
        run_until(loop, lambda: self.done, timeout, "the client thread to finish")
        if self.error is not None:
            raise self.error
        return self.result


def tls_server(pki, loop=None, handler=None, web=False, **config):
    loop = loop or EventLoop()
    handler = handler or Echo()
    config.setdefault("tls", server_context(pki.cert, pki.key))
    server = TCPServer(loop, handler, ServerConfig(hosts=["127.0.0.1"], **config),
                       codec_factory=WebFront(WebConfig(ws_path="*")) if web else None)
    server.listen()
    return loop, server, handler


def blocking_echo(port, context, payload=b"hi", server_hostname="localhost"):
    """Python's own ssl client: one frame out, its echo back; (version, alpn, echo)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(encode_frame(payload))
            parser = FrameParser(65535)
            frames = []
            while not frames:
                data = s.recv(65536)
                assert data, "closed before the echo"
                frames = parser.feed(data)
            return s.version(), s.selected_alpn_protocol(), frames[0]


def test_server_context_takes_certbots_files_and_names_what_is_wrong(pki, tmp_path):
    ctx = server_context(pki.cert, pki.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_NONE and ctx.cert_store_stats()["x509_ca"] == 0
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(CertificateError, match="nowhere.pem"):
        server_context(missing, pki.key)
    with pytest.raises(CertificateError, match="not the key of the certificate"):
        server_context(pki.cert, pki.other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(CertificateError, match="garbage.pem"):
        server_context(str(garbage), pki.key)
    unreadable = tmp_path / "secret.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(CertificateError, match="secret.pem.*[Pp]ermission"):
            server_context(pki.cert, str(unreadable))


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_python_ssl_client_echoes_over_tls_and_gets_http_1_1_by_alpn(pki, version):
    loop, server, handler = tls_server(pki)
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    got = InThread(blocking_echo, server.port, ctx).wait(loop)
    assert got == (version.replace("_", "."), "http/1.1", b"echo:hi")
    assert server.stats.tls_handshakes == 1 and server.stats.tls_errors == {}
    run_until(loop, lambda: handler.closed == ["peer-closed"])


def test_a_client_offering_tls_1_1_or_less_is_refused(pki):
    loop, server, handler = tls_server(pki)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    attempt = InThread(blocking_echo, server.port, ctx)
    with pytest.raises((ssl.SSLError, OSError)):
        attempt.wait(loop)
    run_until(loop, lambda: handler.closed == ["tls-error"])
    assert server.stats.tls_handshakes == 0 and sum(server.stats.tls_errors.values()) == 1


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_gets_https_from_the_same_port(pki, version):
    openssl = require_tool("openssl")
    loop, server, _ = tls_server(pki, web=True)
    proc = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
         "-CAfile", pki.root, "-verify_return_error", "-brief", "-ign_eof", version],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        proc.stdin.close()
        run_until(loop, lambda: proc.poll() is not None, 15, "s_client to finish")
        out, err = proc.stdout.read(), proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok\n"), out
    want = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert f"Protocol version: {want}" in err and "Verification: OK" in err, err
    assert server.stats.tls_handshakes == 1


@pytest.mark.parametrize("check", ["wrong CA", "wrong name"])
def test_openssl_s_client_refuses_a_chain_it_cannot_verify(pki, check):
    openssl = require_tool("openssl")
    loop, server, handler = tls_server(pki)
    args = (["-CAfile", pki.stranger.root] if check == "wrong CA"
            else ["-CAfile", pki.root, "-verify_hostname", "wrong.example"])
    proc = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
         "-verify_return_error", "-brief", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run_until(loop, lambda: proc.poll() is not None, 15, "s_client to give up")
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and "certificate verify failed" in err, err
    # The client said why with an alert: the server closed and counted it by name.
    run_until(loop, lambda: handler.closed == ["tls-error"])
    expected = "tlsv1-alert-unknown-ca" if check == "wrong CA" else "sslv3-alert-bad-certificate"
    assert server.stats.tls_errors == {expected: 1}


def test_tls_and_plain_clients_share_one_port(pki):
    loop, server, handler = tls_server(pki, web=True)
    plain = LoopClient(server.port)
    plain.send(encode_frame(b"plain"))
    tls = InThread(blocking_echo, server.port, pki.client_context(), b"secret")
    http = LoopClient(server.port)
    http.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = {}

    def collected():
        for name, client in (("plain", plain), ("http", http)):
            got[name] = got.get(name, b"") + client.read_available()
        return tls.done and got["plain"] and got["http"].endswith(b"ok\n")

    run_until(loop, collected, 10, lambda: repr(got))
    assert tls.wait(loop)[2] == b"echo:secret"
    assert FrameParser(100).feed(got["plain"]) == [b"echo:plain"]
    assert got["http"].startswith(b"HTTP/1.1 200 OK")
    assert server.stats.tls_handshakes == 1
    plain.close()
    http.close()


def test_websockets_library_over_wss(pki):
    """The ``websockets`` library's client over wss://, the server's TLS as it ships.

    Its asyncio client, not its sync one: the sync client reads the socket in
    a thread while its handshake writes the request from another, and
    OpenSSL's objects are not thread-safe. When that read thread takes the
    server's TLS 1.3 session tickets (every OpenSSL server sends two) at that
    moment, the request is silently lost: our server had received 597 bytes,
    the ClientHello and the Finished, no GET (websockets 13.1 and 15.0.1, about
    1 run in 12 to 300; CI saw it on 3.8 and 3.9).
    """
    require_module("websockets")
    import asyncio

    import websockets

    loop, server, handler = tls_server(pki, web=True, handler=Echo(prefix=b""))

    async def exchange():
        async with websockets.connect(f"wss://localhost:{server.port}/chat", open_timeout=5,
                                      close_timeout=5, ssl=pki.client_context(),
                                      **loopback_only(websockets.connect)) as ws:
            await ws.send("hello over TLS")
            text = await asyncio.wait_for(ws.recv(), 5)
            await ws.send(b"\x00\x01binary")
            data = await asyncio.wait_for(ws.recv(), 5)
            return text, data

    assert InThread(asyncio.run, exchange()).wait(loop) == ("hello over TLS", b"\x00\x01binary")
    run_until(loop, lambda: handler.closed, 5)
    assert server.stats.tls_handshakes == 1 and server.stats.tls_errors == {}


class Recorder(Handler):
    def __init__(self):
        self.events = []
        self.got = []

    def on_connect(self, conn):
        self.events.append("connect")

    def on_protocol(self, conn, protocol):
        self.events.append(protocol)

    def on_message(self, conn, payload):
        self.got.append(bytes(payload))

    def on_close(self, conn, reason):
        self.events.append(("close", reason))


def test_our_client_over_tls_to_our_server_frames_and_websocket(pki):
    loop, server, _ = tls_server(pki, web=True, handler=Echo(prefix=b""))
    rec = Recorder()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("127.0.0.1", server.port, tls=pki.client_context(),
                   server_hostname="localhost", on_failed=failures.append)
    run_until(loop, lambda: rec.events == ["connect"] or failures, 5)
    assert not failures
    conn = next(iter(client.connections.values()))
    assert conn.tls is not None and conn.tls.version() in ("TLSv1.2", "TLSv1.3")
    conn.send(b"framed")
    run_until(loop, lambda: rec.got == [b"framed"], 5)
    # The same over WebSocket: the factory carries the context, the name comes from Host.
    ws = Recorder()
    wsclient = TCPClient(loop, ws)
    wsclient.connect("127.0.0.1", server.port, on_failed=failures.append,
                     codec_factory=websocket_client(f"localhost:{server.port}", "/ws",
                                                    tls=pki.client_context()))
    run_until(loop, lambda: ws.events == ["connect", "websocket"] or failures, 5)
    next(iter(wsclient.connections.values())).send_text("over wss")
    run_until(loop, lambda: ws.got == [b"over wss"], 5)
    assert not failures and server.stats.tls_handshakes == 2
    client.close()
    wsclient.close()


@pytest.mark.parametrize("case", ["wrong CA", "wrong name", "not TLS"])
def test_our_client_refuses_what_it_cannot_verify_and_reports_it_once(pki, case):
    loop = EventLoop()
    if case == "not TLS":
        server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]))
        server.listen()
    else:
        cert, key = (pki.stranger_cert, pki.stranger_key) if case == "wrong CA" else (
            pki.other_cert, pki.other_key)
        loop, server, _ = tls_server(pki, loop=loop, tls=server_context(cert, key))
    rec = Recorder()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("127.0.0.1", server.port, tls=pki.client_context(),
                   server_hostname="localhost", on_failed=failures.append, timeout=3)
    run_until(loop, lambda: failures, 5)
    loop.run_for(0.2)
    assert len(failures) == 1 and rec.events == [], (failures, rec.events)
    if case != "not TLS":
        assert isinstance(failures[0], ssl.SSLCertVerificationError), failures
        assert client.stats.tls_errors == {"certificate-verify-failed": 1}
    assert client.connections == {} and client._handshaking == {}
    assert client.stats.connections == 0


def test_our_client_gives_up_on_a_handshake_that_never_ends(pki):
    from netcore.testing import bound_socket

    loop = EventLoop()
    silent = bound_socket()  # the kernel accepts; nobody ever answers
    rec = Recorder()
    client = TCPClient(loop, rec)
    failures = []
    client.connect("127.0.0.1", silent.getsockname()[1], tls=pki.client_context(),
                   server_hostname="localhost", on_failed=failures.append, timeout=0.5)
    run_until(loop, lambda: failures, 3)
    assert isinstance(failures[0], socket.timeout) and rec.events == []
    assert client._handshaking == {} and client.connections == {}
    silent.close()


def test_tls_required_refuses_plain_clients_and_tells_http_ones(pki):
    loop, server, handler = tls_server(pki, web=True, tls_required=True)
    binary = LoopClient(server.port)
    binary.send(encode_frame(b"plain"))
    http = LoopClient(server.port)
    http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = bytearray()

    def both_closed():
        binary.read_available()
        answer.extend(http.read_available())
        return binary.eof and http.eof

    run_until(loop, both_closed, 5)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"TLS only" in answer
    assert handler.closed == ["tls-required", "tls-required"]
    assert server.stats.limits["tls-required"] == 2
    got = InThread(blocking_echo, server.port, pki.client_context()).wait(loop)
    assert got[2] == b"echo:hi"  # TLS clients are served
    with pytest.raises(ValueError):
        ServerConfig(tls_required=True)
    with pytest.raises(ValueError):
        server.set_tls(None)
    binary.close()
    http.close()


def test_a_trusted_proxy_sends_its_header_then_tls_and_may_send_plain(pki):
    loop, server, handler = tls_server(pki, tls_required=True, trusted_proxies="127.0.0.0/8")
    clients = []

    class Who(Echo):
        def on_message(self, conn, payload):
            clients.append((server.client_address(conn), conn.tls is not None))
            super().on_message(conn, payload)

    server.handler = Who()

    def through_proxy():
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        raw.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n")
        with pki.client_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(encode_frame(b"proxied"))
            return s.recv(100)

    assert InThread(through_proxy).wait(loop) == encode_frame(b"echo:proxied")
    # A proxy that terminated TLS itself sends plain: tls_required does not refuse it.
    plain = LoopClient(server.port)
    plain.send(b"PROXY TCP4 203.0.113.10 127.0.0.1 5556 443\r\n" + encode_frame(b"plain"))
    got = bytearray()
    run_until(loop, lambda: got.extend(plain.read_available()) or len(got) >= 12, 5,
              lambda: repr((got, clients, server.stats.closed_by_reason)))
    assert bytes(got) == encode_frame(b"echo:plain")
    assert clients == [("203.0.113.9", True), ("203.0.113.10", False)]
    plain.close()


def peer_certificate(port, context):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


def pem_der(path):
    """The first certificate of a PEM file (the leaf of a chain), in DER."""
    with open(path) as f:
        text = f.read()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[:text.index(end) + len(end)])


def test_a_new_context_serves_new_connections_and_open_ones_carry_on(pki, tmp_path):
    loop, server, _ = tls_server(pki, handler=Echo(prefix=b""))
    old = MemoryClient(server.port, pki.client_context())
    old.sock.sendall(old.hello())
    run_until(loop, lambda: old.pump() or old.done, 5)
    assert old.obj.getpeercert(binary_form=True) == pem_der(pki.cert)
    # A reload whose files are bad raises before anything changes.
    broken = tmp_path / "fullchain.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError):
        server.set_tls(server_context(str(broken), pki.renewed_key))
    assert InThread(peer_certificate, server.port, pki.client_context()).wait(loop) == \
        pem_der(pki.cert)
    server.set_tls(server_context(pki.renewed_cert, pki.renewed_key))
    assert InThread(peer_certificate, server.port, pki.client_context()).wait(loop) == \
        pem_der(pki.renewed_cert)
    old.write(encode_frame(b"still here"))  # the old connection, on its old context
    run_until(loop, lambda: old.pump() or old.received == encode_frame(b"still here"), 5)
    assert old.error is None
    old.close()


def test_broadcast_encrypts_for_each_tls_connection_and_shares_bytes_with_plain_ones(pki):
    conns = []

    class Keep(Handler):
        def on_connect(self, conn):
            conns.append(conn)

    loop, server, _ = tls_server(pki, handler=Keep())
    tls = [MemoryClient(server.port, pki.client_context()) for _ in range(3)]
    for c in tls:
        c.sock.sendall(c.hello())
    plain = LoopClient(server.port)
    plain.send(b"\x00")  # a first byte, so the server knows it is plain (half a frame)
    run_until(loop, lambda: all(c.pump() or c.done for c in tls) and len(conns) == 4, 5)
    run_until(loop, lambda: all(conn.codec.__class__.__name__ not in ("_TLSStart",)
                                for conn in conns), 5)
    shared = encode_frame(b"tick 1") + encode_frame(b"x" * 3000)
    assert server.broadcast(shared, list(conns), frames=2) == 4
    got = bytearray()

    def arrived():
        for c in tls:
            c.pump()
        got.extend(plain.read_available())
        return all(c.received == shared for c in tls) and got == shared

    run_until(loop, arrived, 5)
    assert server.stats.frames_out == 8
    # shutdown: a goodbye, then close_notify: each TLS client sees a clean end.
    server.shutdown(grace=2)
    run_until(loop, lambda: [c.pump() for c in tls] and all(c.eof for c in tls), 5)
    for c in tls:
        assert c.error is None, c.error  # close_notify came before the FIN
        c.close()
    plain.close()


def test_a_binary_codec_whose_frames_could_start_like_tls_is_refused(pki):
    ctx = server_context(pki.cert, pki.key)
    with pytest.raises(ValueError, match="TLS record"):
        TCPServer(EventLoop(), Echo(), ServerConfig(max_frame=0x1600, tls=ctx))
    server = TCPServer(EventLoop(), Echo(), ServerConfig(max_frame=0x1600))
    with pytest.raises(ValueError, match="TLS record"):
        server.set_tls(ctx)
    TCPServer(EventLoop(), Echo(), ServerConfig(max_frame=0x15FF, tls=ctx))


def test_tls_figures_are_in_the_metrics(pki):
    loop, server, handler = tls_server(pki)
    InThread(blocking_echo, server.port, pki.client_context()).wait(loop)
    bad = LoopClient(server.port)
    bad.send(b"\x16\x03\x01\x00\x05hello")
    run_until(loop, lambda: bad.read_available() is not None and bad.eof, 5)
    exp = Exposition()
    add_net_stats(exp, server.stats, "t")
    text = exp.text()
    assert "t_tls_handshakes_total 1" in text
    assert '\nt_tls_errors_total{error="' in text
    assert 't_connections_closed_total{reason="tls-error"} 1' in text
    bad.close()


def test_a_plain_server_never_imports_ssl_and_a_tls_one_does():
    code = ("import sys; from netcore import EventLoop, ServerConfig, TCPServer, WebFront; "
            "from netcore.testing import Echo; "
            "s = TCPServer(EventLoop(), Echo(), ServerConfig(hosts=['127.0.0.1']), "
            "codec_factory=WebFront()); s.listen(); "
            "print('ssl' in sys.modules, '_ssl' in sys.modules, 'netcore.tls' in sys.modules); "
            "from netcore.client import TCPClient; TCPClient(EventLoop(), Echo()); "
            "print('ssl' in sys.modules); "
            "from netcore import server_context; print('ssl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["False", "False", "False", "False", "True"], out.stderr


def test_client_context_trusts_a_ca_file_or_checks_nothing_when_insecure(pki, tmp_path):
    loop, server, _ = tls_server(pki, tls=server_context(pki.stranger_cert, pki.stranger_key))
    with pytest.raises(ssl.SSLCertVerificationError):
        InThread(blocking_echo, server.port, client_context(pki.root)).wait(loop)
    assert InThread(blocking_echo, server.port, client_context(pki.stranger.root)).wait(
        loop)[2] == b"echo:hi"
    insecure = client_context(insecure=True)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert InThread(blocking_echo, server.port, insecure, b"hi", None).wait(loop)[2] == b"echo:hi"
    assert client_context().minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(CertificateError, match="nowhere.pem"):
        client_context(str(tmp_path / "nowhere.pem"))


def test_a_plain_server_can_begin_to_offer_tls_and_stop_again(pki):
    loop = EventLoop()
    server = TCPServer(loop, Echo(), ServerConfig(hosts=["127.0.0.1"]))
    server.listen()
    server.set_tls(server_context(pki.cert, pki.key))
    assert InThread(blocking_echo, server.port, pki.client_context()).wait(loop)[2] == b"echo:hi"
    server.set_tls(None)
    with pytest.raises((ssl.SSLError, OSError)):
        InThread(blocking_echo, server.port, pki.client_context()).wait(loop)
    plain = LoopClient(server.port)
    plain.send(encode_frame(b"plain"))
    got = bytearray()
    run_until(loop, lambda: got.extend(plain.read_available()) or len(got) >= 12, 5)
    assert bytes(got) == encode_frame(b"echo:plain")
    plain.close()
