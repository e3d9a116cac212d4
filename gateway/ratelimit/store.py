"""The counter interface every limit store implements (`Store`), and what its calls answer.

One implementation per store kind: `MemoryStore` (gateway/ratelimit/memory_store.py, per process, bounded)
and `RedisStore` (gateway/ratelimit/redis_store.py: plain Redis, Sentinel or Cluster, shared by every worker
and every gateway on it). Get one with `LimiterPool.store(uri, timeout)`; the same URI gives the same
counts, whatever the timeout.

Failures: every call either answers or raises `StoreUnavailable` (the store failed, refused the call, or did
not answer within the store's timeout, which is the policy's `storage_timeout`). A call that raised may or
may not have taken effect in Redis (the reply can be lost after the script ran): callers treat it as
unknown, e.g. a `reserve` that raised holds nothing the caller knows of. Whatever it held is given back
by the store itself (RedisStore.chain: a SETTLE of its token, sent at once), unless Redis reads that before
the reservation (a frozen Redis): then it leaves with its window. On Redis every call is one Lua script,
its keys declared in KEYS (the ledger's and the records' hash-tagged), so it is atomic; a chain whose
keys lie in several Cluster slots is split by slot there (below). The ledger's scripts and the moving
window's hits read the clock with `redis.call('TIME')`, so every gateway on one Redis shares one window
whatever its own clock says. Keys are prefixed `gw:`
(never `limits`' `LIMITS:`/`LIMITER/`): `gw:ledger:{key}` and `gw:record:{key}`.

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
  value it holds, unchanged, or None when that is `value` itself. Values are unique to their caller (a
  nonce), so that is the same call sent again: Redis's clients retry a connection error once, and the
  first may have run with its reply lost (`replace` likewise answers True for a swap already made).
- `replace(key, expected, value, ttl) -> bool`: compare-and-set: when `key` holds exactly `expected`,
  it holds `value` for `ttl` seconds from now on, and True; otherwise nothing changes, False.
- `delete_if(key, expected) -> bool`: when `key` holds exactly `expected`, it holds nothing, and True.

Chains (`chain(steps)`): the per-IP hits and the ledger reservations of one request, in the order given,
in one store call where the store allows, each answered up to the first refusal. A step is one of a closed
set of kinds:

- `Hit`: one item of a per-IP bucket (driven by `gateway.ratelimit.limiter`, "count up to the first
  refusal, then read every window"), counted (`counts`) and/or read (`read`) with the policy's strategy, on
  `limits`' keys and data structures, answered `(counted, WindowStats | None)` as `limits`' strategies
  compute it. A store whose `fuses_reads` is True reads the window in every hit (Redis: in the same
  script); the others only when `read` (else None). A counting hit that is not counted refuses.
- `Reserve`: `reserve` above, answered its `Reservation`; one that is not granted refuses.

After a refusal the chain goes on reading: later hits count nothing (they still read their window), and
later reservations do not run at all (answered None), so a request refused per IP never touches a ledger,
not even for a moment. The whole chain is atomic in memory (one synchronous run) and on plain Redis and
Sentinel (one Lua script, every key in KEYS); on a Cluster it is split into runs of consecutive steps whose
keys share a slot, one script each, in order, each told whether a step before it refused. The whole chain
is bounded by the timeout once (a frozen Redis costs a request one `storage_timeout`, whatever the number of
steps); a store whose `suspends` is False (memory) is never bounded. `reserve(...)` is a chain of one step.

Values are bytes (a few hundred KiB at most: a kept answer). `ttl` and `window` are seconds (floats allowed;
Redis keeps milliseconds). In memory the ledger and the records are bounded (see memory_store.py): under a
flood of distinct keys the entries closest to expiry are dropped first, which forgets a budget or a record
early, never makes one stricter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from math import floor, inf
from typing import NamedTuple, Protocol

from limits.util import WindowStats

from gateway.models import RateItem, Strategy


class StoreUnavailable(Exception):
    """The limit store failed or was slower than its timeout for this request."""


class Reservation(NamedTuple):
    """What `Store.reserve` answered; pass it to `Store.settle` to give entries back. (A named tuple, as
    the steps are: a request gets several, and a frozen dataclass costs 2.6 times as much to build.)"""

    granted: bool
    token: str  # "" when nothing is held (refused, or an amount of 0)
    amount: int  # entries held under the token (0 when refused)
    remaining: int  # limit - live entries, after this call, at least 0
    reset: float  # seconds until the oldest live entry leaves the window; 0 when none is live
    retry_after: float  # refused: seconds until this amount would fit (the window when never); else 0


class Hit(NamedTuple):
    """A chain step: one hit of a per-IP `item` in `key` (`limits`' key), with the policy's `strategy`.
    (Steps are named tuples: one request builds several, and a tuple is the cheapest to build.)"""

    strategy: Strategy
    item: RateItem
    key: str
    counts: bool  # count one hit (unless a step before it refused)
    read: bool  # read the window (a store may read it anyway: Redis does, in the same script)


class Reserve(NamedTuple):
    """A chain step: `Store.reserve(key, limit, window, amount)` (unless a step before it refused)."""

    key: str
    limit: int
    window: float
    amount: int
    # True for a key of the whole project (the upstream quota), not of one client: a store that bounds its
    # keys (memory) never drops it to make room for clients' keys, or a flood of new addresses would
    # switch the quota off. Their number is the policy's projects'.
    shared: bool = False


Step = Hit | Reserve
HitAnswer = tuple[bool, WindowStats | None]  # (counted, the window when read)
StepAnswer = HitAnswer | Reservation | None  # None: a reservation that did not run (a step before refused)


class Store(Protocol):
    """One store's counters (see the module docstring for the exact semantics)."""

    timeout: float  # seconds, the policy's storage_timeout
    fuses_reads: bool  # every `Hit` reads its window in the call that counts it
    suspends: bool  # a call may wait (on the network); False: no timeout ever applies

    async def chain(self, steps: Sequence[Step]) -> list[StepAnswer]:
        """Run `steps` in order up to the first refusal (see the module docstring): one answer per step."""
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

    def settle_soon(
        self, key: str, reservation: Reservation, keep: int, failed: Callable[[StoreUnavailable], None]
    ) -> None:
        """`settle` without waiting and without raising (a cancelled handler, or one answering now, still
        gives back); `failed` hears of a store failure, later. Bounded by the store's own backstops, not by
        `timeout`: nobody waits for it."""
        ...

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
