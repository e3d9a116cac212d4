"""Attacks on the gateway's policy, each sent exactly as written over a plain socket.

Every attack asserts that the upstream saw nothing (or, where the request is legitimately forwarded, saw
exactly the operation matched and nothing of the trick).
"""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import ORIGIN, GatewayFactory, assert_gateway_error, base_policy
from tests.support.rawhttp import RawResponse, raw_request, request_bytes, send
from tests.support.upstream_double import UpstreamDouble

ORIGIN_H = ("Origin", ORIGIN)
JSON = ("Content-Type", "application/json")


def is_gateway_404(resp: RawResponse) -> bool:
    return resp.status == 404 and resp.json()["key"] == "not_found"


# --- origins: the policy is https://shop.example.com and https://*.example.org

ORIGIN_ATTACKS = [
    "https://shop.example.com.evil.com",
    "https://shop.example.comevil.com",
    "https://evilshop.example.com",
    "https://evil-shop.example.com",
    "https://evilexample.org",
    "https://example.org.evil.com",
    "https://a.example.org.evil.com",
    "https://example.org",  # the wildcard entry is not the bare domain
    "http://shop.example.com",
    "http://a.example.org",
    "https://shop.example.com:8443",
    "https://shop.example.com:444",
    "https://a.example.org:8443",
    "null",
    "https://shop.example.com/",
    "https://shop.example.com/checkout",
    "https://shop.example.com?x=1",
    "https://shop.example.com#x",
    "https://user@shop.example.com",
    "https://shop.example.com@evil.com",
    "https://evil.com#@shop.example.com",
    "https://shop.example.com, https://evil.com",
    "https://evil.com https://shop.example.com",
    "https://shop.example.com%2eevil.com",
    "https://shop.example.com.",
    "https://shop%2eexample%2ecom",
    "shop.example.com",
    "//shop.example.com",
    "*",
    "https://*.example.org",
    "",
]


@pytest.mark.parametrize("origin", ORIGIN_ATTACKS)
@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
async def test_origin_tricks(
    gateway: GatewayFactory, upstream: UpstreamDouble, origin: str, method: str
) -> None:
    client = await gateway()
    body = b"{}" if method == "POST" else b""
    resp = await send(client.port, method, "/client/v1/validations", [("Origin", origin), JSON], body)
    assert_gateway_error(resp.status, resp.json(), resp.headers, 403, "origin_not_allowed")
    assert not [name for name in resp.headers if name.lower().startswith("access-control-")]
    assert upstream.received == []


