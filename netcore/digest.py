"""SHA-1 and SHA-256 without loading OpenSSL.

``hashlib`` loads OpenSSL's libcrypto, about 3.5 MB of RSS, the first time
it is imported. A server whose figure of merit is bytes per connection only
needs SHA-1 for WebSocket accept keys and static-file ETags (and SHA-256 to
keep a hash of a secret rather than the secret), which CPython's built-in
``_sha1`` and ``_sha256`` (``_sha2`` from 3.12) modules compute just as
well, for some 60 KB. ``hashlib`` is the fallback where they are missing.
"""

from __future__ import annotations

from .typing_shim import TYPE_CHECKING

__all__ = ["sha1", "sha256"]

if TYPE_CHECKING:
    from hashlib import sha1, sha256
else:
    try:
        from _sha1 import sha1
    except ImportError:  # pragma: no cover - interpreters without it
        from hashlib import sha1
    try:
        from _sha2 import sha256  # 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # 3.8-3.11
        except ImportError:  # pragma: no cover - interpreters without it
            from hashlib import sha256
