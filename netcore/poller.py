"""Pollers: which registered files are ready, with whatever was registered beside each.

One interface, two implementations, for the loop and for any client that
runs its own (a load generator with thousands of sockets, say)::

    poller = make_poller()                       # epoll on Linux, else selectors
    poller.register(sock, EVENT_READ, data)      # data: a handler, an index, anything
    for data, mask in poller.poll(0.5):          # mask: EVENT_READ | EVENT_WRITE
        ...

- :class:`EpollPoller` drives ``select.epoll`` directly (Linux). It can poll
  a file edge-triggered (``register(..., edge=True)``): the kernel reports
  it when new input arrives, not at every poll while input waits, so the
  owner must read until the kernel has nothing left.
- :class:`SelectorPoller` wraps any ``selectors`` selector
  (``DefaultSelector``: epoll, kqueue, poll or select, whichever the
  platform has best), level-triggered only: ``edge`` is ignored.

Both report a hang-up or an error as readable (and writable, where write
readiness was asked for), as ``selectors`` does, so the owner's next read
or write meets it. ``poll`` returns a list of ``(data, mask)``.

:func:`make_poller` picks one by name: ``"epoll"`` or ``"selectors"``
(:data:`POLLERS`); the default, :data:`DEFAULT_POLLER`, is epoll where
there is one.
"""

from __future__ import annotations

import math
import select
import selectors

