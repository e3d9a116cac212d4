"""An in-process limit storage whose size is bounded, for `memory://`.

Why not `limits`' own `MemoryStorage`: its expiry task walks every key with one `asyncio.to_thread` call and
one `asyncio.Lock` each, so under an address-rotation flood (a million distinct client IPs) one sweep takes
minutes while new keys keep arriving, and memory grows with the flood (see the README's "Scaling out").

Here every operation is synchronous inside its coroutine, so it is atomic on the event loop and needs no
lock. Each key waits for its turn in the queue of its window (gateway/ratelimit/turns.py); every call
first pops what is due, so expired keys are reclaimed without a background task. A hard cap (`max_keys`)
bounds memory even when a flood outpaces expiry: the keys closest to expiry are dropped first.
What a key holds is never an object the cyclic garbage collector tracks (its hits are packed in a
bytearray, a counter is a tuple of numbers): with a million clients in the window, a list per client made
each full collection walk a million objects, the event loop stopped for ~0.75 s each time.

It implements what the three `limits` strategies need (counters for fixed windows and the sliding window
counter, timestamp lists for the moving window), so `limits`' strategies run on it unchanged. Each of those
methods has a synchronous twin (`..._sync`) that `MemoryStore.chain` (below) calls directly.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Callable, Sequence
from math import floor, inf

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
from gateway.ratelimit.turns import Turns

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
        self.turns: Turns[tuple[int, float]] = Turns()  # each key once (more only after `clear`), in the
        #                                                 queue of its (kind, window)
        self.evicted = 0  # live keys dropped because of the cap
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return len(self.counters) + len(self.events)

    # ------------------------------------------------------------------------------------ bookkeeping

    def _reap(self, now: float) -> None:
        turns = self.turns
        while (due := turns.pop(now)) is not None:
            (kind, window), _, key = due
            if kind == _COUNTER:
                entry = self.counters.get(key)
                if entry is not None and entry[1] <= now:
                    del self.counters[key]
                # else gone already, or a newer counter of the key (put again when made)
                continue
            hits = self.events.get(key)
            if hits is None:
                continue
            if not hits or _stamp_at(hits, len(hits) - _HIT)[0] + window <= now:
                del self.events[key]
            else:  # hit since it was put: another turn (gone up to one window after its last hit)
                turns.put((kind, window), now + window, key)

    def _track(self, when: float, kind: int, key: str, window: float) -> None:
        self.turns.put((kind, window), when, key)
        while len(self) > self.max_keys and (due := self.turns.pop()) is not None:
            (kind, _), _, victim = due
            if (self.counters if kind == _COUNTER else self.events).pop(victim, None) is not None:
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
        self.turns.clear()
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
        if (len(hits) // _HIT) + amount > limit:
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
                return _stamp_at(hits)[0], len(hits) // _HIT
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


_STAMP = struct.Struct("=d")  # a time: one hit's in a key's bytearray, a map entry's expiry or lifetime
_stamp, _stamp_at = _STAMP.pack, _STAMP.unpack_from
_HIT = _STAMP.size


def _drop_expired(hits: bytearray, horizon: float) -> None:
    """Drop the hits older than `horizon` from the front (oldest first), as popleft one by one would."""
    if not hits or _stamp_at(hits)[0] >= horizon:
        return
    expired = 0
    for (when,) in _STAMP.iter_unpack(hits):  # the iterator (and its hold on the buffer) ends with the loop
        if when >= horizon:
            break
        expired += _HIT
    del hits[:expired]


# ------------------------------------------------------------------------------------ ledger and records
# The primitives of gateway/ratelimit/store.py for `memory://` (their semantics are written down there).


# Every entry of a `_BoundedMap` (a ledger, a record) is one bytearray, so what a million clients hold is
# nothing the garbage collector tracks: a ledger as an object with two arrays was three tracked objects (a
# full collection walked 3 million under a flood of a million distinct guessers, ~0.35 s without an answer
# to anyone) and, with its key and slots, ~565 bytes; as bytes ~330. Each starts with `_ENTRY`; a record's
# value follows it, a ledger's `_LEDGER` and its groups.
_ENTRY = struct.Struct("=dddq")  # when the whole entry is gone; when its live turn is due (inf: none yet)
#                                  and that turn's lifetime; the bytes counted against the map's bound
_AT = _ENTRY.size
_TURN = struct.Struct("=dd")  # at _STAMP.size: the turn's time and lifetime, written at once
_LEDGER = struct.Struct("=dqqqq")  # a ledger's window, serial (its tokens' prefix), base, head, live entries
_GROUPS = _AT + _LEDGER.size  # then its groups, oldest first, one per reservation:
_GROUP = struct.Struct("=dq")  # the group's time and entries (0 once given back)
_G = _GROUP.size
_HEAD = struct.Struct(_ENTRY.format + _LEDGER.format[1:])  # a ledger's first 72 bytes, at once
_FIRST = struct.Struct(_ENTRY.format + _LEDGER.format[1:] + _GROUP.format[1:])  # a new ledger, whole
_INDEX_BITS = 48  # a token is (the ledger's serial << 48) | the group's index: 2^48 calls is centuries
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_TIMES = struct.Struct("=dd")  # an entry's first two: expires, queued_at (`_stamp_at` reads the first alone)


# ------------------------------------------------------------------------------------ ledgers
# Group i (the index in its token) is slot i - base; the slots before head are gone, the slot at head holds
# entries. Bytes, not an object per group: a project's upstream quota keeps one group per call for its
# whole window (180,000 for a minute at 3,000 calls a second): 16 bytes each, contiguous.


def _groups(ledger: bytearray) -> int:
    """The groups a ledger's bytes hold, the gone ones before its head included."""
    return (len(ledger) - _GROUPS) // _G


