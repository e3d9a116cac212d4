"""Redis-backed limit storages: one bounded, time-limited redis-py connection pool per process.

`limits` has no timeouts of its own and its redis-py bridge uses a pool that raises at 100 connections, so
the storage is built here with:

- redis-py (`implementation="redispy"`): coredis re-sends in-flight commands after NOSCRIPT and over-counts;
  redis-py answers NOSCRIPT by loading the script and re-sending only the command Redis refused (not run).
- a `BlockingConnectionPool` for `redis://` and `rediss://`: a burst waits for a free connection instead of
  failing;
- a call's `storage_timeout` is `RedisStore`'s, on the store's time (gateway/ratelimit/deadline.py: the
  gateway's own loop running late is not the store being slow); the pool's wait and the sockets' connect and
  read timeouts are backstops at the longest such a deadline lasts (MAX_STRETCH times `storage_timeout`),
  so a late loop cannot trip them first;
- on plain Redis and Sentinel at most one retry, and only on a connection error (a stale pooled connection
  after Redis restarted); never on a timeout, since a command that timed out may still have counted the
  hit. A Cluster client keeps redis-py's own retries, which cover a socket timeout too (the class's
  `ERRORS_ALLOW_RETRY`, not the `retry` object, decides): the call's deadline still bounds them, and a chain
  retried after a timeout can only count a hit twice (stricter, never more lenient); a reservation sent
  again keeps its token, and RESERVE takes the token's entries found live for its grant (held once);
- `wrap_exceptions=True`, so every client failure is a `limits.errors.StorageError`.

`prepare` pings and loads the strategies' Lua scripts, so the first round trip is not a request's.

The gateway's own chain script (`CHAIN`, used by `RedisStore.chain`) runs a request's per-IP hits and its
ledger reservations (failed-code budget, upstream quota) in one EVALSHA, in order, up to the first refusal
(gateway/ratelimit/store.py). Each hit is `limits`' acquire script followed by its read script (or GET and
TTL), on the same keys and data structures, so gateways running `limits`' two-call path share the counts
during a rolling deploy. On plain Redis and Sentinel a whole chain is one call; on a Cluster a chain is split
into runs of consecutive steps in one slot (an item's keys are in one slot: the sliding window's two keys
share a hash tag; a bucket's items and the ledgers are not), one call each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage, Storage
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from gateway.models import Strategy
from gateway.policy import STORAGE_SCHEMES
from gateway.ratelimit import bridge
from gateway.ratelimit.deadline import MAX_STRETCH, Deadline, LagClock, loop_clock
from gateway.ratelimit.redis_batch import batcher_for
from gateway.ratelimit.store import (
    Hit,
    HitAnswer,
    Reservation,
    Reserve,
    Step,
    StepAnswer,
    StoreUnavailable,
    sliding_window_stats,
)

log = logging.getLogger("gateway.ratelimit")
REDIS_SCHEMES = tuple(scheme for scheme in STORAGE_SCHEMES if scheme.startswith("redis"))
MAX_CONNECTIONS = 100  # per process; a burst beyond it waits for a free connection


def is_redis(uri: str) -> bool:
    return uri.startswith(REDIS_SCHEMES)


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def redis_storage(uri: str, timeout: float) -> Storage:
    """The `limits` async storage for a policy's Redis URI, with the client settings above."""
    backstop = MAX_STRETCH * timeout
    timeouts: dict[str, Any] = {"socket_timeout": backstop, "socket_connect_timeout": backstop}
    common: dict[str, Any] = {"wrap_exceptions": True, "implementation": "redispy"}
    if uri.startswith("redis+cluster://"):
        return RedisClusterStorage("async+" + uri, **common, **timeouts)
    if uri.startswith("redis+sentinel://"):
        sentinel: dict[str, Any] = {"retry": _retry(), "sentinel_kwargs": dict(timeouts)}
        return RedisSentinelStorage("async+" + uri, **common, **timeouts, **sentinel)
    pool = BlockingConnectionPool.from_url(
        uri, max_connections=MAX_CONNECTIONS, timeout=backstop, retry=_retry(), **timeouts
    )
    pooled: dict[str, Any] = {"connection_pool": pool}
    return RedisStorage("async+" + uri, **common, **pooled)


