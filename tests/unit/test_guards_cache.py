"""gateway/guards/cache.py: kept 200 answers with Age, bounds in entries and bytes, expiry, and single flight
(one call for concurrent identical misses, errors shared but never kept, cancelled waiters strand nobody)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gateway.guards.cache import ENTRY_OVERHEAD, Answer, Hit, Lookup, ReadCache
from tests.conftest import ROOT

KEY = ("shop", "list_promotion_tiers", "limit=10")
OK = Answer(200, b'{"tiers": []}', "application/json; charset=utf-8")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keep_answers(result: Answer) -> Answer | None:
    return result


def make(clock: Clock | None = None, **bounds: int) -> ReadCache[Answer]:
    return ReadCache(keep_answers, clock=clock or Clock(), **bounds)


class Upstream:
    """A call that counts how often it ran and answers when released."""

    def __init__(self, answer: Answer | BaseException = OK) -> None:
        self.answer = answer
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Answer:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


# ---------------------------------------------------------------------------------------------- kept


def test_a_kept_answer_is_a_hit_with_its_age_and_only_status_body_and_content_type():
    clock = Clock()
    cache = make(clock)
    assert cache.get(KEY) is None
    assert cache.put(KEY, OK, 30)
    clock.now += 7.9
    hit = cache.get(KEY)
    assert hit == Hit(OK, 7)
    assert hit.headers == (("Content-Type", OK.content_type), ("Age", "7"))
    assert Hit(Answer(200, b"", None), 0).headers == (("Age", "0"),)


def test_keys_keep_projects_operations_and_queries_apart():
    cache = make()
    cache.put(KEY, OK, 30)
    for other in [
        ("blog", "list_promotion_tiers", "limit=10"),
        ("shop", "list_consents", "limit=10"),
        ("shop", "list_promotion_tiers", "limit=11"),
        ("shop", "list_promotion_tiers", "limit=10&"),
        ("shop", "list_promotion_tiers", "LIMIT=10"),
    ]:
        assert cache.get(other) is None, other


def test_an_answer_expires_after_its_ttl():
    clock = Clock()
    cache = make(clock)
    cache.put(KEY, OK, 5)
    clock.now += 4.999
    assert cache.get(KEY) is not None
    clock.now += 0.001
    assert cache.get(KEY) is None
    assert cache.entries == 0 and cache.bytes == 0


@pytest.mark.parametrize("status", [201, 204, 304, 400, 404, 429, 500, 502, 503])
def test_only_200_answers_are_kept(status: int):
    cache = make()
    assert not cache.put(KEY, Answer(status, b"{}", "application/json"), 30)
    assert cache.get(KEY) is None


def test_a_ttl_of_zero_keeps_nothing():
    cache = make()
    assert not cache.put(KEY, OK, 0)
    assert cache.get(KEY) is None


def test_entries_are_bounded_and_the_least_recently_used_goes_first():
    cache = make(max_entries=3)
    keys = [("shop", "list_consents", f"page={i}") for i in range(4)]
    for key in keys[:3]:
        cache.put(key, OK, 30)
    assert cache.get(keys[0]) is not None  # used: keys[1] is now the least recently used
    cache.put(keys[3], OK, 30)
    assert cache.entries == 3
    assert cache.get(keys[1]) is None
    assert all(cache.get(key) is not None for key in (keys[0], keys[2], keys[3]))


def test_bytes_are_bounded():
    body = b"x" * 1000
    size = ENTRY_OVERHEAD + len(body) + len("shop") + len("list_consents") + len("page=0") + len("a/b")
    cache = make(max_bytes=size * 3 + 10)
    for i in range(10):
        assert cache.put(("shop", "list_consents", f"page={i}"), Answer(200, body, "a/b"), 30)
        assert cache.bytes <= cache.max_bytes
    assert cache.entries == 3
    assert cache.get(("shop", "list_consents", "page=9")) is not None


def test_an_answer_larger_than_an_entry_may_be_is_not_kept():
    cache = make(max_entry_bytes=2000)
    assert not cache.put(KEY, Answer(200, b"x" * 2000, "application/json"), 30)
    assert cache.put(KEY, Answer(200, b"x" * 1000, "application/json"), 30)
    huge = make(max_bytes=500)  # an entry may never be larger than the whole cache
    assert not huge.put(KEY, Answer(200, b"x" * 1000, None), 30)


def test_replacing_a_key_does_not_count_it_twice():
    clock = Clock()
    cache = make(clock, max_entries=2)
    cache.put(KEY, OK, 30)
    other = ("shop", "list_consents", "")
    cache.put(other, OK, 30)
    clock.now += 10
    cache.put(KEY, Answer(200, b"{}", None), 30)
    assert cache.entries == 2
    assert cache.get(other) is not None
    assert cache.get(KEY) == Hit(Answer(200, b"{}", None), 0)


def test_forget_drops_one_projects_answers():
    cache = make()
    cache.put(KEY, OK, 30)
    cache.put(("blog", "list_consents", ""), OK, 30)
    cache.forget("shop")
    assert cache.get(KEY) is None
    assert cache.get(("blog", "list_consents", "")) is not None


def test_an_expired_entry_does_not_take_a_slot():
    clock = Clock()
    cache = make(clock, max_entries=1)
    cache.put(("shop", "list_consents", "a"), OK, 1)
    clock.now += 2
    cache.put(KEY, OK, 30)
    assert cache.get(KEY) is not None


def test_a_bad_bound_is_refused():
    with pytest.raises(ValueError):
        make(max_entries=0)


def test_the_guards_import_no_io():
    program = (
        "import sys, gateway.guards.cache, gateway.guards.quota;"
        "print(','.join(sorted({n.split('.')[0] for n in sys.modules} & set(sys.argv[1:]))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", program, "redis", "httptools", "limits", "aiohttp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------- single flight


async def test_twenty_concurrent_identical_misses_make_one_call_and_all_get_its_answer():
    cache = make()
    upstream = Upstream()
    waiters = [asyncio.create_task(cache.load(KEY, 30, upstream)) for _ in range(20)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert cache.in_flight == 1
    upstream.release.set()
    results = await asyncio.gather(*waiters)
    assert upstream.calls == 1
    assert [answer for answer, _ in results] == [OK] * 20
    assert sorted(how for _, how in results) == [Lookup.MISS] + [Lookup.SHARED] * 19
    assert cache.get(KEY) == Hit(OK, 0)
    assert cache.in_flight == 0


async def test_different_keys_do_not_share_a_call():
    cache = make()
    upstream = Upstream()
    upstream.release.set()
    first = asyncio.create_task(cache.load(KEY, 30, upstream))
    second = asyncio.create_task(cache.load(("shop", "list_promotion_tiers", "limit=11"), 30, upstream))
    assert [how for _, how in await asyncio.gather(first, second)] == [Lookup.MISS, Lookup.MISS]
    assert upstream.calls == 2


async def test_an_error_answer_is_shared_but_not_kept():
    cache = make()
    failing = Upstream(Answer(503, b'{"code": 503}', "application/json"))
    waiters = [asyncio.create_task(cache.load(KEY, 30, failing)) for _ in range(5)]
    await asyncio.sleep(0)
    failing.release.set()
    results = await asyncio.gather(*waiters)
    assert failing.calls == 1
    assert {answer.status for answer, _ in results} == {503}
    assert cache.get(KEY) is None
    ok = Upstream()
    ok.release.set()
    answer, how = await cache.load(KEY, 30, ok)
    assert (answer, how, ok.calls) == (OK, Lookup.MISS, 1)


async def test_an_exception_reaches_every_waiter_and_nothing_is_kept():
    cache = make()
    failing = Upstream(RuntimeError("upstream reset"))
    waiters = [asyncio.create_task(cache.load(KEY, 30, failing)) for _ in range(5)]
    await asyncio.sleep(0)
    failing.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "upstream reset" for r in results)
    assert cache.get(KEY) is None and cache.in_flight == 0


async def test_a_result_that_keep_refuses_is_shared_but_not_kept():
    cache: ReadCache[Answer] = ReadCache(lambda result: None, clock=Clock())
    upstream = Upstream()
    upstream.release.set()
    assert (await cache.load(KEY, 30, upstream))[0] == OK
    assert cache.get(KEY) is None


async def test_a_cancelled_first_waiter_does_not_strand_the_others():
    cache = make()
    upstream = Upstream()
    leader = asyncio.create_task(cache.load(KEY, 30, upstream))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(cache.load(KEY, 30, upstream)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    upstream.release.set()
    results = await asyncio.gather(*followers)
    assert [answer for answer, _ in results] == [OK] * 3
    assert upstream.calls == 1
    assert cache.get(KEY) is not None  # the call finished and was kept although its first waiter left


async def test_a_failed_first_call_does_not_strand_later_waiters():
    cache = make()
    failing = Upstream(TimeoutError())
    first = [asyncio.create_task(cache.load(KEY, 30, failing)) for _ in range(3)]
    await asyncio.sleep(0)
    failing.release.set()
    assert all(isinstance(r, TimeoutError) for r in await asyncio.gather(*first, return_exceptions=True))
    ok = Upstream()
    ok.release.set()
    results = await asyncio.gather(*[cache.load(KEY, 30, ok) for _ in range(3)])
    assert [answer for answer, _ in results] == [OK] * 3
    assert ok.calls == 1


async def test_when_every_waiter_leaves_the_call_is_cancelled_and_a_new_request_starts_afresh():
    cache = make()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> Answer:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return OK  # pragma: no cover

    waiters = [asyncio.create_task(cache.load(KEY, 30, slow)) for _ in range(3)]
    await started.wait()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert cancelled.is_set()
    assert cache.in_flight == 0
    upstream = Upstream()
    upstream.release.set()
    assert await cache.load(KEY, 30, upstream) == (OK, Lookup.MISS)


async def test_a_call_cancelled_from_outside_restarts_for_waiters_that_were_not_cancelled():
    cache = make()
    calls = 0

    async def call() -> Answer:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(3600)
        return OK

    waiter = asyncio.create_task(cache.load(KEY, 30, call))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    flight = cache._flights[KEY]
    flight.task.cancel()  # e.g. torn down by something else: the waiter was not cancelled
    assert (await waiter)[0] == OK
    assert calls == 2


async def test_a_waiter_gone_during_a_shared_call_does_not_cancel_it():
    cache = make()
    upstream = Upstream()
    waiters = [asyncio.create_task(cache.load(KEY, 30, upstream)) for _ in range(2)]
    await asyncio.sleep(0)
    waiters[1].cancel()
    await asyncio.gather(waiters[1], return_exceptions=True)
    upstream.release.set()
    assert (await waiters[0])[0] == OK


async def test_a_load_with_ttl_zero_keeps_nothing():
    cache = make()
    upstream = Upstream()
    upstream.release.set()
    assert (await cache.load(KEY, 0, upstream))[0] == OK
    assert cache.get(KEY) is None
