"""Per-IP rate limits on the `limits` library's async API, with Voucherify's 429 and IETF draft headers.

A `Bucket` is one named budget of a project (`per_ip`, or an operation with its own limit); the client's
bucket key (an IPv4 address or IPv6 prefix) is counted in it. Storages outlive policy reloads: the pool
hands the same storage to every policy that names the same URI, so counts survive a reload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.limits import GRANULARITIES
from limits.util import WindowStats

from gateway.models import Bucket, RateItem
from gateway.ratelimit import ops as limit_ops
from gateway.ratelimit import redis_store
from gateway.ratelimit.memory_store import BoundedMemoryStorage, MemoryStore
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.store import Store
from gateway.ratelimit.store import StoreUnavailable as StoreUnavailable  # app.py imports it here

log = logging.getLogger("gateway.ratelimit")

STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    headers: dict[str, str]
    retry_after: int  # seconds until the exhausted budget returns (0 when allowed)


def open_storage(uri: str, timeout: float = 0.5) -> Storage:
    """A storage for a policy URI: the bounded in-memory store, or Redis with timeouts and a bounded pool."""
    if uri.startswith("memory://"):
        return BoundedMemoryStorage()
    if redis_store.is_redis(uri):
        return redis_store.redis_storage(uri, timeout)
    raise ValueError(f"not a storage URI the policy accepts: {uri.split('://', 1)[0]}://")


class Limiter:
    """One storage and strategy; `hit` counts a request in a bucket and says whether it may pass.

    The bucket is counted by `limit_ops.bucket_counter`, chosen here once for the storage and strategy:
    on Redis one script call per item that counts the hit and reads the window, in memory the store's
    synchronous methods. Storages without a counter, and buckets whose items share a key (where reading
    an item's window before the next item counts in the same key would show), take `limits`' strategy
    calls: `hit` per item, then `get_window_stats` per item.
    """

    def __init__(self, storage: Storage, strategy: str) -> None:
        self.storage = storage
        self.strategy: RateLimiter = STRATEGIES[strategy](storage)
        self.fused = limit_ops.bucket_counter(storage, strategy)
        # Nothing on the memory store's paths suspends (no await inside), so a timeout around them could
        # never fire; it would only cost about half of a memory hit.
        self.timed = not isinstance(storage, BoundedMemoryStorage)

    async def hit(self, bucket: Bucket, client_key: str, timeout: float) -> LimitResult:
        try:
            if not self.timed:
                return await self._hit(bucket, client_key)
            async with asyncio.timeout(timeout):  # unlike wait_for (3.11), no extra task per request
                return await self._hit(bucket, client_key)
        except (TimeoutError, StorageError, ConnectionError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _hit(self, bucket: Bucket, client_key: str) -> LimitResult:
        if self.fused is None or bucket.shares_a_key:
            allowed, windows = await self.two_calls(bucket, client_key)
        else:
            allowed, windows = await self.fused(bucket.items, bucket.keys(client_key))
        return _result(bucket, allowed, windows)

    async def two_calls(self, bucket: Bucket, client_key: str) -> tuple[bool, list[WindowStats]]:
        """`limits`' own way: count in order up to the first refusal, then read every item's window."""
        items = [limits_item(item) for item in bucket.items]
        allowed = True
        for item in items:
            if not await self.strategy.hit(item, bucket.namespace, client_key):
                allowed = False
                break
        windows = [await self.strategy.get_window_stats(i, bucket.namespace, client_key) for i in items]
        return allowed, windows


def limits_item(item: RateItem) -> RateLimitItem:
    """`limits`' own item for one of ours (same amount, window and storage key)."""
    return GRANULARITIES[item.granularity](item.amount, item.multiples)


def _result(bucket: Bucket, allowed: bool, windows: list[WindowStats]) -> LimitResult:
    now = time.time()
    parts: list[str] = []
    retry_after = 0
    for name, stats in zip(bucket.item_names, windows, strict=True):
        reset = max(0, math.ceil(stats.reset_time - now))
        parts.append(f'"{name}";r={stats.remaining};t={reset}')
        if stats.remaining == 0:
            retry_after = max(retry_after, reset, 1)
    headers = {"RateLimit-Policy": bucket.policy_header, "RateLimit": ", ".join(parts)}
    retry = 0 if allowed else max(retry_after, 1)
    if retry:
        headers["Retry-After"] = str(retry)
    return LimitResult(allowed, headers, retry)


class LimiterPool:
    """Storages by URI and limiters by (URI, strategy), shared across policy reloads.

    One storage (so one Redis connection pool) per URI and process. `start` opens the Redis connections and
    loads the Lua scripts before the first request; storages a reload adds are prepared in the background.
    """

    def __init__(self) -> None:
        self._storages: dict[str, Storage] = {}
        self._limiters: dict[tuple[str, str], Limiter] = {}
        self._stores: dict[str, MemoryStore | RedisStore] = {}
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, uri: str, strategy: str, timeout: float = 0.5) -> Limiter:
        limiter = self._limiters.get((uri, strategy))
        if limiter is None:
            self._open(uri, timeout)
            limiter = self._limiters[(uri, strategy)] = Limiter(self._storages[uri], strategy)
        return limiter

    def store(self, uri: str, timeout: float = 0.5) -> Store:
        """The counters of gateway/ratelimit/store.py on the storage of `uri`, their calls bounded by
        `timeout` (the policy's `storage_timeout`). One per URI and process: every project, policy and
        timeout naming the same URI shares its counts."""
        store = self._stores.get(uri)
        if store is None:
            self._open(uri, timeout)
            storage = self._storages[uri]
            if isinstance(storage, BoundedMemoryStorage):
                store = MemoryStore(timeout)
            else:
                store = RedisStore(storage, timeout)
            self._stores[uri] = store
        return store.bound(timeout)

    def _open(self, uri: str, timeout: float) -> None:
        if uri not in self._storages:
            self._storages[uri] = open_storage(uri, timeout)
            if self._started:
                task = asyncio.get_running_loop().create_task(self._prepare(uri, timeout))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _prepare(self, uri: str, timeout: float) -> None:
        storage = self._storages.get(uri)
        if storage is None:
            return
        try:
            await asyncio.wait_for(redis_store.prepare(storage), max(timeout, 1.0))
        except Exception as exc:  # an unreachable store is handled per request (on_storage_error)
            log.warning("rate-limit store not reachable at start-up (%s)", type(exc).__name__)

    async def start(self, timeout: float = 1.0) -> None:
        """Open each Redis storage's first connection and load its scripts (at start-up)."""
        self._started = True
        await asyncio.gather(*(self._prepare(uri, timeout) for uri in list(self._storages)))

    async def check(self) -> dict[str, bool]:
        """Reachability of every storage in use (for readiness)."""
        results: dict[str, bool] = {}
        for uri, storage in self._storages.items():
            try:
                results[uri] = bool(await asyncio.wait_for(storage.check(), 1.0))
            except Exception:  # any failure means not ready
                results[uri] = False
        return results

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for storage in self._storages.values():
            try:
                await redis_store.close(storage)
            except Exception:  # closing is best effort at shutdown
                log.debug("closing a limit storage failed", exc_info=True)
        self._storages.clear()
        self._limiters.clear()
        self._stores.clear()
        self._started = False
