"""Redemption counts uses, fails in Voucherify's shapes and is atomic under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from gateway.sandbox import SANDBOX_STORE
from tests.sandbox.conftest import CLIENT_HEADERS, SERVER_HEADERS, Client


async def test_redeem_decrements_and_reports(client: Client) -> None:
    body = {"order": {"amount": 3000}, "customer": {"source_id": "r1"}}
    response = await client.post("/client/v1/redeem?code=ONEUSE", json=body, headers=CLIENT_HEADERS)
    data = await response.json()
    assert data["result"] == "SUCCESS"
    assert data["order"]["total_amount"] == 1500
    assert data["voucher"]["redemption"] == {
        **data["voucher"]["redemption"],
        "quantity": 1,
        "redeemed_quantity": 1,
    }
    assert data["customer"]["source_id"] == "r1"
    assert client.app is not None
    assert client.app[SANDBOX_STORE].vouchers["ONEUSE"].redeemed_quantity == 1


async def test_second_redeem_is_quantity_exceeded(client: Client) -> None:
    assert (await client.post("/v1/vouchers/ONEUSE/redemption", headers=SERVER_HEADERS)).status == 200
    response = await client.post("/client/v1/redeem?code=ONEUSE", headers=CLIENT_HEADERS)
    assert response.status == 400
    data = await response.json()
    assert data["key"] == "quantity_exceeded"
    assert data["message"] == "quantity exceeded"
    assert data["resource_id"] == "ONEUSE"
    assert data["request_id"] == response.headers["X-Request-Id"]


async def test_redeem_unknown_code_is_404(client: Client) -> None:
    response = await client.post("/client/v1/redeem?code=NOPE", headers=CLIENT_HEADERS)
    assert response.status == 404
    data = await response.json()
    assert (data["key"], data["details"]) == ("not_found", "Cannot find voucher with id NOPE")


async def test_redeem_expired_is_400(client: Client) -> None:
    response = await client.post("/v1/vouchers/EXPIRED/redemption", headers=SERVER_HEADERS)
    assert response.status == 400
    assert (await response.json())["key"] == "voucher_expired"


async def test_encoded_code_in_server_path(client: Client) -> None:
    response = await client.post("/v1/vouchers/SAVE%31%30/redemption", headers=SERVER_HEADERS)
    assert response.status == 200
    assert (await response.json())["voucher"]["code"] == "SAVE10"


async def test_stackable_redemption_is_all_or_nothing(client: Client) -> None:
    body = {
        "order": {"amount": 10000},
        "redeemables": [{"object": "voucher", "id": "ONEUSE"}, {"object": "voucher", "id": "EXPIRED"}],
    }
    response = await client.post("/client/v1/redemptions", json=body, headers=CLIENT_HEADERS)
    assert response.status == 400
    assert (await response.json())["key"] == "voucher_expired"
    assert client.app is not None
    assert client.app[SANDBOX_STORE].vouchers["ONEUSE"].redeemed_quantity == 0


async def test_stackable_redemption_answers_children_and_parent(client: Client) -> None:
    body = {
        "order": {"amount": 20000},
        "customer": {"source_id": "s1"},
        "redeemables": [
            {"object": "promotion_tier", "id": "promo_sandbox_over100"},
            {"object": "voucher", "id": "PERCENT20"},
        ],
    }
    data = await (await client.post("/v1/redemptions", json=body, headers=SERVER_HEADERS)).json()
    children = data["redemptions"]
    assert [c["related_object_type"] for c in children] == ["promotion_tier", "voucher"]
    assert [c["amount"] for c in children] == [1000, 3800]
    assert {c["redemption"] for c in children} == {data["parent_redemption"]["id"]}
    assert data["order"]["total_amount"] == 15200


async def test_promotion_tier_redemption_checks_condition(client: Client) -> None:
    path = "/client/v1/promotions/tiers/promo_sandbox_over100/redemption"
    low = await client.post(path, json={"order": {"amount": 500}}, headers=CLIENT_HEADERS)
    assert low.status == 400
    assert (await low.json())["key"] == "order_rules_violated"
    missing = await client.post("/v1/promotions/tiers/promo_nope/redemption", headers=SERVER_HEADERS)
    assert missing.status == 404
    ended = await client.post("/v1/promotions/tiers/promo_sandbox_ended/redemption", headers=SERVER_HEADERS)
    assert (await ended.json())["key"] == "promotion_not_active_now"


@pytest.mark.parametrize("racers", [2, 20])
async def test_concurrent_redemptions_of_one_use_code(client: Client, racers: int) -> None:
    async def redeem(i: int) -> tuple[int, dict[str, object]]:
        path, headers = (
            ("/client/v1/redeem?code=ONEUSE", CLIENT_HEADERS)
            if i % 2
            else ("/v1/vouchers/ONEUSE/redemption", SERVER_HEADERS)
        )
        response = await client.post(path, json={"order": {"amount": 5000}}, headers=headers)
        return response.status, await response.json()

    results = await asyncio.gather(*(redeem(i) for i in range(racers)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [400] * (racers - 1)
    assert all(body["key"] == "quantity_exceeded" for status, body in results if status == 400)
    assert client.app is not None
    assert client.app[SANDBOX_STORE].vouchers["ONEUSE"].redeemed_quantity == 1


async def test_concurrent_stackable_redemptions(client: Client) -> None:
    body = {"order": {"amount": 5000}, "redeemables": [{"object": "voucher", "id": "ONEUSE"}]}
    responses = await asyncio.gather(
        *(client.post("/client/v1/redemptions", json=body, headers=CLIENT_HEADERS) for _ in range(10))
    )
    assert sorted(r.status for r in responses) == [200] + [400] * 9


QUANTITY_EXCEEDED = {
    "code": 400,
    "key": "quantity_exceeded",
    "message": "quantity exceeded",
    "details": "ONEUSE has been redeemed the maximum number of times (1)",
    "resource_id": "ONEUSE",
    "resource_type": "voucher",
}


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/client/v1/redeem?code=ONEUSE", CLIENT_HEADERS), ("/v1/vouchers/ONEUSE/redemption", SERVER_HEADERS)],
    ids=["client", "server"],
)
async def test_one_use_is_spent_once_and_refused_in_voucherify_shape(
    client: Client, path: str, headers: dict[str, str]
) -> None:
    first = await client.post(path, json={"order": {"amount": 5000}}, headers=headers)
    assert first.status == 200
    second = await client.post(path, json={"order": {"amount": 5000}}, headers=headers)
    assert second.status == 400
    assert await second.json() == {**QUANTITY_EXCEEDED, "request_id": second.headers["X-Request-Id"]}
    assert client.app is not None
    store = client.app[SANDBOX_STORE]
    assert [r["related_object_id"] for r in store.redemptions] == [
        "v_sandbox_oneuse"
    ]  # the refusal left none
    listing = await (await client.get("/v1/vouchers", headers=SERVER_HEADERS)).json()
    oneuse = next(v for v in listing["vouchers"] if v["code"] == "ONEUSE")
    assert oneuse["redemption"]["redeemed_quantity"] == 1


async def test_twenty_mixed_concurrent_redemptions_spend_one_use(client: Client) -> None:
    """Legacy and stackable redemptions, client and server side, 20 at once: exactly one wins."""
    stackable = {"order": {"amount": 5000}, "redeemables": [{"object": "voucher", "id": "ONEUSE"}]}
    calls = [
        ("/client/v1/redeem?code=ONEUSE", CLIENT_HEADERS, {"order": {"amount": 5000}}),
        ("/v1/vouchers/ONEUSE/redemption", SERVER_HEADERS, {"order": {"amount": 5000}}),
        ("/client/v1/redemptions", CLIENT_HEADERS, stackable),
        ("/v1/redemptions", SERVER_HEADERS, stackable),
    ]

    async def redeem(i: int) -> tuple[int, dict[str, object], str]:
        path, headers, body = calls[i % len(calls)]
        response = await client.post(path, json=body, headers=headers)
        return response.status, await response.json(), response.headers["X-Request-Id"]

    results = await asyncio.gather(*(redeem(i) for i in range(20)))
    assert sorted(status for status, _, _ in results) == [200] + [400] * 19
    for status, body, request_id in results:
        if status == 400:
            assert {k: body[k] for k in (*QUANTITY_EXCEEDED, "request_id")} == {
                **QUANTITY_EXCEEDED,
                "request_id": request_id,
            }
    assert client.app is not None
    store = client.app[SANDBOX_STORE]
    assert store.vouchers["ONEUSE"].redeemed_quantity == 1
    assert sum(1 for r in store.redemptions if r.get("related_object_id") == "v_sandbox_oneuse") == 1
