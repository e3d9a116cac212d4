"""Sparing Voucherify's quota, end to end: cached reads (hits, misses, single flight, expiry, errors not
kept), the upstream quota exact over two `--workers 2` gateways on one real Redis, the redemption reserve,
the hold-off after Voucherify's 429 and `api_version` on the wire."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import STATE
from gateway.ratelimit.memory_store import MemoryStore
from tests.conftest import GatewayFactory, assert_gateway_error, base_policy, make_policy
from tests.support.constants import JSON_H, ORIGIN, H
from tests.support.ops import OpsGatewayFactory, labels
from tests.support.processes import GatewayProcessFactory, RedisCluster, RedisServer
from tests.support.upstream_double import Reply, UpstreamDouble

TIERS = "/client/v1/promotions/tiers?limit=10"
CONSENTS = "/client/v1/consents"
TIERS_BODY = {"object": "list", "data_ref": "tiers", "tiers": [{"id": "promo_1"}], "total": 1}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state the test drives to (not a timing assertion); fails after about 20 s."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never reached: {what}")


def cached_policy(upstream: UpstreamDouble, ttl: float = 30, **rate_limit: Any) -> dict[str, Any]:
    tree = base_policy(upstream.url)
    tree["cache"] = {"ttl": ttl}
    tree["rate_limit"].update(rate_limit)
    return tree


# ---------------------------------------------------------------------------------------------- cached reads


async def test_a_hit_reuses_status_body_and_content_type_with_age_and_its_own_headers(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    upstream.default = Reply(
        200,
        TIERS_BODY,
        {"Content-Type": "application/json; charset=utf-8", "ETag": '"v1"', "Cache-Control": "no-store"},
    )
    client = await gateway(cached_policy(upstream))
    first = await client.get(TIERS, headers=H)
    assert first.status == 200 and await first.json() == TIERS_BODY
    assert "Age" not in first.headers
    second = await client.get(TIERS, headers=H)
    assert second.status == 200
    assert await second.read() == await first.read()
    assert second.headers["Content-Type"] == "application/json; charset=utf-8"
    assert second.headers["Age"] == "0"
    assert "ETag" not in second.headers and "Cache-Control" not in second.headers  # only the three kept
    assert second.headers["X-Request-Id"] != first.headers["X-Request-Id"]  # the request's own
    assert second.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert second.headers["Vary"] == "Origin"
    assert second.headers["RateLimit"] == '"per_ip";r=998;t=60'  # its own count, after the first's
    assert len(upstream.received) == 1


async def test_misses_per_query_operation_and_project(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    upstream.default = Reply(200, TIERS_BODY)
    tree = cached_policy(upstream)
    tree["projects"]["blog"] = dict(tree["projects"]["shop"])
    client = await gateway(tree)
    for path in (TIERS, TIERS + "&", "/client/v1/promotions/tiers?limit=11", CONSENTS, "/blog" + TIERS):
        assert (await client.get(path, headers=H)).status == 200
    assert len(upstream.received) == 5
    for path in (TIERS, CONSENTS, "/blog" + TIERS):
        resp = await client.get(path, headers=H)
        assert resp.status == 200 and "Age" in resp.headers
    assert len(upstream.received) == 5


async def test_other_operations_and_a_ttl_of_zero_are_never_cached(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(cached_policy(upstream))
    for _ in range(2):
        assert (await client.get("/client/v1/validate?code=SAVE10", headers=H)).status == 200
    off = await gateway(cached_policy(upstream, ttl=0))
    for _ in range(2):
        assert (await off.get(TIERS, headers=H)).status == 200
    assert len(upstream.received) == 4


async def test_a_project_may_turn_the_cache_on_for_itself(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = cached_policy(upstream, ttl=0)
    tree["projects"]["shop"]["cache"] = {"ttl": 30}
    client = await gateway(tree)
    for _ in range(3):
        assert (await client.get(CONSENTS, headers=H)).status == 200
    assert len(upstream.received) == 1


async def test_an_answer_expires_after_the_ttl(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(cached_policy(upstream, ttl=0.5))
    assert (await client.get(TIERS, headers=H)).status == 200
    assert (await client.get(TIERS, headers=H)).headers.get("Age") == "0"
    assert len(upstream.received) == 1
    await asyncio.sleep(0.6)
    resp = await client.get(TIERS, headers=H)
    assert resp.status == 200 and "Age" not in resp.headers
    assert len(upstream.received) == 2


@pytest.mark.parametrize("status", [201, 400, 404, 500, 503])
async def test_error_answers_are_never_kept(
    gateway: GatewayFactory, upstream: UpstreamDouble, status: int
) -> None:
    upstream.reply(Reply(status, {"code": status, "key": "x"}))
    client = await gateway(cached_policy(upstream))
    assert (await client.get(TIERS, headers=H)).status == status
    resp = await client.get(TIERS, headers=H)
    assert resp.status == 200 and "Age" not in resp.headers
    assert len(upstream.received) == 2


async def test_a_gateway_error_is_never_kept(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    upstream.reply(Reply(reset=True))
    client = await gateway(cached_policy(upstream))
    resp = await client.get(TIERS, headers=H)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 502, "upstream_unavailable")
    assert (await client.get(TIERS, headers=H)).status == 200
    assert len(upstream.received) == 2


async def test_the_per_ip_limit_still_applies_to_hits(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(cached_policy(upstream, per_ip="3 per minute"))
    statuses = [(await client.get(TIERS, headers=H)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert len(upstream.received) == 1


class GatedDouble(UpstreamDouble):
    """Holds every answer until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.gate.wait()
        return await super()._handle(request)


