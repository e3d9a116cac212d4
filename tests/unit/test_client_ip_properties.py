"""Property-based tests of the client-address walker (gateway/client_ip.py) against a small reference model.

Each X-Forwarded-For entry is generated from what it stands for (an address, or garbage) and one of the
ways a proxy writes it (bare, padded, with a port, bracketed, IPv4-mapped), so the model knows every
entry's address without parsing it and applies the rule of reference/gateway-practices.md: believe the
header only from a trusted peer, and only when it is one header; walk it from the right, skipping trusted
addresses; the first untrusted one is the client; anything unreadable falls back to the peer; when every
hop is trusted, the left-most one.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client_ip import ClientIpPolicy, bucket_key, client_address

EXAMPLES = settings(max_examples=300, deadline=None)

Address = IPv4Address | IPv6Address

TRUSTED_NETWORKS = (ip_network("10.0.0.0/29"), ip_network("fd00::/126"))
# a small pool, half of it trusted, so walks skip several hops and stop at the first untrusted one
POOL: tuple[Address, ...] = (
    *(IPv4Address(f"10.0.0.{i}") for i in range(0, 10)),  # 10.0.0.0-7 trusted, .8 and .9 not
    *(IPv6Address(f"fd00::{i}") for i in range(0, 6)),  # fd00::0-3 trusted, ::4 and ::5 not
    IPv4Address("203.0.113.7"),
    IPv6Address("2001:db8::1"),
    IPv6Address("2001:db8:0:0:ffff::2"),
)


def trusted(address: Address) -> bool:
    return any(address in network for network in TRUSTED_NETWORKS)


@dataclass(frozen=True)
class Entry:
    address: Address | None  # None: garbage
    text: str


GARBAGE = [
    "unknown",
    "",
    " ",
    "1.2.3",
    "300.1.1.1",
    "[2001:db8::1",
    "2001:db8::1]",
    "_hidden",
    "10.0.0.1 x",
    "fe80::1%",
    "::ffff:",
    "1.2.3.4:5:6",
    "obfuscated",
]


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    if draw(st.integers(0, 9)) == 0:
        return Entry(None, draw(st.sampled_from(GARBAGE)))
    address = draw(st.sampled_from(POOL))
    pad = draw(st.sampled_from(["", " ", "  "]))
    if isinstance(address, IPv4Address):
        form = draw(st.sampled_from(["bare", "port", "mapped", "mapped-bracket"]))
        text = {
            "bare": str(address),
            "port": f"{address}:{draw(st.integers(1, 65535))}",
            "mapped": f"::ffff:{address}",  # an IPv4 client seen through an IPv6 socket is the IPv4 client
            "mapped-bracket": f"[::ffff:{address}]:{draw(st.integers(1, 65535))}",
        }[form]
    else:
        form = draw(st.sampled_from(["bare", "bracket", "port", "upper"]))
        text = {
            "bare": str(address),
            "bracket": f"[{address}]",
            "port": f"[{address}]:{draw(st.integers(1, 65535))}",
            "upper": str(address).upper(),
        }[form]
    return Entry(address, pad + text + pad)


def model(peer: Entry, headers: list[list[Entry]]) -> Address | None:
    if peer.address is None:
        return None
    if not headers or not trusted(peer.address) or len(headers) != 1:
        return peer.address
    candidate = peer.address
    for entry in reversed(headers[0]):
        if entry.address is None:
            return peer.address
        candidate = entry.address
        if not trusted(entry.address):
            return entry.address
    return candidate


def _text(address: object) -> str | None:
    """A client's `text`: its address as `str` writes it."""
    return None if address is None else str(address)


peers = st.one_of(st.sampled_from(POOL).map(lambda a: Entry(a, str(a))), st.just(Entry(None, "unknown")))
headers = st.lists(st.lists(entries(), min_size=1, max_size=5), max_size=2)


@EXAMPLES
@given(peers, headers)
def test_the_walker_finds_the_client_the_model_finds(peer: Entry, xff: list[list[Entry]]) -> None:
    policy = ClientIpPolicy(TRUSTED_NETWORKS)
    values = [",".join(entry.text for entry in header) for header in xff]
    assert client_address(peer.text, values, policy) == model(peer, xff), (peer.text, values)
    assert policy.client(peer.text, values).text == _text(model(peer, xff))  # the remembered path agrees


@EXAMPLES
@given(peers, headers)
def test_without_trusted_proxies_the_header_is_never_believed(peer: Entry, xff: list[list[Entry]]) -> None:
    values = [",".join(entry.text for entry in header) for header in xff]
    assert client_address(peer.text, values, ClientIpPolicy()) == peer.address


@EXAMPLES
@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.sampled_from([48, 56, 64, 96, 128]))
def test_ipv6_clients_share_a_bucket_exactly_when_they_share_the_prefix(
    first: int, low: int, prefix: int
) -> None:
    """Any two addresses: one bucket iff their top `prefix` bits agree; IPv4 is its own address."""
    a = IPv6Address(first)
    b = IPv6Address((first & ~((1 << 64) - 1)) | low) if low % 2 else IPv6Address(low << 64)
    same = (int(a) >> (128 - prefix)) == (int(b) >> (128 - prefix))
    assert (bucket_key(a, prefix) == bucket_key(b, prefix)) == same, (a, b, prefix)
    v4 = ip_address(first % 2**32)
    assert bucket_key(v4, prefix) == str(v4)
