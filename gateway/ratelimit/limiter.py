"""Per-IP rate limits with Voucherify's 429 and IETF draft headers, and the verdict the handler acts on.

A `Bucket` is one named budget of a project (`per_ip`, or an operation with its own limit); the client's
bucket key (an IPv4 address or IPv6 prefix) is counted in it by the chain steps of `bucket_steps`, on the
project's store (gateway/ratelimit/store.py). `LimiterPool.gate` makes it the first gate of a request's
chain (gateway/ratelimit/gates.py), with the failed-code budget and the upstream quota behind it; its
verdict (`PerIpGate`) applies `on_storage_error` when the store fails. Stores outlive policy reloads: the
pool hands the same store to every policy that names the same URI, so counts survive a reload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import Storage
from limits.limits import GRANULARITIES

from gateway import errors
from gateway.errors import GatewayError, Refused
from gateway.models import Bucket, Outcome, RateItem, Strategy
from gateway.policy import RateLimit
from gateway.ratelimit import redis_store
from gateway.ratelimit.memory_store import BoundedMemoryStorage, MemoryStore
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.refusals import Refusals
from gateway.ratelimit.store import Hit, Reservation, StepAnswer, Store, StoreUnavailable

log = logging.getLogger("gateway.ratelimit")


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    headers: dict[str, str]
    retry_after: int  # seconds until the exhausted budget returns (0 when allowed)


def open_storage(uri: str, timeout: float = 0.5) -> Storage:
    """A storage for a policy URI: the bounded in-memory store, or Redis with timeouts and a bounded pool."""
    if uri.startswith("memory://"):
        return BoundedMemoryStorage()
    if redis_store.is_redis(uri):
        return redis_store.redis_storage(uri, timeout)
    raise ValueError(f"not a storage URI the policy accepts: {uri.split('://', 1)[0]}://")


def open_store(uri: str, timeout: float = 0.5) -> MemoryStore | RedisStore:
    """The `Store` for a policy URI (see `open_storage`)."""
    storage = open_storage(uri, timeout)
    if isinstance(storage, BoundedMemoryStorage):
        return MemoryStore(timeout, storage=storage)
    return RedisStore(storage, timeout)


def bucket_steps(store: Store, strategy: Strategy, bucket: Bucket, client_key: str) -> list[Hit]:
    """A request's count in a bucket as chain steps: items in order up to the first that refuses it (the
    chain counts nothing after a refusal), and every item's window, as `limits`' strategies compute it.

    A bucket of one item reads its window in the step that counts it, on every store (nothing is counted
    in between). A store that `fuses_reads` does so for every item, except when two items share a key:
    then, as in memory, every count comes before every read, so an item's window shows the next item's
    count in the same key, exactly as with `limits`' own calls (count all, then read all; in memory a count
    may also evict another item's key at the store's cap, and the reads show it).
    """
    keys = bucket.keys(client_key)
    if len(keys) == 1:  # one item (the usual `per_ip`): nothing is counted between its count and its read
        return [Hit(strategy, bucket.items[0], keys[0], True, True)]
    pairs = zip(bucket.items, keys, strict=True)
    if store.fuses_reads and not bucket.shares_a_key:
        return [Hit(strategy, item, key, True, True) for item, key in pairs]
    counts = [Hit(strategy, item, key, True, False) for item, key in pairs]
    return [*counts, *(Hit(strategy, step.item, step.key, False, True) for step in counts)]


Fields = tuple[tuple[str, str], ...]


def bucket_result(bucket: Bucket, steps: Sequence[Hit], answers: Sequence[StepAnswer]) -> LimitResult:
    """The bucket's verdict and RateLimit fields from its steps' answers."""
    allowed, fields, retry = bucket_fields(bucket, steps, answers)
    return LimitResult(allowed, dict(fields), retry)


def bucket_fields(
    bucket: Bucket, steps: Sequence[Hit], answers: Sequence[StepAnswer]
) -> tuple[bool, Fields, int]:
    """Whether the bucket let the request pass, its RateLimit fields (and Retry-After on a refusal), and the
    seconds until the exhausted budget returns (0 when allowed), from its steps' answers."""
    allowed = True
    now = time.time()
    parts: list[str] = []
    retry_after = 0
    names = iter(bucket.item_names)
    for step, answer in zip(steps, answers, strict=True):
        assert answer is not None and not isinstance(answer, Reservation)  # a hit always answers
        counted, stats = answer
        if step.counts and not counted:
            allowed = False
        if step.read:
            assert stats is not None
            reset = max(0, math.ceil(stats.reset_time - now))
            parts.append(f'"{next(names)}";r={stats.remaining};t={reset}')
            if stats.remaining == 0:
                retry_after = max(retry_after, reset, 1)
    fields = (("RateLimit-Policy", bucket.policy_header), ("RateLimit", ", ".join(parts)))
    if allowed:
        return True, fields, 0
    retry = max(retry_after, 1)
    return False, (*fields, ("Retry-After", str(retry))), retry


