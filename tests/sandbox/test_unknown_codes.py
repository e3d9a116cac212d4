"""Unknown codes answer the way Voucherify answers them, in client and server mode, so the gateway's
failed-code budget can count them; codes that exist but do not apply never look like 404s."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sandbox import SANDBOX_STORE
from tests.sandbox.conftest import CLIENT_HEADERS, SERVER_HEADERS, Client

MODES = ["client", "server"]
HEADERS = {"client": CLIENT_HEADERS, "server": SERVER_HEADERS}
BASE = {"client": "/client/v1", "server": "/v1"}
ORDER = {"order": {"amount": 2000}}


def not_found(code: str, request_id: str) -> dict[str, Any]:
    return {
        "code": 404,
        "key": "not_found",
        "message": "Resource not found",
        "details": f"Cannot find voucher with id {code}",
        "request_id": request_id,
        "resource_id": code,
        "resource_type": "voucher",
    }


async def _validate(client: Client, mode: str, code: str, amount: int = 2000) -> tuple[int, Any, str]:
    """Legacy validation: GET ?code= on the client side, its server twin POST /v1/vouchers/{code}/validate."""
    if mode == "client":
        response = await client.get(
            f"/client/v1/validate?code={code}&amount={amount}", headers=CLIENT_HEADERS
        )
    else:
        body = {"order": {"amount": amount}}
        response = await client.post(f"/v1/vouchers/{code}/validate", json=body, headers=SERVER_HEADERS)
    return response.status, await response.json(), response.headers["X-Request-Id"]


async def _redeem(client: Client, mode: str, code: str) -> tuple[int, Any, str]:
    if mode == "client":
        response = await client.post(f"/client/v1/redeem?code={code}", json=ORDER, headers=CLIENT_HEADERS)
    else:
        response = await client.post(f"/v1/vouchers/{code}/redemption", json=ORDER, headers=SERVER_HEADERS)
    return response.status, await response.json(), response.headers["X-Request-Id"]


async def _stackable(client: Client, mode: str, op: str, ids: list[str]) -> tuple[int, Any, str]:
    body = {**ORDER, "redeemables": [{"object": "voucher", "id": i} for i in ids]}
    response = await client.post(f"{BASE[mode]}/{op}", json=body, headers=HEADERS[mode])
    return response.status, await response.json(), response.headers["X-Request-Id"]


@pytest.mark.parametrize("mode", MODES)
async def test_legacy_validate_of_unknown_code_is_200_with_a_404_error(client: Client, mode: str) -> None:
    status, data, request_id = await _validate(client, mode, "NOSUCHCODE")
    assert status == 200
    assert data["valid"] is False
    assert data["code"] == "NOSUCHCODE"
    assert data["reason"] == "voucher not found"
    assert data["error"] == not_found("NOSUCHCODE", request_id)


@pytest.mark.parametrize("mode", MODES)
async def test_redeem_of_unknown_code_is_http_404(client: Client, mode: str) -> None:
    status, data, request_id = await _redeem(client, mode, "NOSUCHCODE")
    assert status == 404
    assert data == not_found("NOSUCHCODE", request_id)
    assert client.app is not None
    assert client.app[SANDBOX_STORE].redemptions == []


@pytest.mark.parametrize("mode", MODES)
async def test_stackable_validation_marks_each_unknown_code(client: Client, mode: str) -> None:
    status, data, request_id = await _stackable(client, mode, "validations", ["NOPE1", "SAVE10", "NOPE2"])
    assert status == 200
    assert data["valid"] is False
    assert [(r["id"], r["status"]) for r in data["redeemables"]] == [
        ("NOPE1", "INAPPLICABLE"),
        ("SAVE10", "SKIPPED"),
        ("NOPE2", "INAPPLICABLE"),
    ]
    assert data["redeemables"][0]["result"]["error"] == not_found("NOPE1", request_id)
    assert data["redeemables"][2]["result"]["error"] == not_found("NOPE2", request_id)
    assert data["redeemables"][1]["result"] == {}
    unknown = [r for r in data["redeemables"] if r["result"].get("error", {}).get("code") == 404]
    assert len(unknown) == 2  # what the gateway's failed-code budget counts


@pytest.mark.parametrize("mode", MODES)
async def test_stackable_redemption_with_unknown_codes(client: Client, mode: str) -> None:
    """Refused as a whole: HTTP 404 naming the first unknown code, each element's result in redeemables,
    and nothing spent, even though the known code came first and would have applied."""
    status, data, request_id = await _stackable(client, mode, "redemptions", ["ONEUSE", "NOPE1", "NOPE2"])
    assert status == 404
    assert {k: data[k] for k in not_found("NOPE1", request_id)} == not_found("NOPE1", request_id)
    assert [(r["id"], r["status"]) for r in data["redeemables"]] == [
        ("ONEUSE", "SKIPPED"),
        ("NOPE1", "INAPPLICABLE"),
        ("NOPE2", "INAPPLICABLE"),
    ]
    assert data["redeemables"][1]["result"]["error"] == not_found("NOPE1", request_id)
    assert data["redeemables"][2]["result"]["error"] == not_found("NOPE2", request_id)
    assert client.app is not None
    assert client.app[SANDBOX_STORE].vouchers["ONEUSE"].redeemed_quantity == 0
    assert client.app[SANDBOX_STORE].redemptions == []


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_code_is_reported_before_an_inapplicable_one(client: Client, mode: str) -> None:
    status, data, _ = await _stackable(client, mode, "redemptions", ["EXPIRED", "NOPE"])
    assert status == 404
    assert (data["key"], data["resource_id"]) == ("not_found", "NOPE")
    errors = [r["result"]["error"] for r in data["redeemables"]]
    assert [(e["code"], e["key"]) for e in errors] == [(400, "voucher_expired"), (404, "not_found")]


@pytest.mark.parametrize("mode", MODES)
async def test_stackable_redemption_of_inapplicable_codes_is_400(client: Client, mode: str) -> None:
    status, data, request_id = await _stackable(client, mode, "redemptions", ["SAVE10", "EXPIRED"])
    assert status == 400
    assert (data["code"], data["key"], data["request_id"]) == (400, "voucher_expired", request_id)
    assert [r["status"] for r in data["redeemables"]] == ["SKIPPED", "INAPPLICABLE"]
    assert data["redeemables"][1]["result"]["error"]["code"] == 400


# Codes that exist but do not apply (disabled, not started, expired, order rules, used up): never a 404.
EXISTING_BUT_INVALID = [
    ("DISABLED", "voucher_disabled", 2000),
    ("NOTYET", "voucher_not_active", 2000),
    ("EXPIRED", "voucher_expired", 2000),
    ("MIN50", "order_rules_violated", 2000),
    ("ONEUSE", "quantity_exceeded", 2000),
]


def _no_404_anywhere(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("code") != 404 and all(_no_404_anywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_404_anywhere(v) for v in value)
    return True


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("code", "key", "amount"), EXISTING_BUT_INVALID, ids=[c for c, *_ in EXISTING_BUT_INVALID]
)
async def test_existing_codes_never_look_unknown(
    client: Client, mode: str, code: str, key: str, amount: int
) -> None:
    if code == "ONEUSE":  # spend its one use first
        assert (await _redeem(client, mode, "ONEUSE"))[0] == 200
    answers = [
        await _validate(client, mode, code, amount),
        await _redeem(client, mode, code),
        await _stackable(client, mode, "validations", [code]),
        await _stackable(client, mode, "redemptions", [code]),
    ]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 400, 200, 400]
    for _, data, _ in answers:
        assert _no_404_anywhere(data), data
    assert answers[0][1]["error"]["key"] == key
    assert answers[1][1]["key"] == key
    assert answers[2][1]["redeemables"][0]["result"]["error"]["key"] == key
    assert answers[3][1]["key"] == key
    assert "resource_type" not in answers[0][1]["error"]  # only a 404 names the missing resource


@pytest.mark.parametrize("mode", MODES)
async def test_promotion_tiers_that_exist_are_not_404(client: Client, mode: str) -> None:
    path = f"{BASE[mode]}/promotions/tiers/promo_sandbox_ended/redemption"
    ended = await client.post(path, json=ORDER, headers=HEADERS[mode])
    assert ended.status == 400
    assert (await ended.json())["key"] == "promotion_not_active_now"
    path = f"{BASE[mode]}/promotions/tiers/promo_nope/redemption"
    missing = await client.post(path, json=ORDER, headers=HEADERS[mode])
    assert missing.status == 404
    data = await missing.json()
    assert (data["key"], data["resource_type"], data["resource_id"]) == (
        "not_found",
        "promotion_tier",
        "promo_nope",
    )