# The per-IP hits, as Lua functions of the chain (below). Each takes its step's keys and arguments and
# whether to count, and answers {counted (1 or 0), ...what its window read}. `limits` names the moving and
# the fixed window's key alike: a key holding the other's structure (a reload changed `strategy`) is
# dropped, so counts start afresh, as in memory, instead of WRONGTYPE failing every call on it (a store
# error: with `on_storage_error: allow`, no per-IP limit, failed-code budget or quota until it expires).

# keys: the item's list. args: limit, expiry (s). Answers {counted, hits in the window, the oldest hit in
# the window in seconds from now (<= 0; absent when there is none)}. The hits are stamped with Redis's clock
# (TIME, in seconds as `limits` stamps them), not the gateway's: every gateway on one Redis sees one window,
# however far apart their clocks are.
MOVING_WINDOW_HIT = """
local function moving_window(KEYS, ARGV, count)
    local t = redis.call('TIME')
    local timestamp = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local limit = tonumber(ARGV[1])
    local expiry = tonumber(ARGV[2])
    local counted = 0

    -- the fixed window's counter under the same name (`strategy` changed by a reload): start afresh
    local held = redis.call('TYPE', KEYS[1])['ok']
    if held == 'string' then
        redis.call('DEL', KEYS[1])
    end

    -- limits' acquire_moving_window.lua, for an amount of 1
    if count and 1 <= limit then
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
        return {counted, index + 1, tostring(tonumber(redis.call('lindex', KEYS[1], index)) - timestamp)}
    end
    return {counted, 0}
end
"""

# keys: the item's counter. args: expiry (s), limit. Answers {counted, counter, PTTL in milliseconds}: not
# TTL, which rounds to the nearest second (1.4 s left read as 1, 1.6 s as 2), so a reset and a refusal
# remembered until it (refusals.py) ended up to half a second early or late.
FIXED_WINDOW_HIT = """
local function fixed_window(KEYS, ARGV, count)
    -- the moving window's list under the same name (`strategy` changed by a reload): start afresh
    local held = redis.call('TYPE', KEYS[1])['ok']
    if held == 'list' then
        redis.call('DEL', KEYS[1])
    end
    -- limits' incr_expire.lua, for an amount of 1
    if count then
        if redis.call('incrby', KEYS[1], 1) == 1 then
            redis.call('expire', KEYS[1], ARGV[1])
        end
    end
    -- what get and get_expiry read (the expiry to the millisecond)
    local current = tonumber(redis.call('get', KEYS[1])) or 0
    local counted = 0
    if count and current <= tonumber(ARGV[2]) then
        counted = 1
    end
    return {counted, current, redis.call('pttl', KEYS[1])}
end
"""

# keys: previous window's counter, current window's counter. args: limit, expiry (s).
# Answers {counted, previous count, previous PTTL, current count, current PTTL} (counts may be nil).
SLIDING_WINDOW_HIT = """
local function sliding_window(KEYS, ARGV, count)
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
    if count then
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
end
"""


async def prepare(storage: Storage) -> None:
    """Open a connection and load the Lua scripts (after start-up and after Redis came back empty):
    the gateway's, and `limits`' own (so anything running `limits`' strategies on this Redis finds them)."""
    if not bridge.is_redispy(storage):
        return
    client = bridge.client(storage)
    await client.ping()
    for script in bridge.limits_scripts(storage):
        await client.script_load(script.script)
    for text in SCRIPTS:
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

# keys: the ledger (a sorted set, member token:i, score the grant's time in µs).
# args: limit, window (µs), amount, token. Answers {granted, live, reset (µs), retry_after (µs)}.
RESERVE = """
local function reserve(KEYS, ARGV)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local limit, window, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
    local live = redis.call('ZCARD', KEYS[1])
    local granted = 0
    if amount <= 0 then
        granted = 1
    elseif redis.call('ZSCORE', KEYS[1], ARGV[4] .. ':1') then
        -- this token's grant, sent again (a connection error retried after its reply was lost): held once
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
end
"""

