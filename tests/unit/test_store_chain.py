"""`Store.chain` on every store kind (memory, a real redis-server, a 3-master Redis Cluster): the per-IP hits,
then the failed-code reservation, then the quota reservation, in order, stopping at the first refusal: a
request refused per IP never touches a ledger, on any store, not even for a moment; and on plain Redis the
whole chain is one script call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.errors import Refused
from gateway.models import Bucket, Strategy
from gateway.ratelimit import (
    Limiter,
    LimiterPool,
    Reservation,
    Store,
    StoreUnavailable,
    bridge,
    bucket_result,
    bucket_steps,
    redis_store,
)
from gateway.ratelimit.gates import pass_gates, settle_soon
from gateway.ratelimit.limiter import open_store
from gateway.ratelimit.memory_store import MemoryStore
from gateway.ratelimit.redis_batch import batcher_for
from gateway.ratelimit.redis_store import RedisStore, ledger_key
from gateway.ratelimit.store import Hit, Reserve, Step, StepAnswer
from tests.support.processes import RedisCluster, RedisServer, running_redis

STRATEGIES = list(Strategy)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


class Kind:
    """A store kind: `store()` is one gateway's store (a new client each time on Redis)."""

    def __init__(self, name: str, uri: str) -> None:
        self.name, self.uri = name, uri
        self.pools: list[LimiterPool] = []
        self.memory: Store | None = None

    async def store(self) -> Store:
        if self.uri == "memory://":
            if self.memory is None:
                self.memory = LimiterPool().store(self.uri, 2.0)
            return self.memory
        pool = LimiterPool()
        self.pools.append(pool)
        store = pool.store(self.uri, 10.0)
        await pool.start()
        return store

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()


def _kind(request: pytest.FixtureRequest) -> Kind:
    if request.param == "memory":
        return Kind("memory", "memory://")
    if request.param == "redis":
        return Kind("redis", request.getfixturevalue("module_redis").url)
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return Kind("cluster", cluster.url)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    found = _kind(request)
    yield found
    await found.close()


