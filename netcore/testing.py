"""Helpers for testing code built on netcore (they ship with it).

- :func:`run_until`: run a loop until a condition holds, or fail with a
  message after a timeout (a test must never hang);
- :func:`bound_socket`: a listening socket already bound to a free port,
  so no "find a free port, then bind it" race; pass it to
  ``TCPServer.listen(sockets=[...])`` or read its port for a subprocess;
- :func:`loopback_hosts`: the loopback addresses this machine can bind
  (``::1`` may be missing in containers).

Nothing here is needed at run time; no test framework is imported.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, List, Optional, Union

from .loop import EventLoop

__all__ = ["bound_socket", "loopback_hosts", "run_until"]


def run_until(loop: EventLoop, condition: Callable[[], object], timeout: float = 5.0,
              what: Union[str, Callable[[], str]] = "", step: float = 0.05) -> None:
    """Run ``loop`` until ``condition()`` is true; AssertionError after ``timeout`` s.

    Returns as soon as the condition holds (it is checked before each loop
    iteration, so it may already hold). ``what`` names it in the failure (a
    callable is asked only then, so it can show state gathered while waiting).
    Each iteration waits at most ``step`` s for the loop's own events: make it
    short when the condition depends on sockets the loop does not watch (a
    test's client read in the same thread).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            named = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s: {named or condition!r}")
        loop.run_once(min(left, step))


def bound_socket(host: str = "127.0.0.1", backlog: int = 128,
                 family: Optional[int] = None) -> socket.socket:
    """A nonblocking socket listening on ``host`` at a port the kernel chose."""
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, 0))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def loopback_hosts() -> List[str]:
    """``127.0.0.1``, and ``::1`` where IPv6 loopback can be bound."""
    hosts = ["127.0.0.1"]
    if socket.has_ipv6:
        try:
            bound_socket("::1").close()
        except OSError:
            pass
        else:
            hosts.append("::1")
    return hosts