# The chain of gateway/ratelimit/store.py in one script. ARGV[1]: '1' when a step before this script (an
# earlier part of a chain split by Cluster slot) refused. Then, per step: its kind (1 moving window,
# 2 fixed window, 3 sliding window: a hit; 4: a reservation), '1' to count (hits), its number of keys,
# its number of arguments, the arguments; KEYS: every step's keys, in order. Answers {refused (1 or 0),
# each step's answer (nil: a reservation that did not run)}.
CHAIN = (
    "if redis.replicate_commands then redis.replicate_commands() end\n"  # TIME, then writes (Redis < 5)
    + MOVING_WINDOW_HIT
    + FIXED_WINDOW_HIT
    + SLIDING_WINDOW_HIT
    + RESERVE
    + """
local hits = {moving_window, fixed_window, sliding_window}
local refused = ARGV[1] == '1'
local out = {0}
local k, a = 1, 2
while a <= #ARGV do
    local kind, count = tonumber(ARGV[a]), ARGV[a + 1] == '1'
    local nkeys, nargs = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local keys, args = {}, {}
    for i = 1, nkeys do
        keys[i] = KEYS[k + i - 1]
    end
    for i = 1, nargs do
        args[i] = ARGV[a + 3 + i]
    end
    k, a = k + nkeys, a + 4 + nargs
    local reply = false
    if kind == 4 then
        if not refused then
            reply = reserve(keys, args)
            refused = reply[1] == 0
        end
    else
        reply = hits[kind](keys, args, count and not refused)
        refused = refused or (count and reply[1] == 0)
    end
    out[#out + 1] = reply
end
if refused then
    out[1] = 1
end
return out
"""
)

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

# KEYS: the record. ARGV: value, ttl (ms). Returns the value held (nil when this call claimed the key, or
# holds it already: values are unique to their caller, so that is this call sent again, a connection error
# retried after its reply was lost).
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
    return false