@pytest.mark.parametrize(
    "origins", [[ORIGIN, ORIGIN], [ORIGIN, "https://evil.com"], ["https://evil.com", ORIGIN]]
)
async def test_two_origin_headers(
    gateway: GatewayFactory, upstream: UpstreamDouble, origins: list[str]
) -> None:
    client = await gateway()
    resp = await send(
        client.port, "POST", "/client/v1/validations", [("Origin", o) for o in origins] + [JSON], b"{}"
    )
    assert_gateway_error(resp.status, resp.json(), resp.headers, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert upstream.received == []


async def test_a_star_entry_still_refuses_what_is_not_an_origin(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(allowed_origins=["*"])
    for origin in ["null", "https://shop.example.com/x", "https://a@b.com", "https://a.com, https://b.com"]:
        resp = await send(client.port, "POST", "/client/v1/validations", [("Origin", origin), JSON], b"{}")
        assert resp.status == 403, origin
    assert upstream.received == []


# --- client IP


async def test_spoofed_xff_from_an_untrusted_peer_buys_no_budget(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "2 per minute"}
    client = await gateway(tree)
    statuses = []
    for i in range(4):
        headers = [
            ORIGIN_H,
            ("X-Forwarded-For", f"198.51.100.{i}"),
            ("X-Real-IP", f"198.51.100.{i}"),
            ("Forwarded", f"for=198.51.100.{i}"),
        ]
        statuses.append((await send(client.port, "GET", "/client/v1/validate", headers)).status)
    assert statuses == [200, 200, 429, 429]
    assert len(upstream.received) == 2
    assert not any(
        "Forwarded" in seen.headers or "X-Forwarded-For" in seen.headers for seen in upstream.received
    )


# --- paths: reaching /v1/..., other client paths, or an operation by another spelling

PATH_ATTACKS = [
    ("GET", "/v1/vouchers"),
    ("GET", "//v1/vouchers"),
    ("GET", "/client/v1/../../v1/vouchers"),
    ("GET", "/client/v1/../v1/vouchers"),
    ("GET", "/client/v1/%2e%2e/%2e%2e/v1/vouchers"),
    ("GET", "/client/v1/%2E%2E/%2E%2E/v1/vouchers"),
    ("GET", "/client/v1/.%2e/.%2e/v1/vouchers"),
    ("GET", "/client/v1/validate/../../../v1/vouchers"),
    ("GET", "/client/v1/validate/..%2f..%2f..%2fv1%2fvouchers"),
    ("GET", "/client/v1/validate/..%2F..%2F..%2Fv1%2Fvouchers"),
    ("GET", "/client/v1%2f..%2f..%2fv1%2fvouchers"),
    ("GET", "/client%2fv1%2fvalidate"),
    ("GET", "/client/v1%2Fvalidate"),
    ("GET", "/client/v1/promotions%2fvalidation"),
    ("GET", "/client/v1/promotions/tiers/..%2fvalidation"),
    ("GET", "/client/v1/promotions/tiers/../validation"),
    ("GET", "/client/v1/./validate"),
    ("GET", "/client/v1/%2e/validate"),
    ("GET", "/client/v1/validate/."),
    ("GET", "/client/v1/validate/"),
    ("GET", "/client/v1/validate//"),
    ("GET", "/client/v1/validate%2f"),
    ("GET", "/client/v1/validate;x=1"),
    ("GET", "/client/v1/validate%00"),
    ("GET", "/client/v1/validate%20"),
    ("GET", "/client/v1/validate%3fcode=x"),
    ("GET", "/client/v1/validate.json"),
    ("GET", "/client/v1\\validate"),
    ("GET", "/client/v1/%5cvalidate"),
    ("GET", "/Client/V1/validate"),
    ("GET", "/CLIENT/v1/validate"),
    ("GET", "/client/v1/Validate"),
    ("GET", "/client/v1/VALIDATE"),
    ("GET", "/client/v1/%76alidate"),
    ("GET", "/client/v1/%56alidate"),
    ("GET", "/Shop/client/v1/validate"),
    ("GET", "/shop/../client/v1/../../v1/vouchers"),
    ("GET", "/client/v1"),
    ("GET", "/client/v1/"),
    ("GET", "/client/v1/vouchers/SAVE10"),
    ("GET", "/client/v1/customers/c1"),
    ("DELETE", "/client/v1/customers/c1"),
    ("GET", "/client/v1/campaigns"),
    ("GET", "/client/v1/loyalties/members/m1"),
    ("GET", "/client/v1/redemptions/r1"),
    ("POST", "/client/v1/vouchers/SAVE10/enable"),
    ("GET", "/client/v2/validate"),
    ("GET", "/client/validate"),
    ("GET", "/validate"),
    ("GET", "/"),
    ("GET", "http://gateway.test/v1/vouchers"),
    ("GET", "http://gateway.test/client/v1/../../v1/vouchers"),
    ("GET", "https://api.voucherify.io/v1/vouchers"),  # absolute form: judged by its path, which is no route
]


@pytest.mark.parametrize(("method", "target"), PATH_ATTACKS)
async def test_path_tricks_answer_404_and_reach_nothing(
    gateway: GatewayFactory, upstream: UpstreamDouble, method: str, target: str
) -> None:
    client = await gateway()
    resp = await send(client.port, method, target, [ORIGIN_H])
    assert_gateway_error(resp.status, resp.json(), resp.headers, 404, "not_found")
    assert upstream.received == []


@pytest.mark.parametrize(
    "target",
    ["//client/v1/validate", "/client//v1/validate", "/client/v1//validate", "///shop//client/v1/validate"],
)
async def test_repeated_slashes_reach_only_the_operation(
    gateway: GatewayFactory, upstream: UpstreamDouble, target: str
) -> None:
    client = await gateway()
    resp = await send(client.port, "GET", target + "?code=A", [ORIGIN_H])
    assert resp.status == 200
    assert [(seen.method, seen.raw_path) for seen in upstream.received] == [
        ("GET", "/client/v1/validate?code=A")
    ]


@pytest.mark.parametrize(
    "header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"]
)
async def test_method_override_is_neither_obeyed_nor_forwarded(
    gateway: GatewayFactory, upstream: UpstreamDouble, header: str
) -> None:
    client = await gateway()
    # a GET path asked to be a POST, a POST-only path asked to be a GET: the real method decides
    for method, target, override in [
        ("GET", "/client/v1/redeem", "POST"),
        ("POST", "/client/v1/vouchers", "GET"),
        ("POST", "/client/v1/customers/c1/consents", "PUT"),
        ("GET", "/client/v1/customers", "POST"),
    ]:
        resp = await send(client.port, method, target, [ORIGIN_H, (header, override)])
        assert_gateway_error(resp.status, resp.json(), resp.headers, 405, "method_not_allowed")
    assert upstream.received == []
    resp = await send(
        client.port, "POST", "/client/v1/validations", [ORIGIN_H, JSON, (header, "DELETE")], b"{}"
    )
    assert resp.status == 200
    [seen] = upstream.received
    assert seen.method == "POST"
    assert not [name for name in seen.headers if "method" in name.lower()]


# --- path parameters

PARAM_ATTACKS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%2e",
    "..%2f..%2fv1%2fvouchers",
    "..%2F..%2Fv1%2Fvouchers",
    "a%2f..%2f..%2f..%2fv1%2fvouchers",
    "a%2F%2E%2E%2Fb",
    "%2e%2e%2f",
    "%2f..",
    "a%2f.",
    "%5c",
    "..%5c..%5cv1",
    "a%5Cb",
    "a\\b",
    "a%00b",
    "%00",
    "a%0ab",
    "a%0d%0aX-Injected:%20yes",
    "a%09b",
    "a%1bb",
    "a%7fb",
    "a%C2%85b",  # U+0085 (NEL), a C1 control character, in UTF-8
    "a%c2%9b%5b31m",  # U+009B (CSI): a terminal escape in whatever prints the id
    "a%",
    "a%2",
    "a%g0",
]