class Limiter:
    """One store and strategy; `hit` counts a request in a bucket and says whether it may pass (one chain:
    bounded by the store's timeout, raises `StoreUnavailable`). Outside a request's chain: the tests and
    comparisons with `limits` count with it; a request counts through `LimiterPool.gate`."""

    def __init__(self, store: Store, strategy: Strategy) -> None:
        self.store = store
        self.strategy = Strategy(strategy)

    def steps(self, bucket: Bucket, client_key: str) -> list[Hit]:
        return bucket_steps(self.store, self.strategy, bucket, client_key)

    async def hit(self, bucket: Bucket, client_key: str) -> LimitResult:
        steps = self.steps(bucket, client_key)
        return bucket_result(bucket, steps, await self.store.chain(steps))


def limits_item(item: RateItem) -> RateLimitItem:
    """`limits`' own item for one of ours (same amount, window and storage key)."""
    return GRANULARITIES[item.granularity](item.amount, item.multiples)


@dataclass(frozen=True, slots=True)
class StoreReadiness:
    ok: bool  # False when a store that a deny project uses does not answer
    check: str  # the readiness line; never a URI (a Redis URL may carry a password)


class LimiterPool:
    """Stores by URI, shared across policy reloads, and each request's per-IP gate on them.

    One store (so one Redis connection pool) per URI and process. `start` opens the Redis connections and
    loads the Lua scripts before the first request; stores a reload adds are prepared in the background.
    """

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore | RedisStore] = {}
        self._refusals: dict[str, Refusals] = {}  # by URI: clients its store refused a moment ago
        self._down: set[str] = set()  # URIs in an outage, for one log line per outage
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    def store(self, uri: str, timeout: float = 0.5) -> Store:
        """The counters of gateway/ratelimit/store.py on the storage of `uri`, their calls bounded by
        `timeout` (the policy's `storage_timeout`). One per URI and process: every project, policy and
        timeout naming the same URI shares its counts."""
        store = self._stores.get(uri)
        if store is None:
            store = self._stores[uri] = open_store(uri, timeout)
            self._refusals[uri] = Refusals()
            if self._started:
                task = asyncio.get_running_loop().create_task(self._prepare(store, timeout))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return store.bound(timeout)

    def gate(
        self, store: Store, limits: RateLimit, bucket: Bucket, client_key: str, outcome: Outcome
    ) -> PerIpGate:
        """The per-IP count as the first gate of a request's chain (gateway/ratelimit/gates.py), on
        `store`: the one `store(limits.storage, limits.storage_timeout)` gives."""
        steps = bucket_steps(store, limits.strategy, bucket, client_key)
        return PerIpGate(self, limits, bucket, steps, outcome, self._refusals[limits.storage])

    def reached(self, limits: RateLimit) -> None:
        """The store answered a count: the end of an outage is logged once."""
        uri = limits.storage
        if uri in self._down:
            self._down.discard(uri)
            log.warning("rate-limit store reachable again")

    def unavailable(self, limits: RateLimit, exc: StoreUnavailable) -> GatewayError | None:
        """The store failed: `on_storage_error`'s refusal, None to let the request pass uncounted (one log
        line per outage)."""
        uri = limits.storage
        if uri not in self._down:
            self._down.add(uri)
            self._refusals[uri].forget()  # nothing the store said before its outage is repeated after it
            log.error("rate-limit store unavailable (%s); on_storage_error=%s", exc, limits.on_storage_error)
        return errors.rate_limit_unavailable() if limits.on_storage_error == "deny" else None

    async def readiness(self, limits: Iterable[RateLimit]) -> StoreReadiness:
        """Whether the stores these rate limits use answer: not ready only when one that a project with
        `on_storage_error: deny` uses does not (with `allow` its requests pass unlimited)."""
        uris: dict[str, float] = {}
        deny: set[str] = set()
        for item in limits:
            uris.setdefault(item.storage, item.storage_timeout)
            if item.on_storage_error == "deny":
                deny.add(item.storage)
        answers = await asyncio.gather(*(self.store(uri, t).ready() for uri, t in uris.items()))
        down = {uri for uri, up in zip(uris, answers, strict=True) if not up}
        if not down:
            return StoreReadiness(True, "reachable")
        if down & deny:
            return StoreReadiness(False, "unreachable (on_storage_error: deny)")
        return StoreReadiness(True, "unreachable (on_storage_error: allow, requests pass unlimited)")

    async def _prepare(self, store: Store, timeout: float) -> None:
        try:
            await asyncio.wait_for(store.prepare(), max(timeout, 1.0))
        except Exception as exc:  # an unreachable store is handled per request (on_storage_error)
            log.warning("rate-limit store not reachable at start-up (%s)", type(exc).__name__)

    async def start(self, timeout: float = 1.0) -> None:
        """Open each Redis store's first connection and load its scripts (at start-up)."""
        self._started = True
        await asyncio.gather(*(self._prepare(store, timeout) for store in list(self._stores.values())))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for store in self._stores.values():
            try:
                await store.close()
            except Exception:  # closing is best effort at shutdown
                log.debug("closing a limit store failed", exc_info=True)
        self._stores.clear()
        self._refusals.clear()  # kept in step with the stores: what a closed store refused is not repeated
        self._started = False


