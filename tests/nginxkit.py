"""The shipped nginx files (etc/nginx/) run for real in front of a server, on loopback.

``ShippedNginx(tmp_path, game_port, admin_port)`` adapts them only where a test
must: its own certificate, free ports on 127.0.0.1 instead of 443/80/12151 (and
no IPv6 listeners), the test server's game and admin ports instead of 12150 and
12152. Everything else, ``proxy_bind 127.0.0.2`` and the headers included, is
what ships.

``check_players_are_limited_per_address(nginx)`` is the agreement the units and
nginx files must keep (issue 22, finding 4): players behind nginx are counted
by their own address, through the http {} proxy (X-Forwarded-For, WebSocket
upgrades) and the stream {} one (PROXY header): 16 pending from one client
address, the 17th refused naming that address, another address still let in.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import spelltraction as st
from conftest import require, require_tool
from netcore import FrameParser
from serverproc import ROOT, stop_process

ETC = os.path.join(ROOT, "etc")
NGINX_HTTP = os.path.join(ETC, "nginx", "spelltraction.conf")
NGINX_STREAM = os.path.join(ETC, "nginx", "spelltraction-stream.conf")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
SERVE_ADMIN_PORT = 12152  # etc/systemd/spelltraction.service's --admin-port

#: The players' addresses. Loopback is exempt from the per-address limits by
#: default (--exempt 127.0.0.0/8), so tests that use these run the server with
#: --exempt 127.0.0.1: as a host sees players who come from outside.
CLIENT, OTHER, RAW_CLIENT, RAW_OTHER = "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
PENDING_PER_ADDRESS = st.ServerOptions().max_pending_per_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uncommented(path: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in open(path).read().splitlines())


class ShippedNginx:
    """nginx with etc/nginx/*.conf in front of 127.0.0.1:``game_port`` (admin: ``admin_port``)."""

    def __init__(self, tmp_path, game_port: int, admin_port: int) -> None:
        require_tool("openssl")
        self.binary = require_tool("nginx")
        require(os.path.exists(STREAM_MODULE), "nginx's stream module is not installed",
                "apt-get install libnginx-mod-stream")
        self.dir = tmp_path
        self.https, self.http, self.raw = free_port(), free_port(), free_port()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
                        "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)

        def adapt(text: str) -> str:
            for old, new in [
                ("/etc/ssl/spelltraction/fullchain.pem", str(tmp_path / "cert.pem")),
                ("/etc/ssl/spelltraction/privkey.pem", str(tmp_path / "key.pem")),
                ("listen 443 ssl;", f"listen 127.0.0.1:{self.https} ssl;"),
                ("listen [::]:443 ssl;", ""),
                ("listen 80;", f"listen 127.0.0.1:{self.http};"),
                ("listen [::]:80;", ""),
                ("listen 12151 ssl;", f"listen 127.0.0.1:{self.raw} ssl;"),
                ("listen [::]:12151 ssl;", ""),
                (f"127.0.0.1:{st.DEFAULT_PORT};", f"127.0.0.1:{game_port};"),
                (f"127.0.0.1:{SERVE_ADMIN_PORT};", f"127.0.0.1:{admin_port};"),
            ]:
                text = text.replace(old, new)
            return text

        (tmp_path / "site.conf").write_text(adapt(open(NGINX_HTTP).read()))
        (tmp_path / "stream.conf").write_text(adapt(open(NGINX_STREAM).read()))
        for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
            (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / "nginx.conf").write_text(
            f"load_module {STREAM_MODULE};\npid {tmp_path}/nginx.pid;\n"
            f"error_log {tmp_path}/error.log;\ndaemon off;\nevents {{}}\n"
            f"include {tmp_path}/stream.conf;\n"
            f"http {{ access_log off; include {tmp_path}/site.conf; }}\n")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
             "-e", str(tmp_path / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.https), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.raw), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        self.ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        self.ctx.check_hostname = False

    def diagnosis(self, server) -> str:
        """What answers on each port, nginx's error log and the server's output (stopped)."""
        said = []
        for name, port, scheme in (("game", server.port, "http"), ("nginx", self.https, "https")):
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/", timeout=5,
                                            context=self.ctx if scheme == "https" else None) as r:
                    said.append(f"GET / on {name} {port}: {r.status} {r.read(80)!r}")
            except (OSError, urllib.error.URLError) as exc:
                said.append(f"GET / on {name} {port}: {exc!r}")
        listeners = subprocess.run(["ss", "-tlnp"], capture_output=True, text=True).stdout
        said.append("listening: " + " | ".join(
            line for line in listeners.splitlines() if str(self.https) in line
            or str(server.port) in line))
        said.append(f"nginx {'exited ' + str(self.proc.poll()) if self.proc.poll() is not None else 'running'}; "
                    f"error.log: {(self.dir / 'error.log').read_text()[-1500:]}")
        server.stop()
        said.append(f"server stderr: {server.proc.stderr.read()[-1500:]}")
        return "; ".join(said)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)
        self.proc.stderr.close()

    def tls(self, port: int, source: str) -> ssl.SSLSocket:
        raw = socket.socket()
        raw.settimeout(10)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        return self.ctx.wrap_socket(raw, server_hostname="localhost")

    def request(self, path: str, source: str = "127.0.0.1", upgrade: bool = False):
        """(status, head, the socket) of one GET over HTTPS from ``source``."""
        sock = self.tls(self.https, source)
        extra = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 if upgrade else "Connection: close\r\n")
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: game.example.org\r\n{extra}\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"GET {path} from {source}: no answer in 10 s") from None
            assert data, f"closed after {got!r}"
            got += data
        head, _, rest = got.partition(b"\r\n\r\n")
        if not upgrade:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                rest += data
            sock.close()
        return int(head.split()[1]), head.decode("latin-1") + "\r\n\r\n" + rest.decode(
            "utf-8", "replace"), sock


def frames_until(sock, done, timeout: float = 10.0):
    parser, got = FrameParser(max_frame=65535), []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"timed out; got {got}"
        data = sock.recv(65536)
        if not data:
            break
        got += [st.decode(f) for f in parser.feed(data)]
    return got


def check_players_are_limited_per_address(nginx: ShippedNginx) -> None:
    held = []
    try:
        # WebSocket upgrades through the http {} proxy: pending until HELLO.
        for _ in range(PENDING_PER_ADDRESS):
            status, head, sock = nginx.request("/ws", CLIENT, upgrade=True)
            assert status == 101, head
            held.append(sock)
        status, head, sock = nginx.request("/ws", CLIENT, upgrade=True)
        sock.close()
        assert status == 503 and f"too many connections from {CLIENT} (pending-per-address)" \
            in head, head
        status, head, sock = nginx.request("/ws", OTHER, upgrade=True)
        assert status == 101, f"another client behind the same nginx is let in: {head}"
        held.append(sock)
        # Raw TLS through the stream {} proxy: the PROXY header names the client.
        for _ in range(PENDING_PER_ADDRESS):
            held.append(nginx.tls(nginx.raw, RAW_CLIENT))
        time.sleep(1.0)  # nginx connects upstream and sends each header
        over = nginx.tls(nginx.raw, RAW_CLIENT)
        got = frames_until(over, lambda got: got)
        over.close()
        assert isinstance(got[0], st.Error) and got[0].code == st.ErrorCode.SERVER_FULL, got
        assert f"too many connections from {RAW_CLIENT} (pending-per-address)" in got[0].text
        player = nginx.tls(nginx.raw, RAW_OTHER)
        player.sendall(st.frame(st.Hello()))
        got = frames_until(player, lambda got: any(isinstance(m, st.TickMsg) for m in got))
        assert isinstance(got[0], st.Welcome), got
        held.append(player)
        # The operators' pages come from the admin port, through the same nginx.
        status, metrics, _ = nginx.request("/metrics")
        assert status == 200, metrics
        limits = re.search(r'spelltraction_limits_total\{limit="pending-per-address"\} (\d+)',
                           metrics)
        assert limits and int(limits[1]) == 2, metrics
        for kind in ("x-forwarded-for", "proxy-header"):  # nginx is trusted: none of these
            assert f'spelltraction_untrusted_forwarding_total{{kind="{kind}"}} 0' in metrics
        status, page, _ = nginx.request("/stats.json")
        assert status == 200 and page.rstrip().endswith("}"), page
        status, denied, _ = nginx.request("/metrics", CLIENT)
        assert status == 403, "operators only"
    finally:
        for sock in held:
            sock.close()