@pytest.mark.parametrize("param", PARAM_ATTACKS)
@pytest.mark.parametrize(
    ("method", "template", "danger"),
    [
        ("PUT", "/client/v1/customers/{}/consents", {}),
        ("POST", "/client/v1/promotions/tiers/{}/redemption", {"redeem": True}),
    ],
)
async def test_parameter_tricks(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    param: str,
    method: str,
    template: str,
    danger: dict[str, bool],
) -> None:
    client = await gateway(danger_zone=danger)
    resp = await send(client.port, method, template.format(param), [ORIGIN_H, JSON], b"{}")
    assert_gateway_error(resp.status, resp.json(), resp.headers, 404, "not_found")
    assert upstream.received == []


@pytest.mark.parametrize("param", ["a%09b", "a\tb", "a\x00b", "a b"])
async def test_raw_control_characters_never_reach_the_upstream(
    gateway: GatewayFactory, upstream: UpstreamDouble, param: str
) -> None:
    client = await gateway()
    resp = await send(client.port, "PUT", f"/client/v1/customers/{param}/consents", [ORIGIN_H, JSON], b"{}")
    assert resp.status in (400, 404)  # the HTTP parser's 400, or the gateway's 404
    assert upstream.received == []


@pytest.mark.parametrize("param", ["c%201%2Fx", "%252e%252e", "a.b", "...", "%C5%BC%C3%B3%C5%82w", "x@y.z"])
async def test_odd_but_safe_parameters_are_forwarded_byte_for_byte(
    gateway: GatewayFactory, upstream: UpstreamDouble, param: str
) -> None:
    client = await gateway()
    resp = await send(client.port, "PUT", f"/client/v1/customers/{param}/consents", [ORIGIN_H, JSON], b"{}")
    assert resp.status == 200
    assert [seen.raw_path for seen in upstream.received] == [f"/client/v1/customers/{param}/consents"]


