"""Issue 17's defects that need no socket: look-alike origins, header bytes, Sec-Fetch-Site, hop-by-hop
Content-Type, and credential values echoed by the upstream."""

from __future__ import annotations

import pytest

from gateway.origins import OriginEntryError, OriginMatch, OriginPolicy, parse_origin

KELVIN = "\u212a"  # KELVIN SIGN: lower() and re.IGNORECASE take it for "k"
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: casefolds to "s"


@pytest.mark.parametrize(
    "origin",
    [
        f"https://{KELVIN}iosk.example.net",
        f"https://{LONG_S}hop.example.com",
        f"https://a.{LONG_S}hop.example.com",
        "https://shop.example.com\u00a0",
        "https://ｓhop.example.com",  # fullwidth s
        "https://shop.exampl\u0435.com",  # Cyrillic e
    ],
)
def test_non_ascii_look_alike_origins_never_match(origin):
    policy = OriginPolicy(["https://kiosk.example.net", "https://shop.example.com", "https://*.example.com"])
    assert parse_origin(origin) is None
    assert policy.match(origin) is OriginMatch.NONE


def test_ascii_origins_still_match_case_insensitively():
    policy = OriginPolicy(["https://kiosk.example.net", "https://*.example.com"])
    assert policy.match("https://Kiosk.Example.NET") is OriginMatch.EXACT
    assert policy.match("https://xn--bcher-kva.example.com") is OriginMatch.EXACT


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        (f"https://{KELVIN}iosk.example.net", "https://kiosk.example.net"),
        ("https://*.bücher.example:8443", "https://*.xn--bcher-kva.example:8443"),
    ],
)
def test_non_ascii_entries_are_load_errors_that_give_the_punycode(entry, hint):
    with pytest.raises(OriginEntryError, match="punycode") as caught:
        OriginPolicy([entry])
    assert hint in str(caught.value)
