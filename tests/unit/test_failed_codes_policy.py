"""The failed-code budget's policy keys (and the two quota keys validated beside it), its error and its
metrics: single limits only, explicit null per project, inheritance, `check`'s messages."""

from __future__ import annotations

import json

import pytest

from gateway import errors
from gateway.compiled import compile_policy
from gateway.models import Outcome
from gateway.observe.metrics import Metrics
from gateway.policy import PolicyError, parse_policy

CREDENTIALS = "{client_application_id: a, client_secret_key: b}"


def policy_text(top: str = "", shop: str = "", other: str = "") -> str:
    """A policy with `top` in its rate_limit, `shop` in project shop's, `other` in project third's (when
    given); project `other` has no rate_limit of its own."""
    lines = [
        f"rate_limit: {{{top}}}",
        "projects:",
        f"  shop: {{credentials: {CREDENTIALS}, rate_limit: {{{shop}}}}}",
        f"  other: {{credentials: {CREDENTIALS}}}",
    ]
    if other:
        lines.append(f"  third: {{credentials: {CREDENTIALS}, rate_limit: {{{other}}}}}")
    return "\n".join(lines) + "\n"


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, env={})
    return caught.value.problems


def test_defaults_are_off() -> None:
    policy = parse_policy(policy_text(), env={})
    limits = policy.rate_limit
    assert (limits.failed_codes, limits.upstream_quota, limits.redeem_reserve) == (None, None, 0)
    assert all(p.failed_codes is None for p in compile_policy(policy).projects.values())


def test_a_top_level_budget_is_inherited_and_compiled_once_per_project() -> None:
    compiled = compile_policy(parse_policy(policy_text(top="failed_codes: 10 per hour"), env={}))
    shop, other = compiled.projects["shop"].failed_codes, compiled.projects["other"].failed_codes
    assert shop is not None and other is not None
    assert (shop.project, shop.limit, shop.window) == ("shop", 10, 3600)
    assert other.project == "other"  # every project counts its budgets separately
    assert shop.key("198.51.100.1") != other.key("198.51.100.1")


def test_a_project_replaces_the_budget_or_turns_it_off_with_null() -> None:
    text = policy_text(
        top="failed_codes: 10 per hour, upstream_quota: 2000 per minute, redeem_reserve: 0.2",
        shop="failed_codes: null, upstream_quota: null",
        other="failed_codes: 3/minute, redeem_reserve: 0.5",
    )
    policy = parse_policy(text, env={})
    shop, other, third = (policy.rate_limit_for(name) for name in ("shop", "other", "third"))
    assert (shop.failed_codes, shop.upstream_quota, shop.redeem_reserve) == (None, None, 0.2)
    assert (other.failed_codes, other.upstream_quota) == ("10 per hour", "2000 per minute")
    assert (third.failed_codes, third.upstream_quota, third.redeem_reserve) == (
        "3/minute",
        "2000 per minute",
        0.5,
    )
    compiled = compile_policy(policy)
    assert compiled.projects["shop"].failed_codes is None
    third_budget = compiled.projects["third"].failed_codes
    assert third_budget is not None and (third_budget.limit, third_budget.window) == (3, 60)


def test_a_project_that_leaves_other_keys_out_still_inherits_the_budget() -> None:
    policy = parse_policy(policy_text(top="failed_codes: 10 per hour", shop="per_ip: 20 per minute"), env={})
    assert policy.rate_limit_for("shop").failed_codes == "10 per hour"
    assert policy.rate_limit_for("shop").per_ip == "20 per minute"


def test_an_explicit_null_for_an_older_key_still_means_inherit() -> None:
    """Only failed_codes and upstream_quota take null as off; `per_ip: null` keeps inheriting as before."""
    policy = parse_policy(policy_text(top="per_ip: 7 per minute", shop="per_ip: null"), env={})
    assert policy.rate_limit_for("shop").per_ip == "7 per minute"


@pytest.mark.parametrize("key", ["failed_codes", "upstream_quota"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10/hour;3/minute", "is a list of limits; this key takes a single limit such as '10 per hour'"),
        ("5/second,1/minute", "is a list of limits"),
        ("5/second|1/minute", "is a list of limits"),
        ("0 per hour", "allows nothing; write null to turn this key off"),
        ("lots", "is not a rate limit such as '10 per hour'"),
        ("10 per fortnight", "is not a rate limit"),
        ("3", "Input should be a valid string"),
    ],
)
def test_check_refuses_anything_but_a_single_limit(key: str, value: str, message: str) -> None:
    top = problems(policy_text(top=f"{key}: {value!r}" if not value.isdigit() else f"{key}: {value}"))
    assert len(top) == 1 and top[0].startswith(f"rate_limit.{key}: ") and message in top[0], top
    shop = problems(policy_text(shop=f"{key}: {value!r}" if not value.isdigit() else f"{key}: {value}"))
    assert len(shop) == 1 and shop[0].startswith(f"projects.shop.rate_limit.{key}: ") and message in shop[0]


