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
"""

from __future__ import annotations

import logging
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage, Storage
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("gateway.ratelimit")

REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")
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
