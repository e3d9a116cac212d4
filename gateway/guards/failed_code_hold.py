"""A request's hold on its client's failed-code budget, from the reservation to the settlement.

The pipeline (gateway/app.py) makes one `CodeHold` per request and:

- `await hold.reserve(...)` after the per-IP limit: holds every code the request names in the client's
  ledger (`Store.reserve`, atomic in the store, so 40 requests at once with 1 unit left get 1 grant between
  them on every worker and gateway sharing it), or raises `Refused` 429 `too_many_failed_codes` when the
  budget does not cover them; a store that is down follows `on_storage_error`;
- `hold.answered(answer)` once Voucherify's answer (as the browser gets it) is in: the unknown codes are
  kept, the others will be given back;
- `hold.release()` in a `finally`, always: settles the reservation in a task of its own, so a handler that
  is cancelled (a client gone, a drain) or a request that got no answer (502, 503, 504, a refusal by a later
  step) gives every code back;
- `hold.fields(headers)` adds the budget's RateLimit members to the answer's, refusals included.

The hold keeps the budget and ledger key it reserved under, so a reload while it is in flight settles what it
reserved; the key names no limit, so the new budget counts the same entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from functools import partial

from gateway import errors
from gateway.errors import Refused
from gateway.guards.failed_codes import (
    FailedCodeBudget,
    counts,
    named_codes,
    refusal_retry_after,
    remaining_after,
    state_member,
    unknown_codes,
    with_budget_fields,
)
from gateway.models import Outcome, Target, UpstreamResponse
from gateway.ratelimit.store import Reservation, Store, StoreUnavailable

log = logging.getLogger("gateway.failed_codes")

# Settlements in flight: a task nobody awaits must be referenced until it is done.
_SETTLING: set[asyncio.Task[None]] = set()
_DOWN: set[str] = set()  # storage URIs in an outage, for one log line per outage


class CodeHold:
    """What one request holds; a request its project's budget does not count holds nothing."""

    __slots__ = ("_budget", "_kept", "_key", "_released", "_reservation", "_store")

    def __init__(self) -> None:
        self._budget: FailedCodeBudget | None = None
        self._store: Store | None = None
        self._key = ""
        self._reservation: Reservation | None = None
        self._kept = 0
        self._released = False

    async def reserve(
        self, store: Store, target: Target, client_key: str, document: object, outcome: Outcome
    ) -> None:
        """Hold the codes the request names; Refused 429 when they do not fit, 503 when the store is down
        and `on_storage_error: deny` (with `allow` the request goes on unheld and uncounted)."""
        budget = target.project.failed_codes
        if budget is None or not counts(target.route):
            return
        limits = target.project.rate_limit
        key = budget.key(client_key)
        named, trace, started = named_codes(target.route, document), outcome.trace, time.perf_counter()
        reserving = asyncio.ensure_future(store.reserve(key, budget.limit, budget.window, named))
        try:
            reservation = await asyncio.shield(reserving)  # cancelled here, the grant is still given back
        except asyncio.CancelledError:
            reserving.add_done_callback(partial(_give_back_late, store, key))
            raise
        except StoreUnavailable as exc:
            if trace is not None:  # a span event: the decision and the storage round trip
                trace.codes_checked(named, False, True, time.perf_counter() - started)
            outcome.limit_store_error = True
            if limits.storage not in _DOWN:
                _DOWN.add(limits.storage)
                log.error(
                    "failed-code budget: store unavailable (%s); on_storage_error=%s",
                    exc,
                    limits.on_storage_error,
                )
            if limits.on_storage_error == "deny":
                raise Refused(errors.rate_limit_unavailable()) from None
            return
        if limits.storage in _DOWN:
            _DOWN.discard(limits.storage)
            log.warning("failed-code budget: store reachable again")
        if trace is not None:
            trace.codes_checked(named, not reservation.granted, False, time.perf_counter() - started)
        self._budget, self._store, self._key, self._reservation = budget, store, key, reservation
        if not reservation.granted:
            retry = refusal_retry_after(reservation.retry_after, reservation.reset)
            raise Refused(errors.too_many_failed_codes(retry))

    def answered(self, answer: UpstreamResponse, outcome: Outcome) -> None:
        """Voucherify answered (`answer` is what the browser gets): keep the codes it says do not exist."""
        reservation = self._reservation
        if reservation is None or not reservation.granted:
            return
        self._kept = unknown_codes(answer.status, answer.body, reservation.amount)
        outcome.unknown_codes = self._kept

    def release(self) -> None:
        """Give back what the answer did not keep (everything when there was none). Never raises, never
        waits: the settlement runs in a task, so a cancelled handler still gives its codes back."""
        reservation, store = self._reservation, self._store
        if self._released or reservation is None or store is None or not reservation.token:
            return
        self._released = True
        if self._kept >= reservation.amount:
            return  # every held code was unknown: nothing to give back
        _settle_soon(store, self._key, reservation, self._kept)

    def fields(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """`headers` (the per-IP RateLimit fields) with the budget's members, when this request was
        counted; `Retry-After` too on a refusal."""
        budget, reservation = self._budget, self._reservation
        if budget is None or reservation is None:
            return list(headers)
        if not reservation.granted:
            state = state_member(reservation.remaining, reservation.reset)
            retry = refusal_retry_after(reservation.retry_after, reservation.reset)
            return with_budget_fields(headers, budget, state, retry)
        left = remaining_after(budget, reservation.remaining, reservation.amount, self._kept)
        state = state_member(left, reservation.reset if left < budget.limit else 0)
        return with_budget_fields(headers, budget, state)


def _settle_soon(store: Store, key: str, reservation: Reservation, keep: int) -> None:
    task = asyncio.ensure_future(_settle(store, key, reservation, keep))
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)


async def _settle(store: Store, key: str, reservation: Reservation, keep: int) -> None:
    try:
        await store.settle(key, reservation, keep)
    except StoreUnavailable as exc:  # the held codes leave with their window: stricter, never looser
        log.warning("failed-code budget: a hold could not be given back (%s)", exc)


def _give_back_late(store: Store, key: str, reserving: asyncio.Future[Reservation]) -> None:
    """The handler was cancelled while its reservation was on its way: give back whatever it was granted."""
    if reserving.cancelled() or reserving.exception() is not None:
        return
    reservation = reserving.result()
    if reservation.token:
        _settle_soon(store, key, reservation, 0)
