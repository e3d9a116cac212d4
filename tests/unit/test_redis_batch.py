"""gateway/ratelimit/redis_batch.py on a real redis-server: the calls of one loop turn go out as one pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limits.aio.storage import Storage
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from gateway.models import Bucket, Strategy
from gateway.ratelimit import Limiter, LimitResult, StoreUnavailable, bridge
from gateway.ratelimit.redis_batch import IDLE, ScriptBatcher, batcher_for, pack
from gateway.ratelimit.redis_store import CHAIN, RedisStore
from tests.support.processes import RedisServer

STRATEGIES = list(Strategy)


def batcher_of(storage: Storage) -> ScriptBatcher:
    batcher = batcher_for(bridge.client(storage))
    assert batcher is not None
    return batcher


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_one_turn_of_hits_is_one_pipeline_and_every_answer_is_right(
    strategy: Strategy, redis_storage: Storage
) -> None:
    limiter = Limiter(RedisStore(redis_storage, 2.0), strategy)
    bucket = Bucket.parse("per_ip", "30 per hour", f"batch-{strategy}/per_ip")
    await limiter.hit(bucket, "warm")  # scripts loaded
    batcher = batcher_of(redis_storage)
    before = batcher.pipelines
    results = await asyncio.gather(*(limiter.hit(bucket, "shopper") for _ in range(50)))
    assert batcher.pipelines - before <= 2  # not 50 round trips
    assert [r.allowed for r in results] == [True] * 30 + [False] * 20  # in the order the requests asked
    remaining = [int(r.headers["RateLimit"].split("r=")[1].split(";")[0]) for r in results]
    assert remaining[:30] == list(range(29, -1, -1))
    others = await asyncio.gather(*(limiter.hit(bucket, f"other-{i}") for i in range(5)))
    assert all(r.allowed for r in others)  # one shopper's budget is not another's


async def test_a_connection_is_kept_between_batches_and_at_most_idle_stay_out_of_the_pool(
    redis_storage: Storage,
) -> None:
    """One request at a time: every batch on the one kept connection, no checkout from the pool. Batches
    in flight at once: each on its own connection, and no more than IDLE kept once they are done."""
    limiter = Limiter(RedisStore(redis_storage, 2.0), Strategy.MOVING_WINDOW)
    bucket = Bucket.parse("per_ip", "1000 per hour", f"kept-{id(redis_storage)}/per_ip")
    await limiter.hit(bucket, "warm")
    pool: Any = bridge.client(redis_storage).connection_pool
    kept = set(pool._in_use_connections)
    assert len(kept) == 1
    for _ in range(20):
        assert (await limiter.hit(bucket, "shopper")).allowed
        assert set(pool._in_use_connections) == kept

    async def in_turn(i: int) -> bool:
        for _ in range(i):  # each in its own turn of the loop: batches overlap while Redis answers
            await asyncio.sleep(0)
        return (await limiter.hit(bucket, f"c{i}")).allowed

    assert all(await asyncio.gather(*(in_turn(i) for i in range(40))))
    made = len(pool._in_use_connections) + len(pool._available_connections)
    assert made > IDLE  # they did overlap
    assert len(pool._in_use_connections) <= IDLE  # the rest went back


async def test_a_flushed_script_cache_reloads_and_counts_each_hit_once(redis_storage: Storage) -> None:
    limiter = Limiter(RedisStore(redis_storage, 2.0), Strategy.MOVING_WINDOW)
    bucket = Bucket.parse("per_ip", "100 per hour", "flush/per_ip")
    await limiter.hit(bucket, "shopper")
    await bridge.client(redis_storage).script_flush()  # as a restarted Redis
    results = await asyncio.gather(*(limiter.hit(bucket, "shopper") for _ in range(20)))
    assert all(r.allowed for r in results)
    final = await limiter.hit(bucket, "shopper")
    assert final.headers["RateLimit"].startswith('"per_ip";r=78;')  # 1 + 20 + 1 hits: none counted twice


async def test_calls_redis_answered_are_answered_when_reloading_a_script_fails(
    redis_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch where Redis ran some calls and refused others with NOSCRIPT: if reloading the script then
    fails, only the refused calls fail. The others ran (a hit counted): failing them too told a request
    the store was down when it had answered (a 503 with `on_storage_error: deny`)."""
    store = RedisStore(redis_storage, 2.0)
    limiter = Limiter(store, Strategy.MOVING_WINDOW)
    bucket = Bucket.parse("per_ip", "100 per hour", "reload-fails/per_ip")
    await limiter.hit(bucket, "shopper")  # the chain's script loaded
    client = bridge.client(redis_storage)
    await client.script_flush()
    await client.script_load(CHAIN)  # the chain's again, not the claim's

    async def refused(script: Any) -> Any:
        raise RedisConnectionError("lost while loading the script")

    monkeypatch.setattr(client, "script_load", refused)
    hit, claim = await asyncio.gather(
        limiter.hit(bucket, "shopper"), store.claim("reload-fails", b"m", 60), return_exceptions=True
    )
    assert isinstance(claim, StoreUnavailable)
    assert isinstance(hit, LimitResult) and hit.headers["RateLimit"].startswith('"per_ip";r=98;'), hit