@pytest.mark.parametrize("answer", [Reply(200, TIERS_BODY), Reply(503, {"code": 503})])
async def test_twenty_concurrent_identical_reads_make_one_upstream_call(
    ops_gateway: OpsGatewayFactory, answer: Reply
) -> None:
    double = GatedDouble()
    await double.start()
    try:
        double.default = answer
        gw = await ops_gateway(cached_policy(double))
        reads = [asyncio.ensure_future(gw.public.get(TIERS, headers=H)) for _ in range(20)]
        cache = gw.state.sparing.cache
        key = ("shop", "list_promotion_tiers", "limit=10")
        # every read is waiting on the one call
        await until(lambda: key in cache._flights and cache._flights[key].waiters == 20, "20 waiters")
        double.gate.set()
        answers = await asyncio.gather(*reads)
        bodies = {await resp.read() for resp in answers}
        assert {resp.status for resp in answers} == {answer.status}
        assert len(bodies) == 1
        assert len({resp.headers["X-Request-Id"] for resp in answers}) == 20
        assert len(double.received) == 1
        lookups = await gw.samples("gateway_cache_lookups_total")
        key_labels = {"project": "shop", "operation": "list_promotion_tiers"}
        assert lookups[labels(**key_labels, result="miss")] == 1
        assert lookups[labels(**key_labels, result="shared")] == 19
        if answer.status != 200:  # errors are shared, never kept
            assert (await gw.public.get(TIERS, headers=H)).status == answer.status
            assert len(double.received) == 2
        else:
            assert (await gw.public.get(TIERS, headers=H)).headers["Age"] == "0"
            assert (await gw.samples("gateway_cache_lookups_total"))[labels(**key_labels, result="hit")] == 1
    finally:
        await double.close()


async def test_a_leader_whose_client_left_does_not_strand_its_followers(
    ops_gateway: OpsGatewayFactory,
) -> None:
    double = GatedDouble()
    await double.start()
    try:
        gw = await ops_gateway(cached_policy(double))
        key = ("shop", "list_promotion_tiers", "limit=10")
        cache = gw.state.sparing.cache
        session = aiohttp.ClientSession()
        leader = asyncio.ensure_future(session.get(f"http://127.0.0.1:{gw.public.port}{TIERS}", headers=H))
        await until(lambda: key in cache._flights, "the leader's call")
        followers = [asyncio.ensure_future(gw.public.get(TIERS, headers=H)) for _ in range(3)]
        await until(lambda: cache._flights[key].waiters == 4, "four waiters")
        leader.cancel()
        await session.close()  # the leader's connection is gone: its handler is cancelled
        await until(lambda: cache._flights[key].waiters == 3, "the leader gone")
        double.gate.set()
        answers = await asyncio.gather(*followers)
        assert [resp.status for resp in answers] == [200, 200, 200]
        assert len(double.received) == 1
    finally:
        await double.close()


