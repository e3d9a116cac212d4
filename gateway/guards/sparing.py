"""The pipeline's steps that spare Voucherify's quota, in the contract's order: the cache (a hit is
answered), the upstream quota (503), the hold-off after Voucherify's 429 (503), then Voucherify itself.

`Sparing` is per process and survives reloads: the kept answers and calls in flight (`guards/cache.py`)
and the per-project hold-off (`guards/quota.py`). The counting of the quota itself is the limit store's
ledger, shared by every gateway on Redis: a request's `QuotaHold` reserves its call as the last gate of the
request's chain (gateway/ratelimit/gates.py), in the same store call as its per-IP hit and failed-code
reservation, and settles it only when nothing was sent. Every refusal raises
`errors.Refused` with its `Retry-After`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway import errors
from gateway.compiled import ProjectRuntime
from gateway.errors import ErrorKey, Refused
from gateway.guards.cache import CACHED_OPERATIONS, Answer, Lookup, ReadCache
from gateway.guards.quota import HoldOff, retry_after_of_429, whole_seconds
from gateway.models import Outcome, Target, UpstreamResponse
from gateway.ratelimit.gates import give_back, pass_gates, settle_soon
from gateway.ratelimit.store import Reservation, Reserve, StepAnswer, Store, StoreUnavailable

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


def _held_off(left: int) -> Refused:
    """The 503 of a project Voucherify's 429 holds off, for `left` more seconds."""
    return Refused(errors.upstream_quota_exhausted(left, voucherify_busy=True), _retry_after(left))


class Sparing:
    """Per-process state of the steps: kept answers, calls in flight, hold-offs."""

    def __init__(self) -> None:
        self.cache: ReadCache[UpstreamResponse] = ReadCache(kept_part)
        self.hold_off = HoldOff()
        self.store_down: set[str] = set()  # storage URIs whose outage was logged by the quota

    def forget_changed(self, old: dict[str, ProjectRuntime], new: dict[str, ProjectRuntime]) -> None:
        """On reload: a project whose settings changed (region, keys, mode, version) loses its answers, and
        so does one whose `cache.ttl` changed (top level or its own): an answer is never kept longer than
        the ttl in force, nor comes back when the cache is turned off and on again."""
        for name, before in old.items():
            after = new.get(name)
            if after is None or after.config != before.config or after.cache_ttl != before.cache_ttl:
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

    async def reserve(self, quota: QuotaHold) -> None:
        """A cached operation's upstream-quota step, after its cache missed: a chain of its own."""
        if quota.deferred:
            quota.deferred = False
            quota.arm()
            assert quota.store is not None
            await pass_gates(quota.store, (quota,))

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
        raise _held_off(self.hold_off.remaining(project) or seconds)


_SENDABLE = frozenset({ErrorKey.UPSTREAM_UNAVAILABLE, ErrorKey.UPSTREAM_TIMEOUT})  # the errors with `sent`


def not_sent(refused: Refused) -> bool:
    """A refusal of the upstream call after which Voucherify surely saw nothing."""
    error = refused.error
    return error.key in _SENDABLE and not error.sent


