"""Shared test helpers (imported as ``helpers``: tests/ is on pytest's pythonpath)."""

import socket
import time
from typing import List

from netcore import FrameParser, process


def raise_nofile(want: int) -> int:
    """Raise this process's soft open-files limit towards ``want``; returns it."""
    return process.raise_nofile(want)[0]


def read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> List[bytes]:
    """Read exactly ``count`` frames from a blocking socket (or fail)."""
    parser = FrameParser(max_frame=65535)
    frames: List[bytes] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(frames)} of {count} frames: {frames!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"EOF after {len(frames)} of {count} frames: {frames!r}")
        frames += parser.feed(data)
    return frames


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (EOF or reset)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"peer did not close; got {bytes(out)!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data
