"""`python -m bench.instructions`: each in-process case's child answers what it counts (valgrind itself is
left to the bench: the child is what runs under it). The served count runs under valgrind in the bench's
smoke run (tests/e2e/test_bench_smoke.py), which checks its figures."""

import pytest

from bench import instructions


@pytest.mark.parametrize("case", list(instructions.IN_PROCESS))
async def test_each_case_runs_its_requests_and_answers_as_named(case: str) -> None:
    await instructions._run(case, 5)  # asserts the case's status (200, or 429 for the flood) itself


def test_an_unknown_case_is_refused_before_any_run() -> None:
    with pytest.raises(SystemExit) as refused:
        instructions.main(["nothing"])
    assert refused.value.code == 2  # argparse's usage error, not the missing-valgrind exit


def test_the_served_line_is_bare_http1_over_the_gateway_against_the_target() -> None:
    assert "MISS" in instructions.served_line({"bare-http1": 300_000.0, "gateway": 900_000.0})
    line = instructions.served_line({"bare-http1": 300_000.0, "gateway": 400_000.0})
    assert line.startswith("  PASS") and line.endswith("0.75x (300,000 / 400,000)")


def test_a_dump_without_its_summary_is_an_error_not_a_zero() -> None:
    assert instructions.dumped_total("events: Ir\nsummary: 1234\n") == 1234
    with pytest.raises(RuntimeError):
        instructions.dumped_total("events: Ir\n")