# --- danger-zone bypass attempts (every option off)

DANGER_BYPASSES = [
    ("POST", "/client/v1/redeem", [], 403),
    ("POST", "/client/v1//redeem", [], 403),
    ("POST", "//shop//client//v1//redeem", [], 403),
    ("POST", "/client/v1/Redeem", [], 404),
    ("POST", "/client/v1/redeem/", [], 404),
    ("POST", "/client/v1/%72edeem", [], 404),
    ("POST", "/client/v1/validations/../redeem", [], 404),
    ("POST", "/client/v1/validations/..%2fredeem", [], 404),
    ("POST", "/client/v1/validations%2f..%2fredeem", [], 404),
    ("POST", "/client/v1/promotions/tiers/x/redemption", [], 403),
    ("POST", "/client/v1/promotions/tiers/..%2f..%2fredeem%3f/redemption", [], 404),
    ("POST", "/client/v1/redeem", [("X-HTTP-Method-Override", "GET")], 403),
    (
        "POST",
        "/client/v1/validations",
        [("X-HTTP-Method-Override", "POST"), ("X-Original-URL", "/client/v1/redeem")],
        200,
    ),
    ("GET", "/client/v1/vouchers", [("X-HTTP-Method-Override", "POST")], 403),
    ("POST", "/client/v1/vouchers", [("X-HTTP-Method-Override", "GET")], 405),
    ("GET", "/client/v1/validate", [("X-Rewrite-URL", "/client/v1/vouchers")], 200),
    ("POST", "/client/v1/publish", [], 403),
    ("POST", "/client/v1/customers", [], 403),
    ("POST", "/client/v1/customers/", [], 404),
    ("POST", "/client/v1/redemptions", [], 403),
]


@pytest.mark.parametrize(("method", "target", "headers", "status"), DANGER_BYPASSES)
async def test_danger_zone_path_and_method_bypasses(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    status: int,
) -> None:
    client = await gateway()
    resp = await send(
        client.port, method, target, [ORIGIN_H, JSON, *headers], b"{}" if method == "POST" else b""
    )
    assert resp.status == status
    if status == 200:  # the real operation went through, and only it: the trick's headers did not
        [seen] = upstream.received
        assert seen.path == target
        assert not [n for n in seen.headers if n.lower().startswith(("x-http", "x-original", "x-rewrite"))]
    else:
        assert (
            resp.json()["key"]
            == {403: "danger_zone_disabled", 404: "not_found", 405: "method_not_allowed"}[status]
        )
        assert upstream.received == []


DANGER, INVALID = (403, "danger_zone_disabled"), (400, "invalid_payload")
BODY_BYPASSES = [  # (body, the refusal it must get): escaped names are the names; doubled keys are refused
    (b'{"event": "x", "\\u006coyalty": {"code": "L"}}', DANGER),
    (b'{"event": "x", "\\u006C\\u006F\\u0079\\u0061\\u006C\\u0074\\u0079": {"code": "L"}}', DANGER),
    (b'{"event": "x", "referra\\u006c": {"code": "R"}}', DANGER),
    (b'{"event": "x", "loyalty": {"code": "L"}, "loyalty": null}', INVALID),
    (b'{"event": "x", "loyalty": null, "loyalty": {"code": "L"}}', INVALID),
    (b'{"event": "x", "referral": {"code": "R"}, "\\u0072eferral": null}', INVALID),
    (b'{"event": "x", "loyalty": {"code": "L"}}', DANGER),
    (b'{"event": "x", "loyalty": false}', DANGER),
    (b'{"event": "x", "loyalty": 0}', DANGER),
    (b'{"event": "x", "loyalty": ""}', DANGER),
    (b'{"event": "x", "loyalty": []}', DANGER),
    (b'\xef\xbb\xbf{"event": "x", "loyalty": {"code": "L"}}', INVALID),
    ('{"event": "x", "loyalty": {"code": "L"}}'.encode("utf-16"), INVALID),
    (b'{"event": "x", "loyalty": {"code": "L"}} {"x": 1}', INVALID),
    (b'[{"event": "x", "loyalty": {"code": "L"}}]', INVALID),
]