class PerIpGate:
    """A request's per-IP count as a gate: its bucket's hits, then the verdict (a refusal: 429, or 503 while
    the store is down and `on_storage_error: deny`), the `rate_limit` trace event and, once passed, the
    RateLimit fields in `headers`."""

    __slots__ = ("_bucket", "_limits", "_outcome", "_pool", "_refusals", "headers", "steps")

    def __init__(
        self,
        pool: LimiterPool,
        limits: RateLimit,
        bucket: Bucket,
        steps: list[Hit],
        outcome: Outcome,
        refusals: Refusals,
    ) -> None:
        self._pool, self._limits, self._bucket, self._outcome = pool, limits, bucket, outcome
        self._refusals = refusals
        self.steps = steps
        self.headers: tuple[tuple[str, str], ...] = ()

    def refuse_remembered(self) -> None:
        """Raise the 429 the store gave this client a moment ago, without asking it again, while that
        refusal still holds (gateway/ratelimit/refusals.py); else return, and the chain asks the store."""
        if not self._refusals or len(self.steps) != 1:
            return
        step = self.steps[0]
        window = self._refusals.refused(step.key, step.strategy, time.time())
        if window is None:
            return
        _, fields, retry = bucket_fields(self._bucket, self.steps, [(False, window)])
        outcome = self._outcome
        outcome.limit_remembered = True
        if outcome.trace is not None:
            outcome.trace.limit_remembered(self._bucket.name, self._limits.storage)
        raise Refused(errors.too_many_requests(retry), fields)

    def passed(self, answers: Sequence[StepAnswer], seconds: float) -> Refused | None:
        allowed, fields, retry = bucket_fields(self._bucket, self.steps, answers)
        self._pool.reached(self._limits)
        if allowed:
            return self._decided(None, fields, False, seconds)
        if len(answers) == 1:  # a bucket of one item: remembered (for a flood's next requests)
            answer, step = answers[0], self.steps[0]
            assert answer is not None and not isinstance(answer, Reservation)
            window = answer[1]
            assert window is not None  # a bucket of one item reads its window when it counts
            self._refusals.remember(
                step.key, step.strategy, window, time.time(), seconds, self._limits.storage_timeout
            )
        return self._decided(errors.too_many_requests(retry), fields, False, seconds)

    def failed(self, exc: StoreUnavailable, seconds: float) -> Refused | None:
        return self._decided(self._pool.unavailable(self._limits, exc), (), True, seconds)

    def abandoned(self, answers: Sequence[StepAnswer]) -> None:
        return None  # a hit is never given back

    def _decided(
        self, error: GatewayError | None, fields: Fields, store_error: bool, seconds: float
    ) -> Refused | None:
        """`error`: 429 too_many_requests, 503 rate_limit_unavailable (deny), or None: pass; `fields`: the
        RateLimit fields (and Retry-After on a 429), () when the store failed (with `allow`, the request
        passes uncounted)."""
        outcome = self._outcome
        trace = outcome.trace
        if trace is not None:  # a span event: the decision and the storage round trip
            trace.limit_checked(
                self._bucket.name, self._limits.storage, error is not None, store_error, seconds
            )
        outcome.limit_store_error = store_error
        if error is not None:
            return Refused(error, fields)
        self.headers = fields
        return None
