"""The game over TLS: netcore's test PKI (tests/core/tlskit.py) and a TLS player.

``pki`` is the session-wide fixture of tests/core/tlskit.py (a root CA, an
intermediate, certbot-style ``fullchain.pem``/``privkey.pem`` for
``localhost`` and ``127.0.0.1``, a renewed one, a stranger's); import it
from here in a test module of tests/ (tests/core is not on the path there).
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from typing import Optional

CORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "core")
if CORE not in sys.path:
    sys.path.insert(0, CORE)

from tlskit import MemoryClient, PKIFiles, TestPKI, pki  # noqa: E402,F401 - re-exported

import spelltraction as st  # noqa: E402
from helpers import read_frames  # noqa: E402


def tls_connect(port: int, context: ssl.SSLContext, host: str = "127.0.0.1",
                server_hostname: Optional[str] = "localhost",
                timeout: float = 5.0) -> ssl.SSLSocket:
    """A blocking TLS connection to the game port, handshake done."""
    raw = socket.create_connection((host, port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=server_hostname)


def tls_player(port: int, context: ssl.SSLContext, name: bytes = b"tls") -> ssl.SSLSocket:
    """A TLS player who said HELLO (version 2) and got its WELCOME."""
    sock = tls_connect(port, context)
    sock.sendall(st.frame(st.Hello(version=2, name=name)))
    welcome = st.decode(read_frames(sock, 1)[0])
    assert isinstance(welcome, st.Welcome), welcome
    return sock