@pytest.mark.parametrize(("body", "refusal"), BODY_BYPASSES)
@pytest.mark.parametrize("target", ["/client/v1/events", "//client/v1/events", "/shop/client/v1/events"])
async def test_danger_zone_body_bypasses(
    gateway: GatewayFactory, upstream: UpstreamDouble, body: bytes, refusal: tuple[int, str], target: str
) -> None:
    client = await gateway()
    resp = await send(client.port, "POST", target, [ORIGIN_H, JSON], body)
    assert (resp.status, resp.json()["key"]) == refusal
    assert upstream.received == []


async def test_danger_zone_body_bypass_through_content_types(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    body = b'{"event": "x", "loyalty": {"code": "L"}}'
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json-patch+json",
        "text/json",
    ]:
        resp = await send(
            client.port, "POST", "/client/v1/events", [ORIGIN_H, ("Content-Type", content_type)], body
        )
        assert resp.status == 415, content_type
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    resp = await send(
        client.port, "POST", "/client/v1/events", [ORIGIN_H, JSON, ("Transfer-Encoding", "chunked")], chunked
    )
    assert resp.status == 403
    assert upstream.received == []


# --- secrets sent by a browser

SECRET = "sk_live_7d1f9a0c3b2e4d5f6a7b8c9d"


@pytest.mark.parametrize(
    "name",
    [
        "X-App-Token",
        "x-app-token",
        "X-APP-TOKEN",
        "x-App-tOKEN",
        "X-Management-Token",
        "x-management-token",
        "X-MANAGEMENT-TOKEN",
    ],
)
@pytest.mark.parametrize("target", ["/client/v1/validate", "/client/v1/qualifications", "/client/v1/redeem"])
async def test_secret_headers_are_refused_and_never_echoed_or_logged(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    caplog: pytest.LogCaptureFixture,
    name: str,
    target: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await gateway(danger_zone={"redeem": True})
    method = "GET" if target.endswith("validate") else "POST"
    resp = await send(
        client.port,
        method,
        target + f"?code={SECRET[:3]}",
        [ORIGIN_H, JSON, (name, SECRET), ("X-App-Id", "app")],
        b"{}" if method == "POST" else b"",
    )
    body = resp.json()
    assert_gateway_error(resp.status, body, resp.headers, 400, "secret_key_exposed")
    assert "rotate" in body["details"].lower()
    canonical = "X-Management-Token" if "management" in name.lower() else "X-App-Token"
    assert canonical.lower() in body["details"].lower()
    assert SECRET not in resp.body.decode()
    assert SECRET not in json.dumps(list(resp.headers.items()))
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in json.dumps(getattr(record, "fields", {}), default=str)
        assert SECRET not in record.getMessage()
    assert upstream.received == []
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # the page can read why, and rotate the key


async def test_secrets_refused_even_when_empty_or_doubled(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    for headers in [
        [("X-App-Token", "")],
        [("X-App-Token", "a"), ("X-App-Token", "b")],
        [("X-Management-Token", SECRET)],
    ]:
        resp = await send(client.port, "GET", "/client/v1/validate", [ORIGIN_H, *headers])
        assert resp.json()["key"] == "secret_key_exposed"
    assert upstream.received == []


# --- HTTP framing


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "2"), ("Content-Length", "3")],
        [("Content-Length", "2"), ("Transfer-Encoding", "chunked")],
        [("Content-Length", "+2")],
        [("Transfer-Encoding", "gzip")],
    ],
)
async def test_ambiguous_framing_is_refused(
    gateway: GatewayFactory, upstream: UpstreamDouble, headers: list[tuple[str, str]]
) -> None:
    client = await gateway()
    resp = await raw_request(
        client.port, request_bytes("POST", "/client/v1/validations", [ORIGIN_H, JSON, *headers], b"{}")
    )
    assert 400 <= resp.status < 500
    assert upstream.received == []


