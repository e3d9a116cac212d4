"""The guards' one store call, through the gateway: a validation whose code exists makes one script call
before Voucherify's answer (the per-IP hit, the failed-code reservation and the quota reservation
together) and one after it (the settlement, off the response path); a keyed redemption makes two around its
Idempotency-Key claim; a request refused per IP never runs a reservation (memory, Redis, Redis Cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.app import STATE
from gateway.ratelimit import Reservation
from gateway.ratelimit.store import Reserve
from tests.conftest import GatewayFactory, base_policy
from tests.support.constants import JSON_H, H
from tests.support.processes import RedisCluster, RedisServer, redis_info
from tests.support.upstream_double import Reply, UpstreamDouble

VALIDATE = "/client/v1/validate?code=SAVE10"
UNKNOWN = {"valid": False, "code": "NOPE", "error": {"code": 404}}


class HeldUpstream(UpstreamDouble):
    """The double, holding each request until the test lets it answer (`go`)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.go = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrived.set()
        await self.go.wait()
        return await super()._handle(request)


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamDouble]:
    double = HeldUpstream()
    double.go.set()
    await double.start()
    yield double
    await double.close()


def guarded(upstream: UpstreamDouble, storage: str, per_ip: str = "1000 per minute") -> dict[str, Any]:
    tree = base_policy(upstream.url, danger_zone={"redeem": True})
    tree["rate_limit"] = {
        "storage": storage,
        "per_ip": per_ip,
        "failed_codes": "10 per hour",
        "upstream_quota": "1000 per hour",
        "on_storage_error": "deny",
        "storage_timeout": 20,
    }
    tree["client_ip"] = {"trusted_proxies": ["127.0.0.0/8"]}
    return tree


def calls(ports: list[int], command: str) -> int:
    """How many times the servers ran `command` (scripts' own commands included)."""
    total = 0
    for port in ports:
        stats = redis_info(port, "commandstats").get(f"cmdstat_{command}")
        total += int(stats["calls"]) if stats else 0
    return total


async def settled(ports: list[int], want: int) -> int:
    """The EVALSHA count once it reached `want` (the settlement runs in a task), or what it is after 10 s."""
    for _ in range(200):
        found = calls(ports, "evalsha")
        if found >= want:
            return found
        await asyncio.sleep(0.05)
    return calls(ports, "evalsha")


async def test_a_known_code_is_one_script_call_before_the_answer_and_one_after(
    redis: RedisServer, gateway: GatewayFactory, upstream: HeldUpstream
) -> None:
    client = await gateway(guarded(upstream, redis.url))
    await client.get(VALIDATE, headers=H)  # loads the scripts, opens the connection
    await asyncio.sleep(0.2)
    ports = [redis.port]
    for i in range(3):
        before = calls(ports, "evalsha")
        upstream.arrived.clear()
        upstream.go.clear()
        asking = asyncio.ensure_future(client.get(VALIDATE, headers={**H, "X-Forwarded-For": f"192.0.2.{i}"}))
        await asyncio.wait_for(upstream.arrived.wait(), 20)
        assert calls(ports, "evalsha") - before == 1  # per-IP, failed-code and quota: one script
        upstream.go.set()
        resp = await asyncio.wait_for(asking, 20)
        assert resp.status == 200
        assert '"failed_codes";r=10' in resp.headers["RateLimit"]
        assert await settled(ports, before + 2) - before == 2  # the code existed: given back, once
    quota = await _live(client, "shop/upstream_quota/3600")
    assert quota == 4  # every call counted once


async def test_a_keyed_redemption_is_two_script_calls_around_its_claim(
    redis: RedisServer, gateway: GatewayFactory, upstream: HeldUpstream
) -> None:
    client = await gateway(guarded(upstream, redis.url))
    await client.get(VALIDATE, headers=H)
    await asyncio.sleep(0.2)
    ports = [redis.port]
    before = calls(ports, "evalsha")
    upstream.arrived.clear()
    upstream.go.clear()
    headers = {**JSON_H, "Idempotency-Key": "k-chain-1"}
    asking = asyncio.ensure_future(client.post("/client/v1/redeem?code=SAVE10", headers=headers, json={}))
    await asyncio.wait_for(upstream.arrived.wait(), 20)
    assert calls(ports, "evalsha") - before == 3  # [per-IP], the claim, [failed-code, quota]
    upstream.go.set()
    assert (await asyncio.wait_for(asking, 20)).status == 200


async def _live(client: Any, key: str) -> int:
    """Entries live in a ledger (a reservation of nothing reads it); the quota's is a shared one."""
    policy = client.app[STATE].policy.projects["shop"].rate_limit
    store = client.app[STATE].limiters.store(policy.storage, policy.storage_timeout)
    shared = "/upstream_quota/" in key
    (read,) = await store.chain((Reserve(key, 1000, 3600, 0, shared=shared),))
    assert isinstance(read, Reservation)
    return 1000 - int(read.remaining)


@pytest.mark.parametrize("storage", ["memory", "redis", "cluster"])
async def test_a_flood_refused_per_ip_never_reserves_a_code_or_a_call(
    storage: str, request: pytest.FixtureRequest, gateway: GatewayFactory, upstream: HeldUpstream
) -> None:
    ports: list[int] = []
    uri = "memory://"
    if storage == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        uri, ports = server.url, [server.port]
    elif storage == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        uri, ports = cluster.url, [node.port for node in cluster.nodes]
    tree = guarded(upstream, uri, per_ip="1 per hour")
    tree["rate_limit"]["upstream_quota"] = "2 per hour"
    client = await gateway(tree)
    upstream.default = Reply(200, UNKNOWN)  # unknown codes: every grant is kept, none given back
    flooder = {**H, "X-Forwarded-For": "203.0.113.66"}
    assert (await client.get(VALIDATE, headers=flooder)).status == 200  # its one request per hour
    zadds = calls(ports, "zadd")
    # 40 at once from the flooder, all refused per IP, while another shopper takes the last quota call:
    # a flood that reserved anything, even for a moment, could make that shopper's request a 503
    flood = [client.get(VALIDATE, headers=flooder) for _ in range(40)]
    shopper = client.get(VALIDATE, headers={**H, "X-Forwarded-For": "198.51.100.5"})
    answers = await asyncio.gather(*flood[:20], shopper, *flood[20:])
    statuses = [resp.status for resp in answers]
    assert statuses == [429] * 20 + [200] + [429] * 20
    assert {(await resp.json())["key"] for resp in answers if resp.status == 429} == {"too_many_requests"}
    assert len(upstream.received) == 2
    if ports:
        assert calls(ports, "zadd") - zadds == 2  # the shopper's code and call; nothing of the flood
    assert await _live(client, "shop/upstream_quota/3600") == 2
    assert await _live(client, "failed_codes/shop/203.0.113.66") == 1
