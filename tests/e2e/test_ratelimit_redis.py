"""Limits shared in a real Redis: exact across processes, and kept when Redis dies, freezes and returns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.models import Bucket, Strategy
from gateway.ratelimit import Limiter, LimiterPool, StoreUnavailable, bridge, open_storage
from gateway.ratelimit.deadline import MAX_STRETCH
from gateway.ratelimit.redis_store import RedisStore
from tests.conftest import GatewayClient, GatewayFactory, base_policy
from tests.support.constants import H
from tests.support.processes import GatewayProcessFactory, RedisServer
from tests.support.upstream_double import UpstreamDouble

STRATEGIES = [s.value for s in Strategy]  # plain strings: they go into policy files
VALIDATE = "/client/v1/validate?code=SAVE10"


def limited_policy(upstream_url: str, redis_url: str, **rate_limit: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url)
    tree["rate_limit"] = {"storage": redis_url, **rate_limit}
    return tree


def test_storage_clients_are_configured() -> None:
    """redis-py with a blocking pool, socket timeouts and at most one retry; no network needed. The pool's and
    sockets' timeouts are backstops behind each call's deadline (tests/unit/test_store_deadline.py)."""
    plain = open_storage("redis://127.0.0.1:1/0", 0.25)
    assert isinstance(plain, RedisStorage)
    client = bridge.client(plain)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.timeout == MAX_STRETCH * 0.25
    assert pool.connection_kwargs["socket_timeout"] == MAX_STRETCH * 0.25
    assert pool.connection_kwargs["socket_connect_timeout"] == MAX_STRETCH * 0.25
    retry = pool.connection_kwargs["retry"]
    assert retry.get_retries() == 1
    # a command that timed out may have counted the hit already: only a refused connection is retried
    timeouts = (TimeoutError, RedisTimeoutError)
    assert not any(issubclass(error, timeouts) for error in retry._supported_errors), retry._supported_errors
    assert plain.wrap_exceptions is True
    secure = open_storage("rediss://127.0.0.1:1/0", 0.25)
    assert isinstance(bridge.client(secure).connection_pool, BlockingConnectionPool)
    assert "SSL" in bridge.client(secure).connection_pool.connection_class.__name__
    sentinel = open_storage("redis+sentinel://127.0.0.1:1/mymaster", 0.25)
    assert isinstance(sentinel, RedisSentinelStorage)
    assert type(sentinel.bridge).__name__ == "RedispyBridge"
    cluster = open_storage("redis+cluster://127.0.0.1:1", 0.25)  # redis-py connects to a cluster lazily
    assert isinstance(cluster, RedisClusterStorage)
    assert type(cluster.bridge).__name__ == "RedispyBridge"


async def test_start_loads_scripts_and_close_releases_pool(redis: RedisServer) -> None:
    pool = LimiterPool()
    limiter = Limiter(pool.store(redis.url, 0.5), Strategy.MOVING_WINDOW)
    await pool.start()
    assert isinstance(limiter.store, RedisStore)
    storage = limiter.store.storage
    assert isinstance(storage, RedisStorage) and isinstance(storage.bridge, RedispyBridge)
    client = bridge.client(storage)
    assert await client.script_exists(storage.bridge.lua_acquire_moving_window.sha) == [True]
    bucket = Bucket.parse("per_ip", "2 per hour", "p/per_ip")
    results = [await limiter.hit(bucket, "203.0.113.9") for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    await pool.close()
    assert client.connection_pool._in_use_connections == set()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_burst_over_two_instances_lets_exactly_k_through(
    strategy: str, redis: RedisServer, upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    limit = 7
    # deny and a generous store timeout: on a loaded machine a slow Redis answer must show up as a 503
    # here, not pass silently as a fail-open 200 (exactness must not depend on timing).
    policy = limited_policy(
        upstream.url,
        redis.url,
        strategy=strategy,
        per_ip=f"{limit} per hour",
        on_storage_error="deny",
        storage_timeout=20,
    )
    policy["logging"] = {"level": "warning"}
    gateways = await asyncio.gather(*(gateway_process(policy, workers=2) for _ in range(2)))

    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # new connections spread over the workers
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            url = gateways[i % 2].url + VALIDATE
            async with session.get(url, headers=H, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                return resp.status

        statuses = Counter(await asyncio.gather(*(one(i) for i in range(300))))
    assert statuses == {200: limit, 429: 300 - limit}
    assert len(upstream.received) == limit


async def _send(client: GatewayClient, n: int) -> list[tuple[int, dict[str, Any], float]]:
    async def one() -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        resp = await client.get(VALIDATE, headers=H, timeout=aiohttp.ClientTimeout(total=10))
        body = await resp.json()
        return resp.status, body, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _until_limited(client: GatewayClient, deadline_s: float = 15) -> list[int]:
    """One request at a time until a 429: the limit is enforced again (fails if it never is)."""
    seen: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        resp = await client.get(VALIDATE, headers=H)
        seen.append(resp.status)
        if resp.status == 429:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"limit not enforced again: {seen[-10:]}")


# A request may take the storage timeout plus the rest of the pipeline; a hung one takes the client's 10 s.
BOUND = 0.5 + 2.0


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_redis_killed_restarted_and_frozen(
    mode: str,
    redis: RedisServer,
    upstream: UpstreamDouble,
    gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    policy = limited_policy(
        upstream.url, redis.url, per_ip="3 per hour", on_storage_error=mode, storage_timeout=0.5
    )
    client = await gateway(policy)

    assert [s for s, _, _ in await _send(client, 3)] == [200, 200, 200]
    assert (await client.get(VALIDATE, headers=H)).status == 429

    for outage in ("kill", "freeze"):
        # the client was just refused: the gateway repeats that refusal from memory, without asking Redis,
        # for at most storage_timeout (gateway/ratelimit/refusals.py); after that its requests see the outage
        await asyncio.sleep(0.5)
        caplog.clear()
        if outage == "kill":
            redis.kill()
        else:
            redis.freeze()
        before = len(upstream.received)
        results = await _send(client, 20)
        assert all(elapsed < BOUND for _, _, elapsed in results), [e for _, _, e in results]
        if mode == "allow":
            assert [s for s, _, _ in results] == [200] * 20
            assert len(upstream.received) == before + 20
        else:
            assert [s for s, _, _ in results] == [503] * 20
            assert {body["key"] for _, body, _ in results} == {"rate_limit_unavailable"}
            assert len(upstream.received) == before
        down = [r for r in caplog.records if "rate-limit store unavailable" in r.getMessage()]
        assert len(down) == 1  # one line per outage, not per request

        if outage == "kill":
            redis.start()  # same port, empty: counting starts again
        else:
            redis.thaw()
        seen = await _until_limited(client)
        assert seen.count(200) <= 3
        assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_burst_larger_than_the_pool_waits_instead_of_failing(redis: RedisServer) -> None:
    pool = LimiterPool()
    pool.store(redis.url, 2.0)  # the pool waits up to 2 s for a connection
    limiter = Limiter(pool.store(redis.url, 5.0), Strategy.MOVING_WINDOW)
    await pool.start()
    bucket = Bucket.parse("per_ip", "50 per hour", "b/per_ip")
    try:
        results = await asyncio.gather(*(limiter.hit(bucket, "198.51.100.7") for _ in range(400)))
    except StoreUnavailable as exc:  # MaxConnectionsError would surface here
        pytest.fail(f"burst failed instead of waiting for a connection: {exc}")
    finally:
        await pool.close()
    assert sum(r.allowed for r in results) == 50
