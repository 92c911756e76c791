"""netcore.digest: SHA-1 and SHA-256 as hashlib computes them, without loading OpenSSL."""

import hashlib
import os
import subprocess
import sys

import netcore
from netcore.digest import sha1, sha256

ROOT = os.path.dirname(os.path.dirname(netcore.__file__))


def test_the_digests_are_hashlibs():
    for data in (b"", b"abc", bytes(range(256)) * 10):
        assert sha1(data).digest() == hashlib.sha1(data).digest()
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_importing_them_loads_no_openssl():
    code = ("import sys; from netcore.digest import sha1, sha256; sha256(b'x').digest(); "
            "print(sorted(m for m in ('hashlib', '_hashlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
