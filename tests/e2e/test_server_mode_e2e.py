"""Server mode end to end: a real HTTP client, the gateway on a real port, the upstream double on another.

The browser speaks the client-side API exactly as in client mode; the double checks that Voucherify is called
on its server-side twin with the gateway's server keys, and the browser that nothing server-side comes back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.conftest import ORIGIN, GatewayFactory, base_policy, raw_url
from tests.support.rawhttp import send
from tests.support.upstream_double import Reply, UpstreamDouble
from tests.unit import test_server_mode as unit

APP_ID = "server-app-id-51d0"
APP_TOKEN = "server-secret-token-e84b"
SERVER = {
    "upstream_auth": "server",
    "credentials": {"application_id": APP_ID, "secret_key": APP_TOKEN},
    "danger_zone": {
        "redeem": True,
        "publish": True,
        "list_vouchers": True,
        "create_customers": True,
        "create_loyalty_referral_events": True,
    },
}
# What the official SDK sends from a browser: placeholder client keys, its channel, the page's Origin.
BROWSER = {
    "Origin": ORIGIN,
    "X-Client-Application-Id": "-",
    "X-Client-Token": "-",
    "X-Voucherify-Channel": "Browser-ClientSide-SDK-v2.9.0",
}
# What @voucherify/sdk's validate() sends (qs.stringify), with a code that can sit in Voucherify's path.
SDK_VALIDATE_QUERY = unit.SDK_VALIDATE_QUERY.replace("code=SAVE%2010%3Fx", "code=SAVE10")
SDK_VALIDATE_BODY = unit.SDK_VALIDATE_BODY
STACK = {"redeemables": [{"object": "voucher", "id": "SAVE10"}], "order": {"amount": 1000}}
CUSTOMER = {"customer": {"source_id": "track 1"}}

# browser method, path and query, body -> upstream method, path and query, JSON body (None: empty body)
CASES: list[tuple[str, str, str, Any, str, str, Any]] = [
    ("validate", "GET", f"/validate?{SDK_VALIDATE_QUERY}", None, "POST", "/v1/vouchers/SAVE10/validate",
     SDK_VALIDATE_BODY),
    ("validate", "GET", "/promotions/validation?amount=99&tracking_id=track%201&item[0][price]=99", None,
     "POST", "/v1/promotions/validation",
     {"order": {"amount": 99, "items": [{"price": 99}]}, "tracking_id": "track 1"}),
    ("validate_stackable", "POST", "/validations", STACK, "POST", "/v1/validations", STACK),
    ("redeem", "POST", "/redeem?code=SAVE10&tracking_id=track%201", {"order": {"amount": 10}},
     "POST", "/v1/vouchers/SAVE10/redemption?tracking_id=track%201", {"order": {"amount": 10}}),
    ("redeem_stackable", "POST", "/redemptions", STACK, "POST", "/v1/redemptions", STACK),
    ("redeem_promotion_tier", "POST", "/promotions/tiers/promo_tier%201/redemption", CUSTOMER,
     "POST", "/v1/promotions/tiers/promo_tier%201/redemption", CUSTOMER),
    ("publish", "POST", "/publish?join_once=true&campaign=Camp%201", {**CUSTOMER, "channel": "Voucherify.js"},
     "POST", "/v1/publications?join_once=true",
     {**CUSTOMER, "channel": "Voucherify.js", "campaign": {"name": "Camp 1"}}),
    ("qualifications", "POST", "/qualifications", {**CUSTOMER, "scenario": "ALL"},
     "POST", "/v1/qualifications", {**CUSTOMER, "scenario": "ALL"}),
    ("list_promotion_tiers", "GET", "/promotions/tiers?is_available=true&limit=10", None,
     "GET", "/v1/promotions/tiers?is_available=true&limit=10", None),
    ("track_event", "POST", "/events", {"event": "viewed", **CUSTOMER, "referral": {"code": "REF1"}},
     "POST", "/v1/events", {"event": "viewed", **CUSTOMER, "referral": {"code": "REF1"}}),
    ("list_vouchers", "GET", "/vouchers?campaign=Camp%201&created_at%5Bbefore%5D=2024-01-01", None,
     "GET", "/v1/vouchers?campaign=Camp%201&created_at%5Bbefore%5D=2024-01-01", None),
    ("create_customer", "POST", "/customers", {"source_id": "c1", "email": "a@b.c"},
     "POST", "/v1/customers", {"source_id": "c1", "email": "a@b.c"}),
    ("list_consents", "GET", "/consents", None, "GET", "/v1/consents", None),
    ("update_consents", "PUT", "/customers/c%201%2Fx/consents", {"unsubscribed": True},
     "PUT", "/v1/customers/c%201%2Fx/consents", {"unsubscribed": True}),
]  # fmt: skip


def assert_server_headers(headers: Any) -> None:
    assert headers["X-App-Id"] == APP_ID
    assert headers["X-App-Token"] == APP_TOKEN
    assert "Origin" not in headers
    assert not [name for name in headers if name.lower().startswith("x-client-")]


@pytest.mark.parametrize(
    ("operation", "method", "path", "body", "up_method", "up_path", "up_body"),
    CASES,
    ids=[f"{case[0]}:{case[2].partition('?')[0]}" for case in CASES],
)
async def test_operation_reaches_its_server_side_twin(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    operation: str,
    method: str,
    path: str,
    body: Any,
    up_method: str,
    up_path: str,
    up_body: Any,
) -> None:
    client = await gateway(**SERVER)
    answer: dict[str, Any] = {"object": "test", "operation": operation}
    if operation == "list_vouchers":
        answer = {"object": "list", "data_ref": "vouchers", "vouchers": [{"code": "A"}], "total": 1}
    upstream.reply(Reply(200, answer))
    headers = dict(BROWSER)
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json; charset=utf-8"
        data = json.dumps(body).encode()
    resp = await client.session.request(
        method, raw_url(client, f"/client/v1{path}"), headers=headers, data=data
    )
    assert resp.status == 200
    assert await resp.json() == answer
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    [seen] = upstream.received
    assert seen.method == up_method
    assert seen.raw_path == up_path
    assert_server_headers(seen.headers)
    assert seen.headers["X-Voucherify-Channel"] == BROWSER["X-Voucherify-Channel"]
    assert seen.headers["X-Request-Id"] == resp.headers["X-Request-Id"]
    if up_body is None:
        assert seen.body == b""
    else:
        assert seen.json() == up_body
        assert seen.headers["Content-Type"].startswith("application/json")


async def test_update_consents_204_passes_through_empty(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(**SERVER)
    upstream.reply(Reply(204))
    resp = await client.session.put(
        raw_url(client, "/client/v1/customers/c1/consents"),
        headers={**BROWSER, "Content-Type": "application/json"},
        data=b'{"cnst_1": true}',
    )
    assert resp.status == 204
    assert await resp.read() == b""
    assert upstream.received[0].raw_path == "/v1/customers/c1/consents"


async def test_named_project_route_works_in_server_mode(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(**SERVER)
    resp = await client.session.get(raw_url(client, "/shop/client/v1/consents"), headers=BROWSER)
    assert resp.status == 200
    assert upstream.received[0].raw_path == "/v1/consents"


# --------------------------------------------------------------------------------- path parameter injection


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("code=../../v1/campaigns", None),
        ("code=a%2F..%2Fb", None),
        ("code=a%2f..%2fb", None),
        ("code=%2e%2e", None),
        ("code=%2E", None),
        ("code=..", None),
        ("code=a%5Cb", None),
        ("code=", None),
        ("code=a%0Db", None),
        ("code=a?b", "/v1/vouchers/a%3Fb/redemption"),
        ("code=a%3Fb", "/v1/vouchers/a%3Fb/redemption"),
        ("code=a%23b", "/v1/vouchers/a%23b/redemption"),
        ("code=a%25252Fb", "/v1/vouchers/a%25252Fb/redemption"),  # decoded once, encoded once
        ("code=...", "/v1/vouchers/.../redemption"),
    ],
)
@pytest.mark.parametrize("route", ["/redeem", "/validate"])
async def test_code_injection_reaches_only_the_intended_path(
    gateway: GatewayFactory, upstream: UpstreamDouble, route: str, query: str, expected: str
) -> None:
    client = await gateway(**SERVER)
    headers = {**BROWSER, "Content-Type": "application/json"}
    method = "POST" if route == "/redeem" else "GET"
    data = b"{}" if method == "POST" else None
    resp = await client.session.request(
        method, raw_url(client, f"/client/v1{route}?{query}"), headers=headers, data=data
    )
    if expected is None:
        assert resp.status == 400
        assert (await resp.json())["key"] == "invalid_payload"
        assert upstream.received == []
    else:
        assert resp.status == 200
        [seen] = upstream.received
        suffix = "/redemption" if route == "/redeem" else "/validate"
        assert seen.raw_path == expected.removesuffix("/redemption") + suffix


@pytest.mark.parametrize("target", ["/client/v1/redeem?code=a#b", "/client/v1/redeem?code=a\\b"])
async def test_raw_fragment_or_backslash_in_code_is_refused(
    gateway: GatewayFactory, upstream: UpstreamDouble, target: str
) -> None:
    client = await gateway(**SERVER)
    resp = await send(client.port, "POST", target, [("Origin", ORIGIN), ("Content-Length", "0")])
    assert resp.status == 400, resp.status
    assert upstream.received == []


# ----------------------------------------------------------------------------------- origin is the only check


BAD_ORIGINS: list[dict[str, str] | list[tuple[str, str]]] = [
    {},
    {"Origin": "null"},
    {"Origin": "https://evil.example"},
    {"Origin": "https://shop.example.com.evil.com"},
    {"Origin": "https://evilexample.com"},
    {"Origin": "http://shop.example.com"},
    {"Origin": "https://shop.example.com:8443"},
    {"Origin": "https://shop.example.com/path"},
    {"Origin": "https://user@shop.example.com"},
    {"Origin": "https://shop.example.com, https://evil.example"},
    {"Origin": "https://example.org"},  # the wildcard entry covers subdomains only
    [("Origin", ORIGIN), ("Origin", "https://evil.example")],
]


@pytest.mark.parametrize("origin_headers", BAD_ORIGINS, ids=[str(o) for o in BAD_ORIGINS])
@pytest.mark.parametrize(("method", "path"), [("POST", "/redeem?code=SAVE10"), ("GET", "/validate?code=S")])
async def test_server_mode_refuses_bad_origins_before_any_upstream_call(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    origin_headers: dict[str, str] | list[tuple[str, str]],
    method: str,
    path: str,
) -> None:
    client = await gateway(**SERVER)
    headers: list[tuple[str, str]] = (
        list(origin_headers.items()) if isinstance(origin_headers, dict) else list(origin_headers)
    )
    headers.append(("Content-Type", "application/json"))
    data = b"{}" if method == "POST" else None
    resp = await client.session.request(
        method, raw_url(client, f"/client/v1{path}"), headers=headers, data=data
    )
    assert resp.status == 403
    assert (await resp.json())["key"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = await client.session.options(raw_url(client, f"/client/v1{path}"), headers=headers)
    assert preflight.status == 403
    assert upstream.received == []


async def test_server_mode_allows_wildcard_subdomain_and_missing_origin_when_configured(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(**SERVER, allow_missing_origin=True)
    ok = await client.session.get(
        raw_url(client, "/client/v1/consents"), headers={"Origin": "https://a.b.example.org"}
    )
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://a.b.example.org"
    native = await client.session.get(raw_url(client, "/client/v1/consents"))
    assert native.status == 200
    assert len(upstream.received) == 2
    assert all("Origin" not in seen.headers for seen in upstream.received)


async def test_server_mode_keeps_danger_zone_secret_and_rate_checks(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url, **{**SERVER, "danger_zone": {"publish": True}})
    tree["rate_limit"] = {"per_ip": "2 per minute"}
    client = await gateway(tree)
    headers = {**BROWSER, "Content-Type": "application/json"}
    dz = await client.session.post(raw_url(client, "/client/v1/redeem?code=S"), headers=headers, data=b"{}")
    assert dz.status == 403
    assert (await dz.json())["key"] == "danger_zone_disabled"
    event = await client.session.post(
        raw_url(client, "/client/v1/events"), headers=headers, data=b'{"event":"e","loyalty":{"code":"L"}}'
    )
    assert (await event.json())["key"] == "danger_zone_disabled"
    secret = await client.session.get(
        raw_url(client, "/client/v1/consents"), headers={**BROWSER, "X-App-Token": "leaked"}
    )
    assert (await secret.json())["key"] == "secret_key_exposed"
    assert upstream.received == []
    statuses = [
        (await client.session.get(raw_url(client, "/client/v1/consents"), headers=BROWSER)).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert len(upstream.received) == 2


async def test_a_refused_code_is_not_counted_against_the_limit(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """The contract's order: 400 comes before 429, and only requests that pass every check count."""
    tree = base_policy(upstream.url, **SERVER)
    tree["rate_limit"] = {"per_ip": "2 per minute"}
    client = await gateway(tree)
    headers = {**BROWSER, "Content-Type": "application/json"}
    for _ in range(5):
        bad = await client.session.post(
            raw_url(client, "/client/v1/redeem?code=%2e%2e"), headers=headers, data=b"{}"
        )
        assert bad.status == 400
        assert "RateLimit" not in bad.headers
    good = [
        (
            await client.session.post(
                raw_url(client, "/client/v1/redeem?code=S"), headers=headers, data=b"{}"
            )
        ).status
        for _ in range(3)
    ]
    assert good == [200, 200, 429]
    assert [seen.path for seen in upstream.received] == ["/v1/vouchers/S/redemption"] * 2


