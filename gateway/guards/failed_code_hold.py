"""A request's hold on its client's failed-code budget, from the reservation to the settlement.

The pipeline (gateway/app.py) makes one `CodeHold` per request and:

- `hold.ask(...)` once the request is read: the reservation the request needs (`steps`: every code it
  names, in the client's ledger), when its project's budget counts its route;
- runs it as a gate of the request's chain after the per-IP limit (`gateway.ratelimit.gates.pass_gates`:
  atomic in the store, so 40 requests at once with 1 unit left get 1 grant between them on every worker and
  gateway sharing it, and never run for a request refused per IP): `passed` raises `Refused` 429
  `too_many_failed_codes` when the budget does not cover the codes; a store that is down follows
  `on_storage_error` (`failed`);
- `hold.answered(answer)` once Voucherify's answer (as the browser gets it) is in: the unknown codes are
  kept, the others will be given back;
- `hold.release()` in a `finally`, always: settles the reservation without waiting (`Store.settle_soon`),
  so a handler that is cancelled (a client gone, a drain) or a request that got no answer (502, 503, 504, a
  refusal by a later step) gives every code back; a grant whose handler was cancelled while the chain was
  on its way is given back when it comes (`abandoned`);
- `hold.fields(headers)` adds the budget's RateLimit members to the answer's, refusals included.

The hold keeps the budget and ledger key it reserved under, so a reload while it is in flight settles what it
reserved; the key names no limit, so the new budget counts the same entries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

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
from gateway.policy import RateLimit
from gateway.ratelimit.gates import give_back, settle_soon
from gateway.ratelimit.store import Reservation, Reserve, StepAnswer, Store, StoreUnavailable

log = logging.getLogger("gateway.failed_codes")

WHAT = "failed-code budget"  # in the log lines
_DOWN: set[str] = set()  # storage URIs in an outage, for one log line per outage


class CodeHold:
    """What one request holds; a request its project's budget does not count holds nothing."""

    __slots__ = (
        "_budget",
        "_kept",
        "_key",
        "_limits",
        "_named",
        "_outcome",
        "_released",
        "_reservation",
        "_store",
        "steps",
    )

    def __init__(self) -> None:
        self._budget: FailedCodeBudget | None = None
        self._limits: RateLimit | None = None
        self._store: Store | None = None
        self._outcome: Outcome | None = None
        self._key = ""
        self._named = 0
        self._reservation: Reservation | None = None
        self._kept = 0
        self._released = False
        self.steps: tuple[Reserve, ...] = ()

    def ask(self, store: Store, target: Target, client_key: str, document: object, outcome: Outcome) -> None:
        """The reservation of the codes the request names (none when its route is not counted)."""
        budget = target.project.failed_codes
        if budget is None or not counts(target.route):
            return
        self._budget, self._limits, self._store, self._outcome = (
            budget,
            target.project.rate_limit,
            store,
            outcome,
        )
        self._key, self._named = budget.key(client_key), named_codes(target.route, document)
        self.steps = (Reserve(self._key, budget.limit, budget.window, self._named),)

    def passed(self, answers: Sequence[StepAnswer], seconds: float) -> Refused | None:
        """The reservation's answer: a 429 refusal when the codes do not fit."""
        if not self.steps:
            return None
        (reservation,) = answers
        assert isinstance(reservation, Reservation)  # not refused before: the per-IP gate raised then
        assert self._limits is not None and self._outcome is not None
        storage = self._limits.storage
        if storage in _DOWN:
            _DOWN.discard(storage)
            log.warning("failed-code budget: store reachable again")
        trace = self._outcome.trace
        if trace is not None:  # a span event: the decision and the storage round trip
            trace.codes_checked(self._named, not reservation.granted, False, seconds)
        self._reservation = reservation
        if not reservation.granted:
            retry = refusal_retry_after(reservation.retry_after, reservation.reset)
            return Refused(errors.too_many_failed_codes(retry))
        return None

    def failed(self, exc: StoreUnavailable, seconds: float) -> Refused | None:
        """A 503 refusal when `on_storage_error: deny`; with `allow` it goes on unheld and uncounted."""
        if not self.steps:
            return None
        limits, outcome = self._limits, self._outcome
        assert limits is not None and outcome is not None
        if outcome.trace is not None:
            outcome.trace.codes_checked(self._named, False, True, seconds)
        outcome.limit_store_error = True
        if limits.storage not in _DOWN:
            _DOWN.add(limits.storage)
            log.error(
                "failed-code budget: store unavailable (%s); on_storage_error=%s",
                exc,
                limits.on_storage_error,
            )
        return Refused(errors.rate_limit_unavailable()) if limits.on_storage_error == "deny" else None

    def abandoned(self, answers: Sequence[StepAnswer]) -> None:
        """The handler was cancelled while its reservation was on its way: give back whatever it got."""
        give_back(self._store, self._key, answers, WHAT)

    def answered(self, answer: UpstreamResponse, outcome: Outcome) -> None:
        """Voucherify answered (`answer` is what the browser gets): keep the codes it says do not exist."""
        reservation = self._reservation
        if reservation is None or not reservation.granted:
            return
        self._kept = unknown_codes(answer.status, answer.body, reservation.amount)
        outcome.unknown_codes = self._kept

    def release(self) -> None:
        """Give back what the answer did not keep (everything when there was none). Never raises, never
        waits (`Store.settle_soon`), so a cancelled handler still gives its codes back."""
        reservation, store = self._reservation, self._store
        if self._released or reservation is None or store is None or not reservation.token:
            return
        self._released = True
        if self._kept >= reservation.amount:
            return  # every held code was unknown: nothing to give back
        settle_soon(store, self._key, reservation, self._kept, WHAT)

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
