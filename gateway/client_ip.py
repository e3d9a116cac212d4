"""Who is the client: the socket peer, or what a trusted proxy says in X-Forwarded-For.

X-Forwarded-For is believed only when the socket peer is a trusted proxy; the list is then walked from the
right, skipping trusted addresses, and the first untrusted one is the client. Anything odd (several XFF
headers, an entry that is not an address) falls back to the peer: never guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from socket import inet_aton, inet_ntoa

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


CLIENT_CACHE_SIZE = 16384  # distinct (peer, X-Forwarded-For) pairs remembered per policy
# The longest X-Forwarded-For the cache keeps as a key: a chain of eight IPv6 hops with ports. A longer one
# is walked on each request instead: the key is the client's own bytes, up to 128 headers of 8 KB each.
FORWARDED_KEY_CHARS = 512


@dataclass(slots=True)
class Client:
    """Who sent a request, with the strings the request path needs of it, computed once per client.

    Made for each request from what `ClientIpPolicy` remembers (not frozen: a frozen dataclass costs
    three times as much to make); nothing changes it."""

    bucket_key: str  # what the rate limit counts
    text: str | None  # for logs
    truncated: str | None  # for logs with `client_ip: truncated`


@dataclass(frozen=True, slots=True)
class ClientIpPolicy:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    ipv6_prefix: int = 64
    # (peer, X-Forwarded-For) or (peer,) -> Client's fields: exact tuples of strings, which the garbage
    # collector stops tracking, so at a million shoppers the misses do not fill its oldest generation.
    _clients: dict[tuple[str | None, ...], tuple[str, str | None, str | None]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _trusted_v4: tuple[tuple[int, int], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # `::ffff:10.0.0.0/104` is 10.0.0.0/8: peers are compared unmapped (`parse_address`), so a mapped
        # entry (how a dual-stack socket shows an IPv4 load balancer) was accepted and never matched.
        object.__setattr__(self, "trusted_proxies", tuple(map(_unmapped, self.trusted_proxies)))
        v4 = tuple(
            (int(net.network_address), int(net.netmask))
            for net in self.trusted_proxies
            if isinstance(net, IPv4Network)
        )
        object.__setattr__(self, "_trusted_v4", v4)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> Client:
        """`client_address` and its strings, remembered: shoppers repeat, and the strings cost more than
        the lookup. Bounded: an address-rotation flood only empties it every CLIENT_CACHE_SIZE clients,
        and a key holds at most FORWARDED_KEY_CHARS of what the client sent (several headers, which only
        mean the peer, are not kept at all).

        What is remembered holds no object the garbage collector tracks (a Client is made on each call):
        a million distinct shoppers miss it on nearly every request, and three tracked objects per miss
        were promoted to its oldest generation, making full collections of the whole heap several times
        more frequent (`python -m bench --scenario g`, the clients row)."""
        if len(forwarded_for) != 1:  # none, or several: the peer is the client (`client_address`)
            key: tuple[str | None, ...] = (peer,)
        elif len(forwarded_for[0]) <= FORWARDED_KEY_CHARS:
            key = (peer, forwarded_for[0])
        else:  # not remembered: a key of the client's own bytes (16,384 of 1 MB each fill 16 GB)
            return Client(*self._computed(peer, forwarded_for))
        found = self._clients.get(key)
        if found is None:
            found = self._computed(peer, forwarded_for)
            if len(self._clients) >= CLIENT_CACHE_SIZE:
                self._clients.clear()
            self._clients[key] = found
        return Client(*found)

    def _computed(self, peer: str | None, forwarded_for: Sequence[str]) -> tuple[str, str | None, str | None]:
        """`client`'s answer, not remembered: the IPv4 shortcut, else the general path."""
        found = self._ipv4_client(peer, forwarded_for)
        if found is not None:
            return found
        address = client_address(peer, forwarded_for, self)
        text = None if address is None else str(address)
        short = None if address is None else truncated(address)
        return (bucket_key(address, self.ipv6_prefix), text, short)

    def _ipv4_client(self, peer: str | None, forwarded_for: Sequence[str]) -> tuple[str, str, str] | None:
        """The fields of `client`'s answer when the peer and every address it needs are IPv4 in canonical
        dotted form (how load balancers write them), computed on integers and strings: a million distinct
        shoppers miss the cache, and `ipaddress` costs about 10 µs a client. None: anything else, for the
        general path (`client_address`), which gives the same answer for these."""
        value = _ipv4(peer)
        if peer is None or value is None:
            return None
        client = peer
        if forwarded_for and self._trusted_ipv4(value):
            if len(forwarded_for) != 1:
                return None  # the general path falls back to the peer: so does this one, there
            for entry in reversed(forwarded_for[0].split(",")):
                entry = entry.strip()
                value = _ipv4(entry)
                if value is None:
                    return None
                client = entry
                if not self._trusted_ipv4(value):
                    break
        return (client, client, client[: client.rindex(".")] + ".0/24")

    def _trusted_ipv4(self, value: int) -> bool:
        for network, mask in self._trusted_v4:  # noqa: SIM110 - `any` over a generator costs twice this
            if value & mask == network:
                return True
        return False


_MAPPED = IPv6Network("::ffff:0:0/96")


def _unmapped(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network as the IPv4 network it stands for; any other network as it is."""
    if isinstance(network, IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return IPv4Network((mapped, network.prefixlen - 96))
    return network


def _ipv4(text: str | None) -> int | None:
    """The address of an IPv4 address in canonical dotted form (as str(IPv4Address) writes it), as an
    integer; else None. `inet_aton` also takes other forms ("1.2.3", "0x7f.1", "01.2.3.4", trailing text
    after a space): only a text that `inet_ntoa` writes back unchanged is canonical. Half the cost of a
    regex and four int() calls."""
    if text is None:
        return None
    try:
        packed = inet_aton(text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    return int.from_bytes(packed, "big") if inet_ntoa(packed) == text else None


@lru_cache(maxsize=16384)  # peers and shoppers repeat; parsing an address is the costly part
def parse_address(text: str) -> IPAddress | None:
    """An address as found in a peer or an XFF entry; ports (`1.2.3.4:5`, `[::1]:5`) are tolerated."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not text[end + 1 :].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4, whatever socket family it came in on
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return IPv6Address(int(address))  # a zone id (`%eth0`) names an interface here, not the client
    return address


def client_address(
    peer: str | None, forwarded_for: Sequence[str], policy: ClientIpPolicy
) -> IPAddress | None:
    """The client's address; None only when the peer itself is unknown (e.g. a Unix socket)."""
    peer_address = parse_address(peer) if peer else None
    if peer_address is None or not forwarded_for or not policy.is_trusted(peer_address):
        return peer_address
    if len(forwarded_for) != 1:
        return peer_address
    entries = forwarded_for[0].split(",")
    candidate: IPAddress = peer_address
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return peer_address
        candidate = address
        if not policy.is_trusted(address):
            return address
    return candidate  # every hop was trusted: the left-most one is as close to the client as we know


def bucket_key(address: IPAddress | None, ipv6_prefix: int) -> str:
    """The rate-limit identity: an IPv4 address, or the IPv6 network of `ipv6_prefix` bits it is in."""
    if address is None:
        return "unknown"
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/{ipv6_prefix}", strict=False))
    return str(address)


def truncated(address: IPAddress | None) -> str:
    """For privacy in logs: /24 for IPv4, /48 for IPv6."""
    if address is None:
        return "unknown"
    prefix = 48 if isinstance(address, IPv6Address) else 24
    return str(ip_network(f"{address}/{prefix}", strict=False))
