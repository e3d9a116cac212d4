"""An in-process limit storage whose size is bounded, for `memory://`.

Why not `limits`' own `MemoryStorage`: its expiry task walks every key with one `asyncio.to_thread` call and
one `asyncio.Lock` each, so under an address-rotation flood (a million distinct client IPs) one sweep takes
minutes while new keys keep arriving, and memory grows with the flood (see the README's "Scaling out").

Here every operation is synchronous inside its coroutine, so it is atomic on the event loop and needs no
lock. Each key has exactly one entry in a heap ordered by when it expires; every call first pops what is
due, so expired keys are reclaimed in amortised O(log n) without a background task. A hard cap
(`max_keys`) bounds memory even when a flood outpaces expiry: the keys closest to expiry are dropped first.

It implements what the three `limits` strategies need (counters for fixed windows and the sliding window
counter, timestamp lists for the moving window), so `limits`' strategies run on it unchanged. Each of those
methods has a synchronous twin (`..._sync`) that the gateway's limiter calls directly (gateway/limit_ops.py).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from math import floor

from limits.aio.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

log = logging.getLogger("gateway.ratelimit")

DEFAULT_MAX_KEYS = 1_000_000
_COUNTER, _EVENTS = 0, 1


class BoundedMemoryStorage(
    Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow
):
    STORAGE_SCHEME = ["async+gateway-memory"]  # noqa: RUF012 - the registry reads it as a class attribute

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.time,
        **options: str,
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self.counters: dict[str, list[float]] = {}  # key -> [count, expires_at]
        self.events: dict[str, deque[float]] = {}  # key -> hit timestamps, oldest first
        self._due: list[tuple[float, int, str, float]] = []  # (when, kind, key, window) one per key
        self.evicted = 0  # live keys dropped because of the cap
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return len(self.counters) + len(self.events)

    # ------------------------------------------------------------------------------------ bookkeeping

    def _reap(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, kind, key, window = heapq.heappop(due)
            if kind == _COUNTER:
                entry = self.counters.get(key)
                if entry is not None and entry[1] <= now:
                    del self.counters[key]
                elif entry is not None:  # pragma: no cover - a counter is only renewed after its entry popped
                    heapq.heappush(due, (entry[1], _COUNTER, key, window))
            else:
                hits = self.events.get(key)
                if hits is None:
                    continue
                if not hits or hits[-1] + window <= now:
                    del self.events[key]
                else:
                    heapq.heappush(due, (hits[-1] + window, _EVENTS, key, window))

    def _track(self, when: float, kind: int, key: str, window: float) -> None:
        heapq.heappush(self._due, (when, kind, key, window))
        while len(self) > self.max_keys and self._due:
            _, kind, victim, _ = heapq.heappop(self._due)
            removed = (self.counters if kind == _COUNTER else self.events).pop(victim, None)
            if removed is not None:
                if self.evicted == 0:
                    log.warning("memory rate-limit store full (%d keys), dropping oldest", self.max_keys)
                self.evicted += 1

    # ------------------------------------------------------------------------------------ counters

    def _incr(self, key: str, expiry: float, amount: int, now: float) -> int:
        self._reap(now)
        entry = self.counters.get(key)
        if entry is None or entry[1] <= now:
            entry = [0, now + expiry]
            self.counters[key] = entry
            self._track(now + expiry, _COUNTER, key, expiry)
        entry[0] += amount
        return int(entry[0])

    def _get(self, key: str, now: float) -> int:
        entry = self.counters.get(key)
        return int(entry[0]) if entry is not None and entry[1] > now else 0

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.incr_sync(key, expiry, amount)

    def incr_sync(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._incr(key, expiry, amount, self.clock())

    async def get(self, key: str) -> int:
        return self.get_sync(key)

    def get_sync(self, key: str) -> int:
        return self._get(key, self.clock())

    async def get_expiry(self, key: str) -> float:
        return self.get_expiry_sync(key)

    def get_expiry_sync(self, key: str) -> float:
        now = self.clock()
        entry = self.counters.get(key)
        return entry[1] if entry is not None and entry[1] > now else now

    async def clear(self, key: str) -> None:
        self.counters.pop(key, None)
        self.events.pop(key, None)

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self)
        self.counters.clear()
        self.events.clear()
        self._due.clear()
        return count

    # ------------------------------------------------------------------------------------ moving window

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_entry_sync(key, limit, expiry, amount)

    def acquire_entry_sync(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        self._reap(now)
        hits = self.events.get(key)
        if hits is None:
            hits = self.events[key] = deque()
            self._track(now + expiry, _EVENTS, key, expiry)
        while hits and hits[0] < now - expiry:
            hits.popleft()
        if len(hits) + amount > limit:
            return False
        hits.extend([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.get_moving_window_sync(key, expiry)

    def get_moving_window_sync(self, key: str, expiry: int) -> tuple[float, int]:
        now = self.clock()
        hits = self.events.get(key)
        if hits:
            while hits and hits[0] < now - expiry:
                hits.popleft()
            if hits:
                return hits[0], len(hits)
        return now, 0

    # ------------------------------------------------------------------------------------ sliding window

    def _window_info(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        previous = self._get(previous_key, now)
        current = self._get(current_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_sliding_window_entry_sync(key, limit, expiry, amount)

    def acquire_sliding_window_entry_sync(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous, previous_ttl, current, _ = self._window_info(previous_key, current_key, expiry, now)
        if floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False
        self._incr(current_key, 2 * expiry, amount, now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.get_sliding_window_sync(key, expiry)

    def get_sliding_window_sync(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        return self._window_info(previous_key, current_key, expiry, now)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, self.clock())
        await self.clear(previous_key)
        await self.clear(current_key)
