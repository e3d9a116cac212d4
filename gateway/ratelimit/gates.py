"""A request's guards in as few store calls as their order allows: `Gate`s run as one `Store.chain`.

Each guard that counts in the limit store is a `Gate`: the per-IP limit (`limiter.PerIpGate`), the
failed-code budget (`guards/failed_code_hold.CodeHold`), the upstream quota (`guards/sparing.QuotaHold`).
A gate names its chain steps (`steps`, possibly none) and is handed their answers back. `pass_gates(store,
gates)` runs every gate's steps, in the gates' order (the contract's check order), as one chain: one Redis
script on plain Redis and Sentinel, one synchronous run in memory (gateway/ratelimit/store.py). The store
stops at the first refusal, so a request refused per IP never touches the failed-code budget or the
project's quota, not even for a moment.

Then each gate in turn takes its answers (`passed`), and the first that refuses (answers an
`errors.Refused`) stops the request: `pass_gates` raises it, and the gates after it are told their answers
were not used (`abandoned`: a reservation is given back). A store that fails fails every gate of the chain:
each in turn applies `on_storage_error` itself (`failed`: one log line per outage each, a 503 with `deny`).
A handler cancelled while the chain is on its way (a client gone, a drain) does not wait for it, and when
its answers come every gate is `abandoned`, so whatever was reserved is given back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from gateway.errors import Refused
from gateway.ratelimit.store import (
    Reservation,
    Reserve,
    Step,
    StepAnswer,
    Store,
    StoreUnavailable,
)

log = logging.getLogger("gateway.ratelimit")


class Gate(Protocol):
    """One guard's part of a chain."""

    @property
    def steps(self) -> Sequence[Step]: ...

    def passed(self, answers: Sequence[StepAnswer], seconds: float) -> Refused | None:
        """Its steps' answers (`seconds`: the chain's round trip); a `Refused` to refuse the request."""
        ...

    def failed(self, exc: StoreUnavailable, seconds: float) -> Refused | None:
        """The store failed: `on_storage_error` (a `Refused` with `deny`)."""
        ...

    def abandoned(self, answers: Sequence[StepAnswer]) -> None:
        """Its answers will not be used (a gate before it refused, or the handler was cancelled): give
        back what they reserved. Never raises, never waits."""
        ...


async def pass_gates(store: Store, gates: Sequence[Gate]) -> None:
    """Run `gates` as one chain on `store`; returns when every gate passed, else raises `Refused`."""
    steps = [step for gate in gates for step in gate.steps]
    started = time.perf_counter()
    try:
        if not steps:
            answers: list[StepAnswer] = []
        elif store.suspends and any(isinstance(step, Reserve) for step in steps):
            answers = await _shielded(store, steps, gates)
        else:  # nothing to give back (hits only), or a store that never waits (memory): no task
            answers = await store.chain(steps)
    except StoreUnavailable as exc:
        seconds = time.perf_counter() - started
        for gate in gates:
            refused = gate.failed(exc, seconds)
            if refused is not None:
                raise refused from None
        return
    seconds = time.perf_counter() - started if steps else 0.0
    parts = _split(gates, answers)
    for i, (gate, part) in enumerate(zip(gates, parts, strict=True)):
        refused = gate.passed(part, seconds)
        if refused is not None:
            for later, unused in zip(gates[i + 1 :], parts[i + 1 :], strict=True):
                later.abandoned(unused)
            raise refused


async def _shielded(store: Store, steps: list[Step], gates: Sequence[Gate]) -> list[StepAnswer]:
    running = asyncio.ensure_future(store.chain(steps))
    try:
        return await asyncio.shield(running)  # cancelled here, what it reserved is still given back
    except asyncio.CancelledError:
        running.add_done_callback(partial(_abandon, gates))
        raise


def _abandon(gates: Sequence[Gate], running: asyncio.Future[list[StepAnswer]]) -> None:
    if running.cancelled() or running.exception() is not None:
        return  # nothing the caller knows of was reserved; whatever was leaves with its window
    for gate, part in zip(gates, _split(gates, running.result()), strict=True):
        gate.abandoned(part)


def _split(gates: Sequence[Gate], answers: Sequence[StepAnswer]) -> list[Sequence[StepAnswer]]:
    parts: list[Sequence[StepAnswer]] = []
    start = 0
    for gate in gates:
        end = start + len(gate.steps)
        parts.append(answers[start:end])
        start = end
    return parts


def give_back(store: Store | None, key: str, answers: Sequence[StepAnswer], what: str) -> None:
    """A gate's `abandoned`: every reservation among `answers` that holds something, given back whole."""
    for reservation in answers:
        if isinstance(reservation, Reservation) and reservation.token and store is not None:
            settle_soon(store, key, reservation, 0, what)


def settle_soon(store: Store, key: str, reservation: Reservation, keep: int, what: str) -> None:
    """`store.settle_soon(...)`: never raises, never waits (a cancelled handler, or one answering now,
    still gives back). `what` names the guard in the warning when the store fails."""
    store.settle_soon(key, reservation, keep, partial(_not_given_back, what))


def _not_given_back(what: str, exc: StoreUnavailable) -> None:
    log.warning("%s: a hold could not be given back (%s)", what, exc)  # they leave with their window