def _new_ledger(window: float, serial: int, now: float, amount: int) -> tuple[bytearray, str]:
    """A ledger that holds one group, of `amount` entries from `now`, for its window; its token."""
    ledger = bytearray(_FIRST.pack(now + window, inf, 0.0, 0, window, serial, 0, 0, amount, now, amount))
    return ledger, str(serial << _INDEX_BITS)


def _expire(ledger: bytearray, now: float, window: float | None = None) -> tuple[int, float]:
    """Drop the groups older than the window (set to `window` first, if given), and those given back, from
    the front: the live entries left, and when the oldest of them leaves (0.0: none left)."""
    old, serial, base, first, live = _LEDGER.unpack_from(ledger, _AT)
    window = old if window is None else window
    horizon, size, head, leaves = now - window, _groups(ledger), first, 0.0
    while head < size:
        when, entries = _GROUP.unpack_from(ledger, _GROUPS + _G * head)
        if entries and when > horizon:
            leaves = when + window
            break
        live -= entries
        head += 1
    if head == first and window == old:
        return int(live), leaves  # nothing left (the usual case): nothing to write
    if head > 64 and 2 * head > size:  # the bytes drop what is gone once it is most of them
        del ledger[_GROUPS : _GROUPS + _G * head]
        base, head = base + head, 0
    _LEDGER.pack_into(ledger, _AT, window, serial, base, head, live)
    return int(live), leaves


def _add(ledger: bytearray, now: float, amount: int) -> tuple[str, float]:
    """A new group of `amount` entries, the ledger kept for its window from it: its token and its time
    (time-ordered, even if the clock stepped back)."""
    _, queued_at, lifetime, counted, window, serial, base, head, live = _HEAD.unpack_from(ledger)
    size = _groups(ledger)
    if size > head:
        now = max(now, _GROUP.unpack_from(ledger, len(ledger) - _G)[0])
    ledger += _GROUP.pack(now, amount)
    _HEAD.pack_into(
        ledger, 0, now + window, queued_at, lifetime, counted, window, serial, base, head, live + amount
    )
    return str(serial << _INDEX_BITS | (base + size)), now


def _give_back(ledger: bytearray, token: str, keep: int) -> int:
    """Keep at most `keep` of the entries of the group `token` names: the live entries left, or -1 when it
    names no group that holds entries (given back already, or gone). At 0 the bytes are left as they were:
    the caller drops the ledger."""
    try:
        named = int(token)
    except ValueError:
        return -1
    window, serial, base, head, live = _LEDGER.unpack_from(ledger, _AT)
    slot = (named & _INDEX_MASK) - base
    if named >> _INDEX_BITS != serial or not head <= slot < _groups(ledger):
        return -1
    when, entries = _GROUP.unpack_from(ledger, _GROUPS + _G * slot)
    if entries <= 0:
        return -1
    kept = min(max(keep, 0), entries)
    live -= entries - kept
    if live:
        _GROUP.pack_into(ledger, _GROUPS + _G * slot, when, kept)
        _LEDGER.pack_into(ledger, _AT, window, serial, base, head, live)
        if not kept and slot == head:
            _expire(ledger, -inf)  # a group given back whole at the front: it leaves, and those after it
    return int(live)


