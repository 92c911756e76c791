"""Per-address connection limits, as pure bookkeeping (no sockets, no clock).

One address must not be able to take a server's spare capacity: hold its
free slots with sockets that never say HELLO, or open thousands of
connections. :class:`AddressLimits` counts, per client address:

- ``per_address``: connections open from it -> refused, limit
  ``"connections-per-address"``;
- ``pending_per_address``: connections from it that have not yet become
  what the application waits for (a player's HELLO, a WebSocket upgrade) ->
  ``"pending-per-address"``;
- ``pending_total``: such pending connections from all (non-exempt)
  addresses together -> ``"pending-total"``.

Addresses are grouped the way clients get them: an IPv4 address is itself
(an IPv4-mapped IPv6 address ``::ffff:a.b.c.d`` is that IPv4 address), an
IPv6 client is its /64, since one subscriber usually gets a whole /64.
Addresses in ``exempt`` networks (by default loopback: ``127.0.0.0/8`` and
``::1``, so local bots and a local reverse proxy are never limited) are not
counted at all. A limit of None is off.

The owner calls :meth:`AddressLimits.admit` on accept (None: admitted, or
the name of the limit that refuses it), :meth:`AddressLimits.settle` when a
pending connection becomes established, and :meth:`AddressLimits.release`
when it closes, with what ``admit`` returned as the connection's key.
"""

from __future__ import annotations

import socket

from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "DEFAULT_EXEMPT",
    "AddressLimits",
    "AddressRates",
    "Networks",
    "address_key",
    "describe_key",
    "parse_networks",
]

DEFAULT_EXEMPT = ("127.0.0.0/8", "::1")

PER_ADDRESS = "connections-per-address"
PENDING_PER_ADDRESS = "pending-per-address"
PENDING_TOTAL = "pending-total"

_MAPPED = b"\x00" * 10 + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6

# A grouping key: 4 bytes (an IPv4 address) or 8 bytes (an IPv6 /64).
Key = bytes


def _packed(address: str) -> bytes:
    """4 or 16 bytes for a numeric address (IPv4-mapped IPv6 as IPv4); ValueError."""
    text = address.split("%", 1)[0]  # a scope id (fe80::1%eth0) is not part of the address
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            raw = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        if len(raw) == 16 and raw[:12] == _MAPPED:
            return raw[12:]
        return raw
    raise ValueError(f"not a numeric IP address: {address!r}")


def address_key(address: str) -> Key:
    """The group ``address`` is counted in: IPv4 itself, IPv6 its /64."""
    raw = _packed(address)
    return raw if len(raw) == 4 else raw[:8]


def describe_key(key: Key) -> str:
    """A printable form of a key, for logs: ``203.0.113.7`` or ``2001:db8::/64``."""
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    return socket.inet_ntop(socket.AF_INET6, key + b"\x00" * 8) + "/64"


class Networks:
    """A set of CIDR networks; ``address in networks`` tests membership."""

    __slots__ = ("_nets", "text")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._nets: List[Tuple[int, int, int]] = []  # (length in bytes, network, mask)
        texts = []
        for cidr in cidrs:
            cidr = cidr.strip()
            if not cidr:
                continue
            addr, _, bits = cidr.partition("/")
            raw = _packed(addr)
            width = len(raw) * 8
            if bits:
                if not bits.isdigit() or not 0 <= int(bits) <= width:
                    raise ValueError(f"bad prefix length in {cidr!r}")
                prefix = int(bits)
            else:
                prefix = width
            mask = ((1 << prefix) - 1) << (width - prefix)
            network = int.from_bytes(raw, "big")
            if network & ~mask:
                raise ValueError(f"{cidr!r} has host bits set")
            self._nets.append((len(raw), network, mask))
            texts.append(cidr)
        self.text = ",".join(texts)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str) or not self._nets:
            return False
        try:
            raw = _packed(address)
        except ValueError:
            return False
        value = int.from_bytes(raw, "big")
        size = len(raw)
        return any(n == size and value & mask == net for n, net, mask in self._nets)

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __repr__(self) -> str:
        return f"Networks({self.text!r})"


def parse_networks(spec: Union[str, Sequence[str], None]) -> Networks:
    """``"127.0.0.0/8,::1"`` (or a list of CIDRs) as :class:`Networks`; ValueError."""
    if spec is None:
        return Networks()
    if isinstance(spec, str):
        spec = spec.split(",")
    return Networks(spec)


