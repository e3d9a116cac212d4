"""Idempotency-Key end to end: the gateway on a real port in front of the recording upstream double."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import base_policy
from tests.support.constants import JSON_H, ORIGIN

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