# ---------------------------------------------------------------------------------------------- api_version


@pytest.mark.parametrize("mode", ["client", "server"])
async def test_api_version_is_sent_on_every_call_and_the_browsers_own_is_dropped(
    gateway: GatewayFactory, upstream: UpstreamDouble, mode: str
) -> None:
    project: dict[str, Any] = {"api_version": "v2018-08-01"}
    if mode == "server":
        project |= {"upstream_auth": "server", "credentials": {"application_id": "a", "secret_key": "s-k-1"}}
    client = await gateway(**project)
    headers = {**H, "X-Voucherify-API-Version": "v2024-01-01"}
    assert (await client.get("/client/v1/validate?code=SAVE10", headers=headers)).status == 200
    assert (
        await client.post("/client/v1/validations", headers={**JSON_H, **headers}, data=b"{}")
    ).status == 200
    assert len(upstream.received) == 2
    for received in upstream.received:
        assert received.headers.getall("X-Voucherify-API-Version") == ["v2018-08-01"]


async def test_without_api_version_none_is_sent(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway()
    headers = {**H, "X-Voucherify-API-Version": "v2024-01-01"}
    assert (await client.get("/client/v1/validate?code=SAVE10", headers=headers)).status == 200
    assert "X-Voucherify-API-Version" not in upstream.received[0].headers


# ---------------------------------------------------------------------------------------------- the quota


def quota_policy(
    upstream: UpstreamDouble, quota: str, reserve: float = 0, **rate_limit: Any
) -> dict[str, Any]:
    tree = base_policy(upstream.url, danger_zone={"redeem": True})
    tree["rate_limit"].update(upstream_quota=quota, redeem_reserve=reserve, **rate_limit)
    return tree


async def test_a_call_that_would_pass_the_quota_is_refused_with_retry_after(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(quota_policy(upstream, "3 per hour"))
    statuses = []
    for _ in range(5):
        resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 503, 503]
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "upstream_quota_exhausted")
    assert 3000 < int(resp.headers["Retry-After"]) <= 3600
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    assert len(upstream.received) == 3


