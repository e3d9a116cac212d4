"""A store call's timeout on the store's time: the wall clock less the time the gateway's own loop ran late.

`storage_timeout` says when a store counts as down for a request. Timed on the wall clock, a saturated
gateway called an idle Redis down: its event loop runs each ready callback late, so a reply that Redis sent
at once waits several turns before its request reads it (the batch is sent a turn after it is queued, the
reply is read a turn after it arrives, the request resumes a turn after that). With `on_storage_error:
allow` those requests then passed unlimited: a flood that saturated the gateway bought itself a bypass of
the per-IP limit and of the failed-code budget (bench scenario b logged "limit store unavailable" on an idle
Redis).

`LagClock` keeps a beat on the loop every BEAT seconds; whatever a beat runs late by is the loop's lag, not
time: while the loop is blocked, or each of its turns takes longer than a beat, the clock stands still but
for one beat per turn. The lag is the loop's, so every store on a loop shares its clock (`loop_clock`), and
the clock beats only while a deadline is open on it: an idle gateway, or one with many Redis URIs, does not
wake up 50 times a second per store. `Deadline` is `asyncio.timeout` on that clock: the call times out
when `timeout` of the clock's time has passed, or MAX_STRETCH times `timeout` of wall time (a store that
does not answer a gateway that is always late still counts as down, later).

The clock's resolution is one beat per late turn: on a loop whose turns last 100 ms, a call counts about
half of its wall time. A beat costs one timer callback; BEAT is small against any sensible timeout.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

BEAT = 0.02  # seconds between the clock's beats: how much of one late turn it counts
MAX_STRETCH = 4.0  # a deadline ends after at most this many times its timeout of wall time


class LagClock:
    """`loop.time()` less the time the loop ran late, seen by a beat every `beat` seconds while it is held
    (`hold`: a deadline is open on it)."""

    __slots__ = ("__weakref__", "_due", "_handle", "beat", "held", "lag", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, beat: float = BEAT) -> None:
        self.loop, self.beat = loop, beat
        self.lag = 0.0  # the lateness of every beat so far
        self.held = 0  # deadlines open on it
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def hold(self) -> None:
        """A deadline starts: the clock beats until the last one open ends (`release`)."""
        if not self.held:
            self._due = self.loop.time() + self.beat
            self._handle = self.loop.call_at(self._due, self._tick)
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        if not self.held and self._handle is not None:
            self.lag += max(0.0, self.loop.time() - self._due)  # an overdue beat is lag already (`now`)
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        self.lag += max(0.0, now - self._due)
        self._due = now + self.beat
        self._handle = self.loop.call_at(self._due, self._tick)

    def now(self) -> float:
        """The clock's time: a beat overdue now is lag already, so the clock stands still while the loop is
        blocked, whether or not the beat has run yet."""
        now = self.loop.time()
        if self._handle is None:
            return now - self.lag
        return now - self.lag - max(0.0, now - self._due)


# By the loop's id, weakly: the stores that time calls on a clock hold it, so it goes with them (keyed by
# the loop itself, weakly, the clock's own reference to its loop kept every closed loop alive).
_CLOCKS: weakref.WeakValueDictionary[int, LagClock] = weakref.WeakValueDictionary()


def loop_clock() -> LagClock:
    """The running loop's clock, one per loop: every store calling on it shares it (and holds it)."""
    loop = asyncio.get_running_loop()
    clock = _CLOCKS.get(id(loop))
    if clock is None or clock.loop is not loop:  # none yet, or a closed loop's whose id was reused
        clock = _CLOCKS[id(loop)] = LagClock(loop)
    return clock


class Deadline:
    """`async with Deadline(clock, timeout):` raises TimeoutError (as `asyncio.timeout` does) once the
    block took `timeout` of `clock`'s time, or MAX_STRETCH times `timeout` of wall time."""

    __slots__ = ("_clock", "_ends", "_handle", "_start", "_timeout", "timeout")

    def __init__(self, clock: LagClock, timeout: float) -> None:
        self._clock, self.timeout = clock, timeout
        self._timeout = asyncio.timeout(None)

    async def __aenter__(self) -> Deadline:
        await self._timeout.__aenter__()
        loop = self._clock.loop
        self._clock.hold()
        self._start = self._clock.now()
        self._ends = loop.time() + MAX_STRETCH * self.timeout
        self._handle = loop.call_later(self.timeout, self._check)
        return self

    def _check(self) -> None:
        loop = self._clock.loop
        now = loop.time()
        left = min(self.timeout - (self._clock.now() - self._start), self._ends - now)
        if left <= 0:
            self._timeout.reschedule(now)  # expires at once: the block is cancelled, TimeoutError
        else:
            self._handle = loop.call_later(left, self._check)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._handle.cancel()
        self._clock.release()
        await self._timeout.__aexit__(kind, exc, tb)  # raises TimeoutError if it expired
