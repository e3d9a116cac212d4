"""Voucherify's quota: the per-project upstream quota's arithmetic, and the hold-off after its 429.

- `QuotaPlan`: a project's `rate_limit.upstream_quota` (q calls per window, all gateways together) and its
  `redeem_reserve`: the reserve is `round(q * redeem_reserve)` calls (Python's `round`, as the contract
  writes it: halves go to the even neighbour), which only `redeem`, `redeem_stackable` and
  `redeem_promotion_tier` may use; every other operation may use only `q - reserve`. The counting itself
  is the limit store's `reserve` / `settle` (a moving-window ledger, exact across gateways): this module
  says with which limit each call is reserved, and under which key.
- `retry_after_of_429`: the seconds Voucherify's 429 asks for: `Retry-After` in seconds, else
  `X-Rate-Limit-Retry`, else 1; clamped to 1..60; an HTTP-date or an unreadable value counts as 1.
- `HoldOff`: per process and per project, until when nothing is sent to Voucherify after its 429, with the
  whole seconds left for `Retry-After`, and whether a 429 starts a new episode (one warning line each).

No I/O; the clock is injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.models import RateItem

REDEMPTIONS = frozenset({"redeem", "redeem_stackable", "redeem_promotion_tier"})
RETRY_MIN, RETRY_MAX = 1, 60  # seconds a Voucherify 429 may hold a project off


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    """A project's upstream quota: `limit` calls per `window` seconds, `reserve` of them for redemptions."""

    limit: int
    window: int
    reserve: int
    key: str  # the project's ledger in the limit store (the store prefixes and hash-tags it)

    def __post_init__(self) -> None:
        if not 0 <= self.reserve <= self.limit:
            raise ValueError("the reserve is a share of the quota")

    def limit_for(self, operation: str) -> int:
        """The count a call of `operation` may bring the ledger to: q for redemptions, q - reserve else."""
        return self.limit if operation in REDEMPTIONS else self.limit - self.reserve

    @property
    def policy_header(self) -> str:
        """The quota as a RateLimit-Policy member (for logs and operators; never sent to browsers)."""
        return f'"upstream_quota";q={self.limit};w={self.window}'

    @classmethod
    def build(cls, project: str, upstream_quota: str | None, redeem_reserve: float) -> QuotaPlan | None:
        """The plan of a project's policy values; None when the quota is off. ValueError on a bad value."""
        if upstream_quota is None:
            return None
        items = RateItem.parse_many(upstream_quota)
        if len(items) != 1:
            raise ValueError("upstream_quota is a single limit such as '2000 per minute'")
        if not 0 <= redeem_reserve <= 1:
            raise ValueError("redeem_reserve is a share between 0 and 1")
        item = items[0]
        reserve = reserve_of(item.amount, redeem_reserve)
        return cls(item.amount, item.expiry, reserve, f"{project}/upstream_quota/{item.expiry}")


def reserve_of(limit: int, redeem_reserve: float) -> int:
    """`round(q * redeem_reserve)`, within 0..q."""
    return min(limit, max(0, round(limit * redeem_reserve)))


def whole_seconds(seconds: float, *, at_most: int | None = None) -> int:
    """A `Retry-After` value: seconds rounded up, at least 1 (and at most `at_most`)."""
    value = max(1, math.ceil(seconds)) if math.isfinite(seconds) else (at_most or 1)
    return min(value, at_most) if at_most is not None else value


# ---------------------------------------------------------------------------------------- Voucherify's 429


def _delay_seconds(value: str) -> int | None:
    """RFC 9110 delay-seconds (1*DIGIT, ASCII only); None for an HTTP-date or anything unreadable. A number
    of more than 20 digits is read as RETRY_MAX, not converted (it is past any clamp: an int of thousands of
    digits costs time, and Python refuses one of more than 4,300)."""
    value = value.strip(" \t")
    if not value or not value.isascii() or not value.isdigit():
        return None
    return int(value) if len(value) <= 20 else RETRY_MAX


def retry_after_of_429(headers: Iterable[tuple[str, str]]) -> int:
    """Seconds to hold off after Voucherify's 429, from its raw response headers (name, value pairs).

    `Retry-After` when present, else `X-Rate-Limit-Retry`, else 1; an HTTP-date, an unreadable value, or a
    header sent twice counts as 1; the result is clamped to 1..60."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in ("retry-after", "x-rate-limit-retry"):
            found.setdefault(lowered, []).append(value)
    values = found.get("retry-after") or found.get("x-rate-limit-retry")
    if not values:
        return RETRY_MIN
    seconds = _delay_seconds(values[0]) if len(values) == 1 else None
    if seconds is None:
        return RETRY_MIN
    return min(RETRY_MAX, max(RETRY_MIN, seconds))


class HoldOff:
    """Per project (and per process): until when nothing goes to Voucherify after it answered 429."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def start(self, project: str, seconds: int) -> bool:
        """Hold `project` off for `seconds` from now (a running hold-off is only ever lengthened).

        True when this starts a new episode (nothing was being held off): the one to log."""
        now = self._clock()
        until = self._until.get(project)
        new_episode = until is None or now >= until
        end = now + seconds
        if new_episode or until is None or end > until:
            self._until[project] = end
        return new_episode

    def remaining(self, project: str) -> int | None:
        """Whole seconds left (at least 1) while `project` is held off; None when it is not."""
        until = self._until.get(project)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[project]
            return None
        return whole_seconds(left, at_most=RETRY_MAX)

    def active(self) -> tuple[str, ...]:
        """Projects held off now (for tests and the admin side; readiness ignores them)."""
        return tuple(name for name in list(self._until) if self.remaining(name) is not None)
