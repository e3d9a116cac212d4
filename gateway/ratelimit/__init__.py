"""Rate limiting: buckets counted in a store (memory or Redis), and the verdicts the pipeline acts on."""

from gateway.ratelimit.limiter import (
    STRATEGIES,
    Limiter,
    LimiterPool,
    LimitResult,
    limits_item,
    open_storage,
)
from gateway.ratelimit.store import Reservation, Store, StoreUnavailable

__all__ = [
    "STRATEGIES",
    "LimitResult",
    "Limiter",
    "LimiterPool",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "limits_item",
    "open_storage",
]
