"""The one module that touches `limits`' private internals; tests/unit/test_limits_bridge.py pins each one.

The gateway builds its Redis clients through `limits`' Redis storages (plain, Sentinel, Cluster: their URI
grammar, their redis-py clients) and keeps `limits`' key names and data structures, so counts are shared
with anything running `limits`' own strategies on the same Redis. For that it needs, on a storage built
with `implementation="redispy"`:

- `RedispyBridge` (the bridge class on redis-py) and `bridge.get_connection()` (its client);
- `bridge.prefixed_key(key)` (`LIMITS:<key>`, the names of the per-IP counters);
- `storage._previous_window_key(key)`, `storage._current_window_key(key)` (the sliding window's two keys,
  one hash tag);
- the bridge's `lua_*` script objects, loaded at start-up so `limits`' own calls find them.

Nothing else in the gateway imports from `limits.aio.storage.redis` or reads these attributes.
"""

from __future__ import annotations

from typing import Any

from limits.aio.storage import RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge


def is_redispy(storage: Storage) -> bool:
    """A `limits` Redis storage (plain, Sentinel or Cluster) on redis-py."""
    return isinstance(storage, RedisStorage) and isinstance(storage.bridge, RedispyBridge)


def client(storage: Storage) -> Any:
    """The storage's redis-py client (the primary, where `limits` runs its scripts)."""
    bridge = _bridge(storage)
    return bridge.get_connection()


def clients(storage: Storage) -> list[Any]:
    """Every redis-py client the storage holds (primary and replica), each once, for closing."""
    bridge = _bridge(storage)
    found = {id(c): c for c in (getattr(bridge, "storage", None), getattr(bridge, "storage_replica", None))}
    return [c for c in found.values() if c is not None]


def prefixed_key(storage: Storage, key: str) -> str:
    """`limits`' Redis name of a storage key: `LIMITS:<key>`."""
    return str(_bridge(storage).prefixed_key(key))


def sliding_window_keys(storage: Storage, key: str) -> list[str]:
    """The sliding window counter's previous and current Redis keys (`{key}/-1`, `{key}`), prefixed."""
    assert isinstance(storage, RedisStorage)
    bridge = _bridge(storage)
    return [
        bridge.prefixed_key(storage._previous_window_key(key)),
        bridge.prefixed_key(storage._current_window_key(key)),
    ]


def limits_scripts(storage: Storage) -> list[Any]:
    """The bridge's registered `lua_*` scripts (redis-py `Script` objects, each with `.script`, `.sha`)."""
    found = vars(_bridge(storage)).items()
    return [value for name, value in found if name.startswith("lua_") and hasattr(value, "sha")]


def _bridge(storage: Storage) -> RedispyBridge:
    bridge = getattr(storage, "bridge", None)
    if not isinstance(bridge, RedispyBridge):
        raise TypeError(f"not a limits Redis storage on redis-py: {type(storage).__name__}")
    return bridge
