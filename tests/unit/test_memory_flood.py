"""An address-rotation flood against the in-memory store: expired keys are reclaimed, memory stays bounded.

A million distinct client IPs go through the limiter (bucket key, strategy, storage), not HTTP. The store's
clock is driven by the test, so expiry needs no sleeping.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.client_ip import bucket_key
from gateway.models import Bucket, Strategy
from gateway.ratelimit import Limiter, LimiterPool, LimitResult, limits_item
from gateway.ratelimit.memory_store import BoundedMemoryStorage, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Flooded:
    """The gateway's limiter on a memory store, and `limits`' own strategy on the same storage (for speed:
    a million hits)."""

    def __init__(self, limiter: Limiter, storage: BoundedMemoryStorage, strategy: Strategy) -> None:
        self.limiter, self.storage = limiter, storage
        self.strategy = LIMITS_STRATEGIES[strategy](storage)

    async def hit(self, bucket: Bucket, key: str) -> LimitResult:
        return await self.limiter.hit(bucket, key)


LIMITS_STRATEGIES: dict[Strategy, Callable[[BoundedMemoryStorage], RateLimiter]] = {
    Strategy.MOVING_WINDOW: MovingWindowRateLimiter,
    Strategy.FIXED_WINDOW: FixedWindowRateLimiter,
    Strategy.SLIDING_WINDOW_COUNTER: SlidingWindowCounterRateLimiter,
}


def memory_limiter(
    strategy: str, clock: Clock, max_keys: int = 1_000_000
) -> tuple[Flooded, BoundedMemoryStorage]:
    limiter = Limiter(LimiterPool().store("memory://"), Strategy(strategy))
    store = limiter.store
    assert isinstance(store, MemoryStore)
    storage = store.storage
    storage.clock = clock
    storage.max_keys = max_keys
    return Flooded(limiter, storage, Strategy(strategy)), storage


@pytest.mark.parametrize(
    ("strategy", "flood"),
    [("moving-window", 1_000_000), ("fixed-window", 200_000), ("sliding-window-counter", 200_000)],
)
async def test_rotation_flood_is_reclaimed(strategy: str, flood: int) -> None:
    clock = Clock()
    limiter, storage = memory_limiter(strategy, clock)
    bucket = Bucket.parse("per_ip", "5 per 5 seconds", "shop/per_ip")
    item = limits_item(bucket.items[0])
    rate = 10_000  # distinct new addresses per (simulated) second
    peak = 0
    for i in range(flood):
        clock.now += 1 / rate
        key = bucket_key(IPv4Address(0x0A000000 + i), 64)
        assert await limiter.strategy.hit(item, bucket.namespace, key)  # every address is new
        if i % 10_000 == 0:
            peak = max(peak, len(storage))
    # Keys live one window (two for the sliding window's counters): 5 s x 10k/s, not the whole flood.
    live_bound = rate * 5 * (2 if strategy == "sliding-window-counter" else 1) + 1_000
    assert peak <= live_bound
    assert len(storage) <= live_bound
    assert len(storage.turns) <= live_bound
    clock.now += 11
    assert await limiter.strategy.hit(item, bucket.namespace, "192.0.2.1")
    assert len(storage) == 1  # everything else expired and was reclaimed
    assert len(storage.turns) == 1
    assert storage.evicted == 0


async def test_hard_cap_bounds_a_flood_faster_than_expiry() -> None:
    clock = Clock()
    limiter, storage = memory_limiter("moving-window", clock, max_keys=5_000)
    bucket = Bucket.parse("per_ip", "5 per hour", "shop/per_ip")
    for i in range(100_000):
        await limiter.strategy.hit(
            limits_item(bucket.items[0]), bucket.namespace, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        )
        assert len(storage) <= 5_000
    assert storage.evicted == 95_000


def test_a_client_that_keeps_coming_back_does_not_hold_the_others_in_memory() -> None:
    # Keys wait in a queue per window in the order they came. A regular at its front, hit again before each
    # of its turns, must go to the back each time: were it left at the front, the rotating addresses behind
    # it would never be reclaimed.
    clock = Clock()
    storage = BoundedMemoryStorage(clock=clock)
    for second in range(600):
        clock.now += 1
        assert storage.acquire_entry_sync("regular", 1000, 10)
        for i in range(100):
            assert storage.acquire_entry_sync(f"rotating/{second}/{i}", 5, 10)
        assert len(storage) <= 1 + 100 * 11  # the regular, and at most 11 seconds' addresses
    assert len(storage.turns) == len(storage)
    last = clock.now
    clock.now = last + 10.5  # the regular's last hit has left its window; it is reclaimed by the next turn
    storage.acquire_entry_sync("late", 5, 10)
    clock.now = last + 20.5
    storage.acquire_entry_sync("later", 5, 10)
    assert "regular" not in storage.events and len(storage) <= 2


def test_the_cap_drops_the_key_closest_to_expiry_whatever_its_window() -> None:
    clock = Clock()
    storage = BoundedMemoryStorage(clock=clock, max_keys=2)
    assert storage.acquire_entry_sync("hourly", 5, 3600)  # the oldest key, due in an hour
    clock.now += 1
    assert storage.acquire_entry_sync("per-second", 5, 1)  # due in one second
    clock.now += 0.5
    assert storage.incr_sync("counter", 60) == 1  # a third key: past the cap
    assert set(storage.events) == {"hourly"} and set(storage.counters) == {"counter"}
    assert storage.evicted == 1


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_ipv6_rotation_inside_one_prefix_shares_one_bucket(strategy: str) -> None:
    clock = Clock()
    limiter, storage = memory_limiter(strategy, clock)
    bucket = Bucket.parse("per_ip", "5 per hour", "shop/per_ip")
    base = int(IPv6Address("2001:db8:1:2::"))
    allowed = 0
    for i in range(20_000):
        address = IPv6Address(base + (i * 0x9E3779B97F4A7C15 % (1 << 64)))  # spread over the /64
        result = await limiter.hit(bucket, bucket_key(address, 64))
        allowed += result.allowed
    assert allowed == 5
    assert len(storage) <= 2  # one bucket (the sliding window counts in two keys)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_limits_hold_and_return_after_the_window(strategy: str) -> None:
    clock = Clock()
    clock.now = 1_000_000.5  # inside a window, away from its edges
    limiter, _ = memory_limiter(strategy, clock)
    bucket = Bucket.parse("per_ip", "3 per 10 seconds", "shop/per_ip")
    results = [await limiter.hit(bucket, "203.0.113.5") for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    clock.now += 25  # two windows later even the sliding window's previous count is gone
    assert (await limiter.hit(bucket, "203.0.113.5")).allowed


def test_a_client_in_the_moving_window_costs_a_few_hundred_bytes() -> None:
    """What the store holds per client for one hit in a moving window (keys made beforehand): its packed
    hit times, dict slot and queue entry. A deque per key had cost ~800 bytes more, ~0.75 GB at a million
    clients; a heap entry per key ~90 bytes more."""

    storage = BoundedMemoryStorage(clock=Clock())
    keys = [f"shop/per_ip/10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(20_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            assert storage.acquire_entry_sync(key, 1000, 3600)
        held = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert held < 160, f"{held:.0f} bytes per client"


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_what_the_window_holds_per_client_leaves_the_garbage_collector_nothing_to_track(
    strategy: str,
) -> None:
    # Every full collection walks every tracked object, and the event loop waits for it. A list per client
    # (a key's hits, or a counter) made each one walk a million of them at a million clients in the
    # window: ~0.75 s without an answer to anyone (bench/RESULTS.md, seventh session).
    clock = Clock()
    limiter, storage = memory_limiter(strategy, clock)
    bucket = Bucket.parse("per_ip", "3 per hour", "shop/per_ip")
    for i in range(300):
        for _ in range(i % 5):  # none to four hits each: to the limit and past it
            clock.now += 0.5
            await limiter.hit(bucket, f"10.0.{i // 256}.{i % 256}")
    gc.collect()
    held = [*storage.counters.values(), *storage.events.values()]
    assert len(held) >= 240 and len(storage.turns) >= 240  # a value and a turn for each client hit
    assert not any(gc.is_tracked(value) for value in held)
    queues = storage.turns.waiting()  # what waits is plain strings and floats, in a queue per window
    assert 1 <= len(queues) <= 2  # (two for the sliding window; each queue is a deque and an array)
    assert not any(gc.is_tracked(key) for _, keys, _ in queues for key in keys)