# ----------------------------------------------------------------------------- nothing server-side leaks back


SERVER_SIDE_HEADERS = {
    "X-Rate-Limit-Limit": "2000",
    "X-Rate-Limit-Remaining": "1999",
    "X-Rate-Limit-Retry": "60",
    "X-Rate-Limit-Type": "project",
    "X-App-Id": APP_ID,
    "X-Voucherify-Project": "proj_123",
    "Set-Cookie": "session=abc",
    "Access-Control-Allow-Origin": "*",
}


@pytest.mark.parametrize("status", [200, 400, 429])
async def test_server_rate_limit_and_key_headers_never_reach_the_browser(
    gateway: GatewayFactory, upstream: UpstreamDouble, status: int
) -> None:
    client = await gateway(**SERVER)
    body = {"code": status, "key": "k", "message": "m"} if status != 200 else {"valid": True}
    upstream.reply(Reply(status, body, headers=SERVER_SIDE_HEADERS))
    resp = await client.session.get(raw_url(client, "/client/v1/validate?code=S"), headers=BROWSER)
    if status == 429:  # Voucherify's own 429 is the gateway's 503, with its seconds (the hold-off)
        assert resp.status == 503 and (await resp.json())["key"] == "upstream_quota_exhausted"
        assert resp.headers["Retry-After"] == "60"  # from X-Rate-Limit-Retry, which stays behind
    else:
        assert resp.status == status
        assert await resp.json() == body  # upstream answers, errors included, pass through with their bodies
    leaked = {name for name in resp.headers if name.lower() in {h.lower() for h in SERVER_SIDE_HEADERS}}
    assert leaked == {"Access-Control-Allow-Origin"}
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # the gateway's own, not the upstream's
    raw = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()) + (await resp.text())
    assert APP_ID not in raw and APP_TOKEN not in raw
    assert resp.headers["RateLimit-Policy"].startswith('"per_ip"')  # the gateway's limit, not Voucherify's


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"code": 401, "key": "unauthorized", "message": "Unauthorized"}),
        (
            403,
            {
                "code": 403,
                "key": "forbidden",
                "message": "Forbidden",
                "details": f"App {APP_ID} lacks rights",
            },
        ),
    ],
)
async def test_key_errors_become_502_with_an_operator_log(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
) -> None:
    client = await gateway(**SERVER)
    upstream.reply(Reply(status, body, headers=SERVER_SIDE_HEADERS))
    with caplog.at_level(logging.INFO):
        resp = await client.session.post(
            raw_url(client, "/client/v1/redeem?code=SAVE10"),
            headers={**BROWSER, "Content-Type": "application/json"},
            data=b"{}",
        )
    assert resp.status == 502
    answer = await resp.json()
    assert answer["key"] == "upstream_unavailable"
    assert answer["code"] == 502
    text = json.dumps(answer).lower()
    assert APP_ID.lower() not in text and "key" not in answer["message"].lower()
    assert "key" not in answer["details"].lower() and "token" not in text and "unauthorized" not in text
    assert not [name for name in resp.headers if name.lower().startswith("x-rate-limit")]
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    operator = [r for r in caplog.records if r.name == "gateway" and r.levelno >= logging.ERROR]
    assert len(operator) == 1
    line = operator[0].getMessage()
    assert "shop" in line and str(status) in line and body["key"] in line
    logged = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", None)) for r in caplog.records)
    assert APP_ID not in logged and APP_TOKEN not in logged


