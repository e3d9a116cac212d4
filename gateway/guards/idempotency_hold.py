"""Idempotency-Key's pipeline step: the store calls around the decisions of `guards/idempotency.py`.

`claim` runs right after the per-IP limit. It answers a replay, or raises `Refused` (400, 409, 422, 503)
without calling Voucherify, or returns a `Hold` on the key. The request then runs on; its Voucherify call
goes through `Hold.run`, which settles the record whatever happens: the answer kept (`replace` of this
request's own marker) or the key released (`delete_if` of that marker). The call runs in a task of its own,
shielded from the handler, so a browser that goes away mid-flight does not cut it off: its answer is kept,
and the browser's retry gets it. A refusal between the claim and the call (failed-code budget, quota), or
a cancellation there, releases the key (`Hold.release`, from the pipeline's `finally`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway import errors
from gateway.errors import ErrorKey, Refused
from gateway.guards import idempotency
from gateway.guards.idempotency import Claim, Replay, Result, Settings
from gateway.models import Outcome, Target, UpstreamResponse
from gateway.ratelimit import Store, StoreUnavailable

log = logging.getLogger("gateway.idempotency")

T = TypeVar("T")


class Holder:
    """The tasks whose records are still to be settled (answers kept, markers taken back), possibly after
    their handlers are gone; a shutdown `wait`s for them before it closes the transport and the stores."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its handler may be gone, and `Hold.run` accounted for it

    async def wait(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)


async def claim(
    settings: Settings,
    store: Store,
    target: Target,
    values: Sequence[str],
    body: bytes,
    outcome: Outcome,
    holder: Holder,
) -> Hold | Replay | None:
    """A hold on the request's key, the kept answer to replay, or None (no key); Refused (400, 409, 422,
    503) otherwise, with nothing sent to Voucherify."""
    made = idempotency.begin(settings, target, values, body)
    if made is None:
        return None
    if not isinstance(made, Claim):
        outcome.idempotency = idempotency.result_of(made)
        raise Refused(made)
    try:
        existing = await store.claim(made.storage_key, made.marker, made.marker_ttl)
    except StoreUnavailable as exc:
        log.warning("idempotency store unavailable (%s): a keyed request answered 503", exc)
        outcome.idempotency = Result.UNAVAILABLE
        _unclaim(store, made, holder)
        raise Refused(errors.idempotency_unavailable()) from None
    except asyncio.CancelledError:
        _unclaim(store, made, holder)
        raise
    if existing is None:
        return Hold(store, made, outcome, holder)
    verdict = idempotency.judge(made, existing)
    outcome.idempotency = idempotency.result_of(verdict)
    if isinstance(verdict, Replay):
        return verdict
    if verdict.key is ErrorKey.IDEMPOTENCY_UNAVAILABLE:
        log.error("an Idempotency-Key record this gateway cannot read: answered 503 until it expires")
    raise Refused(verdict)


def _unclaim(store: Store, made: Claim, holder: Holder) -> None:
    """A claim whose answer never came (the store failed, the handler was cancelled) may still have taken
    effect: take this request's own marker back, without waiting, so the key can be used again at once
    rather than after the marker's lifetime. Best effort: a store that fails leaves it to expire."""

    async def unclaim() -> None:
        with contextlib.suppress(StoreUnavailable):
            await store.delete_if(made.storage_key, made.marker)

    holder.start(unclaim())


class Hold:
    """A request holding its key until `run` or `release` settles it (exactly once)."""

    def __init__(self, store: Store, claim: Claim, outcome: Outcome, holder: Holder) -> None:
        self.store, self.claim, self.outcome, self.holder = store, claim, outcome, holder
        self.settled = False
        # the call must end before the marker does, or a retry could claim the key while it is under way
        self.deadline = asyncio.get_running_loop().time() + claim.marker_ttl - idempotency.MARGIN_SECONDS

    async def release(self) -> None:
        """Give the key back (nothing kept): after a refusal or a cancellation before the call. No-op once
        `run` took the hold over."""
        if not self.settled:
            self.settled = True
            await asyncio.shield(self._settle(None))

    async def run(self, call: Callable[[], Awaitable[UpstreamResponse]]) -> UpstreamResponse:
        """`call()` (Voucherify, and the mode's view of its answer) in a task that outlives a cancelled
        handler; its answer is kept, or the key released, before this returns or raises."""
        self.settled = True
        return await asyncio.shield(self.holder.start(self._work(call)))

    async def _work(self, call: Callable[[], Awaitable[UpstreamResponse]]) -> UpstreamResponse:
        claim = self.claim
        try:
            async with asyncio.timeout_at(self.deadline):
                answer = await call()
        except TimeoutError:  # waited too long for a connection slot: as unknown as a timed-out answer
            error = errors.upstream_timeout()
            await self._settle(idempotency.keep_error(claim, error, self.outcome.request_id))
            raise Refused(error) from None
        except Refused as refused:
            await self._settle(idempotency.keep_error(claim, refused.error, self.outcome.request_id))
            raise
        except BaseException:  # cancelled with the loop (a shutdown past its drain), or a bug: keep nothing
            await asyncio.shield(self._settle(None))
            raise
        await self._settle(idempotency.keep_answer(claim, answer.status, _content_type(answer), answer.body))
        return answer

    async def _settle(self, record: bytes | None) -> None:
        """Keep `record` under the key, or release the key when there is none. Never raises."""
        claim, outcome = self.claim, self.outcome
        try:
            if record is None:
                await self.store.delete_if(claim.storage_key, claim.marker)
                outcome.idempotency = Result.RELEASED
                return
            if await self.store.replace(claim.storage_key, claim.marker, record, claim.ttl):
                outcome.idempotency = Result.KEPT
                return
            log.warning("an Idempotency-Key marker was gone when its answer came: the answer was not kept")
        except StoreUnavailable as exc:
            if record is None:  # the marker expires by itself
                outcome.idempotency = Result.RELEASED
                return
            log.warning("idempotency store unavailable (%s): an answer was not kept", exc)
        except Exception:  # never the request's problem
            log.exception("keeping an Idempotency-Key record failed")
        outcome.idempotency = Result.LOST


def _content_type(answer: UpstreamResponse) -> str | None:
    return next((value for name, value in answer.headers if name.lower() == "content-type"), None)
