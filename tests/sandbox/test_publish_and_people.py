"""Publication, customers, events, consents and listings."""

from __future__ import annotations

import pytest

from gateway.sandbox import SANDBOX_STORE
from tests.sandbox.conftest import CLIENT_HEADERS, SERVER_HEADERS, Client


async def _publish(client: Client, source_id: str, *, join_once: bool) -> dict[str, object]:
    query = "campaign=welcome" + ("&join_once=true" if join_once else "")
    body = {"customer": {"source_id": source_id}, "channel": "Checkout"}
    response = await client.post(f"/client/v1/publish?{query}", json=body, headers=CLIENT_HEADERS)
    assert response.status == 200, await response.text()
    data: dict[str, object] = await response.json()
    return data


def _code(publication: dict[str, object]) -> str:
    voucher = publication["voucher"]
    assert isinstance(voucher, dict)
    return str(voucher["code"])


async def test_publish_hands_out_distinct_codes(client: Client) -> None:
    codes = [_code(await _publish(client, f"p{i}", join_once=False)) for i in range(5)]
    codes += [_code(await _publish(client, "same", join_once=False)) for _ in range(3)]
    assert len(set(codes)) == 8
    assert all(code.startswith("WELCOME-") and len(code) == len("WELCOME-") + 8 for code in codes)


async def test_published_code_validates_with_campaign_discount(client: Client) -> None:
    code = _code(await _publish(client, "v1", join_once=False))
    response = await client.get(f"/client/v1/validate?code={code}&amount=2000", headers=CLIENT_HEADERS)
    data = await response.json()
    assert data["valid"] is True
    assert data["campaign"] == "welcome"
    assert data["order"]["total_discount_amount"] == 300


async def test_join_once_returns_the_same_code_per_customer(client: Client) -> None:
    first = await _publish(client, "j1", join_once=True)
    again = await _publish(client, "j1", join_once=True)
    other = await _publish(client, "j2", join_once=True)
    assert _code(first) == _code(again)
    assert first["id"] == again["id"]
    assert _code(other) != _code(first)
    without = await _publish(client, "j1", join_once=False)
    assert _code(without) != _code(first)


async def test_server_publication_takes_campaign_in_body(client: Client) -> None:
    body = {"campaign": {"name": "welcome"}, "customer": {"source_id": "srv"}}
    first = await (
        await client.post("/v1/publications?join_once=true", json=body, headers=SERVER_HEADERS)
    ).json()
    # the client twin shares the store, so join_once holds across both APIs
    again = await _publish(client, "srv", join_once=True)
    assert _code(again) == first["voucher"]["code"]
    assert first["customer"]["source_id"] == "srv"


@pytest.mark.parametrize(
    ("query", "body", "status", "key"),
    [
        ("campaign=nope", {"customer": {"source_id": "x"}}, 404, "not_found"),
        ("campaign=welcome", {}, 400, "missing_customer"),
        ("", {"customer": {"source_id": "x"}}, 400, "invalid_publish_params"),
    ],
)
async def test_publish_errors(
    client: Client, query: str, body: dict[str, object], status: int, key: str
) -> None:
    response = await client.post(f"/client/v1/publish?{query}", json=body, headers=CLIENT_HEADERS)
    assert response.status == status
    assert (await response.json())["key"] == key


async def test_list_vouchers_filters(client: Client) -> None:
    code = _code(await _publish(client, "lv", join_once=False))
    response = await client.get("/client/v1/vouchers?campaign=welcome", headers=CLIENT_HEADERS)
    data = await response.json()
    assert [v["code"] for v in data["vouchers"]] == [code]
    assert data["total"] == 1
    mine = await (await client.get("/v1/vouchers?customer=lv", headers=SERVER_HEADERS)).json()
    assert [v["code"] for v in mine["vouchers"]] == [code]
    paged = await (await client.get("/v1/vouchers?limit=2&page=1", headers=SERVER_HEADERS)).json()
    assert len(paged["vouchers"]) == 2
    assert paged["total"] == 8
    bad = await client.get("/v1/vouchers?limit=0", headers=SERVER_HEADERS)
    assert bad.status == 400


async def test_list_promotion_tiers(client: Client) -> None:
    data = await (await client.get("/client/v1/promotions/tiers", headers=CLIENT_HEADERS)).json()
    assert [t["id"] for t in data["tiers"]] == ["promo_sandbox_over100", "promo_sandbox_ended"]
    assert data["tiers"][0]["action"]["discount"] == {
        "type": "AMOUNT",
        "effect": "APPLY_TO_ORDER",
        "amount_off": 1000,
    }
    available = await (
        await client.get("/client/v1/promotions/tiers?is_available=true", headers=CLIENT_HEADERS)
    ).json()
    assert [t["id"] for t in available["tiers"]] == ["promo_sandbox_over100"]


async def test_customers_are_upserted_by_source_id(client: Client) -> None:
    first = await (
        await client.post(
            "/client/v1/customers", json={"source_id": "c1", "name": "Ann"}, headers=CLIENT_HEADERS
        )
    ).json()
    second = await (
        await client.post(
            "/v1/customers", json={"source_id": "c1", "email": "a@x.io"}, headers=SERVER_HEADERS
        )
    ).json()
    assert first["id"] == second["id"]
    assert first["id"].startswith("cust_")
    assert (second["name"], second["email"], second["object"]) == ("Ann", "a@x.io", "customer")


async def test_events_are_stored_and_echoed(client: Client) -> None:
    body = {"event": "checkout-started", "customer": {"source_id": "e1"}, "metadata": {"cart": 3}}
    data = await (await client.post("/client/v1/events", json=body, headers=CLIENT_HEADERS)).json()
    assert data == {
        "object": "event",
        "type": "checkout-started",
        "customer": {**data["customer"], "source_id": "e1", "object": "customer"},
        "referral": None,
        "loyalty": None,
    }
    assert client.app is not None
    stored = client.app[SANDBOX_STORE].events
    assert [(e["type"], e["metadata"]) for e in stored] == [("checkout-started", {"cart": 3})]
    missing = await client.post("/v1/events", json={"customer": {"source_id": "e1"}}, headers=SERVER_HEADERS)
    assert missing.status == 400


async def test_consents_listed_and_updated(client: Client) -> None:
    listing = await (await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).json()
    assert [c["id"] for c in listing["consents"]["data"]] == ["cnst_sandbox_newsletter"]
    assert listing["groups"]["total"] == 0
    path = "/client/v1/customers/sandbox-customer/consents"
    response = await client.put(path, json={"cnst_sandbox_newsletter": True}, headers=CLIENT_HEADERS)
    assert response.status == 204
    assert await response.read() == b""
    assert client.app is not None
    store = client.app[SANDBOX_STORE]
    customer = next(c for c in store.customers.values() if c.source_id == "sandbox-customer")
    assert customer.consents == {"cnst_sandbox_newsletter": True}
    await client.put(path, json={"unsubscribed": True}, headers=CLIENT_HEADERS)
    assert customer.consents == {"cnst_sandbox_newsletter": False}


@pytest.mark.parametrize(
    ("customer", "body", "status"),
    [
        ("nobody", {"cnst_sandbox_newsletter": True}, 404),
        ("sandbox-customer", {"cnst_nope": True}, 404),
        ("sandbox-customer", {"cnst_sandbox_newsletter": "yes"}, 400),
    ],
)
async def test_consent_update_errors(
    client: Client, customer: str, body: dict[str, object], status: int
) -> None:
    response = await client.put(f"/v1/customers/{customer}/consents", json=body, headers=SERVER_HEADERS)
    assert response.status == status