@pytest.mark.parametrize("value", ["10 per hour", "10/hour", "1 per 5 seconds", "2000 per minute", "7/day"])
def test_single_limits_are_accepted(value: str) -> None:
    policy = parse_policy(policy_text(top=f"failed_codes: {value}, upstream_quota: {value}"), env={})
    assert policy.rate_limit.failed_codes == value


@pytest.mark.parametrize("value", ["0", "0.2", "1", "1.0", "'0.5'"])
def test_redeem_reserve_from_0_to_1(value: str) -> None:
    parse_policy(policy_text(top=f"redeem_reserve: {value}", shop=f"redeem_reserve: {value}"), env={})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.01", "less than or equal to 1"),
        ("-0.1", "greater than or equal to 0"),
        ("true", "not true or false"),
        ("half", "valid number"),
        ("null", "valid number"),  # at the top level it is no on/off key
    ],
)
def test_redeem_reserve_outside_0_to_1_is_refused(value: str, message: str) -> None:
    found = problems(policy_text(top=f"redeem_reserve: {value}"))
    assert len(found) == 1 and found[0].startswith("rate_limit.redeem_reserve: ") and message in found[0]


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        policy_text(
            top="failed_codes: 1/hour;1/minute, upstream_quota: 0/minute, redeem_reserve: 2",
            shop="failed_codes: nope, redeem_reserve: -1",
        )
    )
    assert [p.split(":")[0] for p in found] == [
        "rate_limit.failed_codes",
        "rate_limit.upstream_quota",
        "rate_limit.redeem_reserve",
        "projects.shop.rate_limit.failed_codes",
        "projects.shop.rate_limit.redeem_reserve",
    ]


def test_environment_references_work_in_the_budget() -> None:
    text = policy_text(top="failed_codes: '${FC:-10 per hour}', redeem_reserve: '${RESERVE}'")
    policy = parse_policy(text, env={"RESERVE": "0.25"})
    assert (policy.rate_limit.failed_codes, policy.rate_limit.redeem_reserve) == ("10 per hour", 0.25)
    policy = parse_policy(text, env={"RESERVE": "0", "FC": "3/minute"})
    assert policy.rate_limit.failed_codes == "3/minute"


def test_the_refusal_is_a_429_with_the_contracts_message() -> None:
    error = errors.too_many_failed_codes(42)
    assert error.status == 429
    body = json.loads(error.body("gw-1"))
    assert body == {
        "code": 429,
        "key": "too_many_failed_codes",
        "message": "Too many unknown codes were tried from this address.",
        "details": body["details"],
        "request_id": "gw-1",
    }
    assert "42 seconds" in body["details"]


def test_metrics_count_unknown_codes_and_refusals_per_project() -> None:
    metrics = Metrics()
    batch = [
        Outcome("gw-1", "POST", project="shop", operation="validate_stackable", status=200, unknown_codes=2),
        Outcome("gw-2", "GET", project="shop", operation="validate", status=200, unknown_codes=1),
        Outcome("gw-3", "GET", project="shop", operation="validate", status=200),
        Outcome(
            "gw-4", "GET", project="shop", operation="validate", decision="too_many_failed_codes", status=429
        ),
        Outcome(
            "gw-5", "POST", project="other", operation="redeem", decision="too_many_failed_codes", status=429
        ),
    ]
    metrics.account(batch, in_flight=0)
    registry = metrics.registry
    assert registry.get_sample_value("gateway_failed_codes_total", {"project": "shop"}) == 3
    assert registry.get_sample_value("gateway_failed_codes_total", {"project": "other"}) is None
    assert registry.get_sample_value("gateway_failed_code_refusals_total", {"project": "shop"}) == 1
    assert registry.get_sample_value("gateway_failed_code_refusals_total", {"project": "other"}) == 1
    decision = {
        "project": "shop",
        "operation": "validate",
        "decision": "too_many_failed_codes",
        "status": "429",
    }
    assert registry.get_sample_value("gateway_requests_total", decision) == 1


def test_the_demo_policy_turns_the_budget_on() -> None:
    from gateway.demo import demo_policy
    from gateway.sandbox import SandboxCredentials

    compiled = compile_policy(demo_policy("http://127.0.0.1:9", 8080, SandboxCredentials()))
    budget = compiled.projects["demo"].failed_codes
    assert budget is not None and (budget.limit, budget.window) == (5, 600)
