"""Keys waiting for their turn to be looked at again, for the memory store's expiry and its bounds.

Each key waits in the queue of its lifetime (a window, a ttl: whatever names how long an entry lives),
due `now + lifetime` when it was put. Put in order, so each queue's front is due first; a heap holds each
queue's front, so the key due first overall is found in O(log queues), whatever the number of queues.

16 bytes a key, a reference and a packed double: a heap entry per key (a tuple and its float, ~90-100
bytes) was a quarter of what a client cost the memory store. The price: a key whose entry was renewed
meanwhile is due at its old time; the store puts it back for another lifetime, so it is reclaimed up to
one lifetime after it expired. A clock that steps back makes the keys put after it due late (by the step),
never early.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Callable, Hashable
from itertools import compress
from math import inf
from typing import Generic, TypeVar

__all__ = ["Turns"]

Lifetime = TypeVar("Lifetime", bound=Hashable)
_SPENT = 4096  # popped times a queue may keep in front of its live ones before dropping them


class _Queue:
    """One lifetime's keys, in the order they were put, and when each is due."""

    __slots__ = ("head", "keys", "times")

    def __init__(self) -> None:
        self.keys: deque[str] = deque()
        self.times = array("d")  # times[head:] match keys
        self.head = 0

    def due(self) -> float:
        return self.times[self.head] if self.keys else inf

    def pop(self) -> tuple[float, str]:
        when = self.times[self.head]
        self.head += 1
        if self.head >= _SPENT and 2 * self.head > len(self.times):  # the popped times are most of it
            del self.times[: self.head]
            self.head = 0
        return when, self.keys.popleft()


class Turns(Generic[Lifetime]):
    """Keys in a queue per lifetime, and the queues' fronts in a heap (one entry per queue that holds any)."""

    __slots__ = ("_fronts", "_queues", "size")

    def __init__(self) -> None:
        self._queues: dict[Lifetime, _Queue] = {}
        self._fronts: list[tuple[float, Lifetime]] = []  # (when its front is due, lifetime)
        self.size = 0  # keys waiting, in every queue

    def __len__(self) -> int:
        return self.size

    def put(self, lifetime: Lifetime, when: float, key: str) -> None:
        queue = self._queues.get(lifetime)
        if queue is None:
            queue = self._queues[lifetime] = _Queue()
        if not queue.keys:
            heapq.heappush(self._fronts, (when, lifetime))
        queue.keys.append(key)
        queue.times.append(when)
        self.size += 1

    def pop(self, now: float = inf) -> tuple[Lifetime, float, str] | None:
        """The key due first with its lifetime and time, if it is due by `now` (else None, and it stays)."""
        fronts = self._fronts
        if not fronts or fronts[0][0] > now:
            return None
        lifetime = fronts[0][1]
        queue = self._queues[lifetime]
        when, key = queue.pop()
        if queue.keys:
            heapq.heapreplace(fronts, (queue.times[queue.head], lifetime))
        else:
            heapq.heappop(fronts)
        self.size -= 1
        return lifetime, when, key

    def keep(self, waiting: Callable[[float, str], bool]) -> None:
        """Keep only the keys for which `waiting(when, key)` holds, each queue in its order (one call of
        `waiting` per key, and nothing else done per key in Python: the event loop waits meanwhile)."""
        self.size = 0
        for queue in self._queues.values():
            times = queue.times[queue.head :]
            kept = list(map(waiting, times, queue.keys))
            queue.keys = deque(compress(queue.keys, kept))
            queue.times, queue.head = array("d", compress(times, kept)), 0
            self.size += len(queue.keys)
        self._fronts = [(queue.due(), at) for at, queue in self._queues.items() if queue.keys]
        heapq.heapify(self._fronts)

    def clear(self) -> None:
        self._queues.clear()
        self._fronts.clear()
        self.size = 0

    def waiting(self) -> list[tuple[Lifetime, list[str], list[float]]]:
        """Each queue's keys and times, in order (for tests and diagnostics)."""
        return [(at, list(q.keys), q.times[q.head :].tolist()) for at, q in self._queues.items()]
