"""Property-based tests of the route matcher (gateway/catalog.py) against a small reference model.

The model reads POLICY.md's route rules directly: a path matches a route when it has the template's
number of segments, every static segment is equal to the letter (no decoding, no case folding), and
every parameter is RFC 3986 path characters with well-formed escapes whose percent-decoded value has no
control character, no backslash and no `.` or `..` segment once split on `/`. Parameters come back
exactly as sent.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog import CATALOG, ROUTES, Route

EXAMPLES = settings(max_examples=300, deadline=None)

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
SUB_DELIMS = set("!$&'()*+,;=")
HEX = "0123456789abcdefABCDEF"


def decode(raw: str) -> bytes | None:
    """Percent-decoding by hand; None when an escape is malformed or a character is not a pchar."""
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in HEX for c in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        elif ch in UNRESERVED or ch in SUB_DELIMS or ch in ":@":
            out.append(ord(ch))
            i += 1
        else:
            return None
    return bytes(out)


def has_c1(decoded: bytes) -> bool:
    """A C1 control character (U+0080 to U+009F) in UTF-8: 0xC2 then 0x80 to 0x9F."""
    return any(a == 0xC2 and 0x80 <= b <= 0x9F for a, b in pairwise(decoded))


def safe_param(raw: str) -> bool:
    if not raw:
        return False
    decoded = decode(raw)
    if decoded is None:
        return False
    if any(b < 0x20 or b == 0x7F or b == ord("\\") for b in decoded) or has_c1(decoded):
        return False
    return all(part not in (b".", b"..") for part in decoded.split(b"/"))


def model(segments: tuple[str, ...]) -> tuple[set[tuple[str, str]], dict[str, str]] | None:
    """The (method, template) pairs a path's segments match, and their parameters; None: no route."""
    found: set[tuple[str, str]] = set()
    params: dict[str, str] = {}
    for route in ROUTES:
        template = tuple(route.template.strip("/").split("/"))
        if len(template) != len(segments):
            continue
        these: dict[str, str] = {}
        for expected, actual in zip(template, segments, strict=True):
            if expected.startswith("{"):
                if not safe_param(actual):
                    break
                these[expected[1:-1]] = actual
            elif expected != actual:
                break
        else:
            found.add((route.method, route.template))
            params.update(these)
    return (found, params) if found else None


STATIC = sorted({seg for route in ROUTES for seg in route.template.strip("/").split("/")})
HOSTILE = [
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "a%2f..",
    "..%2F",
    "%5c",
    "a\\b",
    "%00",
    "%1f",
    "%7f",
    "%",
    "%2",
    "%zz",
    "a b",
    "a?b",
    "a#b",
    "%25",
    "%2e%2e%2fx",
    "ü",
    "%c3%bc",
    "x%2F%2E",
    "",
]


def _case_flip(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips + [False] * len(text), strict=False))


segment = st.one_of(
    st.sampled_from(STATIC),
    st.builds(_case_flip, st.sampled_from(STATIC), st.lists(st.booleans(), max_size=12)),
    st.sampled_from(HOSTILE),
    st.text(
        st.sampled_from(sorted(UNRESERVED | SUB_DELIMS | set(":@%/\\ \t\x00?#"))), min_size=1, max_size=8
    ),
    st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)


def _template_based() -> st.SearchStrategy[tuple[str, ...]]:
    """A route's own template, each parameter replaced by a generated segment (and sometimes one static
    segment changed), so matches are frequent and near misses too."""

    def fill(route: Route) -> st.SearchStrategy[tuple[str, ...]]:
        parts = [st.just(seg) if not seg.startswith("{") else segment for seg in route.segments]
        return st.tuples(*parts)

    return st.sampled_from(ROUTES).flatmap(fill)


paths = st.one_of(_template_based(), st.lists(segment, min_size=0, max_size=5).map(tuple))


@EXAMPLES
@given(paths)
def test_the_route_matcher_agrees_with_the_model(segments: tuple[str, ...]) -> None:
    found = CATALOG.match(segments)
    expected = model(segments)
    if expected is None:
        assert found is None, segments
        return
    assert found is not None, segments
    routes, params = expected
    assert {(method, route.template) for method, route in found.routes.items()} == routes, segments
    assert all(route.method == method for method, route in found.routes.items())
    assert found.params == params, segments  # byte for byte, percent-encoding included


@EXAMPLES
@given(st.binary(min_size=1, max_size=12), st.sampled_from([r for r in ROUTES if "{" in r.template]))
def test_a_parameter_is_refused_exactly_when_its_decoded_value_could_climb_out(
    value: bytes, route: Route
) -> None:
    """Any bytes, fully percent-encoded, as the one parameter of a templated route."""
    raw = "".join(f"%{b:02x}" for b in value)
    segments = tuple(raw if s.startswith("{") else s for s in route.segments)
    climbs = (
        any(b < 0x20 or b in (0x5C, 0x7F) for b in value)
        or has_c1(value)
        or any(part in (b".", b"..") for part in value.split(b"/"))
    )
    found = CATALOG.match(segments)
    assert (found is None) == climbs, value
    if found is not None:
        assert list(found.params.values()) == [raw]
