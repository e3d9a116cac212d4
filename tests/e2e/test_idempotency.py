"""Idempotency-Key end to end: the gateway on a real port in front of the recording upstream double."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from tests.conftest import assert_gateway_error, base_policy
from tests.support.constants import JSON_H, ORIGIN
from tests.support.upstream_double import Reply

DANGER = {"danger_zone": {"redeem": True, "publish": True, "create_customers": True}}
REDEEM = "/client/v1/redeem?code=SAVE10"
BODY = json.dumps({"order": {"amount": 12000}})


def policy(upstream_url: str, idempotency: dict[str, Any] | None = None, **project: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url, **DANGER, **project)
    if idempotency is not None:
        tree["idempotency"] = idempotency
    return tree


async def test_preflight_allows_the_header_and_exposes_the_replay_flag(gateway, upstream):
    client = await gateway(policy(upstream.url))
    resp = await client.options(
        REDEEM,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,idempotency-key",
        },
    )
    assert resp.status == 204
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "idempotency-key"} <= allowed
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert "idempotent-replayed" in exposed
    assert upstream.received == []


async def test_the_header_never_reaches_the_upstream_even_when_off(gateway, upstream):
    for idempotency in ({"ttl": 0}, None):
        client = await gateway(policy(upstream.url, idempotency))
        upstream.received.clear()
        resp = await client.post(REDEEM, data=BODY, headers={**JSON_H, "Idempotency-Key": "k-never-sent"})
        assert resp.status == 200
        [seen] = upstream.received
        assert "Idempotency-Key" not in seen.headers
        assert all("k-never-sent" not in value for value in seen.headers.values())


# ---------------------------------------------------------------------------------------------- phase B


def keyed(key: str = "k-1", **more: str) -> dict[str, str]:
    return {**JSON_H, "Idempotency-Key": key, **more}


async def post(client, key: str = "k-1", body: str = BODY, path: str = REDEEM, **headers: str):
    resp = await client.post(path, data=body, headers=keyed(key, **headers))
    return resp.status, resp.headers, await resp.read()


async def test_a_retry_gets_the_first_answer_and_voucherify_is_called_once(gateway, upstream):
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(201, {"id": "r_1", "result": "SUCCESS"}, {"X-Other": "1"}))
    first = await post(client)
    assert first[0] == 201 and "Idempotent-Replayed" not in first[1]
    again = await post(client, key='"k-1"')  # the same key, as an sf-string
    assert again[0] == 201 and again[2] == first[2]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[1]["Content-Type"] == first[1]["Content-Type"]
    assert again[1]["X-Request-Id"] != first[1]["X-Request-Id"]
    assert "X-Other" not in again[1]
    assert len(upstream.received) == 1


async def test_a_replay_carries_the_replaying_origins_cors(gateway, upstream):
    client = await gateway(policy(upstream.url))
    await post(client)
    other = "https://a.example.org"  # allowed by the wildcard entry
    status, headers, _ = await post(client, Origin=other)
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert headers["Access-Control-Allow-Origin"] == other
    assert "Idempotent-Replayed" in headers["Access-Control-Expose-Headers"]
    assert headers["Vary"] == "Origin"
    assert "RateLimit" in headers and "RateLimit-Policy" in headers  # the replaying request's own
    assert len(upstream.received) == 1


async def test_another_request_with_the_key_is_422(gateway, upstream):
    client = await gateway(policy(upstream.url))
    await post(client)
    for body, path in [
        (json.dumps({"order": {"amount": 1}}), REDEEM),
        (BODY, "/client/v1/redeem?code=OTHER"),
        (BODY, "/client/v1/redemptions"),
    ]:
        status, headers, raw = await post(client, body=body, path=path)
        assert_gateway_error(status, json.loads(raw), headers, 422, "idempotency_key_reused")
    assert len(upstream.received) == 1


async def test_twenty_at_once_reach_voucherify_once(gateway, upstream):
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(200, {"id": "r_1"}, delay=0.5))
    answers = await asyncio.gather(*(post(client) for _ in range(20)))
    assert len(upstream.received) == 1
    statuses = Counter("replayed" if h.get("Idempotent-Replayed") == "true" else s for s, h, _ in answers)
    assert statuses[200] == 1, statuses
    assert statuses[409] + statuses["replayed"] == 19, statuses
    for status, headers, raw in answers:
        if status == 409:
            assert_gateway_error(status, json.loads(raw), headers, 409, "idempotency_key_in_flight")
    status, headers, raw = await post(client)  # once the first is done, a replay
    assert (status, headers["Idempotent-Replayed"], raw) == (200, "true", b'{"id": "r_1"}')
    assert len(upstream.received) == 1
