"""Rate limiting: counters in a store (memory or Redis), and the verdicts the pipeline acts on.

- `store.py`: the counter interface (`Store`: chains of per-IP hits and reservations, reserve/settle,
  claim/replace/delete_if) and what its calls answer; its docstring is the contract the features code
  against.
- `memory_store.py`, `redis_store.py`: its two implementations (plain Redis, Sentinel and Cluster share one);
  `turns.py`: when the memory store looks at a key again (expiry, its bounds); `redis_batch.py`: one
  pipeline per loop turn; `bridge.py`: the one module touching `limits`' internals.
- `limiter.py`: `bucket_steps` / `bucket_result` (a bucket as chain steps), `Limiter`, `LimiterPool` (stores
  by URI, `gate` for a request's chain, its verdict with `on_storage_error` applied, `readiness` for the
  admin listener and the worker supervisor).
- `gates.py`: `pass_gates`, a request's guards (per-IP, failed-code budget, upstream quota) in one chain.
- `refusals.py`: per-IP refusals the store gave a moment ago, repeated without a store call (floods).
"""

from gateway.ratelimit.limiter import (
    Limiter,
    LimiterPool,
    LimitResult,
    StoreReadiness,
    bucket_result,
    bucket_steps,
    limits_item,
    open_storage,
    open_store,
)
from gateway.ratelimit.store import Reservation, Store, StoreUnavailable

__all__ = [
    "LimitResult",
    "Limiter",
    "LimiterPool",
    "Reservation",
    "Store",
    "StoreReadiness",
    "StoreUnavailable",
    "bucket_result",
    "bucket_steps",
    "limits_item",
    "open_storage",
    "open_store",
]
