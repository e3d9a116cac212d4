"""Issue 17's defects that need no socket: look-alike origins, header bytes, Sec-Fetch-Site, hop-by-hop
Content-Type, and credential values echoed by the upstream."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.compiled import CompiledPolicy, compile_policy
from gateway.decide import Admit, Decision, Refuse, decide
from gateway.errors import Refused
from gateway.headers import COPIED_REQUEST_HEADERS, request_headers
from gateway.models import UpstreamResponse
from gateway.modes import MODES
from gateway.modes.echo import SECRET_HEADERS, echoed_secret
from gateway.origins import OriginEntryError, OriginMatch, OriginPolicy, parse_origin
from tests.conftest import ORIGIN, base_policy, make_policy

KELVIN = "\u212a"  # KELVIN SIGN: lower() and re.IGNORECASE take it for "k"
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: casefolds to "s"


@pytest.mark.parametrize(
    "origin",
    [
        f"https://{KELVIN}iosk.example.net",
        f"https://{LONG_S}hop.example.com",
        f"https://a.{LONG_S}hop.example.com",
        "https://shop.example.com\u00a0",
        "https://\uff53hop.example.com",  # fullwidth s
        "https://shop.exampl\u0435.com",  # Cyrillic e
    ],
)
def test_non_ascii_look_alike_origins_never_match(origin: str) -> None:
    policy = OriginPolicy(["https://kiosk.example.net", "https://shop.example.com", "https://*.example.com"])
    assert parse_origin(origin) is None
    assert policy.match(origin) is OriginMatch.NONE


def test_ascii_origins_still_match_case_insensitively() -> None:
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
def test_non_ascii_entries_are_load_errors_that_give_the_punycode(entry: str, hint: str) -> None:
    with pytest.raises(OriginEntryError, match="punycode") as caught:
        OriginPolicy([entry])
    assert hint in str(caught.value)


# --- decide: header bytes and Sec-Fetch-Site (tests/unit/test_decide.py's policy)


POLICY = compile_policy(make_policy(base_policy("http://upstream.test")))
NATIVE = compile_policy(make_policy(base_policy("http://upstream.test", allow_missing_origin=True)))
POST = ("POST", "/client/v1/validations")


def _decide(
    *headers: tuple[str, str],
    policy: CompiledPolicy = POLICY,
    method: str = "POST",
    target: str = "/client/v1/validations",
) -> Decision:
    return decide(policy, method, target, CIMultiDict(headers))


@pytest.mark.parametrize("name", COPIED_REQUEST_HEADERS)
@pytest.mark.parametrize(
    "value",
    [
        "Caf\udce9-SDK",  # the byte \xe9 (Latin-1) as aiohttp decodes it: not UTF-8
        "a\x01b",
        "a\x7fb",
    ],
)
def test_header_bytes_that_cannot_go_upstream_are_the_browsers_400(name: str, value: str) -> None:
    decision = _decide(("Origin", ORIGIN), ("Content-Type", "application/json"), (name, value))
    assert isinstance(decision, Refuse)
    assert (decision.error.status, decision.error.key.value) == (400, "invalid_payload")
    assert name in decision.error.details and value not in decision.error.details
    assert decision.cors  # the allowed page can read why


@pytest.mark.parametrize("value", ["Café-SDK", "a\tb", "plain"])
def test_utf8_and_htab_in_forwarded_headers_pass(value: str) -> None:
    decision = _decide(("Origin", ORIGIN), ("X-Voucherify-Channel", value), ("User-Agent", value))
    assert isinstance(decision, Admit)


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site", "anything-else"])
def test_a_browsers_cross_site_request_without_origin_is_refused_even_with_allow_missing_origin(
    site: str,
) -> None:
    decision = _decide(
        ("Sec-Fetch-Site", site), policy=NATIVE, method="GET", target="/client/v1/promotions/tiers"
    )
    assert isinstance(decision, Refuse)
    assert decision.error.key.value == "origin_not_allowed"
    assert "Sec-Fetch-Site" in decision.error.details


@pytest.mark.parametrize("headers", [(), (("Sec-Fetch-Site", "same-origin"),), (("Sec-Fetch-Site", "none"),)])
def test_native_apps_and_same_origin_requests_without_origin_still_pass(
    headers: tuple[tuple[str, str], ...],
) -> None:
    decision = _decide(*headers, policy=NATIVE, method="GET", target="/client/v1/promotions/tiers")
    assert isinstance(decision, Admit)


def test_connection_cannot_strip_the_content_type_the_body_was_judged_by() -> None:
    incoming = CIMultiDict(
        [("Content-Type", "application/json"), ("Accept", "x/y"), ("Connection", "Content-Type, Accept")]
    )
    out = request_headers(incoming, (), ORIGIN, "gw-1", forward_origin=True)
    assert out["Content-Type"] == "application/json"
    assert "Accept" not in out  # other listed headers are still hop-by-hop


# --- credential values echoed by the upstream


def server_tree() -> dict[str, Any]:
    tree = base_policy("http://upstream.test", upstream_auth="server")
    tree["projects"]["shop"]["credentials"] = {"application_id": "app-id-1", "secret_key": "app-secret-1"}
    return tree


def test_every_secret_the_gateway_sends_is_searched_for() -> None:
    for tree in (base_policy("http://upstream.test"), server_tree()):
        project = compile_policy(make_policy(tree)).projects["shop"]
        names = {name.lower() for name, _ in project.credential_headers}
        assert names - {"x-app-id", "x-client-application-id"} == names & SECRET_HEADERS != set()


SENT = (("X-Client-Application-Id", "app-id-7"), ("X-Client-Token", 'tok/en"9c1e-secret'))


@pytest.mark.parametrize(
    ("relayed", "body", "where"),
    [
        ((), b'{"headers": {"x-client-token": "tok/en\\"9c1e-secret"}}', "body"),  # JSON-escaped
        ((), b'tok/en"9c1e-secret', "body"),
        ((("ETag", 'W/"tok/en"9c1e-secret"'),), b"{}", "ETag header"),
    ],
)
def test_an_answer_carrying_a_secret_is_found(
    relayed: tuple[tuple[str, str], ...], body: bytes, where: str
) -> None:
    assert echoed_secret(SENT, relayed, body) == ("X-Client-Token", where)


def test_an_answer_without_a_secret_passes() -> None:
    assert echoed_secret(SENT, (("ETag", "x"),), b'{"application": "app-id-7"}') is None


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_modes_response_refuses_an_answer_holding_the_projects_secret(mode: str) -> None:
    """The check is where Voucherify's answer becomes the browser's: each mode's `response`, a new one too."""
    tree = server_tree() if mode == "server" else base_policy("http://upstream.test")
    policy = compile_policy(make_policy(tree))
    project = policy.projects["shop"]
    assert project.mode is MODES[mode]
    decision = decide(policy, "POST", "/client/v1/validations", CIMultiDict([("Origin", ORIGIN)]))
    assert isinstance(decision, Admit)
    secret = dict(project.credential_headers)["X-App-Token" if mode == "server" else "X-Client-Token"]
    clean = UpstreamResponse(200, [("Content-Type", "application/json")], b'{"valid": true}', 0.01)
    assert project.mode.response(decision.target, clean).body == clean.body
    for echoed in (
        UpstreamResponse(200, [], b'{"echo": "%s"}' % secret.encode(), 0.01),
        UpstreamResponse(404, [("ETag", f'"{secret}"')], b"{}", 0.01),
        UpstreamResponse(401, [], secret.encode(), 0.01),  # before server mode's own 401 handling
    ):
        with pytest.raises(Refused) as refused:
            project.mode.response(decision.target, echoed)
        assert (refused.value.error.status, refused.value.error.key.value) == (502, "upstream_unavailable")
        assert secret not in refused.value.error.details