@pytest.mark.parametrize("status", [401, 403])
async def test_client_mode_passes_401_and_403_through(
    gateway: GatewayFactory, upstream: UpstreamDouble, status: int
) -> None:
    client = await gateway()
    body = {"code": status, "key": "unauthorized", "message": "Unauthorized"}
    upstream.reply(Reply(status, body))
    resp = await client.session.get(raw_url(client, "/client/v1/validate?code=S"), headers=BROWSER)
    assert resp.status == status
    assert await resp.json() == body
    assert upstream.received[0].raw_path == "/client/v1/validate?code=S"


async def test_list_vouchers_shows_the_browser_only_the_client_side_listing(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(**SERVER)
    voucher = {
        "object": "voucher",
        "code": "SAVE10",
        "active": True,
        "holder_id": "cust_1",
        "publish": {"count": 3},
    }
    upstream.reply(Reply(200, {"object": "list", "data_ref": "vouchers", "vouchers": [voucher], "total": 1}))
    resp = await client.session.get(raw_url(client, "/client/v1/vouchers?campaign=Camp"), headers=BROWSER)
    assert resp.status == 200
    assert await resp.json() == {
        "object": "list",
        "data_ref": "vouchers",
        "total": 1,
        "vouchers": [{"object": "voucher", "code": "SAVE10", "active": True}],
    }
    assert resp.headers["Content-Type"] == "application/json"
