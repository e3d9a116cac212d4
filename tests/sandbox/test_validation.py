"""Validation maths, reasons, the legacy query, stackable answers and qualifications."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.conftest import CLIENT_HEADERS, SERVER_HEADERS, Client


async def _validate(client: Client, query: str) -> Any:
    response = await client.get(f"/client/v1/validate?{query}", headers=CLIENT_HEADERS)
    assert response.status == 200
    return await response.json()


@pytest.mark.parametrize(
    ("query", "discount", "total"),
    [
        ("code=SAVE10&amount=2500", 1000, 1500),
        ("code=SAVE10&amount=600", 600, 0),  # never more than the order
        ("code=PERCENT20&amount=2500", 500, 2000),
        ("code=PERCENT20&amount=99999", 5000, 94999),  # amount_limit caps the percent
        ("code=PERCENT20&item[0][price]=1250&item[0][quantity]=2&item[1][amount]=500", 600, 2400),
        ("code=MIN50&amount=5000", 500, 4500),
    ],
)
async def test_legacy_validate_maths(client: Client, query: str, discount: int, total: int) -> None:
    data = await _validate(client, query)
    assert data["valid"] is True
    assert data["order"]["total_discount_amount"] == discount
    assert data["order"]["total_amount"] == total


async def test_legacy_validate_parses_the_sdk_query(client: Client) -> None:
    query = (
        "code=PERCENT20&item%5B0%5D%5Bproduct_id%5D=prod_1&item%5B0%5D%5Bprice%5D=1000"
        "&item%5B0%5D%5Bquantity%5D=3&customer%5Bsource_id%5D=cust-1&metadata%5Bchannel%5D=web"
        "&order%5Bmetadata%5D%5Bcart%5D=c-9&session_type=LOCK&session_key=ssn_1&session_ttl=2"
        "&session_ttl_unit=HOURS&tracking_id=trk-1"
    )
    data = await _validate(client, query)
    assert data["valid"] is True
    assert data["order"]["amount"] == 3000
    assert data["order"]["items"][0]["product_id"] == "prod_1"
    assert data["order"]["metadata"] == {"cart": "c-9"}
    assert data["tracking_id"] == "trk-1"
    assert data["session"] == {"key": "ssn_1", "type": "LOCK", "ttl": 2, "ttl_unit": "HOURS"}


@pytest.mark.parametrize(
    ("code", "reason", "key"),
    [
        ("EXPIRED", "voucher expired", "voucher_expired"),
        ("NOTYET", "voucher not active", "voucher_not_active"),
        ("DISABLED", "voucher is disabled", "voucher_disabled"),
        ("NOSUCHCODE", "voucher not found", "not_found"),
    ],
)
async def test_legacy_validate_invalid_reasons(client: Client, code: str, reason: str, key: str) -> None:
    data = await _validate(client, f"code={code}&amount=1000")
    assert data["valid"] is False
    assert data["code"] == code
    assert data["reason"] == reason
    assert data["error"]["key"] == key


async def test_order_rules_violated_below_minimum(client: Client) -> None:
    data = await _validate(client, "code=MIN50&amount=4999")
    assert data["valid"] is False
    assert data["error"]["key"] == "order_rules_violated"


async def test_quantity_exceeded_after_use(client: Client) -> None:
    assert (await client.post("/client/v1/redeem?code=ONEUSE", headers=CLIENT_HEADERS)).status == 200
    data = await _validate(client, "code=ONEUSE&amount=5000")
    assert data == {**data, "valid": False, "reason": "quantity exceeded"}
    assert data["error"]["key"] == "quantity_exceeded"


async def test_server_validate_takes_a_json_body(client: Client) -> None:
    body = {"order": {"items": [{"price": 4000, "quantity": 1}]}, "customer": {"source_id": "c"}}
    response = await client.post("/v1/vouchers/PERCENT20/validate", json=body, headers=SERVER_HEADERS)
    data = await response.json()
    assert data["valid"] is True
    assert data["order"]["total_discount_amount"] == 800


async def test_bad_json_is_invalid_payload(client: Client) -> None:
    response = await client.post("/v1/vouchers/SAVE10/validate", data=b"{nope", headers=SERVER_HEADERS)
    assert response.status == 400
    assert (await response.json())["key"] == "invalid_payload"


async def test_stackable_validation_stacks_discounts(client: Client) -> None:
    body = {
        "order": {"amount": 10000},
        "redeemables": [{"object": "voucher", "id": "SAVE10"}, {"object": "voucher", "id": "PERCENT20"}],
    }
    data = await (await client.post("/client/v1/validations", json=body, headers=CLIENT_HEADERS)).json()
    assert data["valid"] is True
    assert [r["status"] for r in data["redeemables"]] == ["APPLICABLE", "APPLICABLE"]
    # 10.00 off 100.00, then 20 % of the remaining 90.00
    assert [r["order"]["applied_discount_amount"] for r in data["redeemables"]] == [1000, 1800]
    assert data["order"]["total_discount_amount"] == 2800
    assert data["order"]["total_amount"] == 7200


async def test_stackable_validation_marks_inapplicable(client: Client) -> None:
    body = {
        "order": {"amount": 10000},
        "redeemables": [{"object": "voucher", "id": "SAVE10"}, {"object": "voucher", "id": "EXPIRED"}],
    }
    data = await (await client.post("/v1/validations", json=body, headers=SERVER_HEADERS)).json()
    assert data["valid"] is False
    statuses = {r["id"]: r["status"] for r in data["redeemables"]}
    assert statuses == {"SAVE10": "SKIPPED", "EXPIRED": "INAPPLICABLE"}
    assert data["redeemables"][1]["result"]["error"]["key"] == "voucher_expired"
    assert data["order"]["total_discount_amount"] == 0


async def test_stackable_validation_needs_redeemables(client: Client) -> None:
    response = await client.post("/client/v1/validations", json={"order": {}}, headers=CLIENT_HEADERS)
    assert response.status == 400
    assert (await response.json())["key"] == "invalid_payload"


async def test_promotion_validation_honours_the_tier_condition(client: Client) -> None:
    small = await (
        await client.get("/client/v1/promotions/validation?amount=9999", headers=CLIENT_HEADERS)
    ).json()
    assert small == {**small, "valid": False, "promotions": []}
    big = await (
        await client.get("/client/v1/promotions/validation?amount=10000", headers=CLIENT_HEADERS)
    ).json()
    assert big["valid"] is True
    assert [p["id"] for p in big["promotions"]] == ["promo_sandbox_over100"]
    assert big["promotions"][0]["discount_amount"] == 1000


async def test_qualifications_list_what_applies(client: Client) -> None:
    body = {"order": {"amount": 10000}, "customer": {"source_id": "q1"}, "options": {"limit": 50}}
    data = await (await client.post("/client/v1/qualifications", json=body, headers=CLIENT_HEADERS)).json()
    ids = {r["id"] for r in data["redeemables"]["data"]}
    assert {"SAVE10", "PERCENT20", "MIN50", "ONEUSE", "promo_sandbox_over100"} <= ids
    assert not ids & {"EXPIRED", "NOTYET", "DISABLED", "promo_sandbox_ended"}
    small = {"order": {"amount": 1000}, "options": {"limit": 50}}
    data = await (await client.post("/v1/qualifications", json=small, headers=SERVER_HEADERS)).json()
    small_ids = {r["id"] for r in data["redeemables"]["data"]}
    assert "promo_sandbox_over100" not in small_ids
    assert "MIN50" not in small_ids


async def test_qualifications_customer_wallet_holds_published_codes(client: Client) -> None:
    pub = await client.post(
        "/client/v1/publish?campaign=welcome", json={"customer": {"source_id": "w1"}}, headers=CLIENT_HEADERS
    )
    code = (await pub.json())["voucher"]["code"]
    body = {"order": {"amount": 2000}, "customer": {"source_id": "w1"}, "scenario": "CUSTOMER_WALLET"}
    data = await (await client.post("/client/v1/qualifications", json=body, headers=CLIENT_HEADERS)).json()
    assert [r["id"] for r in data["redeemables"]["data"]] == [code]
    assert data["redeemables"]["data"][0]["order"]["total_discount_amount"] == 300