def _retry_after(ledger: bytearray | None, limit: int, window: float, amount: int, now: float) -> float:
    """Seconds until enough of the ledger's entries have left for `amount` to fit under `limit`."""
    if ledger is None or amount > limit:
        return window
    _, _, _, head, live = _LEDGER.unpack_from(ledger, _AT)
    need, freed = live + amount - limit, 0
    for at in range(_GROUPS + _G * head, len(ledger), _G):
        when, entries = _GROUP.unpack_from(ledger, at)
        freed += entries
        if freed >= need:
            return float(max(when + window - now, 0.0))
    return window  # pragma: no cover - the live entries are the groups' entries


# ------------------------------------------------------------------------------------ records

_RECORD_OVERHEAD = 200  # bytes a record costs besides its key and value (objects, dict slot and turn)


def _new_record(value: bytes, expires: float, key: str) -> bytearray:
    return bytearray(_ENTRY.pack(expires, inf, 0.0, len(value) + len(key) + _RECORD_OVERHEAD)) + value


def _value(record: bytearray) -> bytes:
    return bytes(memoryview(record)[_AT:])  # a copy (the view ends with this line: the bytes stay resizable)


def _holds(record: bytearray, expected: bytes) -> bool:
    """Whether the record's value is `expected`, compared in place (no copy of the value)."""
    return len(record) == _AT + len(expected) and record.endswith(expected)


# ------------------------------------------------------------------------------------ the map

_STALE_SLACK = 1024  # stale turns a map may hold beyond its live ones before it is compacted
_FRESH = 15.0  # seconds a new turn can be taken back (`Turns.cancel`): longer than an upstream call