from .typing_shim import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["DEFAULT_POLLER", "EVENT_READ", "EVENT_WRITE", "POLLERS", "EpollPoller", "Poller",
           "SelectorPoller", "make_poller"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

#: The pollers :func:`make_poller` knows, by name.
POLLERS = ("epoll", "selectors")
#: epoll where the platform has it (Linux), else a ``selectors.DefaultSelector``.
DEFAULT_POLLER = "epoll" if hasattr(select, "epoll") else "selectors"

if TYPE_CHECKING:
    Ready = List[Tuple[Any, int]]

_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
_EPOLLET = getattr(select, "EPOLLET", 1 << 31)
_EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
# The peer hung up (FIN: RDHUP; RST or error: HUP, ERR). No further edge will
# come for that, so an edge-triggered socket reporting it goes back to level
# triggering: a read that returned the data before the FIN does not see the
# EOF, and the next poll must report the socket again until it is closed.
_HANGUP = _EPOLLRDHUP | getattr(select, "EPOLLHUP", 0x10) | getattr(select, "EPOLLERR", 0x8)


def _epoll_mask(events: int) -> int:
    """The level-triggered epoll mask for ``EVENT_READ``/``EVENT_WRITE``."""
    return (_EPOLLIN if events & EVENT_READ else 0) | (_EPOLLOUT if events & EVENT_WRITE else 0)


def _fileno(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"invalid file object {fileobj!r}")
    return int(fd)


class Poller(Protocol):
    """What a poller does; :class:`EpollPoller` and :class:`SelectorPoller` are two.

    ``fileobj``: a socket (anything with ``fileno()``) or an int fd.
    ``events``: ``EVENT_READ``, ``EVENT_WRITE`` or both. ``register`` of a
    registered fd, and ``modify`` or ``unregister`` of one that is not,
    raise ``KeyError``. ``edge_triggered``: whether ``edge=True`` is honoured;
    ``name``: its name in :data:`POLLERS`.
    """

    name: str
    edge_triggered: bool

    def register(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None: ...

    def modify(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None: ...

    def unregister(self, fileobj: Any) -> None: ...

    def poll(self, timeout: Optional[float]) -> Ready:
        """``(data, mask)`` of each ready file; waits up to ``timeout`` s (None: forever)."""
        ...

    def close(self) -> None: ...


class SelectorPoller:
    """A ``selectors`` selector as a :class:`Poller` (any platform, any selector)."""

    __slots__ = ("selector",)

    name = "selectors"
    edge_triggered = False  # level-triggered only

    def __init__(self, selector: Optional[selectors.BaseSelector] = None) -> None:
        self.selector = selector if selector is not None else selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None:
        self.selector.register(fileobj, events, data)

    def modify(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None:
        self.selector.modify(fileobj, events, data)

    def unregister(self, fileobj: Any) -> None:
        self.selector.unregister(fileobj)

    def poll(self, timeout: Optional[float]) -> Ready:
        return [(key.data, mask) for key, mask in self.selector.select(timeout)]

    def close(self) -> None:
        self.selector.close()


class EpollPoller:
    """``select.epoll`` with each fd's data in a list indexed by fd.

    Edge-triggered where asked (``edge=True``; the loop asks for handlers
    whose ``edge_triggered`` is set: connections): a level-triggered fd is
    put back on the kernel's ready list after each event and polled once
    more at the next ``epoll_wait``, a second ``tcp_poll`` per message read
    when every player moves.

    What ``selectors.EpollSelector`` does, less what a server with tens of
    thousands of idle sockets pays for: a ``SelectorKey`` tuple (and the fd
    as a second int object) per socket, ~110 bytes, and a method call and
    mask conversion per ready event. File descriptors are small and dense
    (the kernel hands out the lowest free one), so a list slot per fd (8
    bytes) holds the data where a dict entry would cost ~30. Registered
    events other than read-only (write interest: a backlog, a connect under
    way) are kept in a side dict that stays small, to filter the
    error/hangup bits as selectors does.
    """

    __slots__ = ("_epoll", "_data", "_count", "_events")

    name = "epoll"
    edge_triggered = True

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: List[Any] = []  # by fd; None: not registered
        self._count = 0  # registered fds
        self._events: Dict[int, int] = {}  # fd -> events, where not EVENT_READ

    def register(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None:
        self._set(fileobj, events, data, edge, new=True)

    def modify(self, fileobj: Any, events: int, data: Any, edge: bool = False) -> None:
        self._set(fileobj, events, data, edge, new=False)

    def _set(self, fileobj: Any, events: int, data: Any, edge: bool, new: bool) -> None:
        if data is None:
            raise ValueError("data must not be None (None marks a free slot)")
        fd = _fileno(fileobj)
        slots = self._data
        if (fd < len(slots) and slots[fd] is not None) == new:
            state = "already" if new else "not"
            raise KeyError(f"{fileobj!r} (fd {fd}) is {state} registered")
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        mask = _epoll_mask(events)
        if edge:
            mask |= _EPOLLET | _EPOLLRDHUP
        if new:
            self._epoll.register(fd, mask)
            if fd >= len(slots):  # grows in steps, as a list does
                slots.extend([None] * (fd + 1 - len(slots)))
            self._count += 1
        else:
            self._epoll.modify(fd, mask)
        slots[fd] = data
        if events != EVENT_READ:
            self._events[fd] = events
        else:
            self._events.pop(fd, None)

    def unregister(self, fileobj: Any) -> None:
        fd = _fileno(fileobj)
        slots = self._data
        if fd >= len(slots) or slots[fd] is None:
            raise KeyError(f"{fileobj!r} (fd {fd}) is not registered")
        slots[fd] = None
        self._count -= 1
        self._events.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:  # already closed: the kernel dropped it (as selectors does)
            pass

    def poll(self, timeout: Optional[float]) -> Ready:
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:  # epoll counts in ms: round up, or a short wait would spin
            wait = math.ceil(timeout * 1e3) * 1e-3
        slots = self._data
        ready = self._epoll.poll(wait, max(self._count, 1))
        out: Ready = []
        append = out.append
        for fd, ev in ready:
            data = slots[fd]  # epoll reports registered fds only: in range
            if data is None:
                continue
            if ev == _EPOLLIN:
                append((data, EVENT_READ))
                continue
            events = self._events.get(fd, EVENT_READ)
            if ev & _HANGUP:
                # Level-triggered from now on (a no-op for an fd that already is).
                self._level_triggered(fd, events)
            mask = (EVENT_READ if ev & ~_EPOLLOUT else 0) | (
                EVENT_WRITE if ev & ~_EPOLLIN else 0)
            mask &= events
            if mask:
                append((data, mask))
        return out

    def _level_triggered(self, fd: int, events: int) -> None:
        """Poll ``fd`` level-triggered from now on (until a ``modify``): it hung up."""
        try:
            self._epoll.modify(fd, _epoll_mask(events))
        except OSError:  # closed meanwhile: nothing left to report
            pass

    def close(self) -> None:
        self._epoll.close()
        self._data.clear()
        self._count = 0
        self._events.clear()


def make_poller(kind: Optional[str] = None,
                selector: Optional[selectors.BaseSelector] = None) -> Poller:
    """A poller by name: ``"epoll"`` (Linux only) or ``"selectors"``; None: :data:`DEFAULT_POLLER`.

    ``selector``: poll with this ``selectors`` selector (the kind must then
    be None or ``"selectors"``).
    """
    if selector is not None:
        if kind not in (None, "selectors"):
            raise ValueError(f"a selector is a 'selectors' poller, not {kind!r}")
        return SelectorPoller(selector)
    kind = DEFAULT_POLLER if kind is None else kind
    if kind == "selectors":
        return SelectorPoller()
    if kind != "epoll":
        raise ValueError(f"unknown poller {kind!r}: one of {', '.join(POLLERS)}")
    if not hasattr(select, "epoll"):
        raise ValueError("the epoll poller needs Linux (select.epoll); use 'selectors'")
    return EpollPoller()