async def test_a_connection_lost_mid_batch_sends_again_only_the_calls_not_answered(
    redis_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection error is retried once on a fresh connection; when it comes after some replies were
    read, those calls ran and were answered: only the rest is sent again (the batch was sent whole again,
    and every hit already answered counted twice)."""
    limiter = Limiter(RedisStore(redis_storage, 2.0), Strategy.FIXED_WINDOW)
    bucket = Bucket.parse("per_ip", "100 per hour", "mid-batch/per_ip")
    await limiter.hit(bucket, "shopper")  # 1
    real = Connection.read_response
    reads = [0]

    async def lose_the_third(self: Connection, *args: Any, **kwargs: Any) -> Any:
        reply = await real(self, *args, **kwargs)
        reads[0] += 1
        if reads[0] == 3:  # two answered, the third ran but its reply is lost with the connection
            raise RedisConnectionError("connection reset mid-batch")
        return reply

    monkeypatch.setattr(Connection, "read_response", lose_the_third)
    results = await asyncio.gather(*(limiter.hit(bucket, "shopper") for _ in range(5)))  # 5 ran
    monkeypatch.undo()
    assert all(r.allowed for r in results)
    final = await limiter.hit(bucket, "shopper")
    # 1 + 5 + the 3 not answered, sent again + 1: the two answered were not run twice (89 then)
    assert final.headers["RateLimit"].startswith('"per_ip";r=90;'), final.headers


async def test_a_lost_redis_fails_every_call_of_the_batch(redis: RedisServer, redis_storage: Storage) -> None:
    limiter = Limiter(RedisStore(redis_storage, 1.0), Strategy.FIXED_WINDOW)
    bucket = Bucket.parse("per_ip", "100 per hour", "lost/per_ip")
    await limiter.hit(bucket, "shopper")
    redis.kill()
    results = await asyncio.gather(
        *(limiter.hit(bucket, "shopper") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 2, "LIMITER/shop/203.0.113.9/5/1/minute", "ledger/é", "0", 1, 3, 1733.25),
        ("EVALSHA", "b" * 40, 1, b"raw\r\nbytes", -7, 0.1, 1e-07, 2**70, ""),
        ("PING",),
    ],
)
def test_the_batch_is_packed_as_redis_py_packs_it(command: tuple[Any, ...]) -> None:
    """The batcher writes its pipeline itself: byte for byte what redis-py's connection would send, so a
    script sees the same arguments (numbers as `repr` writes them, text in UTF-8)."""
    connection = Connection()  # never connected: packing needs no socket
    assert pack([command, command]) == b"".join(connection.pack_commands([command, command]))


@pytest.mark.parametrize("bad", [True, None, 1j, ["list"]])
def test_an_argument_redis_py_refuses_is_refused(bad: Any) -> None:
    with pytest.raises((TypeError, DataError)):
        Connection().pack_commands([("EVALSHA", "a", 0, bad)])  # redis-py refuses it
    with pytest.raises(TypeError):
        pack([("EVALSHA", "a", 0, bad)])  # and so does the batcher
