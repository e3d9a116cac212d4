"""The pipeline's steps that spare Voucherify's quota, in the contract's order: the cache (a hit is
answered), the upstream quota (503), the hold-off after Voucherify's 429 (503), then Voucherify itself.

`Sparing` is per process and survives reloads: the kept answers and calls in flight (`guards/cache.py`)
and the per-project hold-off (`guards/quota.py`). The counting of the quota itself is the limit store's
ledger (`Store.reserve` / `settle`), shared by every gateway on Redis. Every refusal raises
`errors.Refused` with its `Retry-After`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway import errors
from gateway.compiled import ProjectRuntime
from gateway.errors import ErrorKey, Refused
from gateway.guards.cache import CACHED_OPERATIONS, Answer, Lookup, ReadCache
from gateway.guards.quota import HoldOff, retry_after_of_429, whole_seconds
from gateway.models import Outcome, Target, UpstreamResponse
from gateway.ratelimit.limiter import LimiterPool
from gateway.ratelimit.store import Reservation, Store, StoreUnavailable

log = logging.getLogger("gateway")

API_VERSION_HEADER = "X-Voucherify-API-Version"


def kept_part(answer: UpstreamResponse) -> Answer | None:
    """What a 200 answer leaves in the cache: status, body and Content-Type."""
    if answer.status != 200:
        return None
    content_type = next((value for name, value in answer.headers if name.lower() == "content-type"), None)
    return Answer(200, answer.body, content_type)


def _retry_after(seconds: int) -> tuple[tuple[str, str], ...]:
    return (("Retry-After", str(seconds)),)


class Sparing:
    """Per-process state of the steps: kept answers, calls in flight, hold-offs."""

    def __init__(self) -> None:
        self.cache: ReadCache[UpstreamResponse] = ReadCache(kept_part)
        self.hold_off = HoldOff()
        self.store_down: set[str] = set()  # storage URIs whose outage was logged by the quota

    def forget_changed(self, old: dict[str, ProjectRuntime], new: dict[str, ProjectRuntime]) -> None:
        """On reload: a project whose settings changed (region, keys, mode, version) loses its answers."""
        for name, before in old.items():
            after = new.get(name)
            if after is None or after.config != before.config:
                self.cache.forget(name)

    async def answer(
        self, target: Target, outcome: Outcome, call: Callable[[], Awaitable[UpstreamResponse]]
    ) -> UpstreamResponse:
        """The cache step: a kept answer (with `Age`), or `call()`'s answer shared with identical misses."""
        project = target.project
        if project.cache_ttl <= 0 or target.operation not in CACHED_OPERATIONS:
            return await call()
        key = (project.name, target.operation, target.query)
        hit = self.cache.get(key)
        if hit is not None:
            outcome.cache = Lookup.HIT.value
            return UpstreamResponse(hit.answer.status, list(hit.headers), hit.answer.body, 0.0)
        outcome.cache = (Lookup.SHARED if self.cache.calling(key) else Lookup.MISS).value
        answer, _ = await self.cache.load(key, project.cache_ttl, call)
        return answer

    async def reserve(
        self, limiters: LimiterPool, target: Target, outcome: Outcome
    ) -> tuple[Store, Reservation] | None:
        """The upstream-quota step, hold-off first: a call is reserved in the project's ledger, or Refused
        (503 upstream_quota_exhausted; 503 rate_limit_unavailable when the store is down and
        `on_storage_error: deny`). None: nothing to settle (no quota, or the store down and `allow`)."""
        project = target.project
        left = self.hold_off.remaining(project.name)
        if left is not None:
            outcome.quota_refusal = "hold_off"
            raise Refused(errors.upstream_quota_exhausted(left, voucherify_busy=True), _retry_after(left))
        plan = project.quota
        if plan is None:
            return None
        limits = project.rate_limit
        store = limiters.store(limits.storage, limits.storage_timeout)
        try:
            reservation = await store.reserve(plan.key, plan.limit_for(target.operation), plan.window, 1)
        except StoreUnavailable as exc:
            outcome.limit_store_error = True
            if limits.storage not in self.store_down:
                self.store_down.add(limits.storage)
                log.error(
                    "upstream-quota store unavailable (%s); on_storage_error=%s", exc, limits.on_storage_error
                )
            if limits.on_storage_error == "deny":
                raise Refused(errors.rate_limit_unavailable()) from None
            return None
        if limits.storage in self.store_down:
            self.store_down.discard(limits.storage)
            log.warning("upstream-quota store reachable again")
        if not reservation.granted:
            seconds = whole_seconds(reservation.retry_after, at_most=plan.window)
            outcome.quota_refusal = "quota"
            raise Refused(errors.upstream_quota_exhausted(seconds), _retry_after(seconds))
        return store, reservation

    async def give_back(self, target: Target, held: tuple[Store, Reservation] | None) -> None:
        """Nothing was sent after all: the reserved call stops counting (best effort)."""
        plan = target.project.quota
        if held is None or plan is None:
            return
        store, reservation = held
        # a store that fails here keeps the entry until its window ends: the quota errs on the strict side
        with contextlib.suppress(StoreUnavailable):
            await store.settle(plan.key, reservation, 0)

    def throttled(self, target: Target, answer: UpstreamResponse, outcome: Outcome) -> None:
        """Voucherify's own 429: hold the project off, and Refused (503) with its seconds."""
        if answer.status != 429:
            return
        project = target.project.name
        seconds = retry_after_of_429(answer.throttle or answer.headers)
        outcome.upstream_429 = True
        if self.hold_off.start(project, seconds):
            log.warning(
                "Voucherify answered 429 for project %s: nothing is sent for it for %d s", project, seconds
            )
        left = self.hold_off.remaining(project) or seconds
        raise Refused(errors.upstream_quota_exhausted(left, voucherify_busy=True), _retry_after(left))


def not_sent(refused: Refused) -> bool:
    """A refusal of the upstream call after which Voucherify surely saw nothing."""
    error = refused.error
    return error.key is ErrorKey.UPSTREAM_UNAVAILABLE and not getattr(error, "sent", True)
