"""Idempotency-Key records in a real Redis (plain and a 3-master Cluster), shared by gateways of two workers
each: one key is claimed by exactly one request anywhere, a dead gateway's marker expires by itself, and a
store that is down answers 503 idempotency_unavailable whatever on_storage_error says."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp

from gateway.guards import idempotency
from tests.conftest import base_policy
from tests.support.constants import JSON_H
from tests.support.processes import GatewayProcessFactory, RedisCluster, RedisServer, redis_call
from tests.support.upstream_double import Reply, UpstreamDouble

REDEEM = "/client/v1/redeem?code=SAVE10"
BODY = json.dumps({"order": {"amount": 12000}})


def policy(upstream_url: str, storage: str, **rate_limit: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url, danger_zone={"redeem": True})
    # a generous store timeout: on a loaded machine a slow answer must not pass for an outage
    tree["rate_limit"] = {
        "storage": storage,
        "per_ip": "1000 per minute",
        "storage_timeout": 20,
        **rate_limit,
    }
    return tree


async def post(
    session: aiohttp.ClientSession, url: str, key: str, body: str = BODY
) -> tuple[int, str | None, bytes]:
    headers = {**JSON_H, "Idempotency-Key": key}
    async with session.post(url + REDEEM, data=body, headers=headers) as resp:
        return resp.status, resp.headers.get("Idempotent-Replayed"), await resp.read()


def session() -> aiohttp.ClientSession:
    # a new connection per request: requests spread over every worker of each gateway
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def burst(
    gateways: list[Any], keys: list[str], per_key: int
) -> list[tuple[str, int, str | None, bytes]]:
    async with session() as client:

        async def one(i: int) -> tuple[str, int, str | None, bytes]:
            key = keys[i % len(keys)]
            status, replayed, body = await post(client, gateways[i % len(gateways)].url, key)
            return key, status, replayed, body

        return await asyncio.gather(*(one(i) for i in range(per_key * len(keys))))


def check_single_flight(results: list[tuple[str, int, str | None, bytes]], upstream: UpstreamDouble) -> None:
    keys = {key for key, *_ in results}
    assert len(upstream.received) == len(keys)  # one call per key, whatever gateway and worker got it
    for key in keys:
        seen = Counter(
            "replayed" if replayed == "true" else status for k, status, replayed, _ in results if k == key
        )
        assert seen[200] == 1 and seen[409] + seen["replayed"] == sum(seen.values()) - 1, (key, seen)


async def test_one_key_reaches_voucherify_once_over_two_gateways_on_one_redis(
    redis: RedisServer, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    upstream.default = Reply(200, {"id": "r_1", "result": "SUCCESS"}, delay=0.3)
    tree = policy(upstream.url, redis.url)
    gateways = list(await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2))))
    results = await burst(gateways, ["k-1"], 20)
    check_single_flight(results, upstream)
    async with session() as client:  # afterwards every gateway replays it
        for gateway in gateways:
            status, replayed, body = await post(client, gateway.url, "k-1")
            assert (status, replayed, json.loads(body)["id"]) == (200, "true", "r_1")
        status, _, body = await post(client, gateways[1].url, "k-1", body="{}")
        assert status == 422 and json.loads(body)["key"] == "idempotency_key_reused"
    assert len(upstream.received) == 1
    # the access lines say what each key did (written in batches: wait for all 23)
    for _ in range(500):
        if sum(len(gateway.access_lines()) for gateway in gateways) >= 23:
            break
        await asyncio.sleep(0.02)
    said = Counter(line.get("idempotency") for gateway in gateways for line in gateway.access_lines())
    assert said["kept"] == 1 and said["reused"] == 1, said
    assert said["replayed"] >= 2 and said["in_flight"] + said["replayed"] == 21, said


async def test_one_key_reaches_voucherify_once_on_a_three_master_cluster(
    redis_cluster: RedisCluster, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    upstream.default = Reply(200, {"id": "r_c"}, delay=0.2)
    tree = policy(upstream.url, redis_cluster.url)
    gateways = list(await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2))))
    keys = [f"order-{i}" for i in range(8)]
    results = await burst(gateways, keys, 5)
    check_single_flight(results, upstream)
    spread = redis_cluster.keys_per_node()
    assert sum(1 for count in spread if count) >= 2, spread  # records live on several masters


async def test_a_dead_gateways_marker_expires_by_itself(
    redis: RedisServer, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    tree = policy(upstream.url, redis.url, storage_timeout=0.5)
    tree["upstream"] = {"connect_timeout": 0.5, "read_timeout": 1}
    tree["listen"] = {"body_timeout": 0.5}
    holder, other = await asyncio.gather(gateway_process(tree), gateway_process(tree))
    upstream.reply(Reply(200, {"id": "never-answered"}, delay=30))
    async with session() as client:
        held = asyncio.ensure_future(post(client, holder.url, "k-dead"))
        while not upstream.received:  # noqa: ASYNC110 - until the holder's call is under way
            await asyncio.sleep(0.01)
        holder.kill()  # SIGKILL while it holds the key: nothing settles it
        await asyncio.gather(held, return_exceptions=True)

        status, _, body = await post(client, other.url, "k-dead")
        assert status == 409 and json.loads(body)["key"] == "idempotency_key_in_flight"
        key = idempotency.storage_key("shop", "k-dead")
        ttl_ms = int(redis_call(redis.port, "PTTL", f"gw:record:{{{key}}}"))
        marker_ttl = 0.5 + 1 + 0.5 + idempotency.MARGIN_SECONDS + idempotency.MARGIN_STORE_CALLS * 0.5
        assert 0 < ttl_ms <= marker_ttl * 1000  # it expires by itself, after about the request's bounds

        for _ in range(300):  # until it has
            status, replayed, body = await post(client, other.url, "k-dead")
            if status != 409:
                break
            await asyncio.sleep(0.1)
    assert (status, replayed) == (200, None)  # the key is new again: this one was processed
    assert len(upstream.received) == 2


async def test_the_store_down_is_503_for_keyed_requests_whatever_on_storage_error_says(
    redis: RedisServer, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    gateway = await gateway_process(policy(upstream.url, redis.url, storage_timeout=0.5))
    redis.kill()
    async with session() as client:
        status, replayed, body = await post(client, gateway.url, "k-down")
        document = json.loads(body)
        assert (status, document["key"], replayed) == (503, "idempotency_unavailable", None)
        async with client.post(gateway.url + REDEEM, data=BODY, headers=JSON_H) as resp:
            assert resp.status == 200  # without a key: on_storage_error allow lets it through
    assert len(upstream.received) == 1 and "Idempotency-Key" not in upstream.received[0].headers
    line = json.loads(await gateway.wait_for('"decision": "idempotency_unavailable"'))
    assert line["idempotency"] == "unavailable" and line["status"] == 503
