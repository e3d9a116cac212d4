"""Redis-backed limit storages: one bounded, time-limited redis-py connection pool per process.

`limits` has no timeouts of its own and its redis-py bridge uses a pool that raises at 100 connections, so
the storage is built here with:

- redis-py (`implementation="redispy"`): coredis re-sends in-flight commands after NOSCRIPT and over-counts;
  redis-py answers NOSCRIPT by loading the script and re-sending only the command Redis refused (not run).
- a `BlockingConnectionPool` for `redis://` and `rediss://`: a burst waits (up to the storage timeout) for
  a free connection instead of failing;
- socket connect/read timeouts equal to the policy's `storage_timeout`;
- at most one retry, and only on a connection error (a stale pooled connection after Redis restarted);
  never on a timeout, since a command that timed out may still have counted the hit;
- `wrap_exceptions=True`, so every client failure is a `limits.errors.StorageError`.

`prepare` pings and loads the strategies' Lua scripts, so the first round trip is not a request's.

The gateway's own scripts (`HIT_SCRIPTS`, used by `ops.py`) count a hit and read the window back
in one EVALSHA: each is `limits`' acquire script followed by its read script (or GET and TTL), on the same
keys and data structures, so gateways running `limits`' two-call path share the counts during a rolling
deploy. One script call per item: an item's keys are in one cluster slot (the sliding window's two keys
share a hash tag), a bucket's items are not.
"""

from __future__ import annotations

import logging
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage, Storage
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.policy import STORAGE_SCHEMES

log = logging.getLogger("gateway.ratelimit")

REDIS_SCHEMES = tuple(scheme for scheme in STORAGE_SCHEMES if scheme.startswith("redis"))
MAX_CONNECTIONS = 100  # per process; a burst beyond it waits for a free connection


def is_redis(uri: str) -> bool:
    return uri.startswith(REDIS_SCHEMES)


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def redis_storage(uri: str, timeout: float) -> Storage:
    """The `limits` async storage for a policy's Redis URI, with the client settings above."""
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    common: dict[str, Any] = {"wrap_exceptions": True, "implementation": "redispy"}
    if uri.startswith("redis+cluster://"):
        return RedisClusterStorage("async+" + uri, **common, **timeouts)
    if uri.startswith("redis+sentinel://"):
        sentinel: dict[str, Any] = {"retry": _retry(), "sentinel_kwargs": dict(timeouts)}
        return RedisSentinelStorage("async+" + uri, **common, **timeouts, **sentinel)
    pool = BlockingConnectionPool.from_url(
        uri, max_connections=MAX_CONNECTIONS, timeout=timeout, retry=_retry(), **timeouts
    )
    pooled: dict[str, Any] = {"connection_pool": pool}
    return RedisStorage("async+" + uri, **common, **pooled)


# ARGV: timestamp, limit, expiry (s), count (1: count one hit, 0: only read). KEYS: the item's list.
# Returns {counted, hits in the window, oldest hit in the window (absent when there is none)}.
MOVING_WINDOW_HIT = """
local timestamp = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local counted = 0

-- limits' acquire_moving_window.lua, for an amount of 1
if ARGV[4] == '1' and 1 <= limit then
    local entry = redis.call('lindex', KEYS[1], limit - 1)
    if not (entry and tonumber(entry) >= timestamp - expiry) then
        redis.call('lpush', KEYS[1], timestamp)
        redis.call('ltrim', KEYS[1], 0, limit - 1)
        redis.call('expire', KEYS[1], expiry)
        counted = 1
    end
end

-- limits' moving_window.lua, at the same timestamp
local target = timestamp - expiry
local low, high, index = 0, limit - 1, nil
while low <= high do
    local mid = math.floor((low + high) / 2)
    local val = tonumber(redis.call('lindex', KEYS[1], mid))
    if val and val >= target then
        index = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
if index then
    return {counted, index + 1, tostring(tonumber(redis.call('lindex', KEYS[1], index)))}
end
return {counted, 0}
"""

# ARGV: expiry (s), count (1 or 0). KEYS: the item's counter. Returns {counter, TTL in seconds}.
FIXED_WINDOW_HIT = """
-- limits' incr_expire.lua, for an amount of 1
if ARGV[2] == '1' then
    if redis.call('incrby', KEYS[1], 1) == 1 then
        redis.call('expire', KEYS[1], ARGV[1])
    end
end
-- what get and get_expiry read
return {tonumber(redis.call('get', KEYS[1])) or 0, redis.call('ttl', KEYS[1])}
"""

# ARGV: limit, expiry (s), count (1 or 0). KEYS: previous window's counter, current window's counter.
# Returns {counted, previous count, previous PTTL, current count, current PTTL} (counts may be nil).
SLIDING_WINDOW_HIT = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000

-- limits' acquire_sliding_window.lua, for an amount of 1
local function acquire()
    local amount = 1
    if amount > limit then
        return 0
    end
    local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', KEYS[2], KEYS[1])
        redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
    local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
    local current_count = tonumber(redis.call('get', KEYS[2])) or 0
    current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    if current_ttl <= 0 then
        current_ttl = 0
    end
    local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count
    if (weighted_count + amount) > limit then
        return 0
    end
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
    end
    return 1
end

local counted = 0
if ARGV[3] == '1' then
    counted = acquire()
end

-- limits' sliding_window.lua
local previous_count = redis.call('get', KEYS[1])
local previous_ttl = redis.call('pttl', KEYS[1])
local current_count = redis.call('get', KEYS[2])
local current_ttl = redis.call('pttl', KEYS[2])
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
    previous_count = redis.call('get', KEYS[1])
    previous_ttl = redis.call('pttl', KEYS[1])
    current_count = redis.call('get', KEYS[2])
    current_ttl = redis.call('pttl', KEYS[2])
end
return {counted, previous_count, previous_ttl, current_count, current_ttl}
"""

HIT_SCRIPTS = (MOVING_WINDOW_HIT, FIXED_WINDOW_HIT, SLIDING_WINDOW_HIT)


def _scripts(storage: Storage) -> list[Any]:
    bridge = getattr(storage, "bridge", None)
    if bridge is None:
        return []
    found = vars(bridge).items()
    return [value for name, value in found if name.startswith("lua_") and hasattr(value, "sha")]


async def prepare(storage: Storage) -> None:
    """Open a connection and load the Lua scripts (after start-up and after Redis came back empty)."""
    bridge = getattr(storage, "bridge", None)
    if bridge is None:
        return
    client = bridge.get_connection()
    await client.ping()
    for script in _scripts(storage):
        await client.script_load(script.script)
    for text in HIT_SCRIPTS:
        await client.script_load(text)


async def close(storage: Storage) -> None:
    """Close the client and its pool (limits has no close of its own)."""
    bridge = getattr(storage, "bridge", None)
    if bridge is None:
        return
    clients = {id(c): c for c in (getattr(bridge, "storage", None), getattr(bridge, "storage_replica", None))}
    for client in clients.values():
        if client is None:
            continue
        await client.aclose()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.aclose()
