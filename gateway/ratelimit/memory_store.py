"""An in-process limit storage whose size is bounded, for `memory://`.

Why not `limits`' own `MemoryStorage`: its expiry task walks every key with one `asyncio.to_thread` call and
one `asyncio.Lock` each, so under an address-rotation flood (a million distinct client IPs) one sweep takes
minutes while new keys keep arriving, and memory grows with the flood (see the README's "Scaling out").

Here every operation is synchronous inside its coroutine, so it is atomic on the event loop and needs no
lock. Each key has exactly one entry in a heap ordered by when it expires; every call first pops what is
due, so expired keys are reclaimed in amortised O(log n) without a background task. A hard cap
(`max_keys`) bounds memory even when a flood outpaces expiry: the keys closest to expiry are dropped first.
What a key holds is never an object the cyclic garbage collector tracks (its hits are packed in a
bytearray, a counter is a tuple of numbers): with a million clients in the window, a list per client made
each full collection walk a million objects, the event loop stopped for ~0.75 s each time.

It implements what the three `limits` strategies need (counters for fixed windows and the sliding window
counter, timestamp lists for the moving window), so `limits`' strategies run on it unchanged. Each of those
methods has a synchronous twin (`..._sync`) that `MemoryStore.chain` (below) calls directly.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from math import floor, inf
from typing import Generic, TypeVar

from limits.aio.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow
from limits.util import WindowStats

from gateway.models import Strategy
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

DEFAULT_MAX_KEYS = 1_000_000
_COUNTER, _EVENTS = 0, 1


class BoundedMemoryStorage(
    Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow
):
    STORAGE_SCHEME = ["async+gateway-memory"]  # noqa: RUF012 - the registry reads it as a class attribute

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.time,
        **options: str,
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self.counters: dict[str, tuple[int, float]] = {}  # key -> (count, expires_at)
        # key -> hit times, oldest first, packed as native doubles (`_STAMP`). Not a deque (an empty one
        # holds a 64-slot block, ~800 bytes), not a list (56 bytes, its slots and a float per hit, tracked
        # by the collector): 72 bytes for a client with one hit. Expired hits leave from the front, which a
        # bytearray drops without moving the rest.
        self.events: dict[str, bytearray] = {}
        self._due: list[tuple[float, int, str, float]] = []  # (when, kind, key, window) one per key
        self.evicted = 0  # live keys dropped because of the cap
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return len(self.counters) + len(self.events)

    # ------------------------------------------------------------------------------------ bookkeeping

    def _reap(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, kind, key, window = heapq.heappop(due)
            if kind == _COUNTER:
                entry = self.counters.get(key)
                if entry is not None and entry[1] <= now:
                    del self.counters[key]
                elif entry is not None:  # pragma: no cover - a counter is only renewed after its entry popped
                    heapq.heappush(due, (entry[1], _COUNTER, key, window))
            else:
                hits = self.events.get(key)
                if hits is None:
                    continue
                last = _stamp_at(hits, len(hits) - 8)[0] + window if hits else now
                if last <= now:
                    del self.events[key]
                else:
                    heapq.heappush(due, (last, _EVENTS, key, window))

    def _track(self, when: float, kind: int, key: str, window: float) -> None:
        heapq.heappush(self._due, (when, kind, key, window))
        while len(self) > self.max_keys and self._due:
            _, kind, victim, _ = heapq.heappop(self._due)
            removed = (self.counters if kind == _COUNTER else self.events).pop(victim, None)
            if removed is not None:
                if self.evicted == 0:
                    log.warning("memory rate-limit store full (%d keys), dropping oldest", self.max_keys)
                self.evicted += 1

    # ------------------------------------------------------------------------------------ counters

    def _incr(self, key: str, expiry: float, amount: int, now: float) -> int:
        self._reap(now)
        entry = self.counters.get(key)
        if entry is None or entry[1] <= now:
            self.counters[key] = (amount, now + expiry)
            self._track(now + expiry, _COUNTER, key, expiry)  # may drop it at once: the cap is exact
            return amount
        count = entry[0] + amount
        self.counters[key] = (count, entry[1])
        return count

    def _get(self, key: str, now: float) -> int:
        entry = self.counters.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.incr_sync(key, expiry, amount)

    def incr_sync(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._incr(key, expiry, amount, self.clock())

    async def get(self, key: str) -> int:
        return self.get_sync(key)

    def get_sync(self, key: str) -> int:
        return self._get(key, self.clock())

    async def get_expiry(self, key: str) -> float:
        return self.get_expiry_sync(key)

    def get_expiry_sync(self, key: str) -> float:
        now = self.clock()
        entry = self.counters.get(key)
        return entry[1] if entry is not None and entry[1] > now else now

    async def clear(self, key: str) -> None:
        self.counters.pop(key, None)
        self.events.pop(key, None)

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self)
        self.counters.clear()
        self.events.clear()
        self._due.clear()
        return count

    # ------------------------------------------------------------------------------------ moving window

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_entry_sync(key, limit, expiry, amount)

    def acquire_entry_sync(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        self._reap(now)
        hits = self.events.get(key)
        if hits is None:
            hits = self.events[key] = bytearray()
            self._track(now + expiry, _EVENTS, key, expiry)
        _drop_expired(hits, now - expiry)
        if (len(hits) >> 3) + amount > limit:
            return False
        hits += _stamp(now) * amount
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.get_moving_window_sync(key, expiry)

    def get_moving_window_sync(self, key: str, expiry: int) -> tuple[float, int]:
        now = self.clock()
        hits = self.events.get(key)
        if hits:
            _drop_expired(hits, now - expiry)
            if hits:
                return _stamp_at(hits)[0], len(hits) >> 3
        return now, 0

    # ------------------------------------------------------------------------------------ sliding window

    def _window_info(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        previous = self._get(previous_key, now)
        current = self._get(current_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_sliding_window_entry_sync(key, limit, expiry, amount)

    def acquire_sliding_window_entry_sync(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous, previous_ttl, current, _ = self._window_info(previous_key, current_key, expiry, now)
        if floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False
        self._incr(current_key, 2 * expiry, amount, now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.get_sliding_window_sync(key, expiry)

    def get_sliding_window_sync(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        return self._window_info(previous_key, current_key, expiry, now)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, self.clock())
        await self.clear(previous_key)
        await self.clear(current_key)


# ------------------------------------------------------------------------------------ ledger and records
# The primitives of gateway/ratelimit/store.py for `memory://` (their semantics are written down there).


_STAMP = struct.Struct("=d")  # one hit's time in a key's bytearray
_stamp, _stamp_at = _STAMP.pack, _STAMP.unpack_from


def _drop_expired(hits: bytearray, horizon: float) -> None:
    """Drop the hits older than `horizon` from the front (oldest first), as popleft one by one would."""
    if not hits or _stamp_at(hits)[0] >= horizon:
        return
    expired = 0
    for (when,) in _STAMP.iter_unpack(hits):  # the iterator (and its hold on the buffer) ends with the loop
        if when >= horizon:
            break
        expired += 8
    del hits[:expired]


class _Entry:
    __slots__ = ("expires", "heap_at", "size")

    def __init__(self, expires: float, size: int) -> None:
        self.expires = expires  # when the whole entry is gone
        self.heap_at = inf  # the time of its one live heap entry (inf: none yet)
        self.size = size  # bytes counted against the map's bound


_INDEX_BITS = 48  # a token is (the ledger's serial << 48) | the group's index: 2^48 calls is centuries
_INDEX_MASK = (1 << _INDEX_BITS) - 1


class _Ledger(_Entry):
    """Entries held in groups, one per reservation, oldest first, in two arrays of numbers: group i (the
    index in its token) is slot i - `base` of `times` and `counts` (0 once given back); the slots before
    `head` are gone, and the slot at `head` holds entries. Arrays, not an object per group: a project's
    upstream quota keeps one group per call for its whole window (180,000 for a minute at 3,000 calls a
    second). An OrderedDict of tuples took ~200 bytes a group scattered over the heap, and each expiry
    a few cache misses; here 16 bytes, contiguous, and nothing for the garbage collector to walk."""

    __slots__ = ("base", "counts", "head", "live", "serial", "times", "window")

    def __init__(self, window: float, serial: int) -> None:
        super().__init__(0.0, 0)
        self.window = window
        self.serial = serial << _INDEX_BITS  # tokens name their ledger: a late give-back finds no other
        self.times = array("d")
        self.counts = array("q")
        self.base = self.head = self.live = 0  # live: entries of the groups

    def add(self, now: float, amount: int) -> tuple[str, float]:
        """A new group of `amount` entries: its token and its time (time-ordered, even if the clock
        stepped back)."""
        times = self.times
        if len(times) > self.head:
            now = max(now, times[-1])
        times.append(now)
        self.counts.append(amount)
        self.live += amount
        return str(self.serial | (self.base + len(times) - 1)), now

    def slot(self, token: str) -> int:
        """The slot of the group `token` names while it holds entries; else -1."""
        try:
            named = int(token)
        except ValueError:
            return -1
        slot = (named & _INDEX_MASK) - self.base
        if named & ~_INDEX_MASK != self.serial or not self.head <= slot < len(self.times):
            return -1
        return slot if self.counts[slot] > 0 else -1

    def keep(self, slot: int, keep: int) -> None:
        """Keep at most `keep` of the group's entries (a give-back)."""
        counts = self.counts
        kept = min(max(keep, 0), counts[slot])
        self.live -= counts[slot] - kept
        counts[slot] = kept
        self.expire(-inf)  # only the groups given back whole at the front leave

    def expire(self, now: float) -> None:
        """Drop the groups older than the window, and those given back, from the front."""
        times, counts, head, horizon = self.times, self.counts, self.head, now - self.window
        size = len(times)
        while head < size and (counts[head] == 0 or times[head] <= horizon):
            self.live -= counts[head]
            head += 1
        self.head = head
        if head > 64 and 2 * head > size:  # the arrays drop what is gone once it is most of them
            del times[:head], counts[:head]
            self.base += head
            self.head = 0

    def reset(self, now: float) -> float:
        """Seconds until the oldest group that holds entries leaves (0: none)."""
        return max(self.times[self.head] + self.window - now, 0.0) if self.head < len(self.times) else 0.0

    def retry_after(self, limit: int, amount: int, now: float) -> float:
        """Seconds until enough entries have left for `amount` to fit under `limit`."""
        need, freed, times, counts = self.live + amount - limit, 0, self.times, self.counts
        for slot in range(self.head, len(times)):
            freed += counts[slot]
            if freed >= need:
                return max(times[slot] + self.window - now, 0.0)
        return self.window  # pragma: no cover - the live entries are the groups' entries