@pytest.fixture(params=["redis", "cluster"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    """A store that gateways share (memory is per process, with one clock)."""
    found = _kind(request)
    yield found
    await found.close()


def fresh(name: str) -> str:
    return f"{name}:{time.time_ns()}"


def guards(store: Store, strategy: Strategy, per_ip: str, codes: Reserve, quota: Reserve) -> list[Step]:
    """A validation's chain: the per-IP bucket, the failed-code reservation, the quota reservation."""
    bucket = Bucket.parse("per_ip", per_ip, fresh("shop") + "/per_ip")
    return [*bucket_steps(store, strategy, bucket, "203.0.113.9"), codes, quota]


async def started(redis: RedisServer, timeout: float) -> tuple[LimiterPool, Store]:
    """A started pool and its store on `redis` (close the pool at the end)."""
    pool = LimiterPool()
    store = pool.store(redis.url, timeout)
    await pool.start()
    return pool, store


async def live(store: Store, key: str, limit: int) -> int:
    """Entries held in a ledger (an amount of 0 holds nothing and reads the count)."""
    return limit - (await store.reserve(key, limit, 3600, 0)).remaining


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_request_refused_per_ip_never_touches_a_ledger(kind: Kind, strategy: Strategy) -> None:
    store = await kind.store()
    codes, quota = fresh("failed_codes/shop/203.0.113.9"), fresh("shop/upstream_quota/3600")
    if kind.name == "cluster":  # the chain really is split: its ledgers lie in other slots
        assert key_slot(ledger_key(codes).encode()) != key_slot(ledger_key(quota).encode())
    steps = guards(store, strategy, "2 per hour", Reserve(codes, 10, 3600, 3), Reserve(quota, 5, 3600, 1))
    for _ in range(2):
        answers = await store.chain(steps)
        granted = answers[-2:]
        assert all(isinstance(r, Reservation) and r.granted for r in granted), answers
    for _ in range(3):  # refused per IP: the reservations do not run at all
        answers = await store.chain(steps)
        hit = answers[0]
        assert isinstance(hit, tuple) and hit[0] is False
        assert answers[-2:] == [None, None]
    assert await live(store, codes, 10) == 6 and await live(store, quota, 5) == 2


async def test_a_refused_reservation_stops_the_chain(kind: Kind) -> None:
    store = await kind.store()
    codes, quota = fresh("failed_codes/shop/198.51.100.1"), fresh("shop/upstream_quota/3600")
    steps = guards(
        store, Strategy.MOVING_WINDOW, "100 per hour", Reserve(codes, 2, 3600, 3), Reserve(quota, 5, 3600, 1)
    )
    answers = await store.chain(steps)
    hit, (refused, skipped) = answers[0], answers[-2:]
    assert isinstance(hit, tuple) and hit[0] is True  # counted per IP: it came first
    assert isinstance(refused, Reservation) and not refused.granted and refused.retry_after == 3600
    assert skipped is None
    assert await live(store, codes, 2) == 0 and await live(store, quota, 5) == 0


async def test_forty_chains_one_code_left_one_grant_and_one_quota_call(kind: Kind) -> None:
    one, two = await kind.store(), await kind.store()
    codes, quota = fresh("failed_codes/shop/192.0.2.7"), fresh("shop/upstream_quota/3600")
    bucket = Bucket.parse("per_ip", "1000 per hour", fresh("shop") + "/per_ip")

    async def validation(store: Store) -> list[Any]:
        steps = [*bucket_steps(store, Strategy.MOVING_WINDOW, bucket, "192.0.2.7")]
        return await store.chain([*steps, Reserve(codes, 1, 3600, 1), Reserve(quota, 100, 3600, 1)])

    results = await asyncio.gather(*(validation((one, two)[i % 2]) for i in range(40)))
    grants = [r for r in results if isinstance(r[-2], Reservation) and r[-2].granted]
    assert len(grants) == 1
    assert all(isinstance(r[-1], Reservation) and r[-1].granted for r in grants)
    assert all(r[-1] is None for r in results if r not in grants)  # the budget refused: no quota taken
    assert await live(one, quota, 100) == 1
    hits = [r[0] for r in results]
    assert all(isinstance(h, tuple) and h[0] is True for h in hits)  # every one counted per IP


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_chain_s_windows_are_the_limiter_s(kind: Kind, strategy: Strategy) -> None:
    """The per-IP part of a chain answers what the limiter alone answers (same decisions and fields)."""
    store = await kind.store()
    limiter = Limiter(store, strategy)
    namespace = fresh("windows")
    mine = Bucket.parse("per_ip", "3 per hour;2 per hour", namespace + "-chain/per_ip")
    theirs = Bucket.parse("per_ip", "3 per hour;2 per hour", namespace + "-limiter/per_ip")
    steps = bucket_steps(store, strategy, mine, "k")
    seen = []
    for _ in range(4):
        answers = await store.chain([*steps, Reserve(fresh("l"), 5, 60, 1)])
        got = bucket_result(mine, steps, answers[: len(steps)])
        want = await limiter.hit(theirs, "k")
        assert got.allowed == want.allowed  # (the sliding window's t depends on the millisecond)
        remaining = [part.split(";t=")[0] for part in got.headers["RateLimit"].split(", ")]
        assert remaining == [part.split(";t=")[0] for part in want.headers["RateLimit"].split(", ")]
        seen.append((got.allowed, remaining))
    assert seen == [
        (True, ['"per_ip";r=2', '"per_ip-2";r=1']),
        (True, ['"per_ip";r=1', '"per_ip-2";r=0']),
        (False, ['"per_ip";r=0', '"per_ip-2";r=0']),  # counted in the first item, refused by the second
        (False, ['"per_ip";r=0', '"per_ip-2";r=0']),
    ]


async def test_on_redis_a_validation_s_guards_are_one_script_call(module_redis: RedisServer) -> None:
    pool = LimiterPool()
    store = pool.store(module_redis.url, 2.0)
    assert isinstance(store, RedisStore)
    await pool.start()
    client: Any = bridge.client(store.storage)

    async def evalsha() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    codes, quota = fresh("failed_codes/shop/k"), fresh("shop/upstream_quota/3600")
    steps = guards(
        store, Strategy.SLIDING_WINDOW_COUNTER, "5 per hour;100 per day", Reserve(codes, 10, 3600, 2),
        Reserve(quota, 100, 3600, 1),
    )  # fmt: skip
    await store.chain(steps)  # the first loads the script
    before = await evalsha()
    for _ in range(10):
        await store.chain(steps)
    assert await evalsha() - before == 10
    batcher = batcher_for(client)
    assert batcher is not None
    pipelines = batcher.pipelines
    await asyncio.gather(*(store.chain(steps) for _ in range(30)))  # one loop turn: one pipeline
    assert batcher.pipelines - pipelines == 1
    await pool.close()


def test_every_hit_and_reservation_kind_is_a_chain_step() -> None:
    """The closed set of step kinds: a new kind must be taught to every store."""
    assert set(Step.__args__) == {Hit, Reserve}


class Holding:
    """A gate holding one reservation, giving it back when its answer is abandoned (as CodeHold does)."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key
        self.steps = (Reserve(key, 10, 3600, 2),)
        self.passed_with: Sequence[StepAnswer] | None = None

    def passed(self, answers: Sequence[StepAnswer], seconds: float) -> Refused | None:
        self.passed_with = answers
        return None

    def failed(self, exc: StoreUnavailable, seconds: float) -> Refused | None:
        return None

    def abandoned(self, answers: Sequence[StepAnswer]) -> None:
        for answer in answers:
            if isinstance(answer, Reservation) and answer.token:
                settle_soon(self.store, self.key, answer, 0, "test")


async def test_a_handler_cancelled_while_its_chain_is_on_its_way_gives_back_what_it_got(
    redis: RedisServer,
) -> None:
    pool, store = await started(redis, 30.0)
    codes, quota = Holding(store, fresh("codes")), Holding(store, fresh("quota"))
    redis.freeze()  # the chain is sent and waits for its answer
    try:
        task = asyncio.ensure_future(pass_gates(store, (codes, quota)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        redis.thaw()
    for _ in range(200):  # the answer comes after all; both grants are given back in tasks
        if await live(store, codes.key, 10) == 0 and await live(store, quota.key, 10) == 0:
            break
        await asyncio.sleep(0.05)
    assert await live(store, codes.key, 10) == 0 and await live(store, quota.key, 10) == 0
    assert codes.passed_with is None  # the cancelled request never used its answers
    await pool.close()


async def test_a_store_that_never_waits_settles_at_once_without_a_task() -> None:
    """A memory store's give-back happens in `settle_soon` itself: the next request of the same loop turn
    already finds the codes back, and no task is left behind."""
    store = open_store("memory://")
    held = await store.reserve("k", 1, 60, 1)
    assert held.granted and not (await store.reserve("k", 1, 60, 1)).granted
    tasks = len(asyncio.all_tasks())
    settle_soon(store, "k", held, 0, "test")
    assert len(asyncio.all_tasks()) == tasks
    assert (await store.reserve("k", 1, 60, 1)).granted  # no loop turn in between


async def test_a_redis_give_back_rides_the_turns_pipeline_without_a_task_of_its_own(
    redis: RedisServer,
) -> None:
    """On plain Redis a give-back is queued in the loop turn's pipeline: no task, no deadline. Forty given
    back in one turn are one pipeline (and its one sending task), and every entry is back."""
    pool, store = await started(redis, 2.0)
    key = fresh("soon")
    held = [await store.reserve(key, 40, 3600, 1) for _ in range(40)]
    assert await live(store, key, 40) == 40
    assert isinstance(store, RedisStore)
    batcher = batcher_for(bridge.client(store.storage))
    assert batcher is not None
    tasks, pipelines = len(asyncio.all_tasks()), batcher.pipelines
    for reservation in held:
        settle_soon(store, key, reservation, 0, "test")
    assert len(asyncio.all_tasks()) == tasks  # the batch's task starts next turn, one for all
    for _ in range(100):
        if await live(store, key, 40) == 0:
            break
        await asyncio.sleep(0.01)
    assert await live(store, key, 40) == 0
    assert batcher.pipelines == pipelines + 1
    await pool.close()


async def test_a_give_back_redis_refuses_is_a_warning_and_nothing_raises(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    pool, store = await started(redis, 0.3)
    key = fresh("lost")
    held = await store.reserve(key, 5, 3600, 1)
    redis.kill()
    settle_soon(store, key, held, 0, "test guard")  # never raises
    for _ in range(200):
        if "test guard: a hold could not be given back" in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "test guard: a hold could not be given back" in caplog.text
    await pool.close()


async def test_a_flood_of_new_clients_cannot_push_the_projects_quota_out_of_memory() -> None:
    """Clients' ledgers are bounded and the oldest-expiring dropped for room; the quota's (one-minute
    window, so always the closest to expiry) is kept apart: 1,000 new addresses each keeping an unknown
    code still get exactly the quota's 100 calls."""
    store = MemoryStore(max_ledger_keys=50)
    granted = 0
    for i in range(1000):
        budget, quota = await store.chain(
            (Reserve(f"fc:{i}", 10, 3600, 1), Reserve("quota:shop", 100, 60, 1, shared=True))
        )
        assert isinstance(budget, Reservation) and budget.granted  # its code is kept: never settled
        granted += isinstance(quota, Reservation) and quota.granted
    assert granted == 100
    assert len(store.ledgers) <= 50


async def test_a_ledger_given_back_whole_leaves_nothing_behind() -> None:
    store = MemoryStore()
    held = await store.reserve("fc:10.0.0.1", 10, 3600, 2)
    assert len(store.ledgers) == 1
    await store.settle("fc:10.0.0.1", held, 1)
    assert len(store.ledgers) == 1  # one code kept
    again = await store.reserve("fc:10.0.0.1", 10, 3600, 1)
    await store.settle("fc:10.0.0.1", again, 0)
    assert len(store.ledgers) == 1  # the kept one still counts
    await store.settle("fc:10.0.0.1", held, 0)  # a second settle only gives back: the kept stays kept
    assert (await store.reserve("fc:10.0.0.1", 10, 3600, 9)).granted
    other = await store.reserve("fc:10.0.0.2", 10, 3600, 3)
    await store.settle("fc:10.0.0.2", other, 0)
    assert "fc:10.0.0.2" not in store.ledgers.entries


@pytest.mark.parametrize(
    "before, after",
    [(Strategy.MOVING_WINDOW, Strategy.FIXED_WINDOW), (Strategy.FIXED_WINDOW, Strategy.MOVING_WINDOW)],
)
async def test_a_reload_that_changes_the_strategy_keeps_every_guard_counting(
    kind: Kind, before: Strategy, after: Strategy
) -> None:
    """`limits` names the moving and the fixed window's key alike (a list, a counter): after a reload from one
    to the other a client's key still holds the other's structure. Its requests are still counted and
    refused at the limit (not a store error, which `on_storage_error: allow` lets through unlimited,
    failed-code budget and quota uncounted, until the old key expires); counts start afresh, as in memory."""
    store = await kind.store()
    bucket = Bucket.parse("per_ip", "2 per hour", fresh("shop") + "/per_ip")
    quota = fresh("shop/upstream_quota/3600")

    async def request(strategy: Strategy) -> tuple[bool, Any]:
        steps = bucket_steps(store, strategy, bucket, "203.0.113.30")
        answers = await store.chain([*steps, Reserve(quota, 100, 3600, 1)])
        return bucket_result(bucket, steps, answers[:-1]).allowed, answers[-1]

    assert [(await request(before))[0] for _ in range(3)] == [True, True, False]
    seen = [await request(after) for _ in range(3)]
    assert [allowed for allowed, _ in seen] == [True, True, False]
    assert [isinstance(r, Reservation) and r.granted for _, r in seen] == [True, True, False]
    assert await live(store, quota, 100) == 4


class _SkewedClock:
    """A gateway host whose clock is `skew` seconds off (stands in for the `time` module)."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew


@pytest.mark.parametrize("skew", [-120.0, 120.0])
async def test_a_moving_window_over_two_gateways_holds_whatever_their_clocks_say(
    shared: Kind, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways on one Redis share a per-IP moving window: one whose clock is two minutes off (either
    way) cannot make the other let a 6th hit of `5 per minute` through. Redis's clock decides."""
    one, two = await shared.store(), await shared.store()
    bucket = Bucket.parse("per_ip", "5 per minute", fresh("shop") + "/per_ip")
    steps = bucket_steps(one, Strategy.MOVING_WINDOW, bucket, "203.0.113.20")
    with monkeypatch.context() as patched:
        patched.setattr(redis_store, "time", _SkewedClock(skew))
        for _ in range(5):
            assert bucket_result(bucket, steps, await one.chain(steps)).allowed
    result = bucket_result(bucket, steps, await two.chain(steps))
    assert not result.allowed, "a 6th hit within the minute passed on the other gateway"
    assert result.headers["RateLimit"].startswith('"per_ip";r=0;t=')
    reset = int(result.headers["RateLimit"].rsplit("t=", 1)[1])
    assert 55 <= reset <= 60  # the window the hits opened, on this gateway's clock


async def test_a_reservation_whose_answer_came_too_late_is_given_back(shared: Kind) -> None:
    """Redis granted a reservation whose answer came after `storage_timeout` (here a grant of 300,000
    entries: a script that runs longer than the timeout), so the chain raised and nobody knew of the
    grant: it stayed counted until its window ended (an hour of a shopper's failed-code budget, say). The
    store gives it back at once, and Redis runs that after the script it follows."""
    store = await shared.store()
    assert isinstance(store, RedisStore)
    hurried = store.bound(0.02)  # the same client and counts
    key, big = fresh("fc:late"), 300_000
    with pytest.raises(StoreUnavailable):
        await hurried.chain([Reserve(key, 1_000_000, 3600, big)])
    for _ in range(200):  # the script ran to its end (it was not cut off), then the give-back
        if await live(store, key, 1_000_000) == 0:
            break
        await asyncio.sleep(0.05)
    assert await live(store, key, 1_000_000) == 0
    assert (await store.reserve(key, 2, 3600, 2)).granted  # the whole budget is the client's again
