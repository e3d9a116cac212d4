"""The checks of POLICY.md, in its order, without sockets: request facts in, a decision out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.compiled import CompiledPolicy, compile_policy
from gateway.decide import Admit, Decision, Preflight, Refuse, check_body, decide, split_target
from gateway.errors import Refused
from tests.conftest import ORIGIN, base_policy, make_policy

JSON_TYPE = ("Content-Type", "application/json")


def compiled(**project: Any) -> CompiledPolicy:
    tree = base_policy("http://upstream.test", **project)
    tree["listen"] = {"max_body_bytes": 1000}
    return compile_policy(make_policy(tree))


POLICY = compiled()
OPEN = compiled(
    danger_zone=dict.fromkeys(
        ["redeem", "publish", "list_vouchers", "create_customers", "create_loyalty_referral_events"], True
    )
)


def run(
    method: str, target: str, *headers: tuple[str, str], policy: CompiledPolicy = POLICY, origin: bool = True
) -> Decision:
    all_headers = CIMultiDict(headers)
    if origin and "Origin" not in all_headers:
        all_headers["Origin"] = ORIGIN
    return decide(policy, method, target, all_headers)


def as_refusal(decision: Decision) -> Refuse:
    assert isinstance(decision, Refuse), decision
    return decision


def refused(decision: Decision) -> str:
    return as_refusal(decision).error.key.value


def cors(decision: Decision) -> tuple[tuple[str, str], ...]:
    """The CORS headers a refusal or an admission answers with (a preflight has its own)."""
    assert not isinstance(decision, Preflight), decision
    return decision.cors


def test_admitted_request_carries_its_target() -> None:
    decision = run(
        "PUT", "/shop/client/v1/customers/c%201%2Fx/consents?a=1", JSON_TYPE, ("Content-Length", "2")
    )
    assert isinstance(decision, Admit)
    target = decision.target
    assert (target.project.name, target.operation) == ("shop", "update_consents")
    assert target.params == {"customer_id": "c%201%2Fx"}
    assert target.operation_path == "/customers/c%201%2Fx/consents"
    assert target.query == "a=1"
    assert decision.origin == ORIGIN


@pytest.mark.parametrize(
    "target",
    [
        "/client/v1/validate",
        "/shop/client/v1/validate",
        "//client/v1/validate",
        "/shop//client///v1//validate",
    ],
)
def test_default_project_prefix_and_merged_slashes(target: str) -> None:
    decision = run("GET", target)
    assert isinstance(decision, Admit)
    assert decision.target.operation_path == "/validate"


@pytest.mark.parametrize(
    "target",
    [
        "/other/client/v1/validate",  # unknown project
        "/client/v2/validate",
        "/v1/vouchers",
        "/client/v1",
        "/client/v1/",
        "/client/v1/validate/",
        "/client/v1/Validate",
        "/client/v1/%2e%2e/v1/vouchers",
        "/client/v1/promotions/%2e%2e/validate",
        "/client/v1/../../v1/vouchers",
        "/client/v1/customers/%2e%2e/consents",
        "/client/v1/customers/a%2f..%2f..%2fx/consents",
        "*",
        "",
    ],
)
def test_not_found(target: str) -> None:
    assert refused(run("GET", target)) == "not_found"


def test_no_default_project_means_no_bare_prefix() -> None:
    tree = base_policy("http://upstream.test")
    del tree["default_project"]
    policy = compile_policy(make_policy(tree))
    assert refused(run("GET", "/client/v1/validate", policy=policy)) == "not_found"
    assert isinstance(run("GET", "/shop/client/v1/validate", policy=policy), Admit)


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("POST", "/client/v1/validate", ("GET",)),
        ("HEAD", "/client/v1/validate", ("GET",)),
        ("get", "/client/v1/validate", ("GET",)),
        ("GET", "/client/v1/redeem", ("POST",)),
        ("PUT", "/client/v1/customers", ("POST",)),
        ("POST", "/client/v1/customers/c/consents", ("PUT",)),
        ("DELETE", "/client/v1/vouchers", ("GET",)),
    ],
)
def test_method_not_allowed_lists_the_paths_methods(method: str, target: str, allow: tuple[str, ...]) -> None:
    decision = as_refusal(run(method, target))
    assert refused(decision) == "method_not_allowed"
    assert decision.error.allow == allow


# --- the order: 404, 405, secret_key_exposed, origin_not_allowed, danger_zone_disabled, 413/415/400

BAD_ORIGIN = ("Origin", "https://evil.example.net")
SECRET = ("X-App-Token", "sk_live_123")
TOO_BIG = ("Content-Length", "5000")
TEXT = ("Content-Type", "text/plain")


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        ("GET", "/client/v1/nope", [SECRET, BAD_ORIGIN], "not_found"),
        ("POST", "/client/v1/validate", [SECRET, BAD_ORIGIN], "method_not_allowed"),
        ("POST", "/client/v1/redeem", [SECRET, BAD_ORIGIN, TOO_BIG], "secret_key_exposed"),
        ("POST", "/client/v1/redeem", [BAD_ORIGIN, TOO_BIG, TEXT], "origin_not_allowed"),
        ("POST", "/client/v1/redeem", [TOO_BIG, TEXT], "danger_zone_disabled"),
        ("POST", "/client/v1/validations", [TOO_BIG, TEXT], "payload_too_large"),
        ("POST", "/client/v1/validations", [("Content-Length", "10"), TEXT], "unsupported_media_type"),
        ("POST", "/client/v1/validations?a=%zz", [("Content-Length", "10"), TEXT], "unsupported_media_type"),
        ("GET", "/client/v1/validate?a=%zz", [("Content-Length", "10"), TEXT], "invalid_payload"),
        ("GET", "/client/v1/validate", [("Content-Length", "10"), JSON_TYPE], "invalid_payload"),
        ("GET", "/client/v1/validate?a=%zz", [], "invalid_payload"),
    ],
)
def test_checks_run_in_the_contracts_order(
    method: str, target: str, headers: list[tuple[str, str]], expected: str
) -> None:
    assert refused(run(method, target, *headers)) == expected


@pytest.mark.parametrize(
    "name", ["X-App-Token", "x-app-token", "X-APP-TOKEN", "X-Management-Token", "x-MANAGEMENT-token"]
)
def test_secret_headers_in_any_case(name: str) -> None:
    decision = as_refusal(run("GET", "/client/v1/validate", (name, "sk_live_123")))
    assert refused(decision) == "secret_key_exposed"
    assert "sk_live_123" not in decision.error.details + decision.error.message
    assert "Rotate" in decision.error.details


def test_origin_checks() -> None:
    assert refused(run("GET", "/client/v1/validate", origin=False)) == "origin_not_allowed"
    assert (
        refused(run("GET", "/client/v1/validate", ("Origin", ORIGIN), ("Origin", ORIGIN)))
        == "origin_not_allowed"
    )
    assert isinstance(
        run("GET", "/client/v1/validate", origin=False, policy=compiled(allow_missing_origin=True)), Admit
    )
    assert (
        refused(run("GET", "/client/v1/validate", ("Origin", "https://shop.example.com.evil.com")))
        == "origin_not_allowed"
    )


def test_cors_headers_by_kind_of_match() -> None:
    exact = run("GET", "/client/v1/validate")
    assert dict(cors(exact))["Access-Control-Allow-Origin"] == ORIGIN
    assert dict(cors(exact))["Access-Control-Allow-Credentials"] == "true"
    wildcard = run("GET", "/client/v1/validate", ("Origin", "https://a.b.example.org"))
    assert dict(cors(wildcard))["Access-Control-Allow-Origin"] == "https://a.b.example.org"
    assert dict(cors(wildcard))["Access-Control-Allow-Credentials"] == "true"
    star_policy = compiled(allowed_origins=[ORIGIN, "*"])
    star = run("GET", "/client/v1/validate", ("Origin", "https://anyone.test"), policy=star_policy)
    assert dict(cors(star))["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in dict(cors(star))
    refusal = run("GET", "/client/v1/validate", BAD_ORIGIN)
    assert cors(refusal) == ()


@pytest.mark.parametrize(
    ("target", "option"),
    [
        ("/client/v1/redeem", "redeem"),
        ("/client/v1/redemptions", "redeem"),
        ("/client/v1/promotions/tiers/t1/redemption", "redeem"),
        ("/client/v1/publish", "publish"),
        ("/client/v1/vouchers", "list_vouchers"),
        ("/client/v1/customers", "create_customers"),
    ],
)
def test_danger_zone_names_the_option(target: str, option: str) -> None:
    method = "GET" if target.endswith("vouchers") else "POST"
    decision = as_refusal(run(method, target))
    assert refused(decision) == "danger_zone_disabled"
    assert option in decision.error.details
    assert isinstance(run(method, target, policy=OPEN), Admit)
    assert decision.cors, "a refusal for an allowed origin still carries CORS so the browser can read it"


def test_preflight() -> None:
    decision = run("OPTIONS", "/client/v1/customers/c/consents", ("Access-Control-Request-Method", "PUT"))
    assert isinstance(decision, Preflight)
    headers = dict(decision.headers)
    assert headers["Access-Control-Allow-Methods"] == "PUT"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    for name in [
        "Content-Type",
        "X-Client-Application-Id",
        "X-Client-Token",
        "X-Voucherify-Channel",
        "X-Voucherify-Double-Opt-In",
    ]:
        assert name in headers["Access-Control-Allow-Headers"]
    assert int(headers["Access-Control-Max-Age"]) > 0
    # the danger zone does not apply to a preflight; the origin does
    assert isinstance(run("OPTIONS", "/client/v1/redeem"), Preflight)
    assert refused(run("OPTIONS", "/client/v1/redeem", BAD_ORIGIN)) == "origin_not_allowed"
    assert refused(run("OPTIONS", "/client/v1/nope")) == "not_found"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Content-Length", "1001"), JSON_TYPE], "payload_too_large"),
        ([("Content-Length", "1000"), JSON_TYPE], None),
        ([("Content-Length", "10"), ("Content-Length", "11"), JSON_TYPE], "invalid_payload"),
        ([("Content-Length", "-1"), JSON_TYPE], "invalid_payload"),
        ([("Content-Length", "²"), JSON_TYPE], "invalid_payload"),  # str.isdigit says yes, int() says no
        (
            [("Content-Length", "\u0661\u0660"), JSON_TYPE],
            "invalid_payload",
        ),  # Arabic-Indic digits: int() reads 10
        ([("Content-Length", "10"), ("Content-Type", "application/json; charset=utf-8")], None),
        ([("Content-Length", "10"), ("Content-Type", "Application/JSON")], None),
        ([("Content-Length", "10"), ("Content-Type", "application/jsonp")], "unsupported_media_type"),
        ([("Content-Length", "10"), ("Content-Type", "text/json")], "unsupported_media_type"),
        (
            [("Content-Length", "10"), ("Content-Type", "application/x-www-form-urlencoded")],
            "unsupported_media_type",
        ),
        ([("Content-Length", "10")], "unsupported_media_type"),
        ([("Transfer-Encoding", "chunked")], "unsupported_media_type"),
        ([("Transfer-Encoding", "chunked"), JSON_TYPE], None),
        ([("Content-Length", "0")], None),  # an empty body needs no Content-Type
        ([], None),
    ],
)
def test_body_headers(headers: list[tuple[str, str]], expected: str | None) -> None:
    decision = run("POST", "/client/v1/validations", *headers)
    if expected is None:
        assert isinstance(decision, Admit), decision
    else:
        assert refused(decision) == expected


@pytest.mark.parametrize(
    "query",
    [
        "",
        "code=SAVE10",
        "customer%5Bsource_id%5D=c%201",
        "item[0][price]=100&x=a/b?c",
        "a=%C3%A9",
        "a=;:@,$!*'()",
    ],
)
def test_valid_query_strings(query: str) -> None:
    assert isinstance(run("GET", f"/client/v1/validate?{query}"), Admit)


@pytest.mark.parametrize(
    "query", ["a=%", "a=%4", "a=%zz", "a=b c", 'a="', "a=<b>", "a=\\", "a=#", "a=é", "a=\x00"]
)
def test_invalid_query_strings(query: str) -> None:
    assert refused(run("GET", f"/client/v1/validate?{query}")) == "invalid_payload"


# --- the checks that need the body


def admitted(target: str, policy: CompiledPolicy = POLICY) -> Admit:
    decision = run("POST", target, JSON_TYPE, ("Content-Length", "1"), policy=policy)
    assert isinstance(decision, Admit)
    return decision


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b"42",
        b"null",
        b"\xff\xfe{}",
        b'{"a": "\xe9"}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1} {"b": 2}',
        b'{"a": 1,}',
    ],
)
def test_bodies_that_are_not_a_json_object(body: bytes) -> None:
    refusal = body_refusal(admitted("/client/v1/validations"), body)
    assert refusal is not None
    assert refusal.error.key.value == "invalid_payload"


def body_refusal(admit: Admit, body: bytes) -> Refuse | None:
    """What check_body refuses, as the handler answers it; None when it passes."""
    try:
        check_body(admit, body)
    except Refused as refused:
        return admit.refuse(refused.error)
    return None


@pytest.mark.parametrize("body", [b"{}", b'{"redeemables": [{"object": "voucher", "id": "SAVE10"}]}', b""])
def test_bodies_accepted(body: bytes) -> None:
    assert body_refusal(admitted("/client/v1/validations"), body) is None


def test_the_body_is_parsed_once_and_handed_on() -> None:
    admit = admitted("/client/v1/validations")
    assert check_body(admit, b'{"redeemables": [{"id": "A"}], "n": 1.5}') == {
        "redeemables": [{"id": "A"}],
        "n": 1.5,
    }
    assert check_body(admit, b"") is None


@pytest.mark.parametrize(
    ("body", "needs_option"),
    [
        ({"event": "viewed"}, False),
        ({"event": "x", "loyalty": None, "referral": None}, False),
        ({"event": "x", "loyalty": {"code": "L"}}, True),
        ({"event": "x", "referral": {"code": "R"}}, True),
        ({"event": "x", "loyalty": {}}, True),
        ({"event": "x", "loyalty": False}, True),
        ({"event": "x", "referral": ""}, True),
        ({"event": "x", "metadata": {"loyalty": {"code": "L"}}}, False),
    ],
)
def test_track_event_body_danger(body: dict[str, Any], needs_option: bool) -> None:
    raw = json.dumps(body).encode()
    refusal = body_refusal(admitted("/client/v1/events"), raw)
    if needs_option:
        assert refusal is not None and refusal.error.key.value == "danger_zone_disabled"
        assert "create_loyalty_referral_events" in refusal.error.details
    else:
        assert refusal is None
    assert body_refusal(admitted("/client/v1/events", OPEN), raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"\\u006coyalty": {"code": "L"}}',
        b'{"referra\\u006c": {"code": "R"}}',
        b'{"loyalty": null, "loyalty": {"code": "L"}}',
        b'{"loyalty": {"code": "L"}, "loyalty": null}',
        b'{"event": "x", "event": "y"}',
    ],
)
def test_track_event_bypass_attempts(raw: bytes) -> None:
    refusal = body_refusal(admitted("/client/v1/events"), raw)
    assert refusal is not None, raw


def test_early_refusals_carry_cors_only_for_an_allowed_origin() -> None:
    for target, method, headers in [
        ("/client/v1/nope", "GET", ()),
        ("/client/v1/validate", "POST", ()),
        ("/client/v1/validate", "GET", (SECRET,)),
    ]:
        allowed = run(method, target, *headers)
        assert dict(cors(allowed))["Access-Control-Allow-Origin"] == ORIGIN, allowed
        assert cors(run(method, target, *headers, BAD_ORIGIN)) == ()
        assert cors(run(method, target, *headers, origin=False)) == ()


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/client/v1/events", b'{"event": "x", "__proto__": {"loyalty": {"code": "L"}}}'),
        ("/client/v1/events", b'{"event": "x", "\\u005f_proto__": {"referral": {"code": "R"}}}'),
        ("/client/v1/validations", b'{"customer": {"metadata": {"__proto__": {"admin": true}}}}'),
        ("/client/v1/validations", b'{"redeemables": [{"__proto__": null}]}'),
    ],
)
def test_bodies_with_a_proto_key_are_refused(target: str, body: bytes) -> None:
    # JSON.parse keeps "__proto__" as an own key, but any Object.assign or `obj[key] = value` copy on
    # Voucherify's side turns it into the prototype: `body.loyalty` would then be there, unseen by our check.
    refusal = body_refusal(admitted(target), body)
    assert refusal is not None and refusal.error.key.value == "invalid_payload"


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"n": 1e400}}',
        b'{"metadata": {"n": -1E+999}}',
        b'{"n": 1' + b"0" * 400 + b"}",
        b'{"n": 2' + b"0" * 308 + b"}",  # 309 digits, past a double's largest (1.8e308)
        b'{"n": 1' + b"0" * 400 + b'.5, "s": "no exponent anywhere"}',
    ],
)
def test_numbers_beyond_a_double_are_refused(body: bytes) -> None:
    # Voucherify's JSON.parse reads them as Infinity, which no JSON text can carry on.
    refusal = body_refusal(admitted("/client/v1/validations"), body)
    assert refusal is not None and refusal.error.key.value == "invalid_payload"


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 1e308}',
        b'{"n": -1' + b"0" * 300 + b"}",
        b'{"n": 1e-400}',
        b'{"n": 1' + b"0" * 307 + b"}",  # 308 digits
        b'{"s": "' + b"7" * 400 + b'", "n": 12}',  # a long run of digits in a string: its integers checked
    ],
)
def test_large_numbers_within_a_double_are_accepted(body: bytes) -> None:
    assert body_refusal(admitted("/client/v1/validations"), body) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/client/v1/validate?code=A", ("/client/v1/validate", "code=A")),
        ("http://gateway.test/client/v1/validate?code=A", ("/client/v1/validate", "code=A")),
        ("HTTPS://evil.example:8443/client/v1/validate", ("/client/v1/validate", "")),
        (
            "http://user@evil.example/client/v1/vouchers",
            ("/client/v1/vouchers", ""),
        ),  # userinfo: authority too
        ("http://gateway.test", ("/", "")),
        ("http://gateway.test?code=A", ("", "code=A")),  # no path: matches no route
        ("*", ("*", "")),
        ("client/v1/validate", ("client/v1/validate", "")),  # not a URL, not a path: no route
    ],
)
def test_a_target_counts_by_its_path_and_query_whatever_its_form(
    target: str, expected: tuple[str, str]
) -> None:
    assert split_target(target) == expected


def test_the_absolute_form_is_decided_like_the_origin_form() -> None:
    policy = POLICY
    headers = CIMultiDict({"Origin": ORIGIN})
    for target in ("/client/v1/validate?code=A", "http://anything.example/client/v1/validate?code=A"):
        decision = decide(policy, "GET", target, headers)
        assert isinstance(decision, Admit), target
        assert (decision.target.operation_path, decision.target.query) == ("/validate", "code=A")
    danger = decide(policy, "GET", "http://x.example/client/v1/vouchers", headers)
    assert isinstance(danger, Refuse) and danger.error.key.value == "danger_zone_disabled"
