"""netcore.redis: Lua scripts (EVALSHA, reloaded after a flush or a restart) and
RedisLease, one holder at a time with a fencing epoch, against a real redis-server."""

import pytest

from netcore.redis import FENCE, Pending, Redis, RedisAddress, RedisConfig, RedisLease, Script
from netcore.testing import run_until
from redisproc import RedisServer


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(str(tmp_path)).start()
    yield srv
    srv.kill()


def link(loop, srv, **kw):
    client = Redis(loop, RedisAddress("127.0.0.1", srv.port), RedisConfig(**kw))
    client.start()
    run_until(loop, lambda: client.ready)
    return client


def wait(loop, pending):
    run_until(loop, lambda: pending.done)
    return pending.result()


def test_scripts_run_by_sha_and_survive_a_script_flush(loop, server):
    client = link(loop, server)
    double = client.script("return tonumber(ARGV[1]) * 2")
    assert wait(loop, client.run(double, (), (21,))) == 42
    assert wait(loop, client.execute("SCRIPT", "FLUSH")) == "OK"
    # NOSCRIPT: sent again as EVAL, one pending for the caller.
    assert wait(loop, client.run(double, (), (5,))) == 10
    assert wait(loop, client.run(client.script("return redis.call('GET', KEYS[1])"), ("nokey",))) is None


@pytest.mark.slow
def test_scripts_are_loaded_again_after_a_restart(loop, server):
    client = link(loop, server, backoff_max=0.2)
    triple = client.script("return tonumber(ARGV[1]) * 3")
    assert wait(loop, client.run(triple, (), (2,))) == 6
    server.stop()
    run_until(loop, lambda: not client.ready)
    server.start()
    run_until(loop, lambda: client.ready, timeout=10)
    assert wait(loop, client.execute("SCRIPT", "EXISTS", triple.sha)) == [1]


def acquire(loop, lease):
    got = []
    lease.acquire(lambda ok, token: got.append((ok, token)))
    run_until(loop, lambda: got)
    return got[0]


def test_one_holder_at_a_time_and_the_epoch_grows(loop, server):
    a_link, b_link = link(loop, server), link(loop, server)
    lost = []
    a = RedisLease(a_link, "world:lease", "game-a", ttl=5, on_lost=lost.append)
    b = RedisLease(b_link, "world:lease", "game-b", ttl=5)
    assert acquire(loop, a) == (True, "1:game-a")
    assert a.valid() and a.epoch == 1
    assert acquire(loop, b) == (False, "1:game-a")
    assert 4 < b.remaining <= 5 and not b.valid()
    a.release()
    assert lost == ["released"] and not a.valid()
    run_until(loop, lambda: wait(loop, b_link.execute("EXISTS", "world:lease")) == 0)
    assert acquire(loop, b) == (True, "2:game-b") and b.epoch == 2


@pytest.mark.slow  # a second or more of timers
def test_renewal_keeps_it_past_its_ttl(loop, server):
    holder = RedisLease(link(loop, server), "k", "a", ttl=0.3)
    other = RedisLease(link(loop, server), "k", "b", ttl=0.3)
    assert acquire(loop, holder)[0]
    loop.run_for(1.0)
    assert holder.valid() and acquire(loop, other) == (False, "1:a")


def test_a_holder_that_stops_renewing_is_fenced_out(loop, server):
    """The old holder's link goes away (a paused or partitioned authority): its lease
    expires, another takes it with a higher epoch, and the old token's fenced writes
    fail in Redis itself."""
    old_link, new_link = link(loop, server), link(loop, server)
    lost = []
    old = RedisLease(old_link, "w", "old", ttl=0.3, on_lost=lost.append)
    new = RedisLease(new_link, "w", "new", ttl=0.3)
    assert acquire(loop, old) == (True, "1:old")
    write = new.fenced("return redis.call('SET', KEYS[2], ARGV[2])")
    assert wait(loop, new_link.run(write, ("w", "score"), ("1:old", "from-old"))) == "OK"
    old_link.close()  # no more renewals
    run_until(loop, lambda: lost, timeout=3)
    assert lost == ["not renewed for 0.3s"] and not old.valid()
    run_until(loop, lambda: acquire(loop, new)[0], timeout=3)
    assert new.epoch == 2
    refused = new_link.run(write, ("w", "score"), ("1:old", "late write"))
    run_until(loop, lambda: refused.done)
    assert refused.reply.kind == "FENCED"
    assert wait(loop, new_link.run(write, ("w", "score"), (new.token, "from-new"))) == "OK"
    assert wait(loop, new_link.execute("GET", "score")) == b"from-new"
    assert FENCE.startswith("if redis.call('GET', KEYS[1])")


def test_a_takeover_is_noticed_at_the_next_renewal(loop, server):
    lost = []
    lease = RedisLease(link(loop, server), "t", "a", ttl=0.3, on_lost=lost.append)
    other = link(loop, server)
    assert acquire(loop, lease)[0]
    wait(loop, other.execute("SET", "t", "9:intruder"))
    run_until(loop, lambda: lost, timeout=2)
    assert lost == ["taken over"] and lease.token is None


def test_min_epoch_survives_a_redis_that_forgot(loop, server):
    client = link(loop, server)
    lease = RedisLease(client, "m", "a", ttl=5)
    lease.min_epoch = 41  # the owner's own record of the last epoch it held
    assert acquire(loop, lease) == (True, "42:a")


def test_reclaim_takes_back_only_a_lease_held_under_the_same_owner(loop, server):
    first = RedisLease(link(loop, server), "world:lease", "host-a:/data", ttl=30)
    assert acquire(loop, first)[0]
    # The same owner restarted (it knows the old one is dead): at once, a new epoch.
    again = RedisLease(link(loop, server), "world:lease", "host-a:/data", ttl=30)
    assert acquire(loop, again)[0] is False  # without reclaim: refused, as anyone
    got = []
    again.acquire(lambda ok, token: got.append((ok, token)), reclaim=True)
    run_until(loop, lambda: got)
    assert got[0] == (True, "2:host-a:/data") and again.epoch == 2
    # Someone else reclaiming is refused all the same.
    other = RedisLease(link(loop, server), "world:lease", "host-b:/data", ttl=30)
    got = []
    other.acquire(lambda ok, token: got.append((ok, token)), reclaim=True)
    run_until(loop, lambda: got)
    assert got[0] == (False, "2:host-a:/data")


class FakeLink:
    """A link that runs scripts by answering from a list: the lease needs no more."""

    def __init__(self, loop, answers):
        self.loop = loop
        self.ready = True
        self.answers = list(answers)
        self.ran = []

    def script(self, source):
        return Script(source)

    def run(self, script, keys=(), args=(), callback=None):
        self.ran.append((script.sha, tuple(keys)))
        answer = Pending("EVALSHA", callback)
        answer._finish(self.answers.pop(0), None)
        return answer


def test_the_lease_lives_in_its_own_module_and_runs_on_any_script_link(loop):
    import netcore.lease
    import netcore.redis

    assert netcore.redis.RedisLease is netcore.lease.RedisLease is RedisLease
    assert netcore.redis.FENCE is netcore.lease.FENCE
    fake = FakeLink(loop, [[1, b"7:me", 5000], 1])
    lease = netcore.lease.RedisLease(fake, "w", "me", ttl=0.3)
    assert acquire(loop, lease) == (True, "7:me") and lease.epoch == 7 and lease.valid()
    lease.release()
    assert lease.token is None and [keys for _sha, keys in fake.ran] == [("w", "w:epoch"), ("w",)]