async def test_a_pipelined_second_request_is_judged_on_its_own(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    first = request_bytes("POST", "/client/v1/validations", [ORIGIN_H, JSON, ("Content-Length", "2")], b"{}")
    second = request_bytes("GET", "/v1/vouchers", [ORIGIN_H, ("Connection", "close")])
    resp = await raw_request(client.port, first + second)
    assert resp.status == 200
    assert [seen.raw_path for seen in upstream.received] == ["/client/v1/validations"]


async def test_compressed_request_bodies_are_judged_decompressed(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    import gzip

    tree = base_policy(upstream.url)
    tree["listen"] = {"max_body_bytes": 10_000}
    client = await gateway(tree)
    headers = [ORIGIN_H, JSON, ("Content-Encoding", "gzip")]
    loyalty = gzip.compress(b'{"event": "x", "loyalty": {"code": "L"}}')
    resp = await send(client.port, "POST", "/client/v1/events", headers, loyalty)
    assert resp.status == 403
    bomb = gzip.compress(b'{"a": "' + b" " * 10_000_000 + b'"}')
    assert len(bomb) < 20_000
    resp = await send(client.port, "POST", "/client/v1/events", headers, bomb)
    assert resp.status == 413
    assert upstream.received == []
    plain = gzip.compress(b'{"event": "viewed"}')
    resp = await send(client.port, "POST", "/client/v1/events", headers, plain)
    assert resp.status == 200
    [seen] = upstream.received
    assert seen.body == b'{"event": "viewed"}'
    assert "Content-Encoding" not in seen.headers


async def test_danger_zone_body_bypass_through_a_proto_key(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    body = b'{"event": "x", "__proto__": {"loyalty": {"code": "L"}, "referral": {"code": "R"}}}'
    resp = await send(client.port, "POST", "/client/v1/events", [ORIGIN_H, JSON], body)
    assert_gateway_error(resp.status, resp.json(), resp.headers, 400, "invalid_payload")
    assert upstream.received == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-7",
        "application/json; charset=UTF-16",
        'application/json; charset="utf-7"',
        "application/json; charset=utf-8; charset=utf-7",
        "application/json; CHARSET = utf-7",
    ],
)
async def test_danger_zone_body_bypass_through_a_charset(
    gateway: GatewayFactory, upstream: UpstreamDouble, content_type: str
) -> None:
    # Read as UTF-8 the key is "+AGw-oyalty"; a body parser honouring charset=utf-7 (body-parser takes any
    # "utf-*") reads "loyalty". Only UTF-8 is JSON (RFC 8259), so another charset is refused.
    client = await gateway()
    body = b'{"event": "x", "+AGw-oyalty": {"code": "L"}}'
    resp = await send(
        client.port, "POST", "/client/v1/events", [ORIGIN_H, ("Content-Type", content_type)], body
    )
    assert_gateway_error(resp.status, resp.json(), resp.headers, 415, "unsupported_media_type")
    assert upstream.received == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=UTF-8", 'application/json; charset="utf-8"', "application/json;charset=utf8"],
)
async def test_utf8_charsets_are_accepted(
    gateway: GatewayFactory, upstream: UpstreamDouble, content_type: str
) -> None:
    client = await gateway()
    resp = await send(
        client.port,
        "POST",
        "/client/v1/events",
        [ORIGIN_H, ("Content-Type", content_type)],
        b'{"event": "x"}',
    )
    assert resp.status == 200
    assert [seen.headers["Content-Type"] for seen in upstream.received] == [content_type]
