"""`Turns`, the memory store's keys waiting for their turn: a queue per lifetime, the fronts in a heap."""

from __future__ import annotations

import random

from gateway.ratelimit.turns import Turns


def drain(turns: Turns[float], now: float) -> list[tuple[float, float, str]]:
    out = []
    while (due := turns.pop(now)) is not None:
        out.append(due)
    return out


def test_keys_come_out_when_due_in_time_order_across_lifetimes() -> None:
    rng = random.Random(15)
    turns: Turns[float] = Turns()
    lifetimes = [1.0, 5.0, 60.0, 3600.0]
    put: list[tuple[float, float, str]] = []
    now = 1000.0
    for i in range(2000):  # the clock only moves on, as the store's monotonic clock does
        now += rng.random() / 10
        lifetime = rng.choice(lifetimes)
        turns.put(lifetime, now + lifetime, f"key-{i}")
        put.append((lifetime, now + lifetime, f"key-{i}"))
    assert len(turns) == 2000
    assert turns.pop(1000.0) is None and len(turns) == 2000  # nothing due yet: nothing taken
    first = drain(turns, now)
    assert first == sorted((p for p in put if p[1] <= now), key=lambda p: p[1])
    rest = drain(turns, now + 3600)
    assert first + rest == sorted(put, key=lambda p: p[1])
    assert len(turns) == 0 and turns.pop() is None


def test_a_key_put_back_waits_behind_those_put_before_it() -> None:
    turns: Turns[float] = Turns()
    turns.put(10.0, 10.0, "regular")
    turns.put(10.0, 11.0, "other")
    assert turns.pop(10.0) == (10.0, 10.0, "regular")
    turns.put(10.0, 20.0, "regular")  # renewed: another turn, one lifetime on
    assert turns.pop(15.0) == (10.0, 11.0, "other")
    assert turns.pop(15.0) is None
    assert turns.pop(20.0) == (10.0, 20.0, "regular")


def test_pop_without_a_time_takes_the_earliest_of_every_queue() -> None:
    turns: Turns[float] = Turns()
    turns.put(3600.0, 3600.0, "hourly")  # put first, due last
    turns.put(1.0, 2.0, "per-second")
    turns.put(60.0, 61.0, "per-minute")
    assert [turns.pop()[2] for _ in range(3)] == ["per-second", "per-minute", "hourly"]  # type: ignore[index]


def test_keep_drops_what_no_longer_waits_and_keeps_the_order() -> None:
    turns: Turns[float] = Turns()
    for i in range(100):
        turns.put(float(i % 3), 100.0 + i, f"key-{i}")
    turns.keep(lambda when, key: int(key.split("-")[1]) % 2 == 0)
    assert len(turns) == 50
    assert [due[2] for due in drain(turns, 1000.0)] == [f"key-{i}" for i in range(0, 100, 2)]


def test_many_lifetimes_keep_one_front_each_and_the_times_popped_are_let_go() -> None:
    turns: Turns[float] = Turns()
    for lifetime in range(500):  # a lifetime per project, say
        turns.put(float(lifetime), 10.0 + lifetime, f"project-{lifetime}")
    assert len(turns._fronts) == 500
    assert turns.pop(10.0) == (0.0, 10.0, "project-0")
    assert len(turns._fronts) == 499  # an empty queue leaves the heap
    for i in range(20_000):  # one queue through which many keys pass
        turns.put(1.0, 1000.0 + i, f"client-{i}")
    drain(turns, 1000.0 + 19_990)
    queue = turns._queues[1.0]
    assert len(queue.keys) == 9 and len(queue.times) < 10_000  # the popped times were dropped


def test_a_fresh_turn_is_taken_back_and_the_next_one_comes_in_its_place() -> None:
    turns: Turns[float] = Turns(grace=15.0)
    turns.put(60.0, 100.0, "given back")  # the front of its queue, and of the heap
    turns.put(60.0, 101.0, "held")
    turns.put(3600.0, 3640.0, "hourly")
    turns.cancel(60.0, "given back", 100.0)
    assert len(turns) == 2 and turns.due() == 101.0  # the heap's entry for the queue put right
    turns.cancel(60.0, "held", 99.0)  # another time: not its turn, nothing taken back
    assert len(turns) == 2
    assert turns.pop(101.0) == (60.0, 101.0, "held")
    assert turns.pop(101.0) is None and turns.pop() == (3600.0, 3640.0, "hourly")
    assert len(turns) == 0 and turns.pop() is None


def test_a_turn_stops_being_fresh_once_one_put_grace_later_follows_it() -> None:
    turns: Turns[float] = Turns(grace=15.0)
    turns.put(60.0, 100.0, "old")
    turns.put(60.0, 114.0, "newer")  # 14 s later: "old" is still fresh
    turns.cancel(60.0, "old", 100.0)
    assert [key for _, keys, _ in turns.waiting() for key in keys] == ["newer"]
    turns.put(60.0, 120.0, "kept")
    turns.put(60.0, 135.0, "latest")  # 15 s after "kept": it joins the queue, where it stays till it comes
    turns.cancel(60.0, "kept", 120.0)
    assert [due[2] for due in drain(turns, 1000.0)] == ["newer", "kept", "latest"]


def test_fresh_and_older_turns_come_out_in_time_order_across_lifetimes() -> None:
    rng = random.Random(16)
    turns: Turns[float] = Turns(grace=2.0)
    put: dict[str, tuple[float, float]] = {}
    now = 1000.0
    for i in range(3000):
        now += rng.random() / 10
        lifetime = rng.choice([1.0, 5.0, 60.0])
        turns.put(lifetime, now + lifetime, f"key-{i}")
        put[f"key-{i}"] = (lifetime, now + lifetime)
        if rng.random() < 0.5:  # some taken back at once, some a while later (too late for some)
            key = f"key-{rng.randrange(max(0, i - 40), i + 1)}"
            lifetime, when = put[key]
            turns.cancel(lifetime, key, when)
    out = drain(turns, now + 60)
    assert [due[1] for due in out] == sorted(due[1] for due in out)  # due order, whatever the lifetime
    assert len(turns) == 0 and {due[2] for due in out} <= set(put)
