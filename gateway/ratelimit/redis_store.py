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

The gateway's own scripts (`HIT_SCRIPTS`, used by `RedisStore.step`) count a hit and read the window back
in one EVALSHA: each is `limits`' acquire script followed by its read script (or GET and TTL), on the same
keys and data structures, so gateways running `limits`' two-call path share the counts during a rolling
deploy. One script call per item: an item's keys are in one cluster slot (the sliding window's two keys
share a hash tag), a bucket's items are not.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage, Storage
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.models import RateItem, Strategy
from gateway.policy import STORAGE_SCHEMES
from gateway.ratelimit import bridge
from gateway.ratelimit.redis_batch import batcher_for
from gateway.ratelimit.store import Reservation, StoreUnavailable, sliding_window_stats

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


async def prepare(storage: Storage) -> None:
    """Open a connection and load the Lua scripts (after start-up and after Redis came back empty):
    the gateway's, and `limits`' own (so anything running `limits`' strategies on this Redis finds them)."""
    if not bridge.is_redispy(storage):
        return
    client = bridge.client(storage)
    await client.ping()
    for script in bridge.limits_scripts(storage):
        await client.script_load(script.script)
    for text in (*HIT_SCRIPTS, *PRIMITIVE_SCRIPTS):
        await client.script_load(text)


async def close(storage: Storage) -> None:
    """Close the clients and their pools (limits has no close of its own)."""
    if not bridge.is_redispy(storage):
        return
    for client in bridge.clients(storage):
        await client.aclose()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            await pool.aclose()


# ------------------------------------------------------------------------------------ ledger and records
# The primitives of gateway/ratelimit/store.py on Redis (their semantics are written down there). One key
# per script, declared in KEYS and hash-tagged; the clock is Redis's (TIME), in microseconds (exact in a
# double until the year 2255). `redis.replicate_commands()` lets a script write after TIME on Redis < 5
# (from 5 on it is the default, and a no-op).

LEDGER_PREFIX = "gw:ledger:"
RECORD_PREFIX = "gw:record:"

# KEYS: the ledger (a sorted set, member token:i, score the grant's time in µs).
# ARGV: limit, window (µs), amount, token. Returns {granted, live, reset (µs), retry_after (µs)}.
RESERVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local live = redis.call('ZCARD', KEYS[1])
local granted = 0
if amount <= 0 then
    granted = 1
