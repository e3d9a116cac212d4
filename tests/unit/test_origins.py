"""Origin parsing and matching, without sockets."""

from __future__ import annotations

import sys

import pytest

from gateway.origins import Origin, OriginEntryError, OriginMatch, OriginPolicy, parse_origin

EXACT, ANY, NONE = OriginMatch.EXACT, OriginMatch.ANY, OriginMatch.NONE


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("https://shop.example.com", Origin("https", "shop.example.com", None)),
        ("HTTPS://Shop.Example.COM", Origin("https", "shop.example.com", None)),
        ("https://shop.example.com:443", Origin("https", "shop.example.com", None)),
        ("http://shop.example.com:80", Origin("http", "shop.example.com", None)),
        ("https://shop.example.com:80", Origin("https", "shop.example.com", 80)),
        ("http://localhost:3000", Origin("http", "localhost", 3000)),
        ("http://[::1]:8080", Origin("http", "[::1]", 8080)),
        ("capacitor://localhost", Origin("capacitor", "localhost", None)),
    ],
)
def test_parse_origin_normalises_case_and_default_ports(value: str, parsed: Origin) -> None:
    assert parse_origin(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "https://shop.example.com/",
        "https://shop.example.com/path",
        "https://shop.example.com?x",
        "https://shop.example.com#x",
        "https://user@shop.example.com",
        "https://user:pw@shop.example.com",
        "https://shop.example.com, https://evil.com",
        "https://shop.example.com https://evil.com",
        " https://shop.example.com",
        "https://shop.example.com ",
        "shop.example.com",
        "//shop.example.com",
        "https://",
        "https://shop.example.com:",
        "https://shop.example.com:99999",
        "https://shop.example.com:0",
        "https://shop.example.com:-1",
        "https://shop.example.com\r\nX: y",
        "null",
        "*",
        "",
    ],
)
def test_parse_origin_refuses_anything_but_a_bare_origin(value: str) -> None:
    assert parse_origin(value) is None


POLICY = OriginPolicy(["https://shop.example.com", "https://*.example.org", "http://localhost:3000"])


@pytest.mark.parametrize(
    ("origin", "verdict"),
    [
        ("https://shop.example.com", EXACT),
        ("https://SHOP.example.com", EXACT),
        ("https://shop.example.com:443", EXACT),
        ("http://shop.example.com", NONE),  # scheme must agree
        ("https://shop.example.com:8443", NONE),  # port must agree
        ("https://shop.example.com.evil.com", NONE),  # suffix trick
        ("https://evilshop.example.com", NONE),
        ("https://shop.example.co", NONE),
        ("https://example.com", NONE),
        ("https://a.example.org", EXACT),
        ("https://a.b.c.example.org", EXACT),  # any subdomain depth
        ("https://example.org", NONE),  # a wildcard is not the bare domain
        ("https://evilexample.org", NONE),
        ("https://.example.org", NONE),
        ("https://a.example.org.evil.com", NONE),
        ("http://a.example.org", NONE),
        ("https://a.example.org:8443", NONE),
        ("http://localhost:3000", EXACT),
        ("http://localhost", NONE),
        ("http://localhost:3001", NONE),
        ("https://shop.example.com/", NONE),
        ("https://user@shop.example.com", NONE),
        ("https://shop.example.com, https://shop.example.com", NONE),
        ("null", NONE),
        ("", NONE),
    ],
)
def test_matching_is_anchored_on_scheme_host_and_port(origin: str, verdict: OriginMatch) -> None:
    assert POLICY.match(origin) is verdict


def test_star_allows_everything_else_without_credentials() -> None:
    policy = OriginPolicy(["https://shop.example.com", "*"])
    assert policy.allow_any
    assert policy.match("https://shop.example.com") is EXACT
    assert policy.match("https://evil.com") is ANY
    assert policy.match("https://shop.example.com/path") is NONE  # never a bare origin: never matches
    assert policy.match("null") is NONE  # null only by an entry `null`


def test_null_matches_only_an_entry_null() -> None:
    assert OriginPolicy(["null"]).match("null") is EXACT
    assert OriginPolicy(["https://shop.example.com"]).match("null") is NONE
    assert OriginPolicy(["null"]).match("NULL") is NONE


