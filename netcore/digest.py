"""SHA-1 without loading OpenSSL.

``hashlib`` loads OpenSSL's libcrypto, about 3.5 MB of RSS, the first time
it is imported. A server whose figure of merit is bytes per connection only
needs SHA-1 for WebSocket accept keys and static-file ETags, which CPython's
built-in ``_sha1`` module computes just as well.
"""

from __future__ import annotations

from .typing_shim import TYPE_CHECKING

__all__ = ["sha1"]

if TYPE_CHECKING:
    from hashlib import sha1
else:
    try:
        from _sha1 import sha1
    except ImportError:  # pragma: no cover - interpreters without it
        from hashlib import sha1
