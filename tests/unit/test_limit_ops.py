"""The limiter's own path (a bucket's chain on the stores: one script call per bucket on Redis, one
synchronous run in memory) against `limits`' strategies (hit, then get_window_stats) on the same kind of storage: the
same decisions, headers, keys and data."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.models import Bucket, Strategy
from gateway.ratelimit import (
    Limiter,
    LimiterPool,
    LimitResult,
    StoreUnavailable,
    bridge,
    bucket_result,
    limits_item,
)
from gateway.ratelimit.memory_store import BoundedMemoryStorage, MemoryStore
from gateway.ratelimit.redis_store import CHAIN, RedisStore
from gateway.ratelimit.store import Hit, Reservation, Store
from tests.support.processes import RedisServer, running_redis

STRATEGIES = list(Strategy)
LIMITS_STRATEGIES: dict[Strategy, type[RateLimiter]] = {
    Strategy.MOVING_WINDOW: MovingWindowRateLimiter,
    Strategy.FIXED_WINDOW: FixedWindowRateLimiter,
    Strategy.SLIDING_WINDOW_COUNTER: SlidingWindowCounterRateLimiter,
}
# one item; a later item refusing while the first is counted; the first refusing (the second only read)
BUCKETS = ["3 per 10 seconds", "3 per 10 seconds;5 per minute", "5 per minute;2 per 10 seconds"]
CLIENTS = ["203.0.113.1", "203.0.113.2", "2001:db8:1:2::/64"]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LimitsReference:
    """`limits`' own way, the reference: count in order up to the first refusal with the strategy's `hit`,
    then read every item's window with `get_window_stats` (two storage calls per item)."""

    def __init__(self, storage: Storage, strategy: Strategy) -> None:
        self.storage = storage
        self.strategy = LIMITS_STRATEGIES[strategy](storage)

    async def hit(self, bucket: Bucket, client_key: str) -> LimitResult:
        items = [limits_item(item) for item in bucket.items]
        allowed = True
        for item in items:
            if not await self.strategy.hit(item, bucket.namespace, client_key):
                allowed = False
                break
        windows = [await self.strategy.get_window_stats(i, bucket.namespace, client_key) for i in items]
        steps = [Hit(Strategy.MOVING_WINDOW, item, "", True, True) for item in bucket.items]
        return bucket_result(bucket, steps, [(allowed, window) for window in windows])  # limits' windows


def store_of(storage: Storage) -> Store:
    if isinstance(storage, BoundedMemoryStorage):
        return MemoryStore(storage=storage)
    return RedisStore(storage, 2.0)


def pair(storage: Storage, strategy: Strategy) -> tuple[Limiter, LimitsReference]:
    """The gateway's limiter and `limits`' own strategy calls, on `storage`."""
    return Limiter(store_of(storage), strategy), LimitsReference(storage, strategy)


# --- memory: the store's clock and time.time are driven by the test, so every figure must be equal


