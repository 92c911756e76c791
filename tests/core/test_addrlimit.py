"""Per-address limits as bookkeeping: grouping, exemptions, pending and total."""

import pytest

from netcore.addrlimit import (
    AddressLimits,
    address_key,
    describe_key,
    parse_networks,
)


def test_ipv4_is_itself_and_ipv6_is_grouped_by_64():
    assert address_key("203.0.113.7") != address_key("203.0.113.8")
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7")
    assert address_key("fe80::1%eth0") == address_key("fe80::2")
    assert describe_key(address_key("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
    assert describe_key(address_key("203.0.113.7")) == "203.0.113.7"
    with pytest.raises(ValueError):
        address_key("example.com")


def test_networks():
    nets = parse_networks("127.0.0.0/8, ::1,10.0.0.0/16")
    assert "127.9.8.7" in nets and "::1" in nets and "10.0.255.1" in nets
    assert "::ffff:127.0.0.1" in nets  # IPv4-mapped counts as IPv4
    assert "10.1.0.1" not in nets and "::2" not in nets and "128.0.0.1" not in nets
    assert "not an address" not in nets
    assert not parse_networks("") and "127.0.0.1" not in parse_networks("")
    assert "1.2.3.4" in parse_networks("0.0.0.0/0")
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/x", "nonsense"):
        with pytest.raises(ValueError):
            parse_networks(bad)


def test_connections_per_address():
    limits = AddressLimits(per_address=3, exempt="")
    keys = [limits.admit("198.51.100.1") for _ in range(3)]
    assert all(limit is None for _, limit in keys)
    assert limits.admit("198.51.100.1") == (None, "connections-per-address")
    assert limits.admit("198.51.100.2")[1] is None  # another address is another count
    for key, _ in keys:
        limits.settle(key)
    assert limits.admit("198.51.100.1")[1] == "connections-per-address"  # settled still count
    limits.release(keys[0][0], pending=False)
    assert limits.admit("198.51.100.1")[1] is None
    assert limits.refused == {"connections-per-address": 2}


def test_pending_per_address_frees_as_connections_settle_or_close():
    limits = AddressLimits(pending_per_address=2, exempt="")
    a = limits.admit("2001:db8::1")[0]
    b = limits.admit("2001:db8::2")[0]  # the same /64
    assert limits.admit("2001:db8::3") == (None, "pending-per-address")
    limits.settle(a)
    c = limits.admit("2001:db8::4")[0]
    assert c is not None and limits.count("2001:db8::") == (3, 2)
    limits.release(b, pending=True)
    limits.release(c, pending=True)
    limits.release(a, pending=False)
    assert limits.count("2001:db8::") == (0, 0) and limits.pending == 0
    assert not limits._open and not limits._pending  # nothing kept for gone addresses


def test_pending_total_across_addresses():
    limits = AddressLimits(pending_total=3, exempt="")
    keys = [limits.admit(f"192.0.2.{i}")[0] for i in range(3)]
    assert limits.admit("192.0.2.99") == (None, "pending-total")
    limits.settle(keys[0])
    assert limits.admit("192.0.2.99")[1] is None


def test_exempt_addresses_are_not_counted():
    limits = AddressLimits(per_address=1, pending_per_address=1, pending_total=1)  # loopback
    for _ in range(100):
        assert limits.admit("127.0.0.1") == (None, None)
        assert limits.admit("127.3.2.1") == (None, None)
        assert limits.admit("::1") == (None, None)
    assert limits.pending == 0
    assert limits.admit("192.0.2.1")[1] is None
    assert limits.admit("192.0.2.2")[1] == "pending-total"
    limits.release(None, pending=True)  # an exempt connection's close: nothing to do


def test_no_limits_counts_nothing():
    limits = AddressLimits()
    assert not limits.active
    assert limits.admit("192.0.2.1") == (None, None)
    assert limits.pending == 0


def test_non_ip_peers_are_not_limited():
    limits = AddressLimits(per_address=1, exempt="")
    assert limits.admit("/run/game.sock") == (None, None)
    assert limits.admit("/run/game.sock") == (None, None)
