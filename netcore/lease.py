"""A lease with a fencing epoch in Redis: one holder at a time (one game authority per world).

:class:`RedisLease` runs three Lua scripts on a link that runs scripts by
SHA-1 (a :class:`~netcore.redis.Redis`, or anything shaped like one: see
:class:`ScriptRunner`), so it works, and is tested, apart from the client.
:data:`FENCE` is the Lua a holder puts first in its own write scripts, so a
write from a holder whose lease ran out fails in Redis itself.

``netcore.redis`` imports both, so ``from netcore.redis import RedisLease``
works as it always has.
"""

from __future__ import annotations

import logging

from .typing_shim import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Protocol, Sequence

    from .loop import EventLoop
    from .resp import Arg, Script

    class Answer(Protocol):
        """A command's reply as the lease reads it (a ``netcore.redis.Pending``)."""

        reply: Any
        error: Any

        @property
        def ok(self) -> bool: ...

    class ScriptRunner(Protocol):
        """What the lease needs of its link (``netcore.redis.Redis`` is one)."""

        loop: EventLoop

        @property
        def ready(self) -> bool: ...

        def script(self, source: str) -> Script: ...

        def run(self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = (),
                callback: Optional[Callable[[Answer], None]] = None) -> object: ...

__all__ = ["FENCE", "RedisLease"]

log = logging.getLogger(__name__)

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and not (ARGV[4] == '1' and string.sub(holder, (string.find(holder, ':') or 0) + 1) == ARGV[1]) then
  return {0, holder, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
if epoch <= tonumber(ARGV[3]) then
  epoch = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[2], epoch)
end
local token = epoch .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token, tonumber(ARGV[2])}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

FENCE = """if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease ' .. KEYS[1] .. ' is not held by ' .. ARGV[1])
end
"""
"""Lua to put first in a holder's write scripts: ``KEYS[1]`` the lease key,
``ARGV[1]`` the holder's token. A write from a holder whose lease expired
(a process that was paused, then woke up) fails with a ``FENCED`` error."""


class RedisLease:
    """One holder at a time for ``key``, renewed while held, fenced by an epoch.

    ``acquire(callback)`` tries once: ``callback(True, token)`` if this
    holder got it, else ``callback(False, holder_token)`` (then
    ``remaining`` says for how many seconds the other holds it). The token
    is ``"<epoch>:<owner>"``; the epoch (``INCR`` of ``key:epoch``) grows
    with every acquisition, so writes can be ordered and an old holder told
    from a new one. While held, the lease is renewed every ``ttl / 3``.

    ``valid()`` is this side's view: held and renewed less than ``ttl`` ago
    (counting from when the renewal was *sent*), so a process that was
    paused longer than ``ttl`` sees it lost before it acts. Writes that must
    never come from an old holder check the token in Redis itself: put
    :data:`FENCE` first in their script. ``on_lost(reason)`` is called once
    when a held lease is lost (taken over, expired, released).

    The epoch counter lives in Redis: a Redis that lost its data (no
    persistence) would count again from 1. An owner that keeps the last
    epoch it held elsewhere sets ``min_epoch`` to it, and the next epoch is
    above it whatever Redis remembers.
    """

    def __init__(
        self,
        redis: ScriptRunner,
        key: str,
        owner: str,
        ttl: float = 10.0,
        on_lost: Optional[Callable[[str], None]] = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.redis, self.key, self.owner = redis, key, owner
        self.ttl = ttl
        self.token: Optional[str] = None
        self.on_lost = on_lost
        self.remaining = 0.0  # seconds another holder keeps it (after a refused acquire)
        self.min_epoch = 0
        self._valid_until = 0.0
        self._generation = 0  # bumps when a holding ends, so old timers stop
        self._acquire = redis.script(_ACQUIRE)
        self._renew = redis.script(_RENEW)
        self._release = redis.script(_RELEASE)

    @property
    def epoch(self) -> int:
        """The epoch of the lease this side holds (0 when it holds none)."""
        return int(self.token.split(":", 1)[0]) if self.token else 0

    def valid(self) -> bool:
        return self.token is not None and self.redis.loop.time() < self._valid_until

    def acquire(self, callback: Callable[[bool, str], None], reclaim: bool = False) -> None:
        """Try once; ``callback(got, token)``. ``reclaim``: a lease held under
        this same ``owner`` is taken over at once (with a new epoch) instead
        of refused: for an owner that knows its previous incarnation is dead
        (it holds a lock that one held), restarting without waiting out the ttl.
        """
        if self.token is not None:
            raise RuntimeError("the lease is already held")
        sent = self.redis.loop.time()
        ms = max(1, int(self.ttl * 1000))

        def answered(pending: Answer) -> None:
            reply = pending.reply
            if not pending.ok or not isinstance(reply, list) or len(reply) != 3:
                callback(False, str(pending.error or reply))
                return
            got, token, pttl = reply
            token_text = token.decode("utf-8", "replace") if isinstance(token, bytes) else ""
            if got == 1:
                self.token = token_text
                self._valid_until = sent + self.ttl
                self._generation += 1
                self._schedule(self._generation)
                callback(True, token_text)
            else:
                self.remaining = max(0.0, pttl / 1000) if isinstance(pttl, int) else 0.0
                callback(False, token_text)

        self.redis.run(self._acquire, (self.key, self.key + ":epoch"),
                       (self.owner, ms, self.min_epoch, 1 if reclaim else 0), answered)

    def release(self) -> None:
        """Give the lease up (deleted in Redis only if still ours)."""
        token = self.token
        if token is None:
            return
        if self.redis.ready:
            self.redis.run(self._release, (self.key,), (token,))
        self._lose("released")

    def fenced(self, source: str) -> Script:
        """Register ``source`` with :data:`FENCE` in front (KEYS[1] = the key, ARGV[1] = the token)."""
        return self.redis.script(FENCE + source)

    def _schedule(self, generation: int) -> None:
        self.redis.loop.call_later(self.ttl / 3, lambda: self._tick(generation))

    def _tick(self, generation: int) -> None:
        if generation != self._generation or self.token is None:
            return
        now = self.redis.loop.time()
        if now >= self._valid_until:
            self._lose(f"not renewed for {self.ttl:g}s")
            return
        if self.redis.ready:
            token = self.token

            def renewed(pending: Answer) -> None:
                if generation != self._generation:
                    return
                if pending.ok and pending.reply == 1:
                    self._valid_until = max(self._valid_until, now + self.ttl)
                elif pending.ok:
                    self._lose("taken over")
                # A lost connection: try again next time; valid() runs out meanwhile.

            self.redis.run(self._renew, (self.key,), (token, max(1, int(self.ttl * 1000))), renewed)
        self._schedule(generation)

    def _lose(self, reason: str) -> None:
        self.token = None
        self._valid_until = 0.0
        self._generation += 1
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:  # noqa: BLE001 - the owner's bug must not stop the loop
                log.exception("redis lease %s: on_lost failed", self.key)