class AddressLimits:
    """Connections and pending connections per address; see the module docstring."""

    __slots__ = ("per_address", "pending_per_address", "pending_total", "exempt",
                 "_open", "_pending", "pending", "refused")

    def __init__(
        self,
        per_address: Optional[int] = None,
        pending_per_address: Optional[int] = None,
        pending_total: Optional[int] = None,
        exempt: Union[Networks, str, Sequence[str], None] = DEFAULT_EXEMPT,
    ) -> None:
        self.per_address = per_address
        self.pending_per_address = pending_per_address
        self.pending_total = pending_total
        self.exempt = exempt if isinstance(exempt, Networks) else parse_networks(exempt)
        self._open: Dict[Key, int] = {}
        self._pending: Dict[Key, int] = {}
        self.pending = 0  # pending connections from counted addresses
        self.refused: Dict[str, int] = {}  # limit name -> refusals

    @property
    def active(self) -> bool:
        """Any limit is on (else the owner need not call anything)."""
        return (self.per_address is not None or self.pending_per_address is not None
                or self.pending_total is not None)

    def admit(self, address: str) -> Tuple[Optional[Key], Optional[str]]:
        """``(key, None)`` if a connection from ``address`` is admitted (and now
        counted, pending), ``(None, limit)`` if ``limit`` refuses it. The key
        is None for an exempt (or non-IP) address: nothing to release."""
        if not self.active or address in self.exempt:
            return None, None
        try:
            key = address_key(address)
        except ValueError:
            return None, None  # not an IP peer (a Unix socket): not limited
        limit = None
        if self.per_address is not None and self._open.get(key, 0) >= self.per_address:
            limit = PER_ADDRESS
        elif (self.pending_per_address is not None
              and self._pending.get(key, 0) >= self.pending_per_address):
            limit = PENDING_PER_ADDRESS
        elif self.pending_total is not None and self.pending >= self.pending_total:
            limit = PENDING_TOTAL
        if limit is not None:
            self.refused[limit] = self.refused.get(limit, 0) + 1
            return None, limit
        self._open[key] = self._open.get(key, 0) + 1
        self._pending[key] = self._pending.get(key, 0) + 1
        self.pending += 1
        return key, None

    def settle(self, key: Optional[Key]) -> None:
        """A pending connection of ``key`` is established (call once, or never)."""
        if key is None:
            return
        self._drop(self._pending, key)
        self.pending -= 1

    def release(self, key: Optional[Key], pending: bool) -> None:
        """A connection of ``key`` closed; ``pending`` if it never settled."""
        if key is None:
            return
        self._drop(self._open, key)
        if pending:
            self._drop(self._pending, key)
            self.pending -= 1

    def count(self, address: str) -> Tuple[int, int]:
        """(open, pending) connections counted for ``address``'s group."""
        key = address_key(address)
        return self._open.get(key, 0), self._pending.get(key, 0)

    @staticmethod
    def _drop(counts: Dict[Key, int], key: Key) -> None:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


class AddressRates:
    """A token bucket per address group (grouped as :class:`AddressLimits` does):
    ``burst`` at once, then ``rate`` a second. For what one address may do
    often but not endlessly, such as making new identities.

    Only addresses that used some of their burst are kept, and
    :meth:`forget_full` drops those whose bucket has filled again, so memory
    follows the addresses active in the last ``burst / rate`` seconds.
    """

    __slots__ = ("burst", "rate", "exempt", "_buckets", "refused")

    def __init__(self, burst: int, rate: float,
                 exempt: Union[Networks, str, Sequence[str], None] = DEFAULT_EXEMPT) -> None:
        if burst < 1 or rate < 0:
            raise ValueError("burst must be at least 1 and rate at least 0")
        self.burst = burst
        self.rate = rate
        self.exempt = exempt if isinstance(exempt, Networks) else parse_networks(exempt)
        self._buckets: Dict[Key, Tuple[float, float]] = {}  # key -> (tokens, when)
        self.refused = 0

    def take(self, address: str, now: float) -> bool:
        """One for ``address`` at ``now`` (seconds, any monotonic clock): True if allowed."""
        if address in self.exempt:
            return True
        try:
            key = address_key(address)
        except ValueError:
            return True  # not an IP peer (a Unix socket): not limited
        tokens, when = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self.refused += 1
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def forget_full(self, now: float) -> None:
        """Drop the buckets that have filled up again: they are as good as new."""
        burst, rate = self.burst, self.rate
        full = [key for key, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * rate >= burst]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