async def test_new_addresses_keeping_unknown_codes_cannot_push_the_quota_out_of_memory(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """The memory store drops the ledgers closest to expiry for room; the quota's (a minute, against the
    budgets' hour) would always go first, and an attacker rotating addresses would switch it off."""
    upstream.default = Reply(404, {"code": 404, "key": "not_found"})
    tree = quota_policy(upstream, "5 per minute", failed_codes="10 per hour")
    tree["client_ip"] = {"trusted_proxies": ["127.0.0.1/32"]}
    client = await gateway(tree)
    store = client.app[STATE].limiters.store("memory://")
    assert isinstance(store, MemoryStore)
    store.ledgers.max_keys = 3  # a million addresses' worth, in a test
    statuses = []
    for i in range(20):
        headers = {**H, "X-Forwarded-For": f"203.0.113.{i}"}
        statuses.append((await client.get("/client/v1/validate?code=NOPE", headers=headers)).status)
    assert statuses == [404] * 5 + [503] * 15
    assert len(upstream.received) == 5


async def test_cache_hits_do_not_count_against_the_quota(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = quota_policy(upstream, "2 per hour")
    tree["cache"] = {"ttl": 30}
    client = await gateway(tree)
    for _ in range(5):
        assert (await client.get(TIERS, headers=H)).status == 200
    assert (await client.get(CONSENTS, headers=H)).status == 200
    assert (await client.get("/client/v1/validate?code=A", headers=H)).status == 503
    assert len(upstream.received) == 2


async def test_the_reserve_lets_redemptions_through_when_browsing_used_the_rest(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(quota_policy(upstream, "10 per hour", 0.3))
    browsing = [(await client.get("/client/v1/validate?code=SAVE10", headers=H)).status for _ in range(9)]
    assert browsing == [200] * 7 + [503] * 2
    redeem = [
        (await client.post("/client/v1/redeem?code=SAVE10", headers=JSON_H, data=b"{}")).status
        for _ in range(4)
    ]
    assert redeem == [200, 200, 200, 503]
    assert (await client.get("/client/v1/validate?code=SAVE10", headers=H)).status == 503
    assert len(upstream.received) == 10


async def test_an_explicit_null_turns_the_quota_off_for_a_project(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = quota_policy(upstream, "1 per hour")
    tree["projects"]["shop"]["rate_limit"] = {"upstream_quota": None}
    client = await gateway(tree)
    for _ in range(3):
        assert (await client.get("/client/v1/validate?code=SAVE10", headers=H)).status == 200


async def test_the_quota_is_exact_over_two_gateways_of_two_workers_on_one_redis(
    redis: RedisServer, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    quota = 11
    tree = quota_policy(upstream, f"{quota} per hour", on_storage_error="deny", storage_timeout=20)
    tree["rate_limit"]["storage"] = redis.url
    tree["logging"] = {"level": "warning"}
    gateways = await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2)))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # new connections spread over the workers
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> tuple[int, str | None]:
            url = gateways[i % 2].url + "/client/v1/validate?code=SAVE10"
            async with session.get(url, headers=H, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.json()
                return resp.status, body.get("key")

        results = Counter(await asyncio.gather(*(one(i) for i in range(200))))
    assert results == {(200, None): quota, (503, "upstream_quota_exhausted"): 200 - quota}
    assert len(upstream.received) == quota


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_quota_store_that_is_down_follows_on_storage_error(
    gateway: GatewayFactory, upstream: UpstreamDouble, mode: str
) -> None:
    tree = quota_policy(upstream, "5 per hour", on_storage_error=mode, storage_timeout=0.2)
    tree["rate_limit"]["storage"] = "redis://127.0.0.1:1/0"
    tree["rate_limit"]["per_ip"] = "1000 per minute"
    client = await gateway(tree)
    resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
    if mode == "deny":
        assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "rate_limit_unavailable")
        assert upstream.received == []
    else:
        assert resp.status == 200 and len(upstream.received) == 1


# ---------------------------------------------------------------------------------------------- Voucherify's 429


async def test_voucherifys_429_becomes_a_503_and_holds_the_project_off(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    tree = base_policy(upstream.url)
    tree["cache"] = {"ttl": 60}
    tree["admin"] = {"port": 0}
    gw = await ops_gateway(tree)
    client = gw.public
    assert (await client.get(TIERS, headers=H)).status == 200  # kept: hits go on during the hold-off
    upstream.reply(Reply(429, {"code": 429, "key": "too_many_requests"}, {"Retry-After": "2"}))
    started = time.monotonic()
    resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "upstream_quota_exhausted")
    assert resp.headers["Retry-After"] == "2"
    assert "X-Rate-Limit-Retry" not in resp.headers
    assert len(upstream.received) == 2
    seen: list[int] = []
    while time.monotonic() - started < 1.5:  # well inside the hold-off: nothing reaches Voucherify
        resp = await client.post("/client/v1/validations", headers=JSON_H, data=b"{}")
        seen.append(resp.status)
        assert resp.status == 503 and 1 <= int(resp.headers["Retry-After"]) <= 2
        hit = await client.get(TIERS, headers=H)
        assert hit.status == 200 and "Age" in hit.headers
        await asyncio.sleep(0.05)
    assert len(upstream.received) == 2
    assert (await gw.admin.get("/readyz")).status == 200  # the gateway is healthy; Voucherify is busy
    # once Retry-After has passed, calls go out again; none went out before
    for _ in range(400):
        resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
        if resp.status == 200:
            break
        seen.append(resp.status)
        await asyncio.sleep(0.05)
    assert resp.status == 200
    assert time.monotonic() - started >= 2 - 0.05
    assert len(upstream.received) == 3
    warnings = [r for r in caplog.records if "429" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert (await gw.samples("gateway_upstream_429_total"))[labels(project="shop")] == 1
    refusals = await gw.samples("gateway_upstream_quota_refusals_total")
    assert refusals[labels(project="shop", reason="hold_off")] == len(seen)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"X-Rate-Limit-Retry": "3"}, "3"),
        ({}, "1"),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, "1"),
        ({"Retry-After": "3600"}, "60"),
    ],
)
async def test_the_hold_off_takes_voucherifys_seconds(
    gateway: GatewayFactory, upstream: UpstreamDouble, headers: dict[str, str], seconds: str
) -> None:
    upstream.reply(Reply(429, {"code": 429}, headers))
    client = await gateway()
    resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
    assert resp.status == 503 and resp.headers["Retry-After"] == seconds
    again = await client.get("/client/v1/validate?code=SAVE10", headers=H)
    assert again.status == 503 and int(again.headers["Retry-After"]) <= int(seconds)
    assert len(upstream.received) == 1