class _Record(_Entry):
    __slots__ = ("value",)

    def __init__(self, value: bytes, expires: float, key: str) -> None:
        super().__init__(expires, len(value) + len(key) + _RECORD_OVERHEAD)
        self.value = value


_STALE_SLACK = 1024  # stale heap entries a map may hold beyond its live ones before it is compacted
_RECORD_OVERHEAD = 200  # bytes a record costs besides its key and value (objects, dict and heap slots)
_E = TypeVar("_E", bound=_Entry)


class _BoundedMap(Generic[_E]):
    """Entries that expire, bounded in keys and in bytes; one heap entry per key, as BoundedMemoryStorage.

    Expired entries are reclaimed as time passes (each call first pops what is due); when a new entry
    would pass a bound, the entries closest to expiry are dropped first.
    """

    def __init__(self, what: str, max_keys: int, max_bytes: int) -> None:
        self.what, self.max_keys, self.max_bytes = what, max_keys, max_bytes
        self.entries: dict[str, _E] = {}
        self.bytes = 0
        self.evicted = 0  # live entries dropped because of a bound
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, now: float) -> _E | None:
        self._reap(now)
        entry = self.entries.get(key)
        if entry is not None and entry.expires <= now:
            self.remove(key)
            return None
        return entry

    def put(self, key: str, entry: _E) -> None:
        """Add a new entry (the key holds none), making room for it first."""
        self._make_room(entry.size)
        self.entries[key] = entry
        self.bytes += entry.size
        self.schedule(key, entry)

    def schedule(self, key: str, entry: _E) -> None:
        """After `entry.expires` changed: a heap entry no later than it (a later one is found on its pop)."""
        if entry.expires < entry.heap_at:
            entry.heap_at = entry.expires
            heapq.heappush(self._due, (entry.expires, key))
            if len(self._due) > 2 * len(self.entries) + _STALE_SLACK:
                self._compact()

    def _compact(self) -> None:
        """Drop the heap entries of keys gone or rescheduled: one per live entry is left.

        A removed entry's heap entry stays until it is due, and a ledger given back whole (every existing
        code) is removed at once: without this, each validation left ~150 bytes behind for a whole
        `failed_codes` window (an hour: gigabytes at checkout rates). Rebuilt once the stale entries
        outnumber the live ones, so the work is O(1) per push, amortised.
        """
        self._due = [(entry.heap_at, key) for key, entry in self.entries.items() if entry.heap_at < inf]
        heapq.heapify(self._due)

    def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def _reap(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            when, key = heapq.heappop(due)
            entry = self.entries.get(key)
            if entry is None or entry.heap_at != when:
                continue  # stale: the key is gone, or has an earlier heap entry
            if entry.expires <= now:
                self.remove(key)
            else:
                entry.heap_at = entry.expires
                heapq.heappush(due, (entry.expires, key))

    def _make_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise ValueError(f"a {self.what} of {size} bytes is larger than the store ({self.max_bytes})")
        due = self._due
        while (len(self.entries) >= self.max_keys or self.bytes + size > self.max_bytes) and due:
            when, key = heapq.heappop(due)
            entry = self.entries.get(key)
            if entry is None or entry.heap_at != when:
                continue
            self.remove(key)
            if self.evicted == 0:
                log.warning("memory %s store full, dropping the entries closest to expiry", self.what)
            self.evicted += 1


DEFAULT_LEDGER_KEYS = 1_000_000
DEFAULT_RECORD_KEYS = 100_000
DEFAULT_RECORD_BYTES = 64 * 1024 * 1024


class MemoryStore:
    """`Store` for `memory://`: one per process, every call synchronous inside its coroutine (atomic on the
    event loop, no lock, no await that could suspend, so `timeout` never applies).

    Per-IP hits run on `storage` (a `BoundedMemoryStorage`, capped at `max_keys`), with its synchronous
    methods called in `limits`' strategies' order: no pass through `limits`' async layers.

    Bounds (a flood of distinct keys cannot grow it past them): ledgers, `max_ledger_keys` keys (each key
    holds at most its largest limit's entries; a ledger given back whole is dropped at once); records,
    `max_record_keys` keys and `max_record_bytes` bytes of keys and values together. Past a bound the
    entries closest to expiry are dropped first. Shared ledgers (`Reserve.shared`: a project's upstream
    quota) are kept apart and never dropped for room: clients' keys cannot push them out.
    """

    fuses_reads = False  # counting and reading are separate steps, in limits' order (count all, then read)
    suspends = False

    def __init__(
        self,
        timeout: float = 0.5,
        *,
        storage: BoundedMemoryStorage | None = None,
        max_ledger_keys: int = DEFAULT_LEDGER_KEYS,
        max_record_keys: int = DEFAULT_RECORD_KEYS,
        max_record_bytes: int = DEFAULT_RECORD_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.storage = storage if storage is not None else BoundedMemoryStorage()
        self.clock = clock
        self.ledgers: _BoundedMap[_Ledger] = _BoundedMap("ledger", max_ledger_keys, 2**62)
        self.shared_ledgers: _BoundedMap[_Ledger] = _BoundedMap("shared ledger", 2**62, 2**62)  # projects
        self.records: _BoundedMap[_Record] = _BoundedMap("record", max_record_keys, max_record_bytes)
        self._serials = itertools.count(1)  # one per ledger made: its tokens' prefix

    def bound(self, timeout: float) -> MemoryStore:
        """This store (a memory call never waits, so every timeout is the same store)."""
        return self

    async def ready(self) -> bool:
        return True

    async def prepare(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------------------------------ per-IP hits

    async def chain(self, steps: Sequence[Step]) -> list[StepAnswer]:
        return self.chain_sync(steps)

    def chain_sync(self, steps: Sequence[Step]) -> list[StepAnswer]:
        """The whole chain in one synchronous run: atomic on the event loop."""
        answers: list[StepAnswer] = []
        refused = False
        for step in steps:
            if isinstance(step, Reserve):
                if refused:
                    answers.append(None)
                    continue
                reservation = self.reserve_sync(step.key, step.limit, step.window, step.amount, step.shared)
                refused = not reservation.granted
                answers.append(reservation)
                continue
            counted, window = self._hit(step, step.counts and not refused)
            refused = refused or (step.counts and not counted)
            answers.append((counted, window))
        return answers

    def _hit(self, step: Hit, count: bool) -> HitAnswer:
        storage, item, key, strategy = self.storage, step.item, step.key, step.strategy
        expiry = item.expiry
        counted = False
        if count:
            if strategy == Strategy.MOVING_WINDOW:
                counted = storage.acquire_entry_sync(key, item.amount, expiry)
            elif strategy == Strategy.FIXED_WINDOW:
                counted = storage.incr_sync(key, expiry) <= item.amount
            else:
                counted = storage.acquire_sliding_window_entry_sync(key, item.amount, expiry)
        if not step.read:
            return counted, None
        if strategy == Strategy.MOVING_WINDOW:
            start, hits = storage.get_moving_window_sync(key, expiry)
            return counted, WindowStats(start + expiry, item.amount - hits)
        if strategy == Strategy.FIXED_WINDOW:
            remaining = max(0, item.amount - storage.get_sync(key))
            return counted, WindowStats(storage.get_expiry_sync(key), remaining)
        return counted, sliding_window_stats(item, *storage.get_sliding_window_sync(key, expiry))

    # ------------------------------------------------------------------------------------ ledger

    async def reserve(self, key: str, limit: int, window: float, amount: int) -> Reservation:
        return self.reserve_sync(key, limit, window, amount)

    def reserve_sync(
        self, key: str, limit: int, window: float, amount: int, shared: bool = False
    ) -> Reservation:
        now = self.clock()
        ledgers = self.shared_ledgers if shared else self.ledgers
        ledger = ledgers.get(key, now)
        if ledger is not None:
            ledger.window = window
            ledger.expire(now)
        live = 0 if ledger is None else ledger.live
        if amount <= 0:
            return _answer(ledger, True, "", 0, limit, live, now, 0.0)
        if live + amount > limit:
            return _answer(
                ledger, False, "", 0, limit, live, now, _retry_after(ledger, limit, window, amount, now)
            )
        if ledger is None:
            ledger = _Ledger(window, next(self._serials))
            ledgers.put(key, ledger)
        token, now = ledger.add(now, amount)
        ledger.expires = now + window
        ledgers.schedule(key, ledger)
        return _answer(ledger, True, token, amount, limit, ledger.live, now, 0.0)

    async def settle(self, key: str, reservation: Reservation, keep: int) -> None:
        self.settle_sync(key, reservation, keep)

    def settle_soon(
        self, key: str, reservation: Reservation, keep: int, failed: Callable[[StoreUnavailable], None]
    ) -> None:
        """At once, in this call (a memory call never waits, never fails): a task would cost more than the
        settlement, and the next request of the same loop turn finds the entries back."""
        self.settle_sync(key, reservation, keep)

    def settle_sync(self, key: str, reservation: Reservation, keep: int) -> None:
        if not reservation.token:
            return
        now = self.clock()
        ledgers = self.shared_ledgers
        ledger = ledgers.get(key, now)
        if ledger is None:
            ledgers = self.ledgers
            ledger = ledgers.get(key, now)
        slot = -1 if ledger is None else ledger.slot(reservation.token)
        if ledger is None or slot < 0:
            return  # given back already, or out of the window
        ledger.keep(slot, keep)
        if not ledger.live:  # holds nothing: a known code leaves no ledger behind for its client
            ledgers.remove(key)

    # ------------------------------------------------------------------------------------ records

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        return self.claim_sync(key, value, ttl)

    def claim_sync(self, key: str, value: bytes, ttl: float) -> bytes | None:
        now = self.clock()
        record = self.records.get(key, now)
        if record is not None:
            return record.value
        self.records.put(key, _Record(bytes(value), now + ttl, key))
        return None

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        return self.replace_sync(key, expected, value, ttl)

    def replace_sync(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        now = self.clock()
        record = self.records.get(key, now)
        if record is None or record.value != expected:
            return False
        self.records.remove(key)
        self.records.put(key, _Record(bytes(value), now + ttl, key))
        return True

    async def delete_if(self, key: str, expected: bytes) -> bool:
        return self.delete_if_sync(key, expected)

    def delete_if_sync(self, key: str, expected: bytes) -> bool:
        record = self.records.get(key, self.clock())
        if record is None or record.value != expected:
            return False
        self.records.remove(key)
        return True


def _retry_after(ledger: _Ledger | None, limit: int, window: float, amount: int, now: float) -> float:
    """Seconds until enough of the ledger's entries have left for `amount` to fit under `limit`."""
    if ledger is None or amount > limit:
        return window
    return ledger.retry_after(limit, amount, now)


def _answer(
    ledger: _Ledger | None,
    granted: bool,
    token: str,
    amount: int,
    limit: int,
    live: int,
    now: float,
    retry_after: float,
) -> Reservation:
    reset = 0.0 if ledger is None else ledger.reset(now)
    return Reservation(granted, token, amount, max(limit - live, 0), reset, retry_after)