elseif live + amount <= limit then
    local i = 1
    while i <= amount do
        local args = {}
        local last = math.min(i + 499, amount)
        for j = i, last do
            args[#args + 1] = now
            args[#args + 1] = ARGV[4] .. ':' .. j
        end
        redis.call('ZADD', KEYS[1], unpack(args))
        i = last + 1
    end
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
    live = live + amount
    granted = 1
end
local reset, retry = 0, 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then
    reset = tonumber(oldest[2]) + window - now
end
if granted == 0 then
    if amount > limit then
        retry = window
    else
        local need = live + amount - limit
        local entry = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
        retry = tonumber(entry[2]) + window - now
    end
end
return {granted, live, tostring(math.max(reset, 0)), tostring(math.max(retry, 0))}
"""

# KEYS: the ledger. ARGV: token, amount, keep. Removes members token:(keep+1) .. token:amount.
SETTLE = """
local token, amount, keep = ARGV[1], tonumber(ARGV[2]), math.max(tonumber(ARGV[3]), 0)
local i = keep + 1
while i <= amount do
    local members = {}
    local last = math.min(i + 499, amount)
    for j = i, last do
        members[#members + 1] = token .. ':' .. j
    end
    redis.call('ZREM', KEYS[1], unpack(members))
    i = last + 1
end
return 0
"""

# KEYS: the record. ARGV: value, ttl (ms). Returns the value held (nil when this call claimed the key).
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then
    return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: the record. ARGV: expected, value, ttl (ms). Returns 1 when swapped.
REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""

# KEYS: the record. ARGV: expected. Returns 1 when deleted.
DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""

PRIMITIVE_SCRIPTS = (RESERVE, SETTLE, CLAIM, REPLACE, DELETE_IF)
_STEP_FAILURES = (StorageError, ConnectionError, OSError, RedisError)
_FAILURES = (TimeoutError, *_STEP_FAILURES)


def ledger_key(key: str) -> str:
    return f"{LEDGER_PREFIX}{{{key}}}"


def record_key(key: str) -> str:
    return f"{RECORD_PREFIX}{{{key}}}"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class _Scripts:
    """One storage's client and every script registered on it; calls go through the loop-turn batcher.

    redis-py's Script loads itself again on NOSCRIPT (a restarted Redis), and so does the batcher.
    """

    def __init__(self, storage: Storage) -> None:
        self.client = bridge.client(storage)
        self.batcher = batcher_for(self.client)
        texts = (*HIT_SCRIPTS, *PRIMITIVE_SCRIPTS)
        self.scripts = {text: self.client.register_script(text.encode()) for text in texts}

    async def call(self, text: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[text]
        if self.batcher is not None:
            return await self.batcher.call(script, keys, args)
        return await script(keys, args)


_SCRIPTS: weakref.WeakKeyDictionary[Storage, _Scripts] = weakref.WeakKeyDictionary()


class RedisStore:
    """`Store` on a `limits` Redis storage (plain, Sentinel or Cluster, on redis-py), with a timeout.

    Every call is one script, sent in the loop turn's pipeline on plain Redis and Sentinel (one per client,
    shared by the per-IP hits and the primitives), alone on a Cluster (routed by its key's slot). A
    primitive that fails, or takes longer than `timeout`, raises `StoreUnavailable`; a `step` that fails
    raises it too, and the limiter bounds the whole bucket by `timeout`.

    Per-IP hits: one script per item that counts and reads the window (`HIT_SCRIPTS`, above), on `limits`'
    keys, so `fuses_reads`; the moving window is stamped with this host's clock, as `limits` does.
    """

    fuses_reads = True
    suspends = True

    def __init__(self, storage: Storage, timeout: float) -> None:
        self.storage = storage
        self.timeout = timeout
        scripts = _SCRIPTS.get(storage)
        if scripts is None:
            scripts = _SCRIPTS[storage] = _Scripts(storage)
        self._scripts = scripts

    def bound(self, timeout: float) -> RedisStore:
        """The same store (same client, same counts) with another timeout."""
        return self if timeout == self.timeout else RedisStore(self.storage, timeout)

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                return bool(await self.storage.check())
        except Exception:  # any failure means not ready
            return False

    async def prepare(self) -> None:
        await prepare(self.storage)

    async def close(self) -> None:
        await close(self.storage)

    async def _call(self, text: str, key: str, args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._scripts.call(text, [key], args)
        except _FAILURES as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    # ------------------------------------------------------------------------------------ per-IP hits

    async def step(
        self, strategy: Strategy, item: RateItem, key: str, count: bool, read: bool
    ) -> tuple[bool, WindowStats | None]:
        try:
            if strategy == Strategy.MOVING_WINDOW:
                return await self._moving_window(item, key, count)
            if strategy == Strategy.FIXED_WINDOW:
                return await self._fixed_window(item, key, count)
            return await self._sliding_window(item, key, count)
        except _STEP_FAILURES as exc:  # the limiter's own timeout is raised around the whole bucket
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _moving_window(self, item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        expiry, timestamp = item.expiry, time.time()
        keys = [bridge.prefixed_key(self.storage, key)]
        reply = await self._scripts.call(
            MOVING_WINDOW_HIT, keys, [timestamp, item.amount, expiry, int(count)]
        )
        hits = int(reply[1])
        start = float(reply[2]) if hits else timestamp  # RedispyBridge.get_moving_window
        return reply[0] == 1, WindowStats(start + expiry, item.amount - hits)

    async def _fixed_window(self, item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        keys = [bridge.prefixed_key(self.storage, key)]
        current, ttl = await self._scripts.call(FIXED_WINDOW_HIT, keys, [item.expiry, int(count)])
        reset = max(int(ttl), 0) + time.time()  # RedispyBridge.get_expiry
        return count and int(current) <= item.amount, WindowStats(reset, max(0, item.amount - int(current)))

    async def _sliding_window(self, item: RateItem, key: str, count: bool) -> tuple[bool, WindowStats]:
        keys = bridge.sliding_window_keys(self.storage, key)  # "{key}/-1" and "{key}": one hash tag
        reply = await self._scripts.call(SLIDING_WINDOW_HIT, keys, [item.amount, item.expiry, int(count)])
        return reply[0] == 1, sliding_window_stats(  # RedispyBridge.get_sliding_window's conversions
            item,
            int(reply[1] or 0),
            max(0, float(reply[2] or 0)) / 1000,
            int(reply[3] or 0),
            max(0, float(reply[4] or 0)) / 1000,
        )

    # ------------------------------------------------------------------------------------ primitives

    async def reserve(self, key: str, limit: int, window: float, amount: int) -> Reservation:
        token = os.urandom(9).hex() if amount > 0 else ""
        span = max(1, math.ceil(window * 1_000_000))
        reply = await self._call(RESERVE, ledger_key(key), [limit, span, amount, token])
        granted, live = int(reply[0]) == 1, int(reply[1])
        held = amount if granted and amount > 0 else 0
        return Reservation(
            granted,
            token if held else "",
            held,
            max(limit - live, 0),
            float(reply[2]) / 1_000_000,
            float(reply[3]) / 1_000_000,
        )

    async def settle(self, key: str, reservation: Reservation, keep: int) -> None:
        if not reservation.token or keep >= reservation.amount:
            return
        await self._call(SETTLE, ledger_key(key), [reservation.token, reservation.amount, max(keep, 0)])

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        held = await self._call(CLAIM, record_key(key), [value, _ms(ttl)])
        return None if held is None else bytes(held)

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        return int(await self._call(REPLACE, record_key(key), [expected, value, _ms(ttl)])) == 1

    async def delete_if(self, key: str, expected: bytes) -> bool:
        return int(await self._call(DELETE_IF, record_key(key), [expected])) == 1
