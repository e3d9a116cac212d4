"""Per-IP refusals remembered for a moment (gateway/ratelimit/refusals.py): on their own, then through the
per-IP gate as the handler runs it (`refuse_remembered`, then the chain), on memory and a real redis-server.
Nothing is refused from memory that the store would let pass, and what is refused from memory answers what
the store would answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from limits.util import WindowStats

from gateway.errors import ErrorKey, Refused
from gateway.models import Bucket, Outcome, Strategy
from gateway.policy import RateLimit
from gateway.ratelimit import LimiterPool, bridge
from gateway.ratelimit.gates import pass_gates
from gateway.ratelimit.memory_store import MemoryStore
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.refusals import Refusals
from tests.support.processes import RedisServer

MOVING, FIXED, SLIDING = Strategy.MOVING_WINDOW, Strategy.FIXED_WINDOW, Strategy.SLIDING_WINDOW_COUNTER
WINDOW = WindowStats(1_000.0, 0)  # frees at t=1000

# --- on their own (the caller gives the time)


def test_a_refusal_holds_until_its_window_frees_less_the_round_trip() -> None:
    refusals = Refusals()
    refusals.remember("k", MOVING, WINDOW, now=990.0, seconds=0.25, ttl=60)
    assert refusals.refused("k", MOVING, 990.0) == WINDOW
    assert refusals.refused("k", MOVING, 999.74) == WINDOW
    assert refusals.refused("k", MOVING, 999.75) is None  # 1000 - 0.25: the store may count it again
    assert refusals.refused("k", MOVING, 999.0) is None  # and it is gone
    assert len(refusals) == 0


def test_a_refusal_holds_no_longer_than_the_storage_timeout() -> None:
    refusals = Refusals()
    refusals.remember("k", FIXED, WINDOW, now=900.0, seconds=0.0, ttl=0.5)
    assert refusals.refused("k", FIXED, 900.49) == WINDOW
    assert refusals.refused("k", FIXED, 900.5) is None


def test_a_clock_that_steps_back_forgets() -> None:
    refusals = Refusals()
    refusals.remember("k", MOVING, WINDOW, now=990.0, seconds=0.0, ttl=60)
    assert refusals.refused("k", MOVING, 989.99) is None
    assert len(refusals) == 0


def test_what_is_not_remembered() -> None:
    refusals = Refusals()
    refusals.remember("sliding", SLIDING, WINDOW, now=990.0, seconds=0.0, ttl=60)  # its count falls
    refusals.remember("freed", MOVING, WINDOW, now=1000.0, seconds=0.0, ttl=60)  # the window is free now
    refusals.remember("late", FIXED, WINDOW, now=999.9, seconds=0.2, ttl=60)  # freed during the call
    assert len(refusals) == 0
    refusals.remember("k", MOVING, WINDOW, now=990.0, seconds=0.0, ttl=60)
    assert refusals.refused("k", FIXED, 990.0) is None  # another strategy (a reload) counts anew


def test_the_entries_are_bounded() -> None:
    refusals = Refusals(max_size=4)
    for i in range(4):
        refusals.remember(f"k{i}", MOVING, WINDOW, now=990.0, seconds=0.0, ttl=1.0 if i else 60.0)
    refusals.remember("k0", MOVING, WINDOW, now=995.0, seconds=0.0, ttl=60)  # a key it holds: no purge
    assert len(refusals) == 4
    refusals.remember("new", MOVING, WINDOW, now=995.0, seconds=0.0, ttl=60)  # 3 expired go, 1 stays
    assert len(refusals) == 2 and refusals.refused("k0", MOVING, 995.0) == WINDOW
    refusals.remember("a", MOVING, WINDOW, now=995.0, seconds=0.0, ttl=60)
    refusals.remember("b", MOVING, WINDOW, now=995.0, seconds=0.0, ttl=60)
    refusals.remember("c", MOVING, WINDOW, now=995.0, seconds=0.0, ttl=60)  # all live: all forgotten
    assert len(refusals) == 1 and refusals.refused("c", MOVING, 995.0) == WINDOW


# --- through the per-IP gate, as the handler runs it


def limits(**values: Any) -> RateLimit:
    return RateLimit.model_validate({"per_ip": "2 per hour", "storage_timeout": 5, **values})


async def check(
    pool: LimiterPool, rate: RateLimit, bucket: Bucket, client: str
) -> tuple[bool, dict[str, str]]:
    """(refused from memory, the refusal's fields); passes (False, {}) when the request passes."""
    store = pool.store(rate.storage, rate.storage_timeout)
    gate = pool.gate(store, rate, bucket, client, Outcome("gw-refusals", "GET"))
    try:
        gate.refuse_remembered()
    except Refused as refused:
        assert refused.error.key == ErrorKey.TOO_MANY_REQUESTS
        return True, dict(refused.headers)
    try:
        await pass_gates(store, [gate])
    except Refused as refused:
        assert refused.error.key == ErrorKey.TOO_MANY_REQUESTS
        return False, dict(refused.headers)
    return False, {}


def reset_of(fields: dict[str, str]) -> int:
    return int(fields["RateLimit"].rsplit("t=", 1)[1])


class Calls:
    """How often the store was asked: Redis's own count of scripts run, or a memory counter's value."""

    def __init__(self, store: MemoryStore | RedisStore, key: str) -> None:
        self.store, self.key = store, key

    async def __call__(self) -> int:
        if isinstance(self.store, RedisStore):
            stats = await bridge.client(self.store.storage).info("commandstats")
            return int(stats["cmdstat_evalsha"]["calls"])
        return self.store.storage.get_sync(self.key)  # fixed window: every hit counts, refused ones too


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    redis: RedisServer = request.getfixturevalue("redis")
    return redis.url


@pytest.mark.parametrize("strategy", [MOVING, FIXED])
async def test_a_flood_is_refused_without_a_store_call_as_the_store_would(
    strategy: Strategy, storage: str
) -> None:
    pool = LimiterPool()
    rate = limits(storage=storage, strategy=strategy)
    bucket = Bucket.parse("per_ip", "2 per hour", f"flood-{strategy}-{time.time_ns()}/per_ip")
    assert [await check(pool, rate, bucket, "203.0.113.5") for _ in range(2)] == [(False, {})] * 2
    remembered, by_store = await check(pool, rate, bucket, "203.0.113.5")
    assert not remembered and by_store  # the store refused it
    store = pool.store(rate.storage, rate.storage_timeout)
    assert isinstance(store, (MemoryStore, RedisStore))
    calls = Calls(store, bucket.keys("203.0.113.5")[0])
    if strategy == FIXED or isinstance(store, RedisStore):
        before = await calls()
        answers = [await check(pool, rate, bucket, "203.0.113.5") for _ in range(20)]
        assert await calls() == before  # not asked again
    else:
        answers = [await check(pool, rate, bucket, "203.0.113.5") for _ in range(20)]
    assert all(remembered for remembered, _ in answers)
    for _, fields in answers:  # the store's answer, its reset counted down from the same window
        assert fields.keys() == by_store.keys() == {"RateLimit-Policy", "RateLimit", "Retry-After"}
        assert fields["RateLimit-Policy"] == by_store["RateLimit-Policy"]
        assert fields["RateLimit"].startswith('"per_ip";r=0;t=')
        assert reset_of(by_store) - 1 <= reset_of(fields) <= reset_of(by_store)
        assert int(fields["Retry-After"]) == max(reset_of(fields), 1)
    other = await check(pool, rate, bucket, "203.0.113.6")  # another client is not refused
    assert other == (False, {})
    await pool.close()


async def test_the_store_is_asked_again_after_the_storage_timeout(storage: str) -> None:
    pool = LimiterPool()
    rate = limits(storage=storage, strategy=FIXED, storage_timeout=0.2)
    bucket = Bucket.parse("per_ip", "1 per hour", f"timeout-{time.time_ns()}/per_ip")
    await check(pool, rate, bucket, "k")
    assert (await check(pool, rate, bucket, "k"))[0] is False  # refused by the store
    store = pool.store(rate.storage, rate.storage_timeout)
    assert isinstance(store, (MemoryStore, RedisStore))
    calls = Calls(store, bucket.keys("k")[0])
    before = await calls()
    assert (await check(pool, rate, bucket, "k"))[0] is True
    await asyncio.sleep(0.25)
    assert (await check(pool, rate, bucket, "k"))[0] is False  # asked, refused, remembered again
    assert await calls() == before + 1
    assert (await check(pool, rate, bucket, "k"))[0] is True
    await pool.close()


@pytest.mark.parametrize("strategy", [MOVING, FIXED])
async def test_a_client_passes_as_soon_as_its_window_frees(strategy: Strategy) -> None:
    pool = LimiterPool()
    rate = limits(strategy=strategy, storage_timeout=30)  # the window, not the timeout, ends the refusal
    bucket = Bucket.parse("per_ip", "1 per second", f"frees-{strategy}-{time.time_ns()}/per_ip")
    assert await check(pool, rate, bucket, "k") == (False, {})
    refused = [await check(pool, rate, bucket, "k") for _ in range(3)]
    assert [remembered for remembered, _ in refused] == [False, True, True]
    await asyncio.sleep(1.05)  # one second after the hit (a fixed window ends on the clock's second)
    assert await check(pool, rate, bucket, "k") == (False, {})
    await pool.close()


async def test_what_every_refusal_asks_the_store_for(redis: RedisServer) -> None:
    """The sliding-window counter and a bucket of several items: refused by the store every time."""
    pool = LimiterPool()
    store = pool.store(redis.url, 5)
    assert isinstance(store, RedisStore)
    calls = Calls(store, "")
    cases = [
        (limits(storage=redis.url, strategy=SLIDING), "1 per hour"),
        (limits(storage=redis.url, strategy=MOVING), "1 per hour;100 per day"),
    ]
    for rate, limit in cases:
        bucket = Bucket.parse("per_ip", limit, f"asked-{rate.strategy}-{time.time_ns()}/per_ip")
        await check(pool, rate, bucket, "k")
        before = await calls()
        answers = [await check(pool, rate, bucket, "k") for _ in range(5)]
        assert all(not remembered and fields for remembered, fields in answers)
        assert await calls() >= before + 5
    await pool.close()


async def test_a_store_seen_down_forgets_what_it_refused(redis: RedisServer) -> None:
    pool = LimiterPool()
    rate = limits(storage=redis.url, storage_timeout=5)
    bucket = Bucket.parse("per_ip", "1 per hour", f"down-{time.time_ns()}/per_ip")
    await check(pool, rate, bucket, "flooder")
    await check(pool, rate, bucket, "flooder")
    assert (await check(pool, rate, bucket, "flooder"))[0] is True
    redis.kill()
    try:
        assert await check(pool, rate, bucket, "another") == (False, {})  # down: allow
        assert await check(pool, rate, bucket, "flooder") == (False, {})  # asked, down: allow
    finally:
        redis.start()
    await pool.close()