@pytest.mark.parametrize("keyed", [False, True])
async def test_a_429_that_comes_while_a_request_is_in_its_store_calls_holds_that_request_off_too(
    gateway: GatewayFactory, upstream: UpstreamDouble, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    """The hold-off was read when the request was read, before its store calls (its chain, and a keyed
    request's claim, each a Redis round trip): a request whose calls were on their way when Voucherify's 429
    came was sent all the same. It is read again right before the call goes out."""
    client = await gateway(quota_policy(upstream, "100 per hour"))
    entered, go = asyncio.Event(), asyncio.Event()
    chain, claim = MemoryStore.chain, MemoryStore.claim

    async def slow_chain(self: MemoryStore, steps: Any) -> Any:  # the first request's round trip
        if not entered.is_set():
            entered.set()
            await go.wait()
        return await chain(self, steps)

    async def slow_claim(self: MemoryStore, key: str, value: bytes, ttl: float) -> bytes | None:
        if not entered.is_set():
            entered.set()
            await go.wait()
        return await claim(self, key, value, ttl)

    monkeypatch.setattr(MemoryStore, "claim" if keyed else "chain", slow_claim if keyed else slow_chain)
    headers = {**JSON_H, "Idempotency-Key": "k-1"} if keyed else JSON_H
    first = asyncio.ensure_future(client.post("/client/v1/redeem?code=SAVE10", headers=headers, data=b"{}"))
    await entered.wait()
    upstream.reply(Reply(429, {"code": 429, "key": "too_many_requests"}, {"Retry-After": "30"}))
    throttled = await client.get("/client/v1/validate?code=SAVE10", headers=H)
    assert throttled.status == 503 and len(upstream.received) == 1
    go.set()
    resp = await first
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "upstream_quota_exhausted")
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    assert len(upstream.received) == 1  # nothing more went to Voucherify
    store = client.app[STATE].limiters.store("memory://")
    quota = client.app[STATE].policy.projects["shop"].quota
    assert isinstance(store, MemoryStore) and quota is not None
    assert store.reserve_sync(quota.key, 100, 3600, 0, shared=True).remaining == 99  # its call given back
    if keyed:  # and its key is free again
        monkeypatch.setattr(MemoryStore, "claim", claim)
        assert (await client.post("/client/v1/redeem?code=SAVE10", headers=headers, data=b"{}")).status == 503