end
if held then
    return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: the record. ARGV: expected, value, ttl (ms). Returns 1 when swapped (or swapped already: this call
# sent again, as CLAIM).
REPLACE = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
if held == ARGV[2] then
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

PRIMITIVE_SCRIPTS = (SETTLE, CLAIM, REPLACE, DELETE_IF)
SCRIPTS = (CHAIN, *PRIMITIVE_SCRIPTS)
# RedisClusterException is no RedisError: the cluster client raises it when no node answers (a store opened
# during an outage), and a chain must still fail as StoreUnavailable, for `on_storage_error` to decide
_FAILURES = (TimeoutError, StorageError, ConnectionError, OSError, RedisError, RedisClusterException)


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
        self.scripts = {text: self.client.register_script(text.encode()) for text in SCRIPTS}
        self.cluster = self.batcher is None  # a chain is split by slot there
        self._clock: LagClock | None = None  # held: the loop's clock lives as long as a store uses it

    def deadline(self, timeout: float) -> Deadline:
        """`timeout` on the store's time, not the loop's lateness (gateway/ratelimit/deadline.py), on the
        clock of the loop making the call."""
        clock = self._clock
        if clock is None or clock.loop is not asyncio.get_running_loop():
            clock = self._clock = loop_clock()
        return Deadline(clock, timeout)

    async def call(self, text: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[text]
        if self.batcher is not None:
            return await self.batcher.call(script, keys, args)
        return await script(keys, args)

    def call_soon(self, text: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any] | None:
        """The call queued in this turn's pipeline, its reply to come in the future; None on a Cluster."""
        return None if self.batcher is None else self.batcher.call(self.scripts[text], keys, args)


_SCRIPTS: weakref.WeakKeyDictionary[Storage, _Scripts] = weakref.WeakKeyDictionary()
_SETTLING: set[asyncio.Task[None]] = set()  # Cluster give-backs: a task nobody awaits is kept referenced


def _settle_args(reservation: Reservation, keep: int) -> list[Any] | None:
    """The SETTLE script's arguments; None when there is nothing to give back."""
    if not reservation.token or keep >= reservation.amount:
        return None
    return [reservation.token, reservation.amount, max(keep, 0)]


def _not_given_back(exc: StoreUnavailable) -> None:
    log.debug("a reservation whose answer was lost could not be given back (%s)", exc)


def _settled(failed: Callable[[StoreUnavailable], None], reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled() and (exc := reply.exception()) is not None:
        failed(StoreUnavailable(type(exc).__name__))


class RedisStore:
    """`Store` on a `limits` Redis storage (plain, Sentinel or Cluster, on redis-py), with a timeout.

    Every call is one script, sent in the loop turn's pipeline on plain Redis and Sentinel (one per client,
    shared by every request's chains and primitives), alone on a Cluster (routed by its keys' slot). A call
    that fails, or takes longer than `timeout`, raises `StoreUnavailable`.

    A chain is one `CHAIN` script on plain Redis and Sentinel; on a Cluster, one per run of consecutive
    steps whose keys share a slot (a per-IP item's keys are `limits`' and carry no common hash tag, a
    project's quota ledger is the project's), each told whether an earlier run refused, and a run of only
    reservations after a refusal is not sent at all. Per-IP hits are on `limits`' keys and data structures
    and read their window in the script that counts (`fuses_reads`); the moving window is stamped with
    Redis's clock (TIME), not this host's as `limits` stamps it, so gateways whose clocks differ still share
    one window (a gateway on `limits`' own calls during a rolling deploy stamps its own clock, as before).
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
        if self._scripts.batcher is not None:
            await self._scripts.batcher.close()
        await close(self.storage)

    async def _call(self, text: str, key: str, args: list[Any]) -> Any:
        try:
            async with self._scripts.deadline(self.timeout):
                return await self._scripts.call(text, [key], args)
        except _FAILURES as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    # ------------------------------------------------------------------------------------ chains

    async def chain(self, steps: Sequence[Step]) -> list[StepAnswer]:
        """The chain (gateway/ratelimit/store.py). When it fails after its reservations were sent (a
        timeout, a connection lost), they may have been granted with nobody to know it: each is given
        back at once, without waiting (a SETTLE of its token, a no-op where nothing was granted), rather
        than counted until its window ends. Redis runs commands in the order it reads them, so a script
        whose answer was slow or lost has run before its give-back; only one still unread by a frozen
        Redis may come after it, and stays counted, as before."""
        sent: list[tuple[str, list[Any]]] = []  # the reservations sent: ledger key, SETTLE's arguments
        try:
            async with self._scripts.deadline(self.timeout):
                if not self._scripts.cluster:
                    return (await self._run(steps, False, sent))[1]
                answers: list[StepAnswer] = []
                refused = False
                for part in _by_slot(steps, self.storage):
                    if refused and not any(isinstance(step, Hit) for step in part):
                        answers.extend(None for _ in part)  # reservations after a refusal: not run
                        continue
                    refused, found = await self._run(part, refused, sent)
                    answers.extend(found)
                return answers
        except _FAILURES as exc:
            self._give_back(sent)
            raise StoreUnavailable(type(exc).__name__) from exc
        except asyncio.CancelledError:
            self._give_back(sent)
            raise

    async def _run(
        self, steps: Sequence[Step], refused: bool, sent: list[tuple[str, list[Any]]]
    ) -> tuple[bool, list[StepAnswer]]:
        """One CHAIN script: (whether a step refused, each step's answer). Its reservations are added to
        `sent` before it goes."""
        keys: list[str] = []
        args: list[Any] = ["1" if refused else "0"]
        tokens: list[str] = []
        for step in steps:
            if isinstance(step, Reserve):
                token = os.urandom(9).hex() if step.amount > 0 else ""
                tokens.append(token)
                if token:
                    sent.append((step.key, [token, step.amount, 0]))
                span = max(1, math.ceil(step.window * 1_000_000))
                keys.append(ledger_key(step.key))
                args += (_RESERVE, "0", 1, 4, step.limit, span, step.amount, token)
                continue
            item, count = step.item, "1" if step.counts else "0"
            if step.strategy == Strategy.MOVING_WINDOW:
                keys.append(bridge.prefixed_key(self.storage, step.key))
                args += (_MOVING, count, 1, 2, item.amount, item.expiry)
            elif step.strategy == Strategy.FIXED_WINDOW:
                keys.append(bridge.prefixed_key(self.storage, step.key))
                args += (_FIXED, count, 1, 2, item.expiry, item.amount)
            else:  # "{key}/-1" and "{key}": one hash tag
                keys += bridge.sliding_window_keys(self.storage, step.key)
                args += (_SLIDING, count, 2, 2, item.amount, item.expiry)
        reply = await self._scripts.call(CHAIN, keys, args)
        answers: list[StepAnswer] = []
        reserved = iter(tokens)
        for step, found in zip(steps, reply[1:], strict=True):
            if isinstance(step, Reserve):
                token = next(reserved)
                answers.append(None if found is None else _reservation(step, token, found))
            else:
                answers.append(_window(step, found))
        return int(reply[0]) == 1, answers

    # ------------------------------------------------------------------------------------ primitives

    async def reserve(self, key: str, limit: int, window: float, amount: int) -> Reservation:
        (answer,) = await self.chain((Reserve(key, limit, window, amount),))
        assert isinstance(answer, Reservation)  # the first step of a chain always runs
        return answer

    async def settle(self, key: str, reservation: Reservation, keep: int) -> None:
        args = _settle_args(reservation, keep)
        if args is not None:
            await self._call(SETTLE, ledger_key(key), args)

    def settle_soon(
        self, key: str, reservation: Reservation, keep: int, failed: Callable[[StoreUnavailable], None]
    ) -> None:
        """Queued in this loop turn's pipeline with no task and no deadline of its own (nobody waits; a frozen
        Redis fails it at the sockets' backstop); on a Cluster, in a task of its own, also without one (a
        settle bounded by the timeout of a Redis busy past it was cut off before it was even sent)."""
        args = _settle_args(reservation, keep)
        if args is not None:
            self._settle_soon(key, args, failed)

    def _give_back(self, sent: list[tuple[str, list[Any]]]) -> None:
        for key, args in sent:  # a store that fails leaves them to their window, as before: no line each
            self._settle_soon(key, args, _not_given_back)

    def _settle_soon(self, key: str, args: list[Any], failed: Callable[[StoreUnavailable], None]) -> None:
        queued = self._scripts.call_soon(SETTLE, [ledger_key(key)], args)
        if queued is None:
            task = asyncio.ensure_future(self._settle(key, args, failed))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
        else:
            queued.add_done_callback(partial(_settled, failed))

    async def _settle(self, key: str, args: list[Any], failed: Callable[[StoreUnavailable], None]) -> None:
        try:  # no deadline, as on plain Redis: nobody waits, the sockets' backstop bounds it
            await self._scripts.call(SETTLE, [ledger_key(key)], args)
        except _FAILURES as exc:
            failed(StoreUnavailable(type(exc).__name__))

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        held = await self._call(CLAIM, record_key(key), [value, _ms(ttl)])
        return None if held is None else bytes(held)

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        return int(await self._call(REPLACE, record_key(key), [expected, value, _ms(ttl)])) == 1

    async def delete_if(self, key: str, expected: bytes) -> bool:
        return int(await self._call(DELETE_IF, record_key(key), [expected])) == 1


_MOVING, _FIXED, _SLIDING, _RESERVE = 1, 2, 3, 4  # CHAIN's step kinds


def _step_keys(step: Step, storage: Storage) -> list[str]:
    if isinstance(step, Reserve):
        return [ledger_key(step.key)]
    if step.strategy == Strategy.SLIDING_WINDOW_COUNTER:
        return bridge.sliding_window_keys(storage, step.key)
    return [bridge.prefixed_key(storage, step.key)]


def _by_slot(steps: Sequence[Step], storage: Storage) -> list[list[Step]]:
    """Runs of consecutive steps whose keys lie in one Cluster slot, in order."""
    parts: list[list[Step]] = []
    last = -1
    for step in steps:
        slot = key_slot(_step_keys(step, storage)[0].encode())
        if parts and slot == last:
            parts[-1].append(step)
        else:
            parts.append([step])
        last = slot
    return parts


def _reservation(step: Reserve, token: str, reply: Any) -> Reservation:
    granted, live = int(reply[0]) == 1, int(reply[1])
    held = step.amount if granted and step.amount > 0 else 0
    return Reservation(
        granted,
        token if held else "",
        held,
        max(step.limit - live, 0),
        float(reply[2]) / 1_000_000,
        float(reply[3]) / 1_000_000,
    )


def _window(step: Hit, reply: Any) -> HitAnswer:
    """A hit's answer as `limits`' redis-py bridge converts its reads (get_moving_window, get_expiry,
    get_sliding_window)."""
    item, counted = step.item, int(reply[0]) == 1
    if step.strategy == Strategy.MOVING_WINDOW:
        hits = int(reply[1])
        start = time.time() + (float(reply[2]) if hits else 0.0)  # Redis's clock to this host's
        return counted, WindowStats(start + item.expiry, item.amount - hits)
    if step.strategy == Strategy.FIXED_WINDOW:  # its PTTL, not get_expiry's TTL (FIXED_WINDOW_HIT)
        current, ttl = int(reply[1]), int(reply[2])
        return counted, WindowStats(max(ttl, 0) / 1000 + time.time(), max(0, item.amount - current))
    return counted, sliding_window_stats(
        item,
        int(reply[1] or 0),
        max(0, float(reply[2] or 0)) / 1000,
        int(reply[3] or 0),
        max(0, float(reply[4] or 0)) / 1000,
    )
