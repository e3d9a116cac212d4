"""Moving-window counters, the way Voucherify limits calls: 5 client-side requests in 5 seconds per IP, and
a server-side plan limit of N requests a minute per project."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class MovingWindowLimiter:
    """Allows ``limit`` hits per key in any ``window`` seconds; refused hits are not counted."""

    def __init__(
        self, limit: int = 5, window: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def _current(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def hit(self, key: str) -> bool:
        now = self._clock()
        hits = self._current(key, now)
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True

    def remaining(self, key: str) -> int:
        return max(0, self.limit - len(self._current(key, self._clock())))

    def retry_after(self, key: str) -> int:
        """Whole seconds (at least 1) until the oldest counted hit leaves the window and frees a slot."""
        now = self._clock()
        hits = self._current(key, now)
        if len(hits) < self.limit:
            return 0
        return max(1, math.ceil(hits[0] + self.window - now))


@dataclass(frozen=True)
class PlanUsage:
    """One call's verdict under the plan limit, with what Voucherify's headers say about it."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # seconds; 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {"X-Rate-Limit-Limit": str(self.limit), "X-Rate-Limit-Remaining": str(self.remaining)}
        if not self.allowed:
            headers["X-Rate-Limit-Retry"] = str(self.retry_after)
        return headers


class PlanLimit:
    """The server-side API's per-project plan limit: ``per_minute`` calls in any 60 seconds. The sandbox
    is one project, so there is one bucket. Synchronous, so concurrent calls are counted exactly."""

    _KEY = "project"

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = MovingWindowLimiter(per_minute, 60.0, clock)

    def hit(self) -> PlanUsage:
        allowed = self._window.hit(self._KEY)
        return PlanUsage(
            allowed=allowed,
            limit=self._window.limit,
            remaining=self._window.remaining(self._KEY),
            retry_after=0 if allowed else self._window.retry_after(self._KEY),
        )