@pytest.mark.parametrize("max_keys", [1_000_000, 4])  # 4: the cap drops keys while the test runs
@pytest.mark.parametrize("limit", [*BUCKETS, "2 per second;3 per 2 seconds"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_memory_fused_matches_limits(
    strategy: Strategy, limit: str, max_keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(1_000_000.25)
    monkeypatch.setattr(time, "time", clock)  # limits' sliding window and the headers read time.time
    fused, _ = pair(BoundedMemoryStorage(clock=clock, max_keys=max_keys), strategy)
    _, reference = pair(BoundedMemoryStorage(clock=clock, max_keys=max_keys), strategy)
    bucket = Bucket.parse("per_ip", limit, "shop/per_ip")
    rng = random.Random(f"{strategy} {limit}")
    outcomes = set()
    for step in range(600):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.3, 0.9, 1.7, 4.1, 9.99, 10.0, 31.0])
        client = rng.choice(CLIENTS)
        got = await fused.hit(bucket, client)
        want = await reference.hit(bucket, client)
        assert got == want, (step, client)
        outcomes.add(got.allowed)
    assert outcomes == {True, False}
    assert isinstance(fused.store, MemoryStore)
    mine, theirs = fused.store.storage, reference.storage
    assert isinstance(mine, BoundedMemoryStorage) and isinstance(theirs, BoundedMemoryStorage)
    assert mine.counters == theirs.counters
    assert mine.events == theirs.events
    assert mine.turns.waiting() == theirs.turns.waiting()
    assert mine.evicted == theirs.evicted


async def test_items_sharing_a_key_keep_the_two_call_order() -> None:
    bucket = Bucket.parse("per_ip", "3/minute;3 per minute", "shop/per_ip")
    assert bucket.shares_a_key
    assert not Bucket.parse("per_ip", "3/minute;3 per 60 seconds", "shop/per_ip").shares_a_key
    limiter = Limiter(LimiterPool().store("memory://"), Strategy.MOVING_WINDOW)
    result = await limiter.hit(bucket, "k")
    assert result.headers["RateLimit"] == '"per_ip";r=1;t=60, "per_ip-2";r=1;t=60'  # both hits, then reads


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_items_sharing_a_key_keep_the_two_call_order(
    strategy: Strategy, storage: Storage
) -> None:
    fused, reference = pair(storage, strategy)
    limit = "3/hour;3 per hour"
    mine = Bucket.parse("per_ip", limit, f"shared-mine-{strategy}/per_ip")
    theirs = Bucket.parse("per_ip", limit, f"shared-theirs-{strategy}/per_ip")
    for step in range(3):
        got, want = await fused.hit(mine, "k"), await reference.hit(theirs, "k")
        assert got.allowed == want.allowed == (step == 0)
        assert [r for r, _ in parse(got)] == [r for r, _ in parse(want)], step  # t: see below
    assert [r for r, _ in parse(got)] == [0, 0]


# --- real Redis


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:  # one server for the module's tests
        yield server


@pytest.fixture
def storage(redis_storage: Storage) -> Storage:
    return redis_storage  # on the module's one redis-server (above)


async def snapshot(client: Any, namespace: str) -> dict[str, Any]:
    """Every key of a namespace (named without it), its type and its data."""
    found: dict[str, Any] = {}
    for raw in await client.keys(f"*{namespace}*"):
        key = raw.decode()
        kind = (await client.type(key)).decode()
        value = await client.lrange(key, 0, -1) if kind == "list" else await client.get(key)
        found[key.replace(namespace, "NS")] = (kind, value)
    return found


async def test_redis_moving_window_matches_limits(storage: Storage) -> None:
    """The gateway stamps the moving window's hits with Redis's clock (TIME, so that gateways whose clocks
    differ share one window), `limits` with the client's: on one host the two agree. The hits are timed
    away from the moments a figure turns (a hit leaving its window, a reset crossing a whole second: any
    earlier hit plus whole seconds), and every decision and header must be equal, and the lists alike."""
    fused, reference = pair(storage, Strategy.MOVING_WINDOW)
    rng = random.Random("moving")
    client = bridge.client(storage)
    # one item; a later item refusing while the first is counted; the first refusing (the second only read)
    for i, limit in enumerate(
        ["3 per second", "3 per second;4 per 2 seconds", "4 per 2 seconds;2 per second"]
    ):
        mine = Bucket.parse("per_ip", limit, f"fused{i}/per_ip")
        theirs = Bucket.parse("per_ip", limit, f"limits{i}/per_ip")
        hits: list[float] = []
        seen = set()
        for step in range(12):
            if step:
                await asyncio.sleep(rng.choice([0.0, 0.02, 0.1, 0.25, 0.4]))
            for _ in range(5):  # a late wake-up may land near the next moment: look again
                wait = away_from(time.time(), [h + k for h in hits for k in (0, 1, 2)], margin=0.1)
                if not wait:
                    break
                await asyncio.sleep(wait)
            hits.append(time.time())
            got = await fused.hit(mine, CLIENTS[0])
            assert got == await reference.hit(theirs, CLIENTS[0]), (limit, step)
            seen.add(got.allowed)
        assert seen == {True, False}, limit
        ours, theirs_data = await snapshot(client, f"fused{i}"), await snapshot(client, f"limits{i}")
        assert ours.keys() == theirs_data.keys()
        for key, (kind, stamps) in ours.items():
            other_kind, other = theirs_data[key]
            assert kind == other_kind == "list" and len(stamps) == len(other), key
            # seconds since the epoch on both clocks (not milliseconds, not Redis's uptime)
            assert all(abs(float(a) - float(b)) < 0.05 for a, b in zip(stamps, other, strict=True)), key


def parse(result: LimitResult) -> list[tuple[int, int]]:
    """(remaining, reset) of each item in a RateLimit header."""
    return [(int(r), int(t)) for r, t in re.findall(r";r=(\d+);t=(\d+)", result.headers["RateLimit"])]


def away_from(now: float, boundaries: list[float], margin: float = 0.06) -> float:
    """How long to wait so that `now` is not within `margin` of a window boundary: past every boundary
    whose margin overlaps the next one's."""
    at = now
    for boundary in sorted(boundaries):
        if boundary - margin < at < boundary + margin:
            at = boundary + margin
    return at - now


@pytest.mark.parametrize("strategy", [Strategy.FIXED_WINDOW, Strategy.SLIDING_WINDOW_COUNTER])
async def test_redis_counter_windows_match_limits(strategy: Strategy, storage: Storage) -> None:
    """These windows run on Redis's clock (TTLs), so the hits are timed away from their edges.

    One-second items: the fixed window turns at its first hit plus 1 s (and limits' TTL rounds to 0 after
    0.5 s); the sliding window turns every second after the first hit, and its weighted count changes at
    thirds and halves of a second (previous counts of at most 3).
    """
    fused, reference = pair(storage, strategy)
    limit = "3 per second;2 per second"  # the second item refuses while the first is counted, and vice versa
    mine = Bucket.parse("per_ip", limit, f"fused-{strategy}/per_ip")
    theirs = Bucket.parse("per_ip", limit, f"limits-{strategy}/per_ip")
    rng = random.Random(strategy)
    first = window = time.time()  # the first hit starts both items' windows

    def edges(now: float) -> list[float]:
        if strategy == Strategy.FIXED_WINDOW:
            return [window + 0.5, window + 1.0]
        base = first + int(now - first)
        return [base + k + f for k in (0, 1) for f in (0, 1 / 3, 1 / 2, 2 / 3)]

    seen = []
    for step in range(14):
        now = time.time()
        if step:
            await asyncio.sleep(rng.uniform(0.08, 0.3))
            for _ in range(5):  # away from every edge (a late wake-up may land near the next one)
                now = time.time()
                wait = away_from(now, edges(now))
                if not wait:
                    break
                await asyncio.sleep(wait)
        if strategy == "fixed-window" and now >= window + 1.0:
            window = now  # this hit starts the next window
        got = await fused.hit(mine, "198.51.100.4")
        want = await reference.hit(theirs, "198.51.100.4")
        assert (got.allowed, got.retry_after) == (want.allowed, want.retry_after), step
        assert got.headers.keys() == want.headers.keys()
        assert got.headers.get("Retry-After") == want.headers.get("Retry-After")
        if strategy == Strategy.FIXED_WINDOW:
            # limits reads the reset as TTL, rounded to the nearest second; the gateway as PTTL, so its t
            # is the next whole second (t=1 where limits said t=0 with 0.4 s left)
            assert {**got.headers, "RateLimit": ""} == {**want.headers, "RateLimit": ""}, step
            for (r1, t1), (r2, t2) in zip(parse(got), parse(want), strict=True):
                assert r1 == r2 and t1 - t2 in (0, 1), (step, got.headers, want.headers)
        else:
            # A window's first hit creates its counter with a PTTL of two windows. Read in the same
            # millisecond (always, in one script; often, with limits' two calls) the reset is 0 s away,
            # one millisecond later it is a window away: t=0 or t=1 here, so t may differ by one.
            for (r1, t1), (r2, t2) in zip(parse(got), parse(want), strict=True):
                assert r1 == r2 and abs(t1 - t2) <= 1, (step, got.headers, want.headers)
        seen.append((got.allowed, got.headers["RateLimit"]))
    assert {allowed for allowed, _ in seen} == {True, False}, seen
    client = bridge.client(storage)
    mine_keys = await snapshot(client, f"fused-{strategy}")
    assert set(mine_keys) == set(await snapshot(client, f"limits-{strategy}"))


@pytest.mark.parametrize(("left_ms", "t"), [(1400, 2), (1600, 2)])
async def test_redis_fixed_window_resets_when_its_counter_expires(
    left_ms: int, t: int, storage: Storage
) -> None:
    """The fixed window's reset is its counter's expiry to the millisecond (PTTL), not TTL's whole
    seconds, which Redis rounds to the nearest: 1.4 s left said t=1 (a client told to come back in 1 s is
    refused again), 1.6 s left put the reset 0.4 s late (a refusal remembered up to `storage_timeout`
    outlived the window, refusing what the store would let pass). Memory's figure is exact already."""
    limiter = Limiter(RedisStore(storage, 2.0), Strategy.FIXED_WINDOW)
    bucket = Bucket.parse("per_ip", "2 per 5 seconds", f"pttl-{left_ms}/per_ip")
    key = bridge.prefixed_key(storage, bucket.keys("198.51.100.9")[0])
    before = time.time()
    await bridge.client(storage).set(key, 2, px=left_ms)  # the window's two hits, 5 - left_ms ago
    expires = (before + left_ms / 1000, time.time() + left_ms / 1000)  # between the two
    result = await limiter.hit(bucket, "198.51.100.9")
    assert not result.allowed
    assert parse(result) == [(0, t)] and result.retry_after == t
    read = limiter.steps(bucket, "198.51.100.9")[0]._replace(counts=False)
    sent = time.time()
    (answer,) = await limiter.store.chain([read])
    # the counter's expiry, but for the reply's way back (read on this host's clock after it came)
    assert isinstance(answer, tuple) and not isinstance(answer, Reservation)
    window = answer[1]
    assert window is not None
    assert expires[0] - 0.001 <= window.reset_time <= expires[1] + (time.time() - sent) + 0.001


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_one_command_per_bucket(
    strategy: Strategy, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bridge.client(storage)
    limiter = Limiter(store_of(storage), strategy)
    bucket = Bucket.parse("per_ip", "100 per hour;50 per minute", f"calls-{strategy}/per_ip")
    await limiter.hit(bucket, "k")  # loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA)

    async def commands() -> dict[str, int]:  # what Redis itself counted, by command
        stats = await client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    before = await commands()
    for _ in range(10):
        assert (await limiter.hit(bucket, "k")).allowed
    after = await commands()
    changed = {
        name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)
    }
    assert changed["evalsha"] == 10  # one per bucket (commandstats also counts what the scripts run inside)
    assert not [name for name in changed if name.startswith(("script", "eval")) and name != "evalsha"]
    bucket = Bucket.parse("per_ip", "1 per hour;50 per minute;60 per minute", f"refused-{strategy}/per_ip")
    before = await commands()
    assert (await limiter.hit(bucket, "k")).allowed
    assert not (await limiter.hit(bucket, "k")).allowed
    after = await commands()
    assert after["evalsha"] - before["evalsha"] == 2  # the items after a refusal are read in the same command


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_script_cache_flush(strategy: Strategy, storage: Storage) -> None:
    """After SCRIPT FLUSH (a restarted Redis) the script loads itself again and the hit counts once."""
    client = bridge.client(storage)
    limiter = Limiter(store_of(storage), strategy)
    bucket = Bucket.parse("per_ip", "5 per hour", f"flush-{strategy}/per_ip")
    first = await limiter.hit(bucket, "k")
    assert first.headers["RateLimit"].startswith('"per_ip";r=4;')
    await client.script_flush()
    second = await limiter.hit(bucket, "k")
    assert second.headers["RateLimit"].startswith('"per_ip";r=3;')
    third = await limiter.hit(bucket, "k")
    assert third.headers["RateLimit"].startswith('"per_ip";r=2;')


async def test_start_loads_the_fused_scripts(redis: RedisServer) -> None:
    pool = LimiterPool()
    limiter = Limiter(pool.store(redis.url, 0.5), Strategy.FIXED_WINDOW)
    assert isinstance(limiter.store, RedisStore)
    client = bridge.client(limiter.store.storage)
    await client.script_flush()
    await pool.start()
    assert await client.script_exists(hashlib.sha1(CHAIN.encode()).hexdigest()) == [True]
    await pool.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_script_errors_are_store_errors(strategy: Strategy, storage: Storage) -> None:
    """A Redis error in a script (here WRONGTYPE) surfaces as StoreUnavailable, like limits' own calls."""
    client = bridge.client(storage)
    limiter = Limiter(store_of(storage), strategy)
    bucket = Bucket.parse("per_ip", "5 per hour", f"wrong-{strategy}/per_ip")
    key = bucket.items[0].key_for(bucket.namespace, "k")
    for name in (key, f"{{{key}}}", f"{{{key}}}/-1"):
        await client.hset(f"LIMITS:{name}", "x", "1")
    with pytest.raises(StoreUnavailable, match="ResponseError"):
        await limiter.hit(bucket, "k")


async def test_redis_cluster(cluster_node: RedisServer) -> None:
    """Through redis-py's cluster client: each script call is routed by its keys' slot."""
    pool = LimiterPool()
    uri = f"redis+cluster://127.0.0.1:{cluster_node.port}"
    store = pool.store(uri, 2.0)
    assert isinstance(store, RedisStore)
    await pool.start()
    try:
        for strategy in STRATEGIES:
            fused, reference = pair(store.storage, strategy)
            limit = "3 per hour;2 per minute"
            mine = Bucket.parse("per_ip", limit, f"fused-{strategy}/per_ip")
            theirs = Bucket.parse("per_ip", limit, f"limits-{strategy}/per_ip")
            for step in range(4):
                got = await fused.hit(mine, "k")
                want = await reference.hit(theirs, "k")
                assert got.allowed == want.allowed == (step < 2)
                # the sliding window's t depends on the millisecond (see above): compare what is remaining
                assert [r for r, _ in parse(got)] == [r for r, _ in parse(want)], (strategy, step)
            await bridge.client(store.storage).script_flush()
            assert [r for r, _ in parse(await fused.hit(mine, "other"))] == [2, 1]
    finally:
        await pool.close()
