"""Keys waiting for their turn to be looked at again, for the memory store's expiry and its bounds.

Each key waits in the queue of its lifetime (a window, a ttl: whatever names how long an entry lives),
due `now + lifetime` when it was put. Put in order, so each queue's front is due first; a heap holds each
queue's front, so the key due first overall is found in O(log queues), whatever the number of queues.

16 bytes a key, a reference and a packed double: a heap entry per key (a tuple and its float, ~90-100
bytes) was a quarter of what a client cost the memory store. The price: a key whose entry was renewed
meanwhile is due at its old time; the store puts it back for another lifetime, so it is reclaimed up to
one lifetime after it expired. A clock that steps back makes the keys put after it due late (by the step),
never early.

With a grace (the memory store's ledgers and records), a new turn waits apart, in an OrderedDict after its
queue's older turns, until a turn `grace` later follows it: there removing its entry takes it back in
O(1) (`cancel`). Most of those entries go within the request that made them; without it each left a turn
to skip, and enough of them a compaction that stopped the event loop. A fresh turn costs ~100 bytes more
while it is fresh.
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from itertools import compress
from math import inf
from typing import Generic, TypeVar

__all__ = ["Turns"]

Lifetime = TypeVar("Lifetime", bound=Hashable)
_SPENT = 4096  # popped times a queue may keep in front of its live ones before dropping them


class _Queue:
    """One lifetime's keys, in the order they were put, and when each is due: the older in `keys` and
    `times`, the fresh ones (put less than the grace ago) after them in `fresh`, where one can be taken
    back in O(1)."""

    __slots__ = ("fresh", "head", "in_heap", "keys", "settles", "times")

    def __init__(self) -> None:
        self.keys: deque[str] = deque()
        self.times = array("d")  # times[head:] match keys
        self.head = 0
        self.fresh: OrderedDict[str, float] = OrderedDict()  # key -> when, after keys
        self.in_heap = False  # the heap of fronts has an entry for it (no later than its front)
        self.settles = inf  # a put due by then may find fresh turns to settle (no later than it would)

    def __len__(self) -> int:
        return len(self.keys) + len(self.fresh)

    def due(self) -> float:
        if self.keys:
            return self.times[self.head]
        return self.fresh[next(iter(self.fresh))] if self.fresh else inf

    def pop(self) -> tuple[float, str]:
        if not self.keys:
            key, when = self.fresh.popitem(last=False)
            return when, key
        when = self.times[self.head]
        self.head += 1
        if self.head >= _SPENT and 2 * self.head > len(self.times):  # the popped times are most of it
            del self.times[: self.head]
            self.head = 0
        return when, self.keys.popleft()

    def settle(self, horizon: float, grace: float) -> None:
        """The fresh turns due by `horizon` join the older ones."""
        fresh = self.fresh
        while fresh:
            key = next(iter(fresh))
            when = fresh[key]
            if when > horizon:
                self.settles = when + grace
                return
            del fresh[key]
            self.keys.append(key)
            self.times.append(when)
        self.settles = inf


class Turns(Generic[Lifetime]):
    """Keys in a queue per lifetime, and the queues' fronts in a heap (one entry per queue, no later than
    its front: a queue whose front was taken back is put right when it reaches the top).

    With a `grace`, a turn is fresh until a turn `grace` later is put in its queue (for a lifetime, a key
    put `grace` seconds later): until then `cancel` takes it back in O(1), so an entry removed soon after it
    was made (within its request, most of them) leaves nothing to skip or to compact.
    """

    __slots__ = ("_fronts", "_queues", "grace", "size")

    def __init__(self, grace: float = 0.0) -> None:
        self.grace = grace
        self._queues: dict[Lifetime, _Queue] = {}
        self._fronts: list[tuple[float, Lifetime]] = []  # (when its front is due, lifetime)
        self.size = 0  # keys waiting, in every queue

    def __len__(self) -> int:
        return self.size

    def put(self, lifetime: Lifetime, when: float, key: str) -> None:
        queue = self._queues.get(lifetime)
        if queue is None:
            queue = self._queues[lifetime] = _Queue()
        if not queue.in_heap:
            heapq.heappush(self._fronts, (when, lifetime))
            queue.in_heap = True
        if not self.grace:
            queue.keys.append(key)
            queue.times.append(when)
            self.size += 1
            return
        fresh = queue.fresh
        if not fresh:
            queue.settles = when + self.grace
        elif key in fresh:  # a key put again: its fresh turn goes
            fresh.move_to_end(key)
            self.size -= 1
        fresh[key] = when
        self.size += 1
        if when >= queue.settles:
            queue.settle(when - self.grace, self.grace)

    def cancel(self, lifetime: Lifetime, key: str, when: float) -> None:
        """Take back the key's turn due at `when`, if it is still fresh (else it stays, to be skipped)."""
        queue = self._queues.get(lifetime)
        if queue is not None and queue.fresh.get(key) == when:
            del queue.fresh[key]
            self.size -= 1

    def due(self) -> float:
        """When the key due first is due (inf: none waits)."""
        front = self._front()
        return inf if front is None else front[0]

    def _front(self) -> tuple[float, Lifetime] | None:
        """The heap's top, put right first (its queue's front taken back, or the queue emptied)."""
        fronts = self._fronts
        while fronts:
            due, lifetime = fronts[0]
            queue = self._queues[lifetime]
            actual = queue.due()
            if actual == due:
                return fronts[0]
            if actual == inf:
                heapq.heappop(fronts)
                queue.in_heap = False
            else:
                heapq.heapreplace(fronts, (actual, lifetime))
        return None

    def pop(self, now: float = inf) -> tuple[Lifetime, float, str] | None:
        """The key due first with its lifetime and time, if it is due by `now` (else None, and it stays)."""
        fronts = self._fronts
        if not fronts or fronts[0][0] > now:  # a heap entry is no later than its queue's front
            return None
        front = self._front()
        if front is None or front[0] > now:
            return None
        lifetime = front[1]
        queue = self._queues[lifetime]
        when, key = queue.pop()
        following = queue.due()
        if following < inf:
            heapq.heapreplace(fronts, (following, lifetime))
        else:
            heapq.heappop(fronts)
            queue.in_heap = False
        self.size -= 1
        return lifetime, when, key

    def keep(self, waiting: Callable[[float, str], bool]) -> None:
        """Keep only the older keys for which `waiting(when, key)` holds, each queue in its order (one
        call of `waiting` per key, and nothing else done per key in Python: the event loop waits
        meanwhile). Fresh turns are all kept: a removed entry takes its own back."""
        for queue in self._queues.values():
            times = queue.times[queue.head :]
            kept = list(map(waiting, times, queue.keys))
            queue.keys = deque(compress(queue.keys, kept))
            queue.times, queue.head = array("d", compress(times, kept)), 0
        self.size = sum(map(len, self._queues.values()))

    def clear(self) -> None:
        self._queues.clear()
        self._fronts.clear()
        self.size = 0

    def waiting(self) -> list[tuple[Lifetime, list[str], list[float]]]:
        """Each queue's keys and times, in order (for tests and diagnostics)."""
        return [
            (at, [*q.keys, *q.fresh], [*q.times[q.head :].tolist(), *q.fresh.values()])
            for at, q in self._queues.items()
        ]