async def test_a_hold_off_is_per_project(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = base_policy(upstream.url)
    tree["projects"]["blog"] = dict(tree["projects"]["shop"])
    client = await gateway(tree)
    upstream.reply(Reply(429, {"code": 429}, {"Retry-After": "30"}))
    assert (await client.get("/client/v1/validate?code=A", headers=H)).status == 503
    assert (await client.get("/client/v1/validate?code=A", headers=H)).status == 503
    assert (await client.get("/blog/client/v1/validate?code=A", headers=H)).status == 200
    assert len(upstream.received) == 2


async def test_server_mode_429_is_held_off_too(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    upstream.reply(Reply(429, {"code": 429}, {"Retry-After": "30", "X-Rate-Limit-Remaining": "0"}))
    client = await gateway(upstream_auth="server", credentials={"application_id": "a", "secret_key": "s-k-2"})
    resp = await client.post("/client/v1/validations", headers=JSON_H, data=b"{}")
    body = await resp.json()
    assert_gateway_error(resp.status, body, resp.headers, 503, "upstream_quota_exhausted")
    assert not any(name.lower().startswith("x-rate-limit") for name in resp.headers)
    assert json.dumps(body).find("s-k-2") == -1
    assert (await client.post("/client/v1/validations", headers=JSON_H, data=b"{}")).status == 503
    assert len(upstream.received) == 1


async def test_the_quota_is_exact_over_two_gateways_on_a_three_master_cluster(
    redis_cluster: RedisCluster, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    tree = base_policy(upstream.url, danger_zone={"redeem": True})
    tree["projects"]["blog"] = dict(tree["projects"]["shop"])
    tree["rate_limit"].update(
        storage=redis_cluster.url,
        upstream_quota="6 per hour",
        redeem_reserve=0.5,
        on_storage_error="deny",
        storage_timeout=20,
    )
    tree["logging"] = {"level": "warning"}
    gateways = await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2)))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, project: str, redeem: bool) -> tuple[str, bool, int]:
            path = "/client/v1/redeem?code=SAVE10" if redeem else "/client/v1/validate?code=SAVE10"
            url = gateways[i % 2].url + f"/{project}" + path
            method = session.post if redeem else session.get
            kwargs: dict[str, Any] = {"data": b"{}", "headers": JSON_H} if redeem else {"headers": H}
            async with method(url, timeout=aiohttp.ClientTimeout(total=30), **kwargs) as resp:
                await resp.read()
                return project, redeem, resp.status

        browsing = await asyncio.gather(*(one(i, p, False) for i in range(40) for p in ("shop", "blog")))
        redeeming = await asyncio.gather(*(one(i, p, True) for i in range(40) for p in ("shop", "blog")))
    for project in ("shop", "blog"):  # each project its own ledger; browsing gets 3, redemptions the rest
        assert Counter(s for p, _, s in browsing if p == project) == {200: 3, 503: 37}, project
        assert Counter(s for p, _, s in redeeming if p == project) == {200: 3, 503: 37}, project
    assert len(upstream.received) == 12


async def test_the_sandboxs_plan_limit_is_held_off(gateway: GatewayFactory) -> None:
    """Against the offline sandbox's emulation of Voucherify's plan limit (`--plan-limit`): its 429 (with
    Retry-After and X-Rate-Limit-Retry) becomes the 503, and nothing more reaches it meanwhile."""
    from gateway.sandbox import SANDBOX_RECORDS, SandboxCredentials, create_sandbox_app

    credentials = SandboxCredentials()
    sandbox = create_sandbox_app(credentials, plan_limit=2)
    runner = web.AppRunner(sandbox, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        tree = base_policy(
            url,
            upstream_auth="server",
            credentials={"application_id": credentials.application_id, "secret_key": credentials.secret_key},
            api_version="v2018-08-01",
        )
        client = await gateway(tree)
        statuses = [(await client.get("/client/v1/validate?code=SAVE10", headers=H)).status for _ in range(2)]
        assert statuses == [200, 200]
        resp = await client.get("/client/v1/validate?code=SAVE10", headers=H)
        assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "upstream_quota_exhausted")
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert not any(name.lower().startswith("x-rate-limit") for name in resp.headers)
        for _ in range(3):
            again = await client.get("/client/v1/validate?code=SAVE10", headers=H)
            assert again.status == 503 and int(again.headers["Retry-After"]) <= int(
                resp.headers["Retry-After"]
            )
        records = sandbox[SANDBOX_RECORDS]
        assert len(records) == 3  # two answered, one 429, then nothing
        assert {r.headers.get("x-voucherify-api-version") for r in records} == {"v2018-08-01"}
    finally:
        await runner.cleanup()


