"""Every route answers with the right keys and refuses wrong ones; unknown paths and methods."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sandbox.app import origin_allowed
from tests.sandbox.conftest import CLIENT_HEADERS, ORIGIN, SERVER_HEADERS, Client

ORDER = {"order": {"amount": 20000}, "customer": {"source_id": "auth-test"}}

# (method, path, json body or None, expected status, a key the answer must have)
CLIENT_CASES: list[tuple[str, str, Any, int, str | None]] = [
    ("GET", "/client/v1/validate?code=SAVE10&amount=2000", None, 200, "valid"),
    ("GET", "/client/v1/promotions/validation?amount=20000", None, 200, "promotions"),
    (
        "POST",
        "/client/v1/validations",
        {**ORDER, "redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        200,
        "redeemables",
    ),
    (
        "POST",
        "/client/v1/redemptions",
        {**ORDER, "redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        200,
        "parent_redemption",
    ),
    ("POST", "/client/v1/redeem?code=SAVE10", ORDER, 200, "voucher"),
    ("POST", "/client/v1/promotions/tiers/promo_sandbox_over100/redemption", ORDER, 200, "promotion_tier"),
    ("POST", "/client/v1/publish?campaign=welcome", {"customer": {"source_id": "auth-test"}}, 200, "voucher"),
    ("POST", "/client/v1/qualifications", ORDER, 200, "redeemables"),
    ("GET", "/client/v1/promotions/tiers", None, 200, "tiers"),
    ("POST", "/client/v1/events", {"event": "viewed", "customer": {"source_id": "auth-test"}}, 200, "type"),
    ("GET", "/client/v1/vouchers", None, 200, "vouchers"),
    ("POST", "/client/v1/customers", {"source_id": "auth-test"}, 200, "id"),
    ("GET", "/client/v1/consents", None, 200, "consents"),
    ("PUT", "/client/v1/customers/sandbox-customer/consents", {"cnst_sandbox_newsletter": True}, 204, None),
]

SERVER_CASES: list[tuple[str, str, Any, int, str | None]] = [
    (
        "POST",
        "/v1/validations",
        {**ORDER, "redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        200,
        "redeemables",
    ),
    (
        "POST",
        "/v1/redemptions",
        {**ORDER, "redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        200,
        "redemptions",
    ),
    ("POST", "/v1/qualifications", ORDER, 200, "redeemables"),
    ("GET", "/v1/promotions/tiers", None, 200, "tiers"),
    ("POST", "/v1/events", {"event": "viewed", "customer": {"source_id": "auth-test"}}, 200, "type"),
    ("POST", "/v1/customers", {"source_id": "auth-test"}, 200, "id"),
    ("GET", "/v1/consents", None, 200, "consents"),
    ("PUT", "/v1/customers/sandbox-customer/consents", {"unsubscribed": True}, 204, None),
    ("GET", "/v1/vouchers", None, 200, "vouchers"),
    ("POST", "/v1/vouchers/SAVE10/redemption", ORDER, 200, "voucher"),
    ("POST", "/v1/promotions/tiers/promo_sandbox_over100/redemption", ORDER, 200, "promotion_tier"),
    (
        "POST",
        "/v1/publications?join_once=true",
        {"campaign": {"name": "welcome"}, "customer": {"source_id": "a"}},
        200,
        "voucher",
    ),
    ("POST", "/v1/vouchers/SAVE10/validate", ORDER, 200, "valid"),
    ("POST", "/v1/promotions/validation", ORDER, 200, "promotions"),
]

UNAUTHORIZED = {"code": 401, "key": "unauthorized", "message": "Unauthorized"}


def _ids(cases: list[tuple[str, str, Any, int, str | None]]) -> list[str]:
    return [f"{method} {path.split('?')[0]}" for method, path, *_ in cases]


async def _call(client: Client, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "status", "key"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
async def test_client_route_happy_path(
    client: Client, method: str, path: str, body: Any, status: int, key: str | None
) -> None:
    response = await _call(client, method, path, body, CLIENT_HEADERS)
    assert response.status == status, await response.text()
    assert response.headers["X-Request-Id"].startswith("v-")
    if key is None:
        assert await response.read() == b""
    else:
        assert key in await response.json()


@pytest.mark.parametrize(("method", "path", "body", "status", "key"), SERVER_CASES, ids=_ids(SERVER_CASES))
async def test_server_route_happy_path(
    client: Client, method: str, path: str, body: Any, status: int, key: str | None
) -> None:
    response = await _call(client, method, path, body, SERVER_HEADERS)
    assert response.status == status, await response.text()
    if key is not None:
        assert key in await response.json()


BAD_CLIENT_HEADERS = {
    "missing keys": {"Origin": ORIGIN},
    "wrong token": {**CLIENT_HEADERS, "X-Client-Token": "nope"},
    "wrong app id": {**CLIENT_HEADERS, "X-Client-Application-Id": "nope"},
    "disallowed origin": {**CLIENT_HEADERS, "Origin": "https://evil.example.net"},
    "missing origin": {k: v for k, v in CLIENT_HEADERS.items() if k != "Origin"},
    "server keys": {**SERVER_HEADERS, "Origin": ORIGIN},
}


@pytest.mark.parametrize("case", list(BAD_CLIENT_HEADERS))
@pytest.mark.parametrize(("method", "path", "body", "status", "key"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
async def test_client_route_refuses_bad_credentials(
    client: Client, method: str, path: str, body: Any, status: int, key: str | None, case: str
) -> None:
    response = await _call(client, method, path, body, BAD_CLIENT_HEADERS[case])
    assert response.status == 401
    data = await response.json()
    assert {k: data[k] for k in UNAUTHORIZED} == UNAUTHORIZED
    assert data["request_id"] == response.headers["X-Request-Id"]


BAD_SERVER_HEADERS = {
    "missing keys": {},
    "wrong token": {**SERVER_HEADERS, "X-App-Token": "nope"},
    "client keys": CLIENT_HEADERS,
}


@pytest.mark.parametrize("case", list(BAD_SERVER_HEADERS))
@pytest.mark.parametrize(("method", "path", "body", "status", "key"), SERVER_CASES, ids=_ids(SERVER_CASES))
async def test_server_route_refuses_bad_credentials(
    client: Client, method: str, path: str, body: Any, status: int, key: str | None, case: str
) -> None:
    response = await _call(client, method, path, body, BAD_SERVER_HEADERS[case])
    assert response.status == 401
    assert (await response.json())["key"] == "unauthorized"


async def test_refused_request_changes_nothing(client: Client) -> None:
    bad = {**CLIENT_HEADERS, "X-Client-Token": "nope"}
    assert (await client.post("/client/v1/redeem?code=ONEUSE", json={}, headers=bad)).status == 401
    ok = await client.post("/client/v1/redeem?code=ONEUSE", json={}, headers=CLIENT_HEADERS)
    assert ok.status == 200


@pytest.mark.parametrize(
    "path",
    ["/nope", "/client/v1/nope", "/v1/validate", "/client/v1/validate/", "/client/v1/vouchers/X/redemption"],
)
async def test_unknown_path_is_404_in_voucherify_shape(client: Client, path: str) -> None:
    response = await client.get(path, headers=CLIENT_HEADERS)
    assert response.status == 404
    data = await response.json()
    assert data["code"] == 404
    assert data["key"] == "not_found"
    assert data["request_id"] == response.headers["X-Request-Id"]


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.put("/client/v1/validate", headers=CLIENT_HEADERS)
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    data = await response.json()
    assert data["code"] == 405
    assert data["message"] == "HTTP Method Not Allowed"
    assert data["details"] == "PUT is not supported by this endpoint. Did you mean GET?"


async def test_head_on_get_route_is_405(client: Client) -> None:
    response = await client.head("/v1/vouchers", headers=SERVER_HEADERS)
    assert response.status == 405


async def test_preflight_answers_cors(client: Client) -> None:
    response = await client.options(
        "/client/v1/validations",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Client-Token" in response.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        ("https://shop.example.com", ("https://shop.example.com",), True),
        ("HTTPS://Shop.Example.com:443", ("https://shop.example.com",), True),
        ("http://shop.example.com", ("https://shop.example.com",), False),
        ("https://a.b.example.com", (".example.com",), True),
        ("https://www.example.com", (".example.com",), True),
        ("https://example.com", (".example.com",), False),
        ("https://badexample.com", (".example.com",), False),
        ("https://example.com", ("example.com",), True),
        ("http://localhost:3000", ("localhost:3000",), True),
        ("http://localhost:3001", ("localhost:3000",), False),
        ("https://x.example.com", ("https://*.example.com",), True),
        ("https://example.com", ("https://*.example.com",), False),
        ("https://anything.test", ("*",), True),
        (None, ("*",), True),
        (None, ("https://shop.example.com",), False),
        ("https://shop.example.com/path", ("https://shop.example.com",), False),
        ("null", ("https://shop.example.com",), False),
    ],
)
def test_origin_matching(origin: str | None, allowed: tuple[str, ...], expected: bool) -> None:
    assert origin_allowed(origin, allowed) is expected
