"""The game over TLS (issue 24): --tls-cert/--tls-key/--tls-required, one port for
TLS and plain players, start-up errors that name the file, SIGHUP reloads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import time

import pytest

import spelltraction as st
from helpers import read_frames, read_until_closed
from hostilekit import Crowd, HostileServer, http_get
from serverproc import run_game
from tlsgamekit import pki, tls_connect, tls_player  # noqa: F401 - pki is a fixture


def tls_flags(cert: str, key: str) -> tuple:
    return ("--tls-cert", cert, "--tls-key", key)


def leaf_der(chain: str) -> bytes:
    """The first certificate of a PEM chain (the leaf), DER."""
    with open(chain) as f:
        text = f.read()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[:end] + "\n")


def https_get(port: int, context: ssl.SSLContext, path: str) -> bytes:
    with tls_connect(port, context) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_tls_and_plain_players_share_the_game_port_and_tls_players_are_counted(pki):
    with HostileServer(*tls_flags(pki.cert, pki.key)) as server:
        assert f"play in a browser: https://localhost:{server.port}/ (or http://" in \
            server.output()
        ctx = pki.client_context()
        secure = tls_player(server.port, ctx, b"secure")
        assert secure.version() in ("TLSv1.3", "TLSv1.2")
        assert secure.selected_alpn_protocol() is None  # the client offered none
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(st.frame(st.Hello(version=2, name=b"plain")))
            assert isinstance(st.decode(read_frames(plain, 1)[0]), st.Welcome)
            # The page, over https and over http, on the same port.
            page = https_get(server.port, ctx, "/")
            assert page.startswith(b"HTTP/1.1 200") and b"<html" in page.lower()
            assert http_get("127.0.0.1", server.port, "/")[0] == 200
            _, _, body = server.get("/stats.json")
            tls = json.loads(body)["tls"]
            assert tls["enabled"] and not tls["required"]
            assert tls["players"] == 1 and tls["handshakes"] >= 2, tls
            _, _, metrics = server.get("/metrics")
            assert b"spelltraction_tls_players 1\n" in metrics
            assert b"spelltraction_tls_handshakes_total" in metrics
            server.proc.send_signal(signal.SIGUSR1)  # the status line says it too
            deadline = time.monotonic() + 5
            while "SIGUSR1: status" not in server.log():
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            assert "2 players" in server.log() and "1 over TLS" in server.log(), server.log()
        secure.close()
        deadline = time.monotonic() + 5
        while json.loads(server.get("/stats.json")[2])["tls"]["players"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(server.get("/stats.json")[2])["tls"]["players"] == 0


def test_a_plain_server_says_so_in_its_figures():
    with HostileServer() as server:
        assert "play in a browser: http://localhost:" in server.output()
        tls = json.loads(server.get("/stats.json")[2])["tls"]
        assert tls == {"enabled": False, "required": False, "players": 0, "handshakes": 0,
                       "errors": {}, "reloads": 0}
        assert b"spelltraction_tls_players" not in server.get("/metrics")[2]


def test_tls_required_refuses_plain_players_and_sends_http_to_https(pki):
    with HostileServer(*tls_flags(pki.cert, pki.key), "--tls-required") as server:
        assert "(or http://" not in server.output()
        tls_player(server.port, pki.client_context()).close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(st.frame(st.Hello(version=2, name=b"plain")))
            assert read_until_closed(plain) == b""
        status, _, body = http_get("127.0.0.1", server.port, "/")
        assert status == 400 and b"https://" in body
        assert json.loads(server.get("/stats.json")[2])["tls"]["required"] is True


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "key-of-another", "not-pem",
                                  "cert-alone", "required-alone"])
def test_bad_tls_files_at_start_are_an_error_naming_the_file_exit_2(pki, tmp_path, case):
    missing = str(tmp_path / "nowhere" / "fullchain.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    args, says = {
        "missing-cert": (tls_flags(missing, pki.key), missing),
        "missing-key": (tls_flags(pki.cert, missing), missing),
        "key-of-another": (tls_flags(pki.cert, pki.other_key), pki.other_key),
        "not-pem": (tls_flags(str(junk), pki.key), str(junk)),
        "cert-alone": (("--tls-cert", pki.cert), "--tls-key"),
        "required-alone": (("--tls-required",), "--tls-required needs --tls-cert"),
    }[case]
    done = run_game("serve", "--no-data", "--host", "127.0.0.1", "--port", "0", *args,
                    timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


@pytest.mark.slow
def test_sighup_reloads_the_certificate_nobody_is_dropped_and_a_bad_file_keeps_the_old(
        pki, tmp_path):
    """certbot renews: the deploy hook puts the new files in place and sends
    SIGHUP. New connections get the new certificate; players connected over
    TLS and plain keep playing. A broken file on the next reload is logged
    and the certificate loaded before keeps serving."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = str(live / "fullchain.pem"), str(live / "privkey.pem")
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    ctx = pki.client_context()
    with HostileServer(*tls_flags(cert, key)) as server, \
            Crowd(server.port, tcp=4, ws_count=2) as crowd:
        player = tls_player(server.port, ctx)
        with tls_connect(server.port, ctx) as first:
            assert first.getpeercert(binary_form=True) == leaf_der(pki.cert)
        crowd.mark()
        for source, target in ((pki.renewed_cert, cert), (pki.renewed_key, key)):
            shutil.copy(source, target + ".new")
            os.replace(target + ".new", target)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "SIGHUP: reloaded the TLS certificate" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        with tls_connect(server.port, ctx) as second:
            assert second.getpeercert(binary_form=True) == leaf_der(pki.renewed_cert)
        # The player who came before the reload still gets its ticks.
        frames = read_frames(player, 3, timeout=5)
        assert any(st.decode(f).__class__ is st.TickMsg for f in frames)

        with open(cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ntruncated by a full disk\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "TLS reload failed" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert cert in server.log()
        with tls_connect(server.port, ctx) as third:
            assert third.getpeercert(binary_form=True) == leaf_der(pki.renewed_cert)
        read_frames(player, 2, timeout=5)
        crowd.assert_ticking()
        assert not crowd.dropped()
        assert json.loads(server.get("/stats.json")[2])["tls"]["reloads"] == 1
        assert b"spelltraction_tls_reloads_total 1\n" in server.get("/metrics")[2]
        player.close()
        assert server.stop() == 0
