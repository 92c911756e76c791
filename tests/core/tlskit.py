"""A test PKI made with the ``openssl`` command, and TLS peers for netcore's tests.

:class:`TestPKI` makes, in a directory, a root CA, an intermediate CA and
certificates issued by the intermediate, written as certbot writes them: a
``fullchain.pem`` (the leaf, then the intermediate) and a ``privkey.pem``.
A client trusts ``root.pem``. Everything is ECDSA P-256 and valid for two
days. The ``pki`` fixture (session-wide) has one with the names
``localhost`` and ``127.0.0.1``, a certificate for another name, and
a second PKI whose root nobody trusts.

:class:`MemoryClient` is a TLS client over a plain nonblocking socket
(``SSLObject`` and memory BIOs, no thread) for tests that must place each
byte themselves: several ClientHellos arriving in the same loop turn.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
from typing import List, Optional, Sequence, Tuple

import pytest

from conftest import require_tool
from netcore.testing import LoopClient


class TestPKI:
    """A root CA, an intermediate, and leaf certificates issued on request."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, directory: str, name: str = "netcore test") -> None:
        self.openssl = require_tool("openssl")
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.root = self._path("root.pem")
        self.root_key = self._path("root.key")
        self.intermediate = self._path("intermediate.pem")
        self.intermediate_key = self._path("intermediate.key")
        self._run("req", "-x509", *self._ec(), "-keyout", self.root_key, "-out", self.root,
                  "-days", "2", "-subj", f"/CN={name} root CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = self._path("intermediate.csr")
        self._run("req", "-new", *self._ec(), "-keyout", self.intermediate_key, "-out", csr,
                  "-subj", f"/CN={name} intermediate CA")
        ext = self._write("intermediate.ext", "basicConstraints=critical,CA:TRUE,pathlen:0\n"
                          "keyUsage=critical,keyCertSign,cRLSign\n")
        self._run("x509", "-req", "-in", csr, "-CA", self.root, "-CAkey", self.root_key,
                  "-CAcreateserial", "-out", self.intermediate, "-days", "2", "-extfile", ext)

    def issue(self, stem: str, names: Sequence[str]) -> Tuple[str, str]:
        """A certificate for ``names`` (DNS names or IP addresses) in
        ``<stem>/fullchain.pem`` and ``<stem>/privkey.pem``; their paths."""
        where = self._path(stem)
        os.makedirs(where, exist_ok=True)
        key = os.path.join(where, "privkey.pem")
        leaf = os.path.join(where, "cert.pem")
        csr = os.path.join(where, "cert.csr")
        self._run("req", "-new", *self._ec(), "-keyout", key, "-out", csr,
                  "-subj", f"/CN={names[0]}")
        alt = ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names)
        ext = os.path.join(where, "cert.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        self._run("x509", "-req", "-in", csr, "-CA", self.intermediate,
                  "-CAkey", self.intermediate_key, "-CAcreateserial", "-out", leaf,
                  "-days", "2", "-extfile", ext)
        chain = os.path.join(where, "fullchain.pem")
        with open(chain, "wb") as out:
            for part in (leaf, self.intermediate):
                with open(part, "rb") as f:
                    out.write(f.read())
        return chain, key

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this PKI's root (and nothing else)."""
        ctx = ssl.create_default_context(cafile=self.root)
        return ctx

    def _ec(self) -> List[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write(self, name: str, text: str) -> str:
        path = self._path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _run(self, *args: str) -> None:
        done = subprocess.run([self.openssl, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class PKIFiles:
    """What the ``pki`` fixture gives: the PKI, its certificates, a stranger's."""

    def __init__(self, directory: str) -> None:
        self.pki = TestPKI(os.path.join(directory, "ours"))
        self.cert, self.key = self.pki.issue("localhost", ["localhost", "127.0.0.1"])
        self.other_cert, self.other_key = self.pki.issue("other", ["other.example"])
        self.renewed_cert, self.renewed_key = self.pki.issue("renewed", ["localhost", "127.0.0.1"])
        self.stranger = TestPKI(os.path.join(directory, "stranger"), "stranger")
        self.stranger_cert, self.stranger_key = self.stranger.issue(
            "localhost", ["localhost", "127.0.0.1"])
        self.root = self.pki.root

    def client_context(self) -> ssl.SSLContext:
        return self.pki.client_context()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return PKIFiles(str(tmp_path_factory.mktemp("pki")))


class MemoryClient(LoopClient):
    """A TLS client on a nonblocking socket, driven by hand (``pump``)."""

    def __init__(self, port: int, context: ssl.SSLContext,
                 server_hostname: Optional[str] = "localhost", host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.done = False
        self.error: Optional[BaseException] = None
        self.received = bytearray()

    def hello(self) -> bytes:
        """The ClientHello (not sent)."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def pump(self) -> None:
        """Read what arrived, advance the handshake, send what that made."""
        self.incoming.write(self.read_available())
        if self.eof:
            self.incoming.write_eof()
        try:
            if not self.done:
                self.obj.do_handshake()
                self.done = True
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                self.received += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self.error = exc
        self.flush()

    def write(self, data: bytes) -> None:
        self.obj.write(data)
        self.flush()

    def flush(self) -> None:
        out = self.outgoing.read()
        if out:
            try:
                self.sock.sendall(out)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
