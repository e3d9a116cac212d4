"""Property-based tests of the origin matcher (gateway/origins.py) against a small reference model.

The model does not parse: each origin is generated from its parts (scheme, host labels, port), so the
model knows what it is and decides the verdict from POLICY.md's words: scheme and host compared
case-insensitively, default ports normalised, `*.domain` for any subdomain depth but not `domain` itself,
`*` for any other origin (without credentials), `null` only by an entry `null`, and anything that is not
a bare `scheme://host[:port]` never matches, not even `*`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.origins import OriginMatch, OriginPolicy

EXAMPLES = settings(max_examples=150, deadline=None)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class Parts:
    scheme: str  # lowercase
    labels: tuple[str, ...]  # lowercase
    port: int | None  # as written; None: no port

    @property
    def host(self) -> str:
        return ".".join(self.labels)

    def key(self) -> tuple[str, str, int | None]:
        """What the origin is, for comparison: default ports are no port."""
        port = None if self.port == DEFAULT_PORTS.get(self.scheme) else self.port
        return self.scheme, self.host, port


ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
label = st.one_of(  # a DNS label: letters and digits, hyphens inside
    st.text(ALNUM, min_size=1, max_size=1),
    st.builds(
        lambda a, mid, b: a + mid + b,
        st.text(ALNUM, min_size=1, max_size=1),
        st.text(ALNUM + "-", max_size=5),
        st.text(ALNUM, min_size=1, max_size=1),
    ),
)
schemes = st.sampled_from(["http", "https", "ws", "wss", "capacitor", "chrome-extension"])
ports = st.one_of(st.none(), st.sampled_from([80, 443, 8080, 3000]), st.integers(1, 65535))
parts = st.builds(Parts, schemes, st.lists(label, min_size=1, max_size=4).map(tuple), ports)


def render(origin: Parts, flips: list[bool], zero_pad: bool) -> str:
    """The origin as a browser might send it: any letter case, optionally a zero-padded port."""
    text = f"{origin.scheme}://{origin.host}"
    text = "".join(
        ch.upper() if flip else ch for ch, flip in zip(text, flips + [False] * len(text), strict=False)
    )
    if origin.port is not None:  # a port is at most 5 digits, padding included
        text += f":{'0' if zero_pad and origin.port < 10000 else ''}{origin.port}"
    return text


@dataclass(frozen=True)
class Entries:
    exact: tuple[Parts, ...]
    wildcards: tuple[Parts, ...]  # *.<host>
    star: bool
    null: bool

    def as_config(self) -> list[str]:
        config = [render(p, [], False) for p in self.exact]
        config += [f"{w.scheme}://*.{w.host}" + (f":{w.port}" if w.port else "") for w in self.wildcards]
        return config + (["*"] if self.star else []) + (["null"] if self.null else [])


def model(entries: Entries, origin: Parts | None) -> OriginMatch:
    """The verdict POLICY.md gives a well-formed origin (None: a malformed value)."""
    if origin is None:
        return OriginMatch.NONE
    scheme, host, port = origin.key()
    for exact in entries.exact:
        if exact.key() == (scheme, host, port):
            return OriginMatch.EXACT
    for wild in entries.wildcards:
        w_scheme, domain, w_port = wild.key()
        if w_scheme == scheme and w_port == port and host.endswith("." + domain):
            return OriginMatch.EXACT
    return OriginMatch.ANY if entries.star else OriginMatch.NONE


def _near(origins: list[Parts]) -> st.SearchStrategy[Parts]:
    """Origins close to the entries: the same host under another scheme or port, a subdomain, a parent."""

    def variants(base: Parts) -> st.SearchStrategy[Parts]:
        return st.one_of(
            st.just(base),
            st.builds(lambda s: Parts(s, base.labels, base.port), schemes),
            st.builds(lambda p: Parts(base.scheme, base.labels, p), ports),
            st.builds(
                lambda extra: Parts(base.scheme, (*extra, *base.labels), base.port),
                st.lists(label, min_size=1, max_size=2),
            ),
            st.just(Parts(base.scheme, base.labels[1:] or base.labels, base.port)),
            st.builds(
                lambda glued: Parts(base.scheme, (glued + base.labels[0], *base.labels[1:]), base.port), label
            ),  # evilexample.com next to example.com
            st.builds(
                lambda tail: Parts(base.scheme, (*base.labels, *tail), base.port),
                st.lists(label, min_size=1, max_size=2),
            ),  # example.com.evil.com
        )

    return st.sampled_from(origins).flatmap(variants)


entries_strategy = st.builds(
    Entries,
    st.lists(parts, max_size=3).map(tuple),
    st.lists(parts, max_size=2).map(tuple),
    st.booleans(),
    st.booleans(),
)


@EXAMPLES
@given(st.data())
def test_a_well_formed_origin_matches_as_the_model_says(data: st.DataObject) -> None:
    entries = data.draw(entries_strategy)
    pool = [*entries.exact, *entries.wildcards]
    origin = data.draw(_near(pool) if pool and data.draw(st.booleans()) else parts)
    text = render(origin, data.draw(st.lists(st.booleans(), max_size=40)), data.draw(st.booleans()))
    policy = OriginPolicy(entries.as_config())
    assert policy.match(text) is model(entries, origin), (entries.as_config(), text)


MALFORM = st.sampled_from(
    [
        "{}/",
        "{}/path",
        "{}?q",
        "{}#f",
        "{} ",
        " {}",
        "{}, https://a.example",
        "{} https://a.example",
        "{}.",
        "{}\t",
        "{}\r\n",
        "{}:",
        "{}:99999",
        "{}:0",
        "{}@evil.example",
    ]
)


@EXAMPLES
@given(entries_strategy, parts, MALFORM, st.booleans())
def test_a_value_that_is_not_a_bare_origin_never_matches_an_entry(
    entries: Entries, origin: Parts, malform: str, user_info: bool
) -> None:
    """A path, query, fragment, whitespace, a list, a trailing dot or colon, a port out of range, user
    info: no entry lets such a value through, not an exact one for its origin, nor a wildcard, nor `*`."""
    bare = f"{origin.scheme}://{origin.host}"
    text = malform.format(bare) if not user_info else bare.replace("://", "://user@", 1)
    policy = OriginPolicy([*entries.as_config(), render(origin, [], False), f"{origin.scheme}://*.example"])
    assert policy.match(text) is model(entries, None), text


@settings(max_examples=40, deadline=None)
@given(entries_strategy, st.sampled_from(["null", "NULL", "Null", " null", "null "]))
def test_null_matches_only_an_entry_null(entries: Entries, value: str) -> None:
    policy = OriginPolicy(entries.as_config())
    if value == "null":
        expected = OriginMatch.EXACT if entries.null else OriginMatch.NONE
    else:  # not the literal `null`, and not an origin either
        expected = model(entries, None)
    assert policy.match(value) is expected


@EXAMPLES
@given(parts)
def test_a_wildcard_never_covers_its_own_domain(domain: Parts) -> None:
    policy = OriginPolicy([f"{domain.scheme}://*.{domain.host}" + (f":{domain.port}" if domain.port else "")])
    assert policy.match(render(domain, [], False)) is OriginMatch.NONE
    child = Parts(domain.scheme, ("a", *domain.labels), domain.port)
    assert policy.match(render(child, [], False)) is OriginMatch.EXACT
