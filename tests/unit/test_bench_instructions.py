"""`python -m bench.instructions`' child: each case answers what it counts (valgrind itself is left to the
bench: the child is what runs under it)."""

import pytest

from bench import instructions


@pytest.mark.parametrize("case", list(instructions.CASES))
async def test_each_case_runs_its_requests_and_answers_as_named(case: str) -> None:
    await instructions._run(case, 5)  # asserts the case's status (200, or 429 for the flood) itself


def test_an_unknown_case_is_refused_before_any_run() -> None:
    with pytest.raises(SystemExit) as refused:
        instructions.main(["nothing"])
    assert refused.value.code == 2  # argparse's usage error, not the missing-valgrind exit