def test_wildcard_with_port() -> None:
    policy = OriginPolicy(["https://*.example.com:8443"])
    assert policy.match("https://a.example.com:8443") is EXACT
    assert policy.match("https://a.example.com") is NONE


def test_repeated_lookups_give_the_same_answer() -> None:
    policy = OriginPolicy(["https://*.example.com"])
    for _ in range(3):
        assert policy.match("https://a.example.com") is EXACT
        assert policy.match("https://evil.com") is NONE


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        ("shop.example.com", "no scheme"),
        ("*.example.com", "no scheme"),
        (".example.com", "no scheme"),
        ("https://shop.example.com/", "not an origin"),
        ("https://shop.example.com/path", "not an origin"),
        ("https://user@shop.example.com", "not an origin"),
        ("https://*example.com", "not an origin"),
        ("https://a.*.example.com", "not an origin"),
        ("https://*.example.com:70000", "out of range"),
    ],
)
def test_bad_entries_are_load_errors(entry: str, hint: str) -> None:
    with pytest.raises(OriginEntryError, match=hint):
        OriginPolicy([entry])


def test_many_wildcards_match_as_the_suffix_rule_says() -> None:
    """Wildcards are looked up by the host's suffixes (not scanned): the verdicts are those of the rule
    "same scheme and port, host ends with .domain", on a list of 1,000 exact entries and 1,000 wildcards."""
    entries = [f"https://shop{i}.example.com" for i in range(1000)]
    entries += [f"https://*.b{i}.example.com" for i in range(999)] + ["https://*.b999.example.com:8443"]
    policy = OriginPolicy(entries)
    wild = [(f".b{i}.example.com", 8443 if i == 999 else None) for i in range(1000)]
    hosts = ["x.b0.example.com", "a.b.b998.example.com", "b998.example.com", "xb998.example.com",
             "x.b999.example.com", "x.b1000.example.com", "x.b10.example.com.evil.com", "shop999.example.com",
             "shop1000.example.com", "b5.example.com.b5.example.com", "x.b5.example.co"]  # fmt: skip
    for host in hosts:
        for port in (None, 8443):
            origin = f"https://{host}" + (f":{port}" if port else "")
            expected = (port is None and origin in entries) or any(
                host.endswith(suffix) and port == wanted for suffix, wanted in wild
            )
            assert policy.match(origin) is (EXACT if expected else NONE), origin
            assert policy.match(origin.replace("https", "http")) is NONE


def test_only_origins_of_an_origins_length_are_remembered() -> None:
    # Every verdict was remembered, keyed by the header as sent: 4,096 Origin values of 8 KB per project.
    policy = OriginPolicy(["https://shop.example.com", "https://*.example.org", "*"])
    short = "https://" + "a" * 40 + ".example.org"
    long = "https://" + "a." * 4000 + "example.org"  # an origin's shape, of a length no DNS host has
    for value, verdict in ((short, EXACT), (long, EXACT), ("https://" + "b" * 8000 + ".test", ANY)):
        before = sys.getrefcount(value)
        for _ in range(2):
            assert policy.match(value) is verdict
        remembered = sys.getrefcount(value) > before  # the cache's key refers to the value
        assert remembered is (value is short), value[:20]


class _CountingSuffixes(frozenset[str]):
    """An entry's suffixes that count how often a suffix of the host is looked up in them."""

    lookups = 0

    def __contains__(self, suffix: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(suffix)


def test_a_host_of_many_labels_costs_no_more_lookups_than_the_longest_entry_allows() -> None:
    # Every dot of the host was a slice and a lookup: a host of 4,000 labels cost about 4 ms of CPU per
    # request (quadratic in its length). Only the dots within the longest suffix's reach can start one.
    policy = OriginPolicy(["https://*.example.org", "https://*.b.example.org"])
    key = ("https", None)
    policy.wildcards[key] = _CountingSuffixes(policy.wildcards[key])
    for host, verdict in [("a." * 4000 + "example.org", EXACT), ("a." * 4000 + "example.com", NONE)]:
        _CountingSuffixes.lookups = 0
        assert policy.match(f"https://{host}") is verdict
        assert _CountingSuffixes.lookups <= len(".b.example.org"), _CountingSuffixes.lookups
    assert policy.match("https://x.b.example.org") is EXACT
    assert policy.match("https://example.org") is NONE