class QuotaHold:
    """A request's call in its project's upstream quota, from the reservation to the send.

    `ask` prepares it; it then runs as the last gate of the request's chain (`pass_gates`), after the
    failed-code budget: the hold-off after Voucherify's 429 first (a request held off reserves nothing),
    then one call reserved in the project's ledger, or `Refused` 503 `upstream_quota_exhausted`; a store
    that is down follows `on_storage_error`. A cached operation is `deferred`: a cache hit or a wait on an
    identical call in flight must not count, so its reservation is a chain of its own once the cache
    missed (`Sparing.reserve`). `sending` marks the call as handed to the transport (it may reach
    Voucherify: it counts); `release` (the pipeline's `finally`) gives back a reservation that was never
    sent, also when the handler is cancelled.
    """

    __slots__ = (
        "_held_off",
        "_outcome",
        "_reservation",
        "_sent",
        "_sparing",
        "_target",
        "deferred",
        "steps",
        "store",
    )

    def __init__(self) -> None:
        self._sparing: Sparing | None = None
        self._target: Target | None = None
        self._outcome: Outcome | None = None
        self.store: Store | None = None
        self._held_off: int | None = None
        self._reservation: Reservation | None = None
        self._sent = False
        self.deferred = False
        self.steps: tuple[Reserve, ...] = ()

    def ask(self, sparing: Sparing, store: Store, target: Target, outcome: Outcome) -> None:
        """The request's upstream call: a reservation in its chain, or deferred past the cache."""
        self._sparing, self.store, self._target, self._outcome = sparing, store, target, outcome
        project = target.project
        if project.cache_ttl > 0 and target.operation in CACHED_OPERATIONS:
            self.deferred = True
            return
        self.arm()

    def arm(self) -> None:
        sparing, target = self._sparing, self._target
        assert sparing is not None and target is not None
        self._held_off = sparing.hold_off.remaining(target.project.name)
        plan = target.project.quota
        if plan is not None and self._held_off is None:
            self.steps = (Reserve(plan.key, plan.limit_for(target.operation), plan.window, 1, shared=True),)

    def _without_store(self) -> tuple[bool, Refused | None]:
        """(True, its answer) when the store's answer is not this gate's to read: deferred past the
        cache, held off (the refusal), or no quota."""
        if self.deferred:
            return True, None
        if self._held_off is not None:
            assert self._outcome is not None
            self._outcome.quota_refusal = "hold_off"
            return True, _held_off(self._held_off)
        return not self.steps, None

    def passed(self, answers: Sequence[StepAnswer], seconds: float) -> Refused | None:
        decided, refusal = self._without_store()
        if decided:
            return refusal
        (reservation,) = answers
        assert isinstance(reservation, Reservation)  # not refused before: the gate before it raised then
        sparing, target, outcome = self._sparing, self._target, self._outcome
        assert sparing is not None and target is not None and outcome is not None
        storage = target.project.rate_limit.storage
        if storage in sparing.store_down:
            sparing.store_down.discard(storage)
            log.warning("upstream-quota store reachable again")
        if not reservation.granted:
            plan = target.project.quota
            assert plan is not None
            retry = whole_seconds(reservation.retry_after, at_most=plan.window)
            outcome.quota_refusal = "quota"
            return Refused(errors.upstream_quota_exhausted(retry), _retry_after(retry))
        self._reservation = reservation
        return None

    def failed(self, exc: StoreUnavailable, seconds: float) -> Refused | None:
        decided, refusal = self._without_store()
        if decided:
            return refusal
        sparing, target, outcome = self._sparing, self._target, self._outcome
        assert sparing is not None and target is not None and outcome is not None
        limits = target.project.rate_limit
        outcome.limit_store_error = True
        if limits.storage not in sparing.store_down:
            sparing.store_down.add(limits.storage)
            log.error(
                "upstream-quota store unavailable (%s); on_storage_error=%s", exc, limits.on_storage_error
            )
        return Refused(errors.rate_limit_unavailable()) if limits.on_storage_error == "deny" else None

    def abandoned(self, answers: Sequence[StepAnswer]) -> None:
        plan = None if self._target is None else self._target.project.quota
        if plan is not None:
            give_back(self.store, plan.key, answers, "upstream quota")

    def sending(self) -> None:
        """The call is handed to the transport: from here on it counts. Refused (503) when the project is
        held off by now: the hold-off was read before the request's store calls (its chain, a keyed
        request's claim), and Voucherify's 429 may have come while they were on their way; the reserved
        call is then given back here (a cached read's call may outlive the handler whose `release` ran),
        and nothing is sent."""
        sparing, target, outcome = self._sparing, self._target, self._outcome
        assert sparing is not None and target is not None and outcome is not None
        left = sparing.hold_off.remaining(target.project.name)
        if left is not None:
            outcome.quota_refusal = "hold_off"
            self.give_back()
            raise _held_off(left)
        self._sent = True

    def unsent(self) -> tuple[Store, str, Reservation] | None:
        """The reservation to give back when nothing was sent (at most once), else None."""
        reservation, store, target = self._reservation, self.store, self._target
        if reservation is None or store is None or target is None or target.project.quota is None:
            return None
        self._reservation = None
        return store, target.project.quota.key, reservation

    def give_back(self) -> None:
        """Nothing was sent after all (or never will be): the reserved call stops counting, at most once.
        Never raises, never waits (a store that fails keeps the entry until its window ends: strict)."""
        held = self.unsent()
        if held is not None:
            settle_soon(*held, 0, "upstream quota")

    def release(self) -> None:
        """The pipeline's `finally`: give back a reservation that was never handed to the transport."""
        if not self._sent:
            self.give_back()
