"""The counter interface every limit store implements (`Store`), and what its calls answer.

One implementation per store kind: `MemoryStore` (gateway/ratelimit/memory_store.py, per process, bounded)
and `RedisStore` (gateway/ratelimit/redis_store.py: plain Redis, Sentinel or Cluster, shared by every worker
and every gateway on it). Get one with `LimiterPool.store(uri, timeout)`; the same URI gives the same
counts, whatever the timeout.

Failures: every call either answers or raises `StoreUnavailable` (the store failed, refused the call, or did
not answer within the store's timeout, which is the policy's `storage_timeout`). A call that raised may or
may not have taken effect in Redis (the reply can be lost after the script ran): callers treat it as
unknown, e.g. a `reserve` that raised holds nothing the caller knows of, and whatever it held leaves with
its window. On Redis every call is one Lua script on one key, declared in KEYS and hash-tagged, so it is
atomic and lands in one Cluster slot; the scripts read the clock with `redis.call('TIME')`, so every
gateway on one Redis shares one window whatever its own clock says. Keys are prefixed `gw:` (never `limits`'
`LIMITS:`/`LIMITER/`): `gw:ledger:{key}` and `gw:record:{key}`.

Ledger (a moving window of held entries: the failed-code budget, the upstream quota):

- `reserve(key, limit, window, amount) -> Reservation`. The live entries of `key` are the entries granted
  less than `window` seconds ago and not given back. The call is granted when live + `amount` <= `limit`;
  then `amount` entries are held under a fresh `token`, time-stamped now. Otherwise nothing changes. An
  `amount` of 0 is always granted and holds nothing. Calls on one key may pass different limits (one
  shared count, e.g. redemptions up to `q` and other operations up to `q - reserve`), but should pass one
  `window`. The answer says `remaining` (limit - live after the call, at least 0), `reset` (seconds until
  the oldest live entry leaves; 0 when none is live) and `retry_after` (when refused: seconds until enough
  entries have left for this `amount` to fit under this `limit`, or `window` when it never fits; 0 when
  granted).
- `settle(key, reservation, keep)`: give back all but `keep` of the reservation's entries (the given-back
  ones stop counting at once; the kept ones stay until their window ends). Idempotent, and it can only
  give back: a second settle with a larger `keep` keeps what the first one kept. Settling a refused
  reservation, or after the window has passed, does nothing. Entries never settled (a gateway that died,
  a call that raised) leave with their window.

Records (single-flight claims, e.g. Idempotency-Key: an in-flight marker, then the kept answer):

- `claim(key, value, ttl) -> bytes | None`: store `value` for `ttl` seconds if `key` holds nothing, and
  answer None (claimed, by exactly one caller across everything sharing the store); otherwise answer the
  value it holds, unchanged.
- `replace(key, expected, value, ttl) -> bool`: compare-and-set: when `key` holds exactly `expected`,
  it holds `value` for `ttl` seconds from now on, and True; otherwise nothing changes, False.
- `delete_if(key, expected) -> bool`: when `key` holds exactly `expected`, it holds nothing, and True.

Per-IP hits (`step`, driven by `gateway.ratelimit.limiter.count_bucket`, the one loop "count up to the
first refusal, then read every window"): one item of a bucket, counted (`count`) and/or read (`read`) with
the policy's strategy, on `limits`' keys and data structures, giving `limits`' `WindowStats`. A store whose
`fuses_reads` is True reads the window in the same call that counts (Redis: one script per item); the others
count first and read afterwards. Unlike the primitives, `step` is not bounded by the timeout on its own: the
limiter bounds the whole bucket by it (a frozen Redis costs a request one `storage_timeout`, whatever the
number of items), and a store whose `suspends` is False (memory) is never bounded.

Values are bytes (a few hundred KiB at most: a kept answer). `ttl` and `window` are seconds (floats allowed;
Redis keeps milliseconds). In memory the ledger and the records are bounded (see memory_store.py): under a
flood of distinct keys the entries closest to expiry are dropped first, which forgets a budget or a record
early, never makes one stricter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import floor, inf
from typing import Protocol

from limits.util import WindowStats

from gateway.models import RateItem, Strategy


class StoreUnavailable(Exception):
    """The limit store failed or was slower than its timeout for this request."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `Store.reserve` answered; pass it to `Store.settle` to give entries back."""

    granted: bool
    token: str  # "" when nothing is held (refused, or an amount of 0)
    amount: int  # entries held under the token (0 when refused)
    remaining: int  # limit - live entries, after this call, at least 0
    reset: float  # seconds until the oldest live entry leaves the window; 0 when none is live
    retry_after: float  # refused: seconds until this amount would fit (the window when never); else 0


class Store(Protocol):
    """One store's counters (see the module docstring for the exact semantics)."""

    timeout: float  # seconds, the policy's storage_timeout
    fuses_reads: bool  # `step` reads the window in the call that counts
    suspends: bool  # a call may wait (on the network); False: no timeout ever applies

    async def step(
        self, strategy: Strategy, item: RateItem, key: str, count: bool, read: bool
    ) -> tuple[bool, WindowStats | None]:
        """Count one hit of `item` in `key` (when `count`; answers whether it was counted), and read the
        item's window (when `read`, or always when `fuses_reads`; else None)."""
        ...

    async def ready(self) -> bool:
        """Whether the store answers (for readiness); never raises."""
        ...

    async def prepare(self) -> None:
        """Connect and load what the calls need, before the first request (may raise)."""
        ...

    async def close(self) -> None: ...

    async def reserve(self, key: str, limit: int, window: float, amount: int) -> Reservation: ...

    async def settle(self, key: str, reservation: Reservation, keep: int) -> None: ...

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None: ...

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool: ...

    async def delete_if(self, key: str, expected: bytes) -> bool: ...


def sliding_window_stats(
    item: RateItem, previous: int, previous_expires_in: float, current: int, current_expires_in: float
) -> WindowStats:
    """`limits`' `SlidingWindowCounterRateLimiter.get_window_stats` on a `get_sliding_window` answer."""
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