class _BoundedMap:
    """Entries that expire, bounded in keys and in bytes; each waits for its turn in the queue of its
    lifetime (its window or its ttl), as BoundedMemoryStorage's keys do.

    Expired entries are reclaimed as time passes (each call first pops what is due); when a new entry
    would pass a bound, the entries closest to expiry are dropped first. An entry's head says when its one
    live turn is due (`_TIMES`' second) and its lifetime: a turn with another time is stale (its key was
    removed, or put again) and is skipped.

    Most entries go within the request that made them (a ledger given back whole: a validation whose
    codes all exist; a claim replaced by the kept answer); removing one takes its turn back while it is
    fresh (`_FRESH`), so they leave nothing behind. The turns of entries removed later stay until they
    come, and are compacted away once they outnumber the live entries.
    """

    def __init__(self, what: str, max_keys: int, max_bytes: int) -> None:
        self.what, self.max_keys, self.max_bytes = what, max_keys, max_bytes
        self.entries: dict[str, bytearray] = {}
        self.bytes = 0
        self.evicted = 0  # live entries dropped because of a bound
        self.turns: Turns[float] = Turns(grace=_FRESH)  # the stale ones included

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, now: float) -> bytearray | None:
        self._reap(now)
        entry = self.entries.get(key)
        if entry is not None and _stamp_at(entry)[0] <= now:
            self.remove(key)
            return None
        return entry

    def put(self, key: str, entry: bytearray, lifetime: float, now: float) -> None:
        """Add a new entry (the key holds none) that lives `lifetime` from `now` unless it is renewed (its
        expiry moved later: looked at again when its turn comes), making room for it first."""
        size = _ENTRY.unpack_from(entry)[3]
        self._make_room(size)
        self.entries[key] = entry
        self.bytes += size
        self._wait(key, entry, lifetime, now + lifetime)

    def _wait(self, key: str, entry: bytearray, lifetime: float, when: float) -> None:
        _TURN.pack_into(entry, _STAMP.size, when, lifetime)
        self.turns.put(lifetime, when, key)
        if len(self.turns) > 2 * len(self.entries) + _STALE_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Drop the stale turns: one per live entry is left.

        An entry removed once its turn is no longer fresh (after a request of more than `_FRESH` seconds,
        say) leaves that turn until it comes, holding its key's string; once such turns outnumber the live
        entries they are dropped in one go, so the work is O(1) per put, amortised.
        """
        entries, turn_of = self.entries, _TIMES.unpack_from

        def waiting(when: float, key: str) -> bool:  # `_is_its_turn`, inlined: once per turn
            entry = entries.get(key)
            return entry is not None and turn_of(entry)[1] == when

        self.turns.keep(waiting)

    def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            _, when, lifetime, size = _ENTRY.unpack_from(entry)
            self.bytes -= size
            self.turns.cancel(lifetime, key, when)  # removed soon after it was made: its turn goes too

    def _reap(self, now: float) -> None:
        while (due := self.turns.pop(now)) is not None:
            lifetime, when, key = due
            entry = self.entries.get(key)
            if entry is None or not _is_its_turn(entry, when):
                continue
            if _stamp_at(entry)[0] <= now:
                self.remove(key)
            else:  # renewed since: another turn (gone up to one lifetime after it expires)
                self._wait(key, entry, lifetime, now + lifetime)

    def full(self, size: int) -> bool:
        """Whether an entry of `size` bytes would pass a bound."""
        return len(self.entries) >= self.max_keys or self.bytes + size > self.max_bytes

    def _make_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise ValueError(f"a {self.what} of {size} bytes is larger than the store ({self.max_bytes})")
        while self.full(size):
            due = self.turns.pop()
            if due is None:
                break  # pragma: no cover - every live entry has a turn
            _, when, key = due
            if not _is_its_turn(self.entries.get(key), when):
                continue
            self.remove(key)
            if self.evicted == 0:
                log.warning("memory %s store full, dropping the entries closest to expiry", self.what)
            self.evicted += 1


def _is_its_turn(entry: bytearray | None, when: float) -> bool:
    """Whether the turn due at `when` is the entry's live one."""
    return entry is not None and _TIMES.unpack_from(entry)[1] == when


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

    Claims (a value `claim` stored: an Idempotency-Key's in-flight marker) are kept apart from the records
    (what `replace` stored: a kept answer) and never dropped for room either: they are the closest to
    expiry, so a flood of kept answers dropped them first, and a second request with the key then reached
    Voucherify while the first was in flight. They are as many as the keyed requests in flight, bounded
    as the records are; past a bound `claim` raises StoreUnavailable (the gateway answers 503: a promise to
    redeem once that cannot be kept is refused, not broken).
    """

    # counting and reading are separate steps, in limits' order (count all, then read), but for a bucket of
    # one item, whose one step does both (`limiter.bucket_steps`)
    fuses_reads = False
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
        self.ledgers = _BoundedMap("ledger", max_ledger_keys, 2**62)
        self.shared_ledgers = _BoundedMap("shared ledger", 2**62, 2**62)  # projects' quotas
        self.records = _BoundedMap("record", max_record_keys, max_record_bytes)
        self.claims = _BoundedMap("claim", max_record_keys, max_record_bytes)  # never dropped for room
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
        live, leaves = (0, 0.0) if ledger is None else _expire(ledger, now, window)
        if amount <= 0 or live + amount > limit:
            retry = 0.0 if amount <= 0 else _retry_after(ledger, limit, window, amount, now)
            return Reservation(amount <= 0, "", 0, max(limit - live, 0), max(leaves - now, 0.0), retry)
        if ledger is None:
            ledger, token = _new_ledger(window, next(self._serials), now, amount)
            ledgers.put(key, ledger, window, now)
        else:
            token, now = _add(ledger, now, amount)  # `now` is the group's time (the clock may step back)
        reset = max(leaves - now, 0.0) if live else window  # until the oldest group leaves: this one if alone
        return Reservation(True, token, amount, max(limit - live - amount, 0), reset, 0.0)

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
        if ledger is not None and _give_back(ledger, reservation.token, keep) == 0:
            ledgers.remove(key)  # holds nothing: a known code leaves no ledger behind for its client

    # ------------------------------------------------------------------------------------ records

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        return self.claim_sync(key, value, ttl)

    def claim_sync(self, key: str, value: bytes, ttl: float) -> bytes | None:
        now = self.clock()
        record = self._record(key, now)[1]
        if record is not None:  # its own value: claimed already (as on Redis, where a call may be sent again)
            return None if _holds(record, value) else _value(record)
        entry = _new_record(value, now + ttl, key)
        if self.claims.full(_ENTRY.unpack_from(entry)[3]):
            raise StoreUnavailable(f"{len(self.claims)} claims in flight: the memory store's bound")
        self.claims.put(key, entry, ttl, now)
        return None

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        return self.replace_sync(key, expected, value, ttl)

    def replace_sync(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        now = self.clock()
        held, record = self._record(key, now)
        if record is not None and held is self.records and _holds(record, value):
            return True  # swapped already (as on Redis, where a call may be sent again)
        if record is None or not _holds(record, expected):
            return False
        held.remove(key)
        self.records.put(key, _new_record(value, now + ttl, key), ttl, now)
        return True

    async def delete_if(self, key: str, expected: bytes) -> bool:
        return self.delete_if_sync(key, expected)

    def delete_if_sync(self, key: str, expected: bytes) -> bool:
        held, record = self._record(key, self.clock())
        if record is None or not _holds(record, expected):
            return False
        held.remove(key)
        return True

    def _record(self, key: str, now: float) -> tuple[_BoundedMap, bytearray | None]:
        """The map that holds `key` (a claim, else a record) and what it holds there."""
        claim = self.claims.get(key, now)
        if claim is not None:
            return self.claims, claim
        return self.records, self.records.get(key, now)
