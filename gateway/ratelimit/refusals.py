"""Per-IP refusals remembered for a moment, so that a flood's next requests cost the store nothing.

A client that the store refused (429) in a bucket of one item is refused again from memory, without a store
call (on Redis, without a round trip), until the first of: its window frees (the store's `reset_time`), or
the policy's `storage_timeout` has passed since the store refused it. The answer is the one the store would
give, RateLimit fields included, computed from the remembered window at the time of the request:

- A per-IP window is never given back (a hit is never settled), so until its oldest hit leaves (moving
  window) or the window ends (fixed window), the store refuses the same request again. Hits from other
  gateways and workers only add to it.
- Not for the sliding-window counter, whose weighted count falls continuously, nor for a bucket of several
  items: the store counts the items before the refusing one, and every item's window is in the fields.
- No longer than `storage_timeout`: a store that lost its counts (a Redis restarted empty, the memory
  store's eviction under a flood of new keys) or went down is heard again within that time, which is the
  time a request waits before it counts the store as down. `on_storage_error` applies after that, and a
  store seen down forgets everything remembered for it (`LimiterPool.unavailable`).
- The window's end is taken less the refusing call's round trip: a Redis TTL read on the way back could
  otherwise end it a little late. A wall clock that steps back forgets the entry.

Sans-IO: the caller passes the time. Bounded: past `max_size` entries the expired ones go, and when that
frees less than half, all of them (forgetting costs a store call, never a wrong answer).
"""

from __future__ import annotations

from typing import NamedTuple

from limits.util import WindowStats

from gateway.models import Strategy

REMEMBERED = (Strategy.MOVING_WINDOW, Strategy.FIXED_WINDOW)
MAX_SIZE = 10_000  # entries live at most storage_timeout: a flood of new addresses refused each second


class _Refusal(NamedTuple):
    since: float
    until: float
    strategy: Strategy
    window: WindowStats


class Refusals:
    """Storage keys (one store's) whose client the store refused, with the window it answered."""

    __slots__ = ("_entries", "max_size")

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self._entries: dict[str, _Refusal] = {}
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self, key: str, strategy: Strategy, window: WindowStats, now: float, seconds: float, ttl: float
    ) -> None:
        """The store refused `key` at `now` (after a call of `seconds`), its window `window`: refuse it again
        until the window frees, for at most `ttl` seconds."""
        if strategy not in REMEMBERED:
            return
        until = min(window.reset_time - seconds, now + ttl)
        if until <= now:
            return
        entries = self._entries
        if len(entries) >= self.max_size and key not in entries:
            live = {k: e for k, e in entries.items() if e.since <= now < e.until}
            self._entries = entries = live if len(live) < self.max_size // 2 else {}
        entries[key] = _Refusal(now, until, strategy, window)

    def refused(self, key: str, strategy: Strategy, now: float) -> WindowStats | None:
        """The window the store answered when it refused `key`, while that refusal still holds; else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.since <= now < entry.until and entry.strategy == strategy:
            return entry.window
        del self._entries[key]
        return None

    def forget(self) -> None:
        self._entries.clear()
