"""`python -m bench.instructions`: each in-process case's child answers what it counts (valgrind itself is
left to the bench: the child is what runs under it). The served count runs under valgrind in the bench's
smoke run (tests/e2e/test_bench_smoke.py), which checks its figures."""

import pytest

from bench import instructions


@pytest.mark.parametrize("case", list(instructions.IN_PROCESS))
async def test_each_case_runs_its_requests_and_answers_as_named(case: str) -> None:
    await instructions._run(case, 5, frozenset())  # asserts the status (200, or 429 for the flood) itself


async def test_the_validation_runs_with_every_protection_off() -> None:
    await instructions._run("validation", 5, frozenset(instructions.PROTECTIONS))


def test_each_protection_named_is_off_and_only_it() -> None:
    from bench import configs, micro
    from gateway import app as gw
    from gateway.observe.access import AccessLog

    answer = configs.RESPONSE_BODY.encode()
    full = micro.validation_app(answer)[gw.STATE]
    assert len(full.accounting.sinks) == 2
    for name in instructions.PROTECTIONS:
        state = micro.validation_app(answer, frozenset({name}))[gw.STATE]
        project = state.policy.projects["shop"]
        on = {
            "failed_codes": project.failed_codes is not None,
            "upstream_quota": project.quota is not None,
            "idempotency": project.idempotency.ttl > 0,
            "cache": project.cache_ttl > 0,
            "access_log": any(isinstance(sink, AccessLog) for sink in state.accounting.sinks),
            "metrics": any(not isinstance(sink, AccessLog) for sink in state.accounting.sinks),
        }
        assert {key for key, value in on.items() if not value} == {name}


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
