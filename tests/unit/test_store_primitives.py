"""The counters of gateway/ratelimit/store.py (reserve/settle, claim/replace/delete_if) on every store kind:
memory, a real redis-server, and a one-node Redis Cluster.

On Redis, "two gateways" are two stores on two separate storages (two clients, two connection pools) on one
server; in memory it is one store (memory is per process by design). Memory runs on a clock the test drives;
Redis runs on its own clock (TIME), so expiry there waits for real (always past the window: no timing
threshold decides a pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import Connection as RedisConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.ratelimit import LimiterPool, Reservation, Store, StoreUnavailable
from gateway.ratelimit.memory_store import _AT, _GROUP, _GROUPS, _LEDGER, MemoryStore
from gateway.ratelimit.redis_batch import batcher_for
from gateway.ratelimit.redis_store import (
    SCRIPTS,
    RedisStore,
    close,
    ledger_key,
    prepare,
    record_key,
)
from tests.support.processes import RedisServer, running_cluster_node, running_redis

WAIT = 30.0  # a bound on a call that should not hang, never a pass/fail timing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Kind:
    """One store kind: `store()` is a gateway's store (a new client each time on Redis), `advance` lets
    time pass (the test's clock in memory, real time on Redis)."""

    def __init__(self, name: str, uri: str | None) -> None:
        self.name, self.uri = name, uri
        self.clock = Clock()
        self.memory = MemoryStore(2.0, clock=self.clock) if uri is None else None
        self.pools: list[LimiterPool] = []

    async def store(self, timeout: float = 2.0) -> Store:
        if self.memory is not None:
            return self.memory
        assert self.uri is not None
        pool = LimiterPool()
        self.pools.append(pool)
        store = pool.store(self.uri, timeout)
        await pool.start()
        return store

    async def advance(self, seconds: float) -> None:
        if self.memory is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_cluster_node(tmp_path_factory.mktemp("cluster")) as node:
        yield node


@pytest.fixture(params=["memory", "redis", "cluster"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    if request.param == "memory":
        found = Kind("memory", None)
    elif request.param == "redis":
        found = Kind("redis", request.getfixturevalue("module_redis").url)
    else:
        node = request.getfixturevalue("module_cluster")
        found = Kind("cluster", f"redis+cluster://127.0.0.1:{node.port}")
    yield found
    await found.close()


def fresh(name: str) -> str:
    """A key no other test (of the module's one Redis) used."""
    return f"{name}:{time.time_ns()}"


# ------------------------------------------------------------------------------------ reserve / settle


async def test_forty_callers_one_unit_left_exactly_one_granted(kind: Kind) -> None:
    one, two = await kind.store(), await kind.store()
    key = fresh("one-left")
    for _ in range(4):
        assert (await one.reserve(key, 5, 60, 1)).granted
    stores = [one, two] * 20
    results = await asyncio.gather(*(store.reserve(key, 5, 60, 1) for store in stores))
    assert sum(r.granted for r in results) == 1
    assert all(r.remaining == 0 for r in results)
    refused = [r for r in results if not r.granted]
    assert all(r.token == "" and r.amount == 0 and 0 < r.retry_after <= 60 for r in refused)


async def test_concurrent_multi_unit_reservations_never_pass_the_limit(kind: Kind) -> None:
    one, two = await kind.store(), await kind.store()
    key = fresh("multi")
    results = await asyncio.gather(*((one, two)[i % 2].reserve(key, 10, 60, 3) for i in range(40)))
    assert sum(r.granted for r in results) == 3  # 9 of 10 held; a 4th would make 12
    assert {r.amount for r in results if r.granted} == {3}
    assert (await one.reserve(key, 10, 60, 1)).granted  # the 10th
    assert not (await two.reserve(key, 10, 60, 1)).granted


async def test_settle_gives_back_all_but_keep_and_is_idempotent(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("settle")
    first = await store.reserve(key, 10, 60, 4)
    assert first.granted and first.amount == 4 and first.remaining == 6
    other = await store.reserve(key, 10, 60, 5)
    assert other.granted and other.remaining == 1
    assert not (await store.reserve(key, 10, 60, 2)).granted
    await store.settle(key, first, 1)  # 3 given back: 1 + 5 live
    again = await store.reserve(key, 10, 60, 0)
    assert again.granted and again.remaining == 4 and again.token == ""
    await store.settle(key, first, 1)  # idempotent
    await store.settle(key, first, 3)  # a larger keep gives nothing back, and takes nothing
    await store.settle(key, first, 0)  # the last kept one
    assert (await store.reserve(key, 10, 60, 0)).remaining == 5
    await store.settle(key, first, 0)
    assert (await store.reserve(key, 10, 60, 0)).remaining == 5  # the other reservation is untouched
    refused = await store.reserve(key, 10, 60, 6)
    assert not refused.granted
    await store.settle(key, refused, 0)  # settling a refusal does nothing
    assert (await store.reserve(key, 10, 60, 5)).granted


async def test_calls_on_one_key_may_pass_different_limits(kind: Kind) -> None:
    """The upstream quota: q=10 with a reserve of 2, browsing may use 8, redemptions all 10."""
    store = await kind.store()
    key = fresh("quota")
    browse = [await store.reserve(key, 8, 60, 1) for _ in range(9)]
    assert [r.granted for r in browse] == [True] * 8 + [False]
    assert browse[-1].remaining == 0
    redeem = [await store.reserve(key, 10, 60, 1) for _ in range(3)]
    assert [r.granted for r in redeem] == [True, True, False]
    assert not (await store.reserve(key, 8, 60, 1)).granted


async def test_entries_leave_with_the_window_settled_or_not(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("window")
    held = await store.reserve(key, 3, 0.4, 3)
    assert held.granted and 0 < held.reset <= 0.4
    refused = await store.reserve(key, 3, 0.4, 1)
    assert not refused.granted and 0 < refused.retry_after <= 0.4 and 0 < refused.reset <= 0.4
    await kind.advance(0.6)
    after = await store.reserve(key, 3, 0.4, 3)
    assert after.granted and after.remaining == 0  # the unsettled ones left with their window
    await store.settle(key, held, 0)  # a settle after the window passed: harmless
    assert (await store.reserve(key, 3, 0.4, 0)).remaining == 0


async def test_retry_after_is_when_the_amount_would_fit(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("retry")
    await store.reserve(key, 4, 30, 2)
    await kind.advance(0.3)
    await store.reserve(key, 4, 30, 2)
    one = await store.reserve(key, 4, 30, 1)  # the first two must leave
    three = await store.reserve(key, 4, 30, 3)  # all four must leave
    never = await store.reserve(key, 4, 30, 5)  # more than the limit
    assert not (one.granted or three.granted or never.granted)
    assert 29.0 < one.retry_after < 29.8 and one.retry_after == pytest.approx(one.reset, abs=0.05)
    assert 29.5 < three.retry_after <= 30.0 and three.retry_after > one.retry_after
    assert never.retry_after == 30.0


async def test_zero_amount_is_granted_and_holds_nothing(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("zero")
    assert (await store.reserve(key, 1, 60, 1)).granted
    zero = await store.reserve(key, 1, 60, 0)
    assert zero.granted and zero.token == "" and zero.amount == 0 and zero.remaining == 0


async def test_a_large_reservation(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("large")
    big = await store.reserve(key, 5000, 60, 1200)  # more members than one Lua unpack may take
    assert big.granted and big.remaining == 3800
    await store.settle(key, big, 7)
    assert (await store.reserve(key, 5000, 60, 0)).remaining == 4993


# ------------------------------------------------------------------------------------ claim / replace / delete_if


async def test_fifty_claimers_exactly_one_claims(kind: Kind) -> None:
    one, two = await kind.store(), await kind.store()
    key = fresh("claim")
    values = [f"in-flight-{i}".encode() for i in range(50)]
    results = await asyncio.gather(*((one, two)[i % 2].claim(key, v, 60) for i, v in enumerate(values)))
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(r == values[winners[0]] for r in results if r is not None)


async def test_compare_and_set_and_delete_if(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("cas")
    assert await store.claim(key, b"marker-1", 60) is None
    assert not await store.replace(key, b"marker-2", b"answer", 60)
    assert await store.claim(key, b"x", 60) == b"marker-1"
    answer = bytes(range(256)) * 1200  # ~300 KiB, every byte value
    assert await store.replace(key, b"marker-1", answer, 60)
    assert await store.claim(key, b"x", 60) == answer
    assert not await store.delete_if(key, b"marker-1")
    for part in (answer[1:], answer[:-1], answer + b"\0", b""):  # only the whole value is it
        assert not await store.delete_if(key, part)
        assert not await store.replace(key, part, b"other", 60)
    assert await store.claim(key, b"x", 60) == answer
    assert await store.delete_if(key, answer)
    assert not await store.delete_if(key, answer)
    assert await store.claim(key, b"again", 60) is None
    assert not await store.replace(fresh("absent"), b"", b"v", 60)
    assert not await store.delete_if(fresh("absent"), b"")


async def test_records_expire_and_replace_sets_a_new_ttl(kind: Kind) -> None:
    store = await kind.store()
    key, short = fresh("ttl"), fresh("short")
    assert await store.claim(key, b"marker", 0.3) is None
    assert await store.replace(key, b"marker", b"kept", 60)  # kept for 60 s from now on
    assert await store.claim(short, b"marker", 0.3) is None
    await kind.advance(0.6)
    assert await store.claim(short, b"new", 60) is None  # the marker expired by itself
    assert await store.claim(key, b"new", 60) == b"kept"
    assert await store.replace(key, b"kept", b"brief", 0.3)  # a shorter ttl applies too
    await kind.advance(0.6)
    assert await store.claim(key, b"new", 60) is None


# ------------------------------------------------------------------------------------ Redis only


@pytest.fixture
async def plain(redis: RedisServer) -> AsyncIterator[tuple[RedisServer, LimiterPool]]:
    pool = LimiterPool()
    yield redis, pool
    await pool.close()


async def test_redis_keys_are_prefixed_hash_tagged_and_on_redis_time(
    module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = LimiterPool()
    store = pool.store(module_redis.url, 2.0)
    assert isinstance(store, RedisStore)
    client = batcher_for(store._scripts.client)
    assert client is not None
    redis: Any = client.client
    key = fresh("names")
    assert ledger_key(key) == f"gw:ledger:{{{key}}}" and record_key(key) == f"gw:record:{{{key}}}"
    monkeypatch.setattr(time, "time", lambda: 0.0)  # this process's clock says nothing to the store
    held = await store.reserve(key, 5, 60, 2)
    await store.claim(key, b"v", 60)
    monkeypatch.undo()
    seconds, micros = await redis.time()
    members = await redis.zrange(ledger_key(key), 0, -1, withscores=True)
    assert [m for m, _ in members] == [f"{held.token}:1".encode(), f"{held.token}:2".encode()]
    assert all(abs(score - (seconds * 1_000_000 + micros)) < 10_000_000 for _, score in members)
    assert 59_000 < await redis.pttl(ledger_key(key)) <= 60_000
    assert await redis.get(record_key(key)) == b"v"
    assert not [k for k in await redis.keys("*") if k.startswith((b"LIMITS", b"LIMITER"))]
    await pool.close()


def test_every_script_touches_only_its_declared_keys() -> None:
    """Cluster slots and servers that refuse undeclared keys (Dragonfly): every key is a KEYS[n]."""
    for text in SCRIPTS:
        calls = re.findall(r"redis\.call\('(\w+)'(?:,\s*([^,)]+))?", text)
        assert calls
        for command, first in calls:
            if command.upper() == "TIME":
                continue
            assert re.fullmatch(r"KEYS\[\d\]", first), (command, first)


async def test_one_turn_of_primitives_is_one_pipeline(plain: tuple[RedisServer, LimiterPool]) -> None:
    redis, pool = plain
    store = pool.store(redis.url, 2.0)
    await pool.start()
    assert isinstance(store, RedisStore)
    batcher = batcher_for(store._scripts.client)
    assert batcher is not None
    before = batcher.pipelines
    results = await asyncio.gather(*(store.reserve("turn", 30, 60, 1) for _ in range(50)))
    assert batcher.pipelines - before <= 2
    assert [r.granted for r in results] == [True] * 30 + [False] * 20  # in the order asked
    assert [r.remaining for r in results[:30]] == list(range(29, -1, -1))


async def test_a_flushed_script_cache_counts_each_reservation_once(
    plain: tuple[RedisServer, LimiterPool],
) -> None:
    redis, pool = plain
    store = pool.store(redis.url, 2.0)
    assert isinstance(store, RedisStore)
    assert (await store.reserve("flush", 100, 60, 1)).granted
    await store._scripts.client.script_flush()  # as a restarted Redis
    results = await asyncio.gather(*(store.reserve("flush", 100, 60, 1) for _ in range(20)))
    assert all(r.granted for r in results)
    assert (await store.reserve("flush", 100, 60, 0)).remaining == 79
    await store._scripts.client.script_flush()
    assert await store.claim("flush", b"a", 60) is None
    assert await store.claim("flush", b"b", 60) == b"a"


async def test_a_restarted_redis_serves_again(plain: tuple[RedisServer, LimiterPool]) -> None:
    redis, pool = plain
    store = pool.store(redis.url, 1.0)
    assert (await store.reserve("restart", 5, 60, 1)).granted
    redis.kill()
    with pytest.raises(StoreUnavailable):
        await store.reserve("restart", 5, 60, 1)
    redis.start()  # empty: nothing persisted
    assert (await store.reserve("restart", 5, 60, 1)).remaining == 4
    assert await store.claim("restart", b"v", 60) is None


async def test_a_connection_left_stale_by_a_restart_is_replaced_not_failed(
    plain: tuple[RedisServer, LimiterPool],
) -> None:
    """The batcher writes its own pipelines (redis_batch.py): a pooled connection that a Redis restart left
    dead must cost the next request nothing (a fresh connection, once), not a 'store unavailable'."""
    redis, pool = plain
    store = pool.store(redis.url, 1.0)
    assert (await store.reserve("stale", 5, 60, 1)).granted  # its connection goes back to the pool
    redis.kill()
    redis.start()  # no call in between: the pooled connection is dead and nobody has noticed
    assert (await store.reserve("stale", 5, 60, 1)).remaining == 4  # served, and counted once


def losing_replies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each item put in the list loses one reply after Redis ran the call and answered (a connection reset
    on the way back): the client sees a connection error and sends the call again."""
    real = RedisConnection.read_response
    lost: list[int] = []

    async def read_then_lose(self: RedisConnection, *args: Any, **kwargs: Any) -> Any:
        reply = await real(self, *args, **kwargs)
        if lost:
            lost.pop()
            raise RedisConnectionError("connection reset after the reply was sent")
        return reply

    monkeypatch.setattr(RedisConnection, "read_response", read_then_lose)
    return lost


async def test_a_reservation_sent_again_after_its_reply_was_lost_is_held_once(
    plain: tuple[RedisServer, LimiterPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection error is retried once (the batcher on plain Redis, redis-py's own retries on a
    Cluster), with the same arguments: when the reply was lost after Redis ran the script, the retry found
    the reservation's own entries live and refused it, which then held them unknown to anyone until the
    window ended (the last unit of a budget refused its own request, and the next ones). The token's
    entries already held are its grant."""
    redis, pool = plain
    store = pool.store(redis.url, 2.0)
    await pool.start()
    assert isinstance(store, RedisStore)
    key = fresh("lost-reply")
    lost = losing_replies(monkeypatch)
    lost.append(1)
    held = await store.reserve(key, 1, 60, 1)
    monkeypatch.undo()
    assert not lost  # the reply was lost once, and the call sent again
    assert held.granted and held.amount == 1 and held.remaining == 0
    assert not (await store.reserve(key, 1, 60, 1)).granted  # held once: the one unit
    await store.settle(key, held, 0)
    assert (await store.reserve(key, 1, 60, 1)).granted  # and given back whole


async def test_a_record_call_sent_again_after_its_reply_was_lost_answers_as_it_did(
    plain: tuple[RedisServer, LimiterPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a reservation (above): a claim whose reply was lost after it ran was sent again and found its
    own marker, so the request was answered 409 (its own key in flight) and the marker blocked the key
    until it expired; a replace sent again found its own answer and said the marker was gone. Markers are
    unique to their request, so finding one's own value is one's own call."""
    redis, pool = plain
    store = pool.store(redis.url, 2.0)
    await pool.start()
    key = fresh("lost-record")
    lost = losing_replies(monkeypatch)
    lost.append(1)
    assert await store.claim(key, b"marker-1", 60) is None
    lost.append(1)
    assert await store.replace(key, b"marker-1", b"answer", 60)
    assert not lost  # each reply was lost once, and its call sent again
    monkeypatch.undo()
    assert await store.claim(key, b"marker-2", 60) == b"answer"


async def test_a_claim_of_the_value_held_is_claimed_and_a_replace_made_is_made(kind: Kind) -> None:
    store = await kind.store()
    key = fresh("again")
    assert await store.claim(key, b"marker-1", 60) is None
    assert await store.claim(key, b"marker-1", 60) is None
    assert await store.claim(key, b"marker-2", 60) == b"marker-1"
    assert await store.replace(key, b"marker-1", b"answer", 60)
    assert await store.replace(key, b"marker-1", b"answer", 60)
    assert not await store.replace(key, b"marker-1", b"other", 60)
    assert await store.claim(key, b"marker-2", 60) == b"answer"


async def test_a_frozen_redis_raises_store_unavailable_after_the_timeout(
    plain: tuple[RedisServer, LimiterPool],
) -> None:
    redis, pool = plain
    store = pool.store(redis.url, 0.3)
    await pool.start()
    held = await store.reserve("frozen", 5, 60, 2)
    assert await store.claim("frozen", b"m", 60) is None
    redis.freeze()
    try:
        calls = [
            store.reserve("frozen", 5, 60, 1),
            store.settle("frozen", held, 0),
            store.claim("frozen", b"n", 60),
            store.replace("frozen", b"m", b"v", 60),
            store.delete_if("frozen", b"m"),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as raised:
                async with asyncio.timeout(WAIT):  # our own timeout fires, not this bound
                    await call
            assert isinstance(raised.value.__cause__, TimeoutError), raised.value.__cause__
        # the same URI with another policy's timeout: the same counts, its own bound
        longer = pool.store(redis.url, 0.6)
        assert longer.timeout == 0.6 and store.timeout == 0.3
        with pytest.raises(StoreUnavailable):
            await longer.claim("frozen", b"n", 60)
    finally:
        redis.thaw()
    assert (await store.reserve("frozen", 5, 60, 0)).remaining in (2, 3)  # one reserve may have landed


async def test_a_redis_error_is_store_unavailable(plain: tuple[RedisServer, LimiterPool]) -> None:
    redis, pool = plain
    store = pool.store(redis.url, 2.0)
    assert isinstance(store, RedisStore)
    await store._scripts.client.hset(ledger_key("wrong"), "x", "1")  # WRONGTYPE inside the script
    await store._scripts.client.hset(record_key("wrong"), "x", "1")
    with pytest.raises(StoreUnavailable):
        await store.reserve("wrong", 5, 60, 1)
    with pytest.raises(StoreUnavailable):
        await store.claim("wrong", b"v", 60)


async def test_a_cluster_out_of_reach_is_store_unavailable(tmp_path: Path) -> None:
    """redis-py's cluster client raises RedisClusterException, which is no RedisError, when no node answers
    its topology refresh: a store opened while the Cluster is down (a gateway started, or a policy reloaded,
    during an outage) must fail as StoreUnavailable all the same, so that `on_storage_error` decides (not a
    500), and a give-back that cannot be sent must tell `failed`, not die in its task."""
    with running_cluster_node(tmp_path) as node:
        uri = f"redis+cluster://127.0.0.1:{node.port}"
    pool = LimiterPool()
    store = pool.store(uri, 2.0)
    await pool.start()  # not reachable: a warning, as for plain Redis
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(StoreUnavailable):
                await store.reserve(fresh("down"), 5, 60, 1)
            with pytest.raises(StoreUnavailable):
                await store.claim(fresh("down"), b"v", 60)
            failed = asyncio.Event()
            held = Reservation(True, "t", 1, 4, 60.0, 0.0)
            store.settle_soon(fresh("down"), held, 0, lambda exc: failed.set())
            await failed.wait()
    finally:
        await pool.close()


async def test_prepare_loads_the_scripts(redis: RedisServer) -> None:
    import hashlib

    pool = LimiterPool()
    store = pool.store(redis.url, 2.0)
    assert isinstance(store, RedisStore)
    await pool.start()
    client = store._scripts.client
    shas = [hashlib.sha1(text.encode()).hexdigest() for text in SCRIPTS]
    assert await client.script_exists(*shas) == [True] * len(shas)
    await client.script_flush()
    await prepare(store.storage)
    assert await client.script_exists(*shas) == [True] * len(shas)
    await pool.close()
    with contextlib.suppress(Exception):
        await close(store.storage)


# ------------------------------------------------------------------------------------ memory only


async def test_memory_ledger_is_bounded_and_reclaimed() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, max_ledger_keys=100)
    for i in range(1000):  # a flood of distinct clients
        assert (await store.reserve(f"client-{i}", 3, 60, 1)).granted
        clock.now += 0.001
    assert len(store.ledgers) == 100 and store.ledgers.evicted == 900
    assert (await store.reserve("client-999", 3, 60, 0)).remaining == 2  # the newest are kept
    clock.now += 61
    await store.reserve("late", 3, 60, 1)
    assert len(store.ledgers) == 1  # the expired ones were reclaimed without a sweep


def test_a_ledger_renewed_all_along_does_not_hold_the_others_in_memory() -> None:
    # Each ledger waits for its turn in the queue of its window, in the order made; a guesser who keeps
    # guessing renews its ledger before each turn, goes to the back each time, and does not keep the
    # ledgers made after it (rotating addresses, ten minutes' window each) from being reclaimed.
    clock = Clock()
    store = MemoryStore(clock=clock)
    for minute in range(180):
        clock.now += 60
        assert store.reserve_sync("gw:codes:shop:regular", 10**6, 3600, 1).granted
        for i in range(20):
            assert store.reserve_sync(f"gw:codes:shop:rotating-{minute}-{i}", 5, 600, 1).granted
        assert len(store.ledgers) <= 1 + 20 * 11  # the regular, and at most 11 minutes' addresses
    assert len(store.ledgers.turns) == len(store.ledgers)
    clock.now += 3601  # the regular's last group has left: reclaimed by its next turn at the latest
    store.reserve_sync("late", 5, 60, 1)
    clock.now += 3601
    store.reserve_sync("later", 5, 60, 1)
    assert "gw:codes:shop:regular" not in store.ledgers.entries and len(store.ledgers) <= 2


def keep_sync(store: MemoryStore, key: str, value: bytes, ttl: float) -> None:
    """A kept answer, as the gateway keeps one: a claim with its in-flight marker, then replaced."""
    assert store.claim_sync(key, b"in flight " + key.encode(), 30) is None
    assert store.replace_sync(key, b"in flight " + key.encode(), value, ttl)


def test_a_full_map_drops_the_entry_closest_to_expiry_whatever_its_lifetime() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, max_record_keys=2)
    keep_sync(store, "daily", b"kept", 86_400)  # the oldest, due last
    clock.now += 1
    keep_sync(store, "brief", b"cached", 30)
    clock.now += 1
    keep_sync(store, "third", b"new", 3600)  # past the bound: one goes
    assert set(store.records.entries) == {"daily", "third"} and store.records.evicted == 1
    assert len(store.claims) == 0  # each marker left when its answer was kept


def test_a_flood_of_kept_answers_never_drops_a_claim_in_flight() -> None:
    """An in-flight marker is the record closest to expiry: when kept answers filled the map it was the
    first dropped, and a second request with the key (a double click) was claimed again and reached
    Voucherify while the first was in flight. Claims are apart, never dropped for room."""
    clock = Clock()
    store = MemoryStore(clock=clock, max_record_keys=3)
    assert store.claim_sync("double-click", b"marker", 30) is None
    for i in range(10):  # other shoppers' answers kept meanwhile, far past the bound
        keep_sync(store, f"other-{i}", b"kept", 86_400)
    assert store.records.evicted == 7 and len(store.records) == 3
    assert store.claim_sync("double-click", b"second", 30) == b"marker"  # still in flight: 409
    assert store.replace_sync("double-click", b"marker", b"answer", 86_400)
    assert store.claim_sync("double-click", b"third", 30) == b"answer"  # its replay


def test_claims_past_the_bound_are_refused_not_dropped() -> None:
    """As many claims as keyed requests in flight, up to `max_record_keys`: one more raises (503
    idempotency_unavailable), as a store that cannot keep the promise; a claim that left makes room."""
    clock = Clock()
    store = MemoryStore(clock=clock, max_record_keys=2)
    assert store.claim_sync("a", b"marker a", 30) is None
    assert store.claim_sync("b", b"marker b", 30) is None
    with pytest.raises(StoreUnavailable):
        store.claim_sync("c", b"marker c", 30)
    assert store.claim_sync("a", b"again", 30) == b"marker a"  # a key that is held still answers
    assert store.delete_if_sync("a", b"marker a")
    assert store.claim_sync("c", b"marker c", 30) is None
    clock.now += 31  # and a marker whose request died leaves with its lifetime
    assert store.claim_sync("d", b"marker d", 30) is None and set(store.claims.entries) == {"d"}
    assert store.claims.evicted == 0


async def test_memory_ledger_does_not_grow_with_settled_reservations() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for _ in range(10_000):  # existing codes, all given back: nothing stays held
        reservation = await store.reserve("shopper", 10, 3600, 1)
        assert reservation.granted
        await store.settle("shopper", reservation, 0)
    assert "shopper" not in store.ledgers.entries  # a ledger given back whole is dropped at once


async def test_memory_maps_hold_nothing_for_what_left_them() -> None:
    """Shoppers whose codes exist (each ledger given back whole at once) and Idempotency-Key records
    replaced, for an hour's window: what the store holds stays about what is live, not what was sent (each
    left a heap entry behind until its window ended, later its key in a queue: ~150 bytes per validation, gigabytes an hour)."""
    import tracemalloc

    clock = Clock()
    store = MemoryStore(clock=clock)
    keys = [f"gw:codes:shop:10.{i >> 16}.{i >> 8 & 255}.{i & 255}" for i in range(60_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, key in enumerate(keys):
            reservation = await store.reserve(key, 10, 3600, 2)
            assert reservation.granted
            await store.settle(key, reservation, 0)
            assert await store.claim(f"idem-{i % 100}", b"claimed", 3600) in (None, b"claimed")
            assert await store.replace(f"idem-{i % 100}", b"claimed", b"claimed", 3600)
            clock.now += 0.001
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store.ledgers) == 0 and len(store.records) == 100
    for bounded in (store.ledgers, store.records):
        assert len(bounded.turns) <= 2 * len(bounded) + 1024
    assert held < 1_000_000, f"{held:,} bytes held after 60,000 validations"
    clock.now += 3601  # and what is live still expires on time
    await store.claim("after", b"s", 1)
    assert len(store.records) == 0 and len(store.claims) == 1


def test_ledgers_given_back_within_their_request_leave_nothing_to_compact() -> None:
    """Guessers' ledgers held (a flood), and validations of existing codes 64 at a time, each ledger given
    back whole when its request ends: each left a stale turn behind, and once they outnumbered the live
    ledgers the turns were compacted in one go while the event loop waited (~0.3 s at 500,000 held)."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    for i in range(20_000):
        key = f"gw:codes:shop:guesser-{i}"
        store.settle_sync(key, store.reserve_sync(key, 5, 3600, 2), 1)
        clock.now += 0.001
    compactions = 0
    compact = store.ledgers._compact

    def counted() -> None:
        nonlocal compactions
        compactions += 1
        compact()

    store.ledgers._compact = counted  # type: ignore[method-assign]
    in_flight: dict[str, Reservation] = {}
    for i in range(100_000):
        key = f"gw:codes:shop:shopper-{i}"
        in_flight[key] = store.reserve_sync(key, 5, 3600, 2)
        if len(in_flight) == 64:  # the oldest request in flight ends: its codes all existed
            done = next(iter(in_flight))
            store.settle_sync(done, in_flight.pop(done), 0)
        clock.now += 0.001
    assert len(store.ledgers) == 20_000 + 63
    assert len(store.ledgers.turns) == len(store.ledgers)  # not one stale turn
    assert compactions == 0


def test_a_flood_of_guessers_leaves_the_garbage_collector_nothing_to_walk() -> None:
    """Distinct clients that each guessed a code (their failed-code ledgers held for the window) and
    Idempotency-Key records: every full collection walks what the collector tracks while the event loop
    waits. A ledger as an object with two arrays was three tracked objects: a million guessers made each
    full collection take ~0.35 s. Then one client's counts, read back from its bytes: what it holds, a
    refusal's retry_after, and nothing once the window has passed."""
    import gc
    import tracemalloc

    clock = Clock()
    store = MemoryStore(clock=clock)
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            key = f"gw:codes:shop:10.0.{i >> 8}.{i & 255}"
            for _ in range(1 + i % 3):  # one to three validations, each with one unknown code of two
                reservation = store.reserve_sync(key, 5, 3600, 2)
                store.settle_sync(key, reservation, 1)
                clock.now += 0.001
            keep_sync(store, f"idem-{i}", b"kept", 3600)
        held = (tracemalloc.get_traced_memory()[0] - before) / 5000
    finally:
        tracemalloc.stop()
    assert len(store.ledgers) == 5000 and len(store.records) == 5000 and len(store.claims) == 0
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100, "objects the collector tracks, per guesser"
    assert held < 650, f"{held:.0f} bytes per guesser (a ledger, a record, their keys; ~800 as objects)"
    key = "gw:codes:shop:10.0.0.1"  # two validations, one code kept of each: the bytes still count
    assert store.reserve_sync(key, 5, 3600, 2).remaining == 1
    refused = store.reserve_sync(key, 5, 3600, 2)
    assert not refused.granted  # the first group, made at 1000.001, is the one to leave
    assert refused.retry_after == pytest.approx(1000.001 + 3600 - clock.now)
    clock.now += 3600
    assert store.reserve_sync(key, 5, 3600, 0).remaining == 5


async def test_a_quota_window_of_calls_costs_a_few_bytes_each_and_nothing_to_collect() -> None:
    """A project's upstream quota keeps one group per call for its whole window (a minute at 3,000 calls a
    second: 180,000). As an OrderedDict of lists each took ~200 bytes and an object that every full
    collection of the garbage collector walked. A partial give-back keeps its group's place in the order,
    and a late give-back of an expired ledger's token finds nothing in its successor."""
    import gc
    import tracemalloc

    clock = Clock()
    store, start = MemoryStore(clock=clock), clock.now
    store.reserve_sync("gw:quota:shop", 100_000, 60, 1, shared=True)  # the ledger exists before
    clock.now += 0.001  # the calls' groups: start + 0.001 + 0.002 i
    gc.collect()
    tracked = len(gc.get_objects())
    tokens = []  # the first two and the last (the store's own bytes are measured)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            reservation = store.reserve_sync("gw:quota:shop", 100_000, 60, 3, shared=True)
            assert reservation.granted
            if i < 2 or i == 4999:
                tokens.append(reservation.token)
            clock.now += 0.002
        held = (tracemalloc.get_traced_memory()[0] - before) / 5000
    finally:
        tracemalloc.stop()
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100, "objects the collector tracks, per call"
    assert held < 32, f"{held:.0f} bytes per call"
    live = 100_000 - store.reserve_sync("gw:quota:shop", 100_000, 60, 0, shared=True).remaining
    assert live == 1 + 3 * 5000
    store.settle_sync("gw:quota:shop", Reservation(True, tokens[0], 3, 0, 0.0, 0.0), 1)  # keeps 1 of 3
    store.settle_sync("gw:quota:shop", Reservation(True, tokens[1], 3, 0, 0.0, 0.0), 0)  # gives all back
    store.settle_sync("gw:quota:shop", Reservation(True, tokens[1], 3, 0, 0.0, 0.0), 0)  # twice: no-op
    clock.now = start + 60.0005  # only the group made before the loop has left
    assert store.reserve_sync("gw:quota:shop", 100_000, 60, 0, shared=True).remaining == 100_000 - (
        1 + 3 * 4998
    )
    clock.now = start + 60.002  # then the first call's group, with the one entry it kept
    assert store.reserve_sync("gw:quota:shop", 100_000, 60, 0, shared=True).remaining == 100_000 - 3 * 4998
    clock.now = start + 60 + 5000 * 0.002 + 1  # every group has left; a new ledger comes with new tokens
    fresh = store.reserve_sync("gw:quota:shop", 100_000, 60, 3, shared=True)
    assert fresh.token not in tokens
    store.settle_sync("gw:quota:shop", Reservation(True, tokens[-1], 3, 0, 0.0, 0.0), 0)  # too late
    assert store.reserve_sync("gw:quota:shop", 100_000, 60, 0, shared=True).remaining == 100_000 - 3


@pytest.mark.parametrize("seed", range(6))
def test_memory_ledgers_answer_as_a_list_of_groups_would(seed: int) -> None:
    """Reservations, give-backs (whole, partial, twice, late) and time passing, against the plainest model
    of a moving-window ledger: a list of [token, time, entries]. Long enough that the arrays drop what is
    gone (their slots move) while tokens from before are still given back."""
    import random

    rng, clock = random.Random(seed), Clock()
    store, limit, window = MemoryStore(clock=clock), rng.choice([20, 40]), rng.choice([1.0, 7.5])
    model: list[list[Any]] = []  # [token, time, entries], oldest first
    tokens: list[str] = []
    refused = 0
    for _ in range(3000):
        clock.now += window if rng.random() < 0.005 else rng.choice([0.0, 0.001, 0.01, 0.05, 0.1])
        model[:] = [g for g in model if g[1] > clock.now - window and g[2] > 0]
        if tokens and rng.random() < 0.4:
            token, keep = rng.choice(tokens[-50:]), rng.choice([0, 0, 1, 2])
            store.settle_sync("gw:codes:shop:c", Reservation(True, token, 3, 0, 0.0, 0.0), keep)
            for group in model:
                if group[0] == token:
                    group[2] = min(group[2], keep)
            model[:] = [g for g in model if g[2] > 0]
            continue
        amount = rng.choice([0, 1, 1, 2, 3])
        got = store.reserve_sync("gw:codes:shop:c", limit, window, amount)
        live = sum(g[2] for g in model)
        granted = amount <= 0 or live + amount <= limit
        if granted and amount > 0:
            model.append([got.token, clock.now, amount])
            tokens.append(got.token)
            live += amount
        retry = 0.0
        if not granted:
            freed, retry = 0, window
            for _, when, entries in model:
                freed += entries
                if freed >= live + amount - limit:
                    retry = max(when + window - clock.now, 0.0)
                    break
        reset = max(model[0][1] + window - clock.now, 0.0) if model else 0.0
        assert (got.granted, got.remaining) == (granted, max(limit - live, 0))
        assert got.reset == pytest.approx(reset) and got.retry_after == pytest.approx(retry)
        assert bool(got.token) == (granted and amount > 0) and len(set(tokens)) == len(tokens)
        refused += not granted
    assert refused  # the limit was reached


def test_a_memory_ledger_that_drops_its_front_still_finds_every_live_group() -> None:
    """A busy ledger (one call every 10 ms in a one-second window) never empties: its arrays drop what has
    left and their slots move, while tokens made before and after are still given back exactly."""
    clock = Clock()
    store, tokens = MemoryStore(clock=clock), []
    for _ in range(1000):
        tokens.append(store.reserve_sync("gw:quota:shop", 1000, 1.0, 2, shared=True).token)
        clock.now += 0.01
    clock.now += 0.005  # between two calls' times: the calls from the 901st on are in the window
    live = 1000 - store.reserve_sync("gw:quota:shop", 1000, 1.0, 0, shared=True).remaining
    ledger = store.shared_ledgers.entries["gw:quota:shop"]
    base, groups = _LEDGER.unpack_from(ledger, _AT)[2], (len(ledger) - _GROUPS) // _GROUP.size
    assert base > 0 and groups < 300  # it dropped its front, more than once
    assert live == 2 * 99
    for token in (tokens[950], tokens[999], tokens[900], tokens[100]):  # the last two have left
        store.settle_sync("gw:quota:shop", Reservation(True, token, 2, 0, 0.0, 0.0), 1)
    assert 1000 - store.reserve_sync("gw:quota:shop", 1000, 1.0, 0, shared=True).remaining == 2 * 99 - 2


async def test_memory_records_are_bounded_in_keys_and_bytes() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, max_record_keys=50, max_record_bytes=1_000_000)
    value = b"x" * 100_000
    for i in range(30):
        keep_sync(store, f"key-{i}", value, 60 + i)
        assert store.records.bytes <= 1_000_000
    assert len(store.records) == 9 and store.records.evicted == 21
    assert await store.claim("key-29", b"y", 60) == value  # the latest to expire are kept
    assert await store.claim("key-0", b"y", 60) is None  # the earliest were dropped
    for i in range(200):
        keep_sync(store, f"small-{i}", b"s", 600)
    assert len(store.records) == 50
    clock.now += 601
    keep_sync(store, "after", b"s", 1)
    assert len(store.records) == 1 and store.records.bytes < 1000
    with pytest.raises(ValueError):
        keep_sync(store, "huge", b"x" * 2_000_000, 60)


async def test_memory_store_is_one_per_uri(tmp_path: Path) -> None:
    pool = LimiterPool()
    one, two = pool.store("memory://", 0.5), pool.store("memory://", 2.0)
    assert one is two
    held = await one.reserve("k", 1, 60, 1)
    assert isinstance(held, Reservation) and not (await two.reserve("k", 1, 60, 1)).granted
    await pool.close()


def test_redis_store_bound_shares_the_client() -> None:
    pool = LimiterPool()
    one = pool.store("redis://127.0.0.1:1/0", 0.5)
    two = pool.store("redis://127.0.0.1:1/0", 1.5)
    assert isinstance(one, RedisStore) and isinstance(two, RedisStore)
    assert one._scripts is two._scripts and (one.timeout, two.timeout) == (0.5, 1.5)
