"""Process plumbing every long-lived server wants (POSIX; harmless elsewhere).

- :func:`raise_nofile`: lift the open-files soft limit to the hard one,
  since every connection is a file descriptor;
- :func:`release_freed_memory`: hand the C heap's free pages back to the
  OS (glibc's ``malloc_trim``) after start-up's garbage, and
  :func:`release_freed_memory_every` after each burst;
- :class:`ShutdownSignals`: the first SIGTERM/SIGINT starts a graceful
  shutdown from the loop (typically ``TCPServer.shutdown``, which drains);
  a second one ends the process at once, by that signal;
- :func:`run_server`: all of it for a small server: listen, say where,
  serve until a signal, drain, close;
- :func:`write_private_json`: a file only this user reads (tokens, keys),
  replaced whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal

from .loop import EventLoop
from .server import TCPServer
from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional, Sequence, Tuple

__all__ = ["ShutdownSignals", "die_by_signal", "map_large_blocks_apart", "raise_nofile",
           "release_freed_memory", "release_freed_memory_every", "run_server",
           "write_private_json"]

log = logging.getLogger(__name__)


def raise_nofile(want: int = 0) -> Tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to ``want`` (0: the hard limit).

    Never lowers it and never fails (a refusal leaves it as it was).
    Returns (soft, hard) now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want <= 0 else (want if hard == resource.RLIM_INFINITY else min(want, hard))
    if target == resource.RLIM_INFINITY or (soft != resource.RLIM_INFINITY and soft < target):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


_libc: Any = None  # glibc's functions once looked up; False where there is none
M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL(None)
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc = lib
        except (ImportError, OSError, AttributeError):
            _libc = False
    return _libc


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``).

    Python frees start-up's garbage (compiling a large module) to the C
    allocator, which keeps it scattered between live blocks where the heap
    cannot shrink on its own; a long-lived server should not carry it. For
    spelltraction.py compiled at import, this returns 6.3 MiB (24.9 against
    18.6 MiB, medians of 7: ``python3 bench/startup_rss.py`` in its repository).
    The same holds after a burst: the output buffers of a thousand clients
    that stopped reading, freed together, leave megabytes of free pages
    between live blocks (see :func:`release_freed_memory_every`).
    Returns False where there is no glibc (nothing is done).
    """
    libc = _glibc()
    if libc is False:
        return False
    libc.malloc_trim(0)
    return True


def map_large_blocks_apart(threshold: int = 128 * 1024) -> bool:
    """Have glibc give every block of ``threshold`` bytes or more a mapping of its own, for good.

    glibc starts so, but raises that bar to the size of each such block
    freed (up to 32 MB), after which a server's big tables (the dict of
    15,000 connections is 0.6 MB) are carved from the heap, and the heap's
    top never comes down past the newest: in a 15,000-player soak the
    heap's extent crept from 5.1 to 7.8 MB over 20 minutes. Mapped apart, a
    freed table goes straight back to the OS. Returns False where there is
    no glibc (nothing is done).
    """
    libc = _glibc()
    if libc is False:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_freed_memory_every(loop: EventLoop, seconds: float = 60.0,
                               before: Optional[Callable[[], object]] = None) -> Callable[[], None]:
    """Run :func:`release_freed_memory` on ``loop`` every ``seconds``; returns a stop function.

    ``before`` runs first each time: what frees memory for the trim to give
    back (``TCPServer.compact``, for one).

    Why: glibc returns free memory to the OS only from the top of its heap.
    A burst of big short-lived buffers (a flood of clients that never read,
    each holding a backlog until it is cut off) is freed into the middle of
    the heap, and the process's RSS keeps that high-water mark for good: in
    a 15,000-player soak one attack window left the heap's resident part
    2.5 MB bigger (9.0 -> 11.6 MB in ``/proc/PID/smaps``) for the rest of
    the run. A trim costs well under a millisecond for a heap of tens of MB.
    """
    timer: List[Any] = [None]

    def run() -> None:
        if before is not None:
            before()
        if release_freed_memory():
            timer[0] = loop.call_later(seconds, run)

    def stop() -> None:
        if timer[0] is not None:
            timer[0].cancel()
            timer[0] = None

    timer[0] = loop.call_later(seconds, run)
    return stop


def die_by_signal(signum: int, frame: Any = None) -> None:
    """End the process now, by ``signum`` itself: no flushing, no cleanup.

    The exit status is then what a shell reports for that signal (128+N),
    as if there had been no handler.
    """
    try:
        log.warning("second signal (%s): exiting at once", signal.Signals(signum).name)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class ShutdownSignals:
    """The first of ``signals`` calls ``on_first(signum)`` from the loop; a
    second one ends the process at once (:func:`die_by_signal`).

    After the first, the Python-level handlers are swapped for
    :func:`die_by_signal`, so the second works even while the loop is busy
    draining. Install before announcing that the server listens: a SIGTERM
    right after must find the handlers.
    """

    def __init__(self, loop: EventLoop, on_first: Callable[[int], None],
                 signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.loop = loop
        self.on_first = on_first
        self.signals = tuple(signals)
        self.fired = False

    def install(self) -> "ShutdownSignals":
        for sig in self.signals:
            self.loop.add_signal_handler(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int) -> None:
        if self.fired:  # both arrived before the loop read either
            die_by_signal(signum)
            return
        self.fired = True
        log.info("%s: shutting down (a second signal exits at once)",
                 signal.Signals(signum).name)
        for sig in self.signals:
            signal.signal(sig, die_by_signal)
        self.on_first(signum)


def run_server(server: TCPServer, grace: float = 2.0) -> None:
    """Listen, print ``listening on HOST:PORT``, serve until SIGTERM/SIGINT.

    The first signal drains (:meth:`TCPServer.shutdown` with ``grace``
    seconds, then the loop stops), a second exits at once. The server and
    its loop are closed on the way out, however it ends.
    """
    loop = server.loop
    try:
        host, port = server.listen()[0][:2]
        ShutdownSignals(loop, lambda signum: server.shutdown(grace, on_done=loop.stop)).install()
        print(f"listening on {host}:{port}", flush=True)
        loop.run()
    finally:
        server.close()
        loop.close()


def write_private_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path``, mode 0600, atomically.

    A temporary file beside it (created 0600, never wider), flushed to disk,
    then renamed over ``path``: a reader sees the old file or the new one,
    never half of one, even if this process dies in between.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
