"""`python -m bench.instructions`: each in-process case's child answers what it counts (valgrind itself is
left to the bench: the child is what runs under it), and the served count, under valgrind, counts the
gateway's process and bare-http1's on a real socket."""

from pathlib import Path

import pytest

from bench import instructions

ROOT = Path(instructions.__file__).resolve().parent.parent
IN_PROCESS = [case for case in instructions.CASES if case != "served"]


@pytest.mark.parametrize("case", IN_PROCESS)
async def test_each_case_runs_its_requests_and_answers_as_named(case: str) -> None:
    await instructions._run(case, 5)  # asserts the case's status (200, or 429 for the flood) itself


def test_an_unknown_case_is_refused_before_any_run() -> None:
    with pytest.raises(SystemExit) as refused:
        instructions.main(["nothing"])
    assert refused.value.code == 2  # argparse's usage error, not the missing-valgrind exit


def test_the_served_count_sees_the_policy_on_top_of_the_relay() -> None:
    counted = instructions.served(ROOT, warm=3, count=10)  # under valgrind: about half a minute
    assert list(counted) == ["bare-http1", "gateway"]
    # the same server and client, plus every guard: the gateway's count is the relay's and more; a count
    # of the wrong process (valgrind's launcher, the stub) would not be, and one of the start-up and
    # warm-up too (counters not zeroed: about 10^9 instructions over 10 requests) would be far above
    assert 150_000 < counted["bare-http1"] < counted["gateway"] < 5_000_000


def test_a_dump_without_its_summary_is_an_error_not_a_zero() -> None:
    assert instructions.dumped_total("events: Ir\nsummary: 1234\n") == 1234
    with pytest.raises(RuntimeError):
        instructions.dumped_total("events: Ir\n")