async def test_a_reload_that_changes_a_project_drops_its_kept_answers(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = cached_policy(upstream)
    client = await gateway(tree)
    state = client.app[STATE]
    assert (await client.get(TIERS, headers=H)).status == 200
    assert "Age" in (await client.get(TIERS, headers=H)).headers
    state.set_policy(make_policy(tree))  # the same policy: answers stay
    assert "Age" in (await client.get(TIERS, headers=H)).headers
    tree["projects"]["shop"]["api_version"] = "v2018-08-01"
    state.set_policy(make_policy(tree))
    resp = await client.get(TIERS, headers=H)
    assert resp.status == 200 and "Age" not in resp.headers
    assert len(upstream.received) == 2
    assert upstream.received[1].headers["X-Voucherify-API-Version"] == "v2018-08-01"


async def test_a_reload_that_changes_the_cache_ttl_drops_the_kept_answers(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """A top-level `cache.ttl` is no setting of the project, so its answers outlived a change of it: kept
    for the old ttl after it was lowered, and back again when the cache was turned off and on."""
    tree = cached_policy(upstream, ttl=3600)
    client = await gateway(tree)
    state = client.app[STATE]
    assert (await client.get(TIERS, headers=H)).status == 200
    assert "Age" in (await client.get(TIERS, headers=H)).headers
    tree["cache"]["ttl"] = 5  # lowered: what was kept for an hour is not kept for 5 seconds
    state.set_policy(make_policy(tree))
    resp = await client.get(TIERS, headers=H)
    assert resp.status == 200 and "Age" not in resp.headers
    tree["cache"]["ttl"] = 0  # off: every read goes to Voucherify
    state.set_policy(make_policy(tree))
    assert "Age" not in (await client.get(TIERS, headers=H)).headers
    tree["cache"]["ttl"] = 3600  # on again: not the answer kept before it was turned off
    state.set_policy(make_policy(tree))
    resp = await client.get(TIERS, headers=H)
    assert resp.status == 200 and "Age" not in resp.headers
    assert len(upstream.received) == 4


async def test_a_reload_that_changes_a_project_mid_call_neither_shares_nor_keeps_the_old_answer(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """A read under way when its project changes finishes under the old policy, but requests after the
    reload make their own call, and the old call's answer is not kept for them."""
    tree = cached_policy(upstream)
    client = await gateway(tree)
    state = client.app[STATE]
    upstream.reply(Reply(200, TIERS_BODY, delay=0.5))
    old = asyncio.ensure_future(client.get(TIERS, headers=H))
    await until(lambda: len(upstream.received) == 1, "the old call under way")
    tree["projects"]["shop"]["api_version"] = "v2018-08-01"
    state.set_policy(make_policy(tree))
    new = await client.get(TIERS, headers=H)  # not the old call's answer
    assert new.status == 200 and "Age" not in new.headers
    assert (await old).status == 200
    kept = await client.get(TIERS, headers=H)
    assert kept.status == 200 and "Age" in kept.headers
    assert len(upstream.received) == 2
    assert [r.headers.get("X-Voucherify-API-Version") for r in upstream.received] == [None, "v2018-08-01"]


async def test_a_call_that_never_connected_gives_its_quota_back(
    gateway: GatewayFactory, upstream: UpstreamDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect timeout sent nothing to Voucherify: like a refused connection, it does not count."""
    tree = quota_policy(upstream, "1 per hour")
    tree["upstream"] = {"connect_timeout": 0.2}
    client = await gateway(tree)
    loop = asyncio.get_running_loop()
    connect = loop.create_connection
    upstream_port = int(upstream.url.rsplit(":", 1)[1])

    async def hang(*args: Any, **kwargs: Any) -> Any:
        if upstream_port in (*args, kwargs.get("port")):  # only the gateway's calls to the double
            await asyncio.sleep(3600)
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", hang)
    resp = await client.get("/client/v1/validate?code=A", headers=H)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 504, "upstream_timeout")
    monkeypatch.setattr(loop, "create_connection", connect)
    assert (await client.get("/client/v1/validate?code=A", headers=H)).status == 200
    assert len(upstream.received) == 1
