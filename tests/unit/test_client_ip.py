"""Who the client is, and which rate-limit bucket it counts in, without sockets."""

from __future__ import annotations

import gc
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import client_ip
from gateway.client_ip import ClientIpPolicy, bucket_key, client_address, parse_address, truncated

NO_PROXIES = ClientIpPolicy()
PROXIES = ClientIpPolicy((ip_network("10.0.0.0/8"), ip_network("fd00::/8")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:5555", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped IPv6 is the IPv4 client
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("unknown", None),
        ("", None),
        ("203.0.113.7, 10.0.0.1", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("999.0.0.1", None),
        ("_hidden", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


def ip(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


def test_the_peer_is_the_client_without_trusted_proxies() -> None:
    assert client_address("203.0.113.7", [], NO_PROXIES) == ip("203.0.113.7")
    # A spoofed X-Forwarded-For from an untrusted peer is ignored entirely.
    assert client_address("203.0.113.7", ["198.51.100.1"], NO_PROXIES) == ip("203.0.113.7")
    assert client_address("203.0.113.7", ["198.51.100.1"], PROXIES) == ip("203.0.113.7")


def test_xff_from_a_trusted_proxy_is_walked_from_the_right() -> None:
    assert client_address("10.0.0.1", ["198.51.100.1"], PROXIES) == ip("198.51.100.1")
    # The left-most entries are whatever the client wrote; the first untrusted from the right is the client.
    assert client_address("10.0.0.1", ["1.1.1.1, 198.51.100.1, 10.0.0.2"], PROXIES) == ip("198.51.100.1")
    assert client_address("10.0.0.1", ["1.1.1.1,198.51.100.1"], PROXIES) == ip("198.51.100.1")
    assert client_address("fd00::1", ["2001:db8::5"], PROXIES) == ip("2001:db8::5")
    assert client_address("10.0.0.1", ["[2001:db8::5]:1234"], PROXIES) == ip("2001:db8::5")


def test_all_trusted_hops_give_the_left_most() -> None:
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], PROXIES) == ip("10.0.0.3")


@pytest.mark.parametrize(
    "xff", [["198.51.100.1", "198.51.100.2"], ["garbage"], ["198.51.100.1, garbage"], [""]]
)
def test_anything_odd_falls_back_to_the_peer(xff: list[str]) -> None:
    assert client_address("10.0.0.1", xff, PROXIES) == ip("10.0.0.1")


def test_ipv4_mapped_peer_is_the_ipv4_client() -> None:
    assert client_address("::ffff:10.0.0.1", ["198.51.100.1"], PROXIES) == ip("198.51.100.1")
    assert client_address("::ffff:203.0.113.7", [], NO_PROXIES) == ip("203.0.113.7")


def test_unknown_peer() -> None:
    assert client_address(None, ["198.51.100.1"], PROXIES) is None
    assert bucket_key(None, 64) == "unknown"


def test_ipv4_buckets_are_per_address() -> None:
    assert bucket_key(ip("203.0.113.7"), 64) == "203.0.113.7"
    assert bucket_key(ip("203.0.113.7"), 64) != bucket_key(ip("203.0.113.8"), 64)


def test_an_ipv6_64_shares_one_bucket() -> None:
    one = bucket_key(ip("2001:db8:1:2::1"), 64)
    assert one == "2001:db8:1:2::/64"
    assert bucket_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64) == one
    assert bucket_key(ip("2001:db8:1:3::1"), 64) != one
    assert bucket_key(ip("2001:db8:1:2::1"), 128) != bucket_key(ip("2001:db8:1:2::2"), 128)
    assert bucket_key(ip("2001:db8:1:2::1"), 48) == bucket_key(ip("2001:db8:1:ff::1"), 48)


def test_ipv4_mapped_ipv6_counts_with_its_ipv4_address() -> None:
    mapped = client_address("::ffff:203.0.113.7", [], NO_PROXIES)
    assert bucket_key(mapped, 64) == bucket_key(ip("203.0.113.7"), 64) == "203.0.113.7"
    # and two mapped IPv4 clients are not lumped into one IPv6 /64
    other = client_address("::ffff:203.0.113.8", [], NO_PROXIES)
    assert bucket_key(mapped, 64) != bucket_key(other, 64)


def test_truncated_for_logs() -> None:
    assert truncated(ip("203.0.113.7")) == "203.0.113.0/24"
    assert truncated(ip("2001:db8:1:2::1")) == "2001:db8:1::/48"
    assert truncated(None) == "unknown"


@pytest.mark.parametrize("text", ["2001:db8::1%a", "2001:db8::1%25b", "[2001:db8::1%eth0]:443", "fe80::1%1"])
def test_a_zone_id_is_not_part_of_the_client(text: str) -> None:
    # A zone id only names the receiver's interface; kept, every made-up zone would be its own bucket
    # (with ipv6_prefix: 128) and show in the logs as the client's address.
    address = parse_address(text)
    assert isinstance(address, IPv6Address) and address.scope_id is None
    policy = ClientIpPolicy((ip_network("10.0.0.0/8"),), ipv6_prefix=128)
    assert bucket_key(client_address("10.0.0.1", [text], policy), 128) == bucket_key(
        parse_address(text.split("%")[0].lstrip("[")), 128
    )


def test_client_is_what_the_functions_say_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_ip, "CLIENT_CACHE_SIZE", 8)
    policy = ClientIpPolicy((ip_network("10.0.0.0/8"),), 48)
    cases = [
        ("10.0.0.1", ["203.0.113.9, 10.0.0.7"]),
        ("10.0.0.1", ["2001:db8:1:2::5"]),
        ("198.51.100.4", ["203.0.113.9"]),  # an untrusted peer's XFF is ignored
        ("10.0.0.1", ["nonsense"]),
        (None, []),
    ]
    for peer, xff in cases:
        client = policy.client(peer, xff)
        address = client_address(peer, xff, policy)
        assert client.bucket_key == bucket_key(address, 48)
        assert client.truncated == (None if address is None else truncated(address))
        assert client.text == (None if address is None else str(address))
        remembered = dict(policy._clients)
        assert policy.client(peer, xff) == client
        assert policy._clients == remembered  # the second time from the cache
    assert policy.client("10.0.0.1", ["2001:db8:1:2::5"]).bucket_key == "2001:db8:1::/48"
    for i in range(20):  # a rotation flood: the cache stays within its size
        policy.client("10.0.0.1", [f"203.0.113.{i}"])
    assert len(policy._clients) <= 8
    assert ClientIpPolicy((ip_network("10.0.0.0/8"),), 48) == policy  # the cache is not part of equality


def test_what_the_client_cache_remembers_leaves_the_garbage_collector_nothing_to_track() -> None:
    # At a million distinct shoppers nearly every request misses the cache; each miss used to leave
    # tracked objects (a Client, tuples) that were promoted to the collector's oldest generation and
    # made full collections of the whole heap more frequent. Exact tuples of strings stop being tracked
    # at the first collection they survive, and are never promoted.
    policy = ClientIpPolicy((ip_network("10.0.0.0/8"), ip_network("2001:db8:ff::/48")), 64)
    for i in range(50):
        policy.client("10.0.0.1", [f"203.0.113.{i}"])  # the IPv4 path
        policy.client("10.0.0.1", [f"2001:db8:{i}::1, 10.0.0.2"])  # the general path
        policy.client(f"2001:db8:ff::{i}", [f"198.51.100.{i}", "10.9.9.9"])  # two XFF headers
        policy.client(None, [])
    gc.collect()
    assert len(policy._clients) == 151
    assert not any(gc.is_tracked(key) or gc.is_tracked(value) for key, value in policy._clients.items())
    assert policy.client("10.0.0.1", ["203.0.113.7"]).bucket_key == "203.0.113.7"


_V4_TEXTS = st.one_of(
    st.sampled_from(["10.0.0.1", "10.1.2.3", "127.0.0.1", "203.0.113.7", "0.0.0.0", "255.255.255.255"]),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["010.0.0.1", "10.0.0.01", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.4:80", " 10.0.0.9"]),
    # what inet_aton takes besides the canonical form (the shortcut parses with it): hex, octal, fewer
    # parts, text after a space, a NUL, non-ASCII digits
    st.sampled_from(
        ["0x0a.0.0.1", "10.0x1", "10.1", "167772161", "10.0.0.1 x", "10.0.0.1\x00", "\uff110.0.0.1"]
    ),
    st.sampled_from(["::1", "fd00::5", "2001:db8::1", "::ffff:10.0.0.1", "[fd00::1]:80", "unknown", ""]),
)


@given(
    peer=st.one_of(st.none(), _V4_TEXTS),
    hops=st.lists(st.lists(_V4_TEXTS, max_size=4).map(", ".join), max_size=2),
    proxies=st.sampled_from([(), ("10.0.0.0/8",), ("127.0.0.1/32", "fd00::/8"), ("0.0.0.0/0",)]),
)
def test_the_ipv4_shortcut_answers_as_the_general_path(
    peer: str | None, hops: list[str], proxies: tuple[str, ...]
) -> None:
    """`client` computes canonical IPv4 clients on integers and strings (a million shoppers miss its
    cache): whatever the peer, the X-Forwarded-For headers and the trusted proxies, it answers what
    `client_address` and the string functions answer."""
    policy = ClientIpPolicy(tuple(ip_network(p) for p in proxies))
    address = client_address(peer, hops, policy)
    got = policy.client(peer, hops)
    assert got.bucket_key == bucket_key(address, policy.ipv6_prefix)
    assert got.text == (None if address is None else str(address))
    assert got.truncated == (None if address is None else truncated(address))


def test_the_client_cache_never_holds_more_than_a_bounded_x_forwarded_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key was (peer, *every X-Forwarded-For header): up to 128 headers of 8 KB, chosen by the client,
    # even from a peer whose header is never believed. 16,384 such requests held some 16 GB.
    monkeypatch.setattr(client_ip, "CLIENT_CACHE_SIZE", 64)
    policy = ClientIpPolicy((ip_network("10.0.0.0/8"),))
    for i in range(30):
        floods = [
            ("198.51.100.4", [f"{i}-{j}-" + "x" * 8000 for j in range(20)]),  # untrusted, many headers
            ("198.51.100.4", [f"{i}-" + "x" * 8000]),  # untrusted, one long header
            ("10.0.0.1", [f"{i}-" + "x" * 8000 + ", 203.0.113.9"]),  # trusted, a long chain
        ]
        for peer, xff in floods:
            got = policy.client(peer, xff)
            assert got.bucket_key == bucket_key(client_address(peer, xff, policy), 64)
            assert policy.client(peer, xff) == got
    assert policy.client("10.0.0.1", ["x" * 8000 + ", 203.0.113.9"]).bucket_key == "203.0.113.9"
    assert policy.client("198.51.100.4", ["x" * 8000] * 3).bucket_key == "198.51.100.4"
    held = sum(len(part) for key in policy._clients for part in key if part is not None)
    assert held <= len(policy._clients) * 1024  # a key is a few addresses, never a flood of bytes
    # what stays remembered still answers as the functions do
    for peer, xff in [("10.0.0.1", ["203.0.113.9, 10.0.0.7"]), ("10.0.0.1", ["1.1.1.1", "2.2.2.2"])]:
        assert policy.client(peer, xff).bucket_key == bucket_key(client_address(peer, xff, policy), 64)


@pytest.mark.parametrize("entry", ["::ffff:10.0.0.0/104", "::ffff:10.0.0.1/128", "::ffff:a00:0/104"])
def test_an_ipv4_mapped_trusted_proxy_is_its_ipv4_network(entry: str) -> None:
    # Peers are compared unmapped (::ffff:10.0.0.1 is 10.0.0.1), so a trusted proxy written as a dual-stack
    # socket shows it was accepted and never matched: every shopper behind it was the proxy.
    policy = ClientIpPolicy((ip_network(entry),))
    for peer in ("10.0.0.1", "::ffff:10.0.0.1"):
        assert client_address(peer, ["198.51.100.1"], policy) == ip("198.51.100.1")
        assert policy.client(peer, ["198.51.100.1"]).bucket_key == "198.51.100.1"
    assert client_address(
        "10.0.1.1" if entry.endswith("/128") else "11.0.0.1", ["198.51.100.1"], policy
    ) != ip("198.51.100.1")
    assert ClientIpPolicy((ip_network("fd00::/8"),)).trusted_proxies == (ip_network("fd00::/8"),)
