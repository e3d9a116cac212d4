"""Each `limits` internal that gateway/ratelimit/bridge.py touches, pinned: these fail on the first `limits`
release that changes one (then bridge.py, and the scripts of redis_store.py that copy `limits`' own, need
another look). Keys are checked against what `limits`' own strategies write on a real redis-server."""

from __future__ import annotations

import hashlib

import pytest
from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from redis.asyncio import Redis, RedisCluster

from gateway.models import Bucket
from gateway.ratelimit import bridge, limits_item, open_storage
from gateway.ratelimit.memory_store import BoundedMemoryStorage
from gateway.ratelimit.redis_store import prepare

# limits' Lua scripts as of the release the gateway's CHAIN script copies (limits 5.x): a change here means
# the data structures the gateway shares with `limits` may have changed.
LIMITS_SCRIPTS = {
    "lua_moving_window": "ad795214f59fe26d6fdec07973836dd16586f5ec",
    "lua_acquire_moving_window": "741eab638ba93ed71020bb821c45c022d0fa02c4",
    "lua_clear_keys": "f2994557f1daca13bfef97c2a31ca4b174e031ca",
    "lua_incr_expire": "628bd136a573a06b346879695681af12ccef300f",
    "lua_sliding_window": "e7a0a27d4101baabb124af209bb0245197a359a1",
    "lua_acquire_sliding_window": "e8ac2a60cb040b0dbb56815a1e9c6fd032ce62e7",
}


def test_redispy_bridge_is_the_bridge_of_every_redis_storage() -> None:
    for uri, kind in (
        ("redis://127.0.0.1:1/0", RedisStorage),
        ("redis+sentinel://127.0.0.1:1/mymaster", RedisSentinelStorage),
        ("redis+cluster://127.0.0.1:1", RedisClusterStorage),
    ):
        storage = open_storage(uri, 0.25)
        assert isinstance(storage, kind)
        assert isinstance(storage.bridge, RedispyBridge)
        assert bridge.is_redispy(storage)
    assert not bridge.is_redispy(BoundedMemoryStorage())


def test_get_connection_is_the_redis_py_client() -> None:
    plain = open_storage("redis://127.0.0.1:1/0", 0.25)
    assert isinstance(plain, RedisStorage) and isinstance(plain.bridge, RedispyBridge)
    assert isinstance(bridge.client(plain), Redis)
    assert bridge.client(plain) is plain.bridge.storage
    assert bridge.clients(plain) == [plain.bridge.storage]
    cluster = open_storage("redis+cluster://127.0.0.1:1", 0.25)
    assert isinstance(bridge.client(cluster), RedisCluster)
    with pytest.raises(TypeError):
        bridge.client(BoundedMemoryStorage())


def test_lua_scripts_are_the_ones_the_gateway_copies() -> None:
    storage = open_storage("redis://127.0.0.1:1/0", 0.25)
    assert isinstance(storage, RedisStorage)
    scripts = bridge.limits_scripts(storage)
    named = {name: value for name, value in vars(storage.bridge).items() if any(value is s for s in scripts)}
    found = {}
    for name, script in named.items():
        text = script.script if isinstance(script.script, bytes) else script.script.encode()
        found[name] = hashlib.sha1(text).hexdigest()
        assert script.sha == found[name]
    assert found == LIMITS_SCRIPTS


async def test_prefixed_key_is_where_limits_counts(redis_storage: Storage) -> None:
    bucket = Bucket.parse("per_ip", "5 per minute", "bridge/per_ip")
    item = bucket.items[0]
    await MovingWindowRateLimiter(redis_storage).hit(limits_item(item), bucket.namespace, "203.0.113.1")
    client = bridge.client(redis_storage)
    key = bucket.keys("203.0.113.1")[0]
    assert bridge.prefixed_key(redis_storage, key) == f"LIMITS:{key}"
    assert [k.decode() for k in await client.keys("*bridge*")] == [bridge.prefixed_key(redis_storage, key)]


async def test_sliding_window_keys_are_where_limits_counts(redis_storage: Storage) -> None:
    bucket = Bucket.parse("per_ip", "5 per minute", "sliding/per_ip")
    item = bucket.items[0]
    strategy = SlidingWindowCounterRateLimiter(redis_storage)
    for _ in range(2):
        await strategy.hit(limits_item(item), bucket.namespace, "203.0.113.2")
    client = bridge.client(redis_storage)
    key = bucket.keys("203.0.113.2")[0]
    previous, current = bridge.sliding_window_keys(redis_storage, key)
    assert (previous, current) == (f"LIMITS:{{{key}}}/-1", f"LIMITS:{{{key}}}")  # one hash tag
    assert await client.get(current) == b"2"
    assert {k.decode() for k in await client.keys("*sliding*")} <= {previous, current}


async def test_prepare_loads_limits_own_scripts(redis_storage: Storage) -> None:
    client = bridge.client(redis_storage)
    await client.script_flush()
    await prepare(redis_storage)
    shas = [script.sha for script in bridge.limits_scripts(redis_storage)]
    assert await client.script_exists(*shas) == [True] * len(LIMITS_SCRIPTS)
