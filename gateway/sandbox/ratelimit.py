"""A moving-window counter, the way Voucherify limits client-side calls per IP (5 in 5 seconds)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class MovingWindowLimiter:
    """Allows ``limit`` hits per key in any ``window`` seconds; refused hits are not counted."""

    def __init__(
        self, limit: int = 5, window: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> bool:
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True
