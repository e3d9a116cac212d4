"""Counting a request in a bucket without `limits`' strategy layer: one storage call per item for Redis.

`limits`' strategies count a hit (`hit`) and read the window (`get_window_stats`) in separate storage calls:
two Redis round trips per item (three for the fixed window), and in memory two passes per item through
`limits`' async strategy and storage wrappers. A `BucketCounter` answers what those calls answered:

- whether the request may pass: items are counted in order, and counting stops at the first item that
  refuses it (the items after it are only read, so they are not charged for a refused request);
- every item's `WindowStats` (reset time, remaining), computed from the storage's answer exactly as
  `limits`' `get_window_stats` computes it.

Redis (`limits`' Redis storages on redis-py: plain, Sentinel or Cluster): one EVALSHA per item that counts
and reads at once, with the gateway's scripts in `redis_store` (not one per bucket: a bucket's items may
live in different cluster slots). Memory (`BoundedMemoryStorage`): the store's synchronous methods, called
directly in the strategies' order, so a bucket costs no await at all. Any other storage has no counter
here, and `Limiter` keeps `limits`' two-call path for it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from math import floor, inf
from typing import Any

from limits.aio.storage import RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.errors import StorageError
from limits.util import WindowStats

from gateway.models import RateItem
from gateway.ratelimit import redis_store
from gateway.ratelimit.memory_store import BoundedMemoryStorage
from gateway.ratelimit.redis_batch import ScriptBatcher, batcher_for

# (items, their storage keys for one client) -> (allowed, one WindowStats per item)
BucketCounter = Callable[[Sequence[RateItem], list[str]], Awaitable[tuple[bool, list[WindowStats]]]]
# (item, storage key) -> counted / the item's window
MemoryCount = Callable[[RateItem, str], bool]
MemoryRead = Callable[[RateItem, str], WindowStats]
# (item, storage key, count?) -> (counted, the item's window); `counted` is False when not counting
RedisOp = Callable[[RateItem, str, bool], Awaitable[tuple[bool, WindowStats]]]


def bucket_counter(storage: Storage, strategy: str) -> BucketCounter | None:
    """The fused counter for this storage and strategy, or None when there is none (two-call path)."""
    if isinstance(storage, BoundedMemoryStorage):
        return _memory_counter(*MEMORY_OPS[strategy](storage))
    if isinstance(storage, RedisStorage) and isinstance(storage.bridge, RedispyBridge):
        return _redis_counter(REDIS_OPS[strategy](storage))
    return None


def _memory_counter(count: MemoryCount, read: MemoryRead) -> BucketCounter:
    async def counter(items: Sequence[RateItem], keys: list[str]) -> tuple[bool, list[WindowStats]]:
        allowed = True
        for item, key in zip(items, keys, strict=True):
            if not count(item, key):
                allowed = False
                break
        return allowed, [read(item, key) for item, key in zip(items, keys, strict=True)]

    return counter


def _redis_counter(op: RedisOp) -> BucketCounter:
    async def counter(items: Sequence[RateItem], keys: list[str]) -> tuple[bool, list[WindowStats]]:
        allowed = True
        windows = []
        for item, key in zip(items, keys, strict=True):
            counted, window = await op(item, key, allowed)
            allowed = allowed and counted
            windows.append(window)
        return allowed, windows

    return counter


def _sliding_window_stats(
    item: RateItem, previous: int, previous_expires_in: float, current: int, current_expires_in: float
) -> WindowStats:
    """`SlidingWindowCounterRateLimiter.get_window_stats` on a `get_sliding_window` answer."""
    expiry = item.expiry
    remaining = max(0, item.amount - floor(previous * previous_expires_in / expiry + current))
    now = time.time()
    if not (previous or current):
        return WindowStats(now, remaining)
    previous_reset_in, current_reset_in = inf, inf
    if previous:
        previous_reset_in = previous_expires_in % (expiry / previous)
    if current:
        current_reset_in = current_expires_in % expiry
    return WindowStats(now + min(previous_reset_in, current_reset_in), remaining)


# ---------------------------------------------------------------------------------------------- memory
# The strategy's calls in the strategy's order (count up to the first refusal, then read every item), but
# each a direct synchronous call: no await, no pass through `limits`' async layers. Keeping the order keeps
# every figure the same, even when the store's cap drops a key in between or two items share a key.


def _memory_moving_window(storage: BoundedMemoryStorage) -> tuple[MemoryCount, MemoryRead]:
    def count(item: RateItem, key: str) -> bool:
        return storage.acquire_entry_sync(key, item.amount, item.expiry)

    def read(item: RateItem, key: str) -> WindowStats:
        start, hits = storage.get_moving_window_sync(key, item.expiry)
        return WindowStats(start + item.expiry, item.amount - hits)

    return count, read


def _memory_fixed_window(storage: BoundedMemoryStorage) -> tuple[MemoryCount, MemoryRead]:
    def count(item: RateItem, key: str) -> bool:
        return storage.incr_sync(key, item.expiry) <= item.amount

    def read(item: RateItem, key: str) -> WindowStats:
        remaining = max(0, item.amount - storage.get_sync(key))
        return WindowStats(storage.get_expiry_sync(key), remaining)

    return count, read


def _memory_sliding_window(storage: BoundedMemoryStorage) -> tuple[MemoryCount, MemoryRead]:
    def count(item: RateItem, key: str) -> bool:
        return storage.acquire_sliding_window_entry_sync(key, item.amount, item.expiry)

    def read(item: RateItem, key: str) -> WindowStats:
        return _sliding_window_stats(item, *storage.get_sliding_window_sync(key, item.expiry))

    return count, read


MEMORY_OPS: dict[str, Callable[[BoundedMemoryStorage], tuple[MemoryCount, MemoryRead]]] = {
    "moving-window": _memory_moving_window,
    "fixed-window": _memory_fixed_window,
    "sliding-window-counter": _memory_sliding_window,
}


# ---------------------------------------------------------------------------------------------- redis


def _script(storage: RedisStorage, text: str) -> Callable[[list[str], list[Any]], Awaitable[Any]]:
    """The script registered on the storage's client (the primary, where `limits` runs its scripts).

    redis-py's Script loads itself again on NOSCRIPT (a restarted Redis). Client errors are raised as
    `limits.errors.StorageError`, as `limits`' own storage methods do with `wrap_exceptions=True`.
    """
    bridge = storage.bridge
    assert isinstance(bridge, RedispyBridge)  # bucket_counter checked it
    client = bridge.get_connection()
    script = client.register_script(text.encode())
    errors, wrap = storage.base_exceptions, storage.wrap_exceptions
    batcher = _batcher(client)

    async def call(keys: list[str], args: list[Any]) -> Any:
        try:
            if batcher is not None:
                return await batcher.call(script, keys, args)
            return await script(keys, args)
        except errors as exc:
            if wrap:
                raise StorageError(exc) from exc
            raise

    return call


def _batcher(client: Any) -> ScriptBatcher | None:
    """The client's one batcher (shared by its scripts and the primitives'), or None for a cluster client."""
    return batcher_for(client)


def _redis_moving_window(storage: RedisStorage) -> RedisOp:
    call, prefixed = _script(storage, redis_store.MOVING_WINDOW_HIT), storage.bridge.prefixed_key

    async def op(item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        expiry, timestamp = item.expiry, time.time()
        reply = await call([prefixed(key)], [timestamp, item.amount, expiry, int(count)])
        hits = int(reply[1])
        start = float(reply[2]) if hits else timestamp  # RedispyBridge.get_moving_window
        return reply[0] == 1, WindowStats(start + expiry, item.amount - hits)

    return op


def _redis_fixed_window(storage: RedisStorage) -> RedisOp:
    call, prefixed = _script(storage, redis_store.FIXED_WINDOW_HIT), storage.bridge.prefixed_key

    async def op(item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        current, ttl = await call([prefixed(key)], [item.expiry, int(count)])
        reset = max(int(ttl), 0) + time.time()  # RedispyBridge.get_expiry
        return count and int(current) <= item.amount, WindowStats(reset, max(0, item.amount - int(current)))

    return op


def _redis_sliding_window(storage: RedisStorage) -> RedisOp:
    call, prefixed = _script(storage, redis_store.SLIDING_WINDOW_HIT), storage.bridge.prefixed_key

    async def op(item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        # limits' keys: "{key}/-1" and "{key}", one hash tag so one cluster slot
        keys = [prefixed(storage._previous_window_key(key)), prefixed(storage._current_window_key(key))]
        reply = await call(keys, [item.amount, item.expiry, int(count)])
        return reply[0] == 1, _sliding_window_stats(  # RedispyBridge.get_sliding_window's conversions
            item,
            int(reply[1] or 0),
            max(0, float(reply[2] or 0)) / 1000,
            int(reply[3] or 0),
            max(0, float(reply[4] or 0)) / 1000,
        )

    return op


REDIS_OPS: dict[str, Callable[[RedisStorage], RedisOp]] = {
    "moving-window": _redis_moving_window,
    "fixed-window": _redis_fixed_window,
    "sliding-window-counter": _redis_sliding_window,
}
