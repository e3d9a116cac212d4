"""A store call's timeout counts the store's time, not the gateway's own: on a real redis-server, on asyncio's
loop and on uvloop (the loop `serve` runs).

At saturation the gateway's event loop runs late: a reply already in the socket waits several turns before its
request reads it. A timeout on the wall clock then called that Redis "down", and `on_storage_error: allow`
let those requests through unlimited: a flood that saturated the gateway bought itself unlimited guesses
(bench scenario b logged "limit store unavailable" on an idle Redis). These tests block the loop as a
saturated one is, around a call: the call must be answered and counted once. A store that does not answer
must still time out, lag or no lag.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.ratelimit import StoreUnavailable
from gateway.ratelimit.deadline import Deadline, LagClock, loop_clock
from gateway.ratelimit.limiter import open_store
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.store import Reservation
from tests.support.processes import RedisServer

TIMEOUT = 0.2
LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = None
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def block(seconds: float) -> None:
    """What a saturated loop does to every callback waiting behind the ones running now."""
    time.sleep(seconds)


async def prepared(redis: RedisServer) -> RedisStore:
    store = open_store(redis.url, TIMEOUT)
    assert isinstance(store, RedisStore)
    await store.prepare()
    return store


async def reserve_while_lagging(store: RedisStore, key: str, lag: float) -> Reservation:
    """A reservation whose batch is queued when the loop stalls for `lag` (the callbacks ahead of it)."""
    call = asyncio.ensure_future(store.reserve(key, 10, 3600, 1))
    asyncio.get_running_loop().call_soon(block, lag)
    return await call


@pytest.mark.parametrize("loop", LOOPS)
def test_a_late_loop_is_not_a_store_outage(loop: str, redis: RedisServer) -> None:
    async def main() -> None:
        store = await prepared(redis)
        try:
            key = f"deadline:{time.time_ns()}"
            await store.reserve(key, 10, 3600, 0)  # connected, scripts loaded
            for round_ in range(3):  # the loop three times as late as the timeout, each time
                answer = await reserve_while_lagging(store, key, 3 * TIMEOUT)
                assert answer.granted and answer.remaining == 10 - (round_ + 1)  # counted once each
        finally:
            await store.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_store_that_does_not_answer_still_times_out_on_a_late_loop(loop: str, redis: RedisServer) -> None:
    async def main() -> None:
        store = await prepared(redis)
        await store.reserve("warm", 10, 3600, 0)
        redis.freeze()
        try:
            lagging = asyncio.get_running_loop()
            beat = lagging.call_later(0.01, block, 0.05)  # and the loop runs late now and then
            with pytest.raises(StoreUnavailable):
                await reserve_while_lagging(store, "frozen", 3 * TIMEOUT)
            with pytest.raises(StoreUnavailable):
                await store.reserve("frozen", 10, 3600, 1)  # and without lag, as before
            beat.cancel()
        finally:
            redis.thaw()
            await store.close()

    run_on(loop, main)


class Timer:
    def __init__(self, loop: SteppedLoop, timer: tuple[float, Callable[[], object]]) -> None:
        self.loop, self.timer = loop, timer

    def cancel(self) -> None:
        if self.timer in self.loop.timers:
            self.loop.timers.remove(self.timer)


class SteppedLoop:
    """The two things `LagClock` asks of a loop, on a clock the test moves: `run_until(t)` runs each timer
    due by `t` at `t` itself (as late as a loop that was blocked until then)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], object]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        timer = (when, callback)
        self.timers.append(timer)
        return Timer(self, timer)

    def run_until(self, moment: float) -> None:
        self.now = moment
        while due := [timer for timer in self.timers if timer[0] <= moment]:
            self.timers.remove(due[0])
            due[0][1]()


def test_the_lag_clock_keeps_time_while_the_loop_does_and_stands_still_while_it_is_late() -> None:
    loop = SteppedLoop()
    clock = LagClock(loop, beat=0.02)  # type: ignore[arg-type]
    assert loop.timers == []  # no deadline open: no beat
    clock.hold()
    start = clock.now()
    for step in range(1, 11):  # a loop on time: each beat runs when it is due
        loop.run_until(100.0 + step * 0.02)
    assert clock.now() - start == pytest.approx(0.2)
    start = clock.now()
    loop.now += 0.5  # blocked for half a second: the clock counts up to the overdue beat, then stands still
    assert clock.now() - start == pytest.approx(0.02)
    loop.run_until(loop.now)  # the late beat runs, and its lateness is lag, not time
    assert clock.now() - start == pytest.approx(0.02)  # one beat's resolution
    loop.run_until(loop.now + 0.02)
    assert clock.now() - start == pytest.approx(0.04)  # and on time again
    clock.hold()  # a second deadline, then the first ends: it still beats
    clock.release()
    loop.run_until(loop.now + 0.02)
    assert len(loop.timers) == 1 and clock.now() - start == pytest.approx(0.06)
    loop.now += 0.3  # late when the last deadline ends: the overdue beat is lag, and the clock rests
    clock.release()
    assert loop.timers == []
    assert clock.now() - start == pytest.approx(0.08)
    loop.now += 1.0  # idle: no beat, and time passes as the loop's
    assert clock.now() - start == pytest.approx(1.08)


async def test_every_store_on_a_loop_shares_one_clock_that_rests_while_no_call_is_timed() -> None:
    clock = loop_clock()
    assert loop_clock() is clock and clock.loop is asyncio.get_running_loop()
    assert clock.held == 0
    async with Deadline(clock, 1.0), Deadline(loop_clock(), 1.0):
        assert clock.held == 2
        await asyncio.sleep(0.05)
    assert clock.held == 0 and clock._handle is None


def test_a_closed_loop_is_not_kept_alive_by_its_clock() -> None:
    async def timed() -> None:
        async with Deadline(loop_clock(), 1.0):
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(timed())
    loop.close()
    seen = weakref.ref(loop)
    del loop
    gc.collect()
    assert seen() is None
