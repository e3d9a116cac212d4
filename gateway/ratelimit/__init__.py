"""Rate limiting: buckets counted in a store (memory or Redis), and the verdicts the pipeline acts on."""

from gateway.ratelimit.limiter import (
    STRATEGIES,
    Limiter,
    LimiterPool,
    LimitResult,
    StoreUnavailable,
    limits_item,
    open_storage,
)

__all__ = [
    "STRATEGIES",
    "LimitResult",
    "Limiter",
    "LimiterPool",
    "StoreUnavailable",
    "limits_item",
    "open_storage",
]
