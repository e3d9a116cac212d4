"""The bench's reading of wrk's result line, and the policy it sizes for scenario (b)."""

from bench import configs, runner
from bench.load import parse
from gateway.policy import parse_policy

LINE = (
    "BENCH_RESULT requests=1200 duration_us=2000000 p50_us=1500 p90_us=3000 p99_us=9000 max_us=12000 "
    "connect=3 read=0 write=0 status=12 timeout=1"
)


def test_errors_are_the_sum_of_wrks_counters_and_name_those_not_zero() -> None:
    result = parse("Running 2s test\n" + LINE + "\n")
    assert result.errors == 16
    assert result.error_kinds == "connect 3, status 12, timeout 1"
    assert result.rps == 600


def test_no_errors_names_no_kind() -> None:
    quiet = (
        LINE.replace("connect=3", "connect=0")
        .replace("status=12", "status=0")
        .replace("timeout=1", "timeout=0")
    )
    result = parse(quiet)
    assert (result.errors, result.error_kinds) == (0, "")


def test_bench_policy_holds_scenario_b_in_flight() -> None:
    policy = parse_policy(configs.policy_yaml(8080, 8081, "memory://"), env={})
    assert policy.listen.max_connections == configs.IN_FLIGHT > configs.SLOW_CONNECTIONS
    assert policy.upstream.max_in_flight_per_host == configs.IN_FLIGHT


def test_a_store_called_down_in_a_gateway_redis_run_is_a_miss() -> None:
    """The gateway-redis (b) run's "store unavailable" lines are a target: each means requests passed
    unlimited on a Redis that was up (the saturated gateway's own lateness, gateway/ratelimit/deadline.py)."""
    called_down = runner.Row("gateway-redis", slow=parse(LINE), fail_open={"b": 13})
    assert "  MISS  gateway-redis (b): the limit store never counted down (no fail-open): 13 " in "\n".join(
        runner.targets({"gateway-redis": called_down})
    )
    held = runner.Row("gateway-redis", slow=parse(LINE), fail_open={"b": 0})
    assert any(
        line.startswith("  PASS  gateway-redis (b): the limit store never counted down")
        for line in runner.targets({"gateway-redis": held})
    )
