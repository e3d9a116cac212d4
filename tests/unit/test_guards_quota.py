"""gateway/guards/quota.py: the quota's reserve arithmetic, Voucherify's 429 read into seconds, and the
per-project hold-off with the seconds left and one new episode per run of 429s."""

from __future__ import annotations

import pytest

from gateway.guards.quota import (
    REDEMPTIONS,
    HoldOff,
    QuotaPlan,
    reserve_of,
    retry_after_of_429,
    whole_seconds,
)

NON_REDEMPTIONS = [
    "validate",
    "validate_stackable",
    "publish",
    "qualifications",
    "list_promotion_tiers",
    "track_event",
    "list_vouchers",
    "create_customer",
    "list_consents",
    "update_consents",
]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------- the plan


def test_a_plan_from_policy_values() -> None:
    plan = QuotaPlan.build("shop", "2000 per minute", 0.2)
    assert plan == QuotaPlan(2000, 60, 400, "shop/upstream_quota/60")
    assert plan.policy_header == '"upstream_quota";q=2000;w=60'
    assert QuotaPlan.build("shop", None, 0.2) is None


def test_redemptions_may_use_the_whole_quota_and_the_rest_only_what_the_reserve_leaves() -> None:
    plan = QuotaPlan.build("shop", "10 per minute", 0.3)
    assert plan is not None and plan.reserve == 3
    assert {"redeem", "redeem_stackable", "redeem_promotion_tier"} == REDEMPTIONS
    for operation in REDEMPTIONS:
        assert plan.limit_for(operation) == 10
    for operation in NON_REDEMPTIONS:
        assert plan.limit_for(operation) == 7


@pytest.mark.parametrize(
    ("q", "share", "reserve"),
    [
        (2000, 0.2, 400),
        (100, 0, 0),
        (100, 1, 100),
        (10, 0.25, 2),  # round(2.5): Python's round, halves to even
        (10, 0.35, 4),  # round(3.5): halves to even, here up
        (3, 0.5, 2),  # round(1.5)
        (7, 0.1, 1),  # round(0.7)
        (1, 0.4, 0),
    ],
)
def test_the_reserve_is_round_of_q_times_the_share(q: int, share: float, reserve: int) -> None:
    assert reserve_of(q, share) == reserve == round(q * share)
    plan = QuotaPlan.build("p", f"{q} per hour", share)
    assert plan is not None and plan.reserve == reserve and plan.window == 3600


def test_a_reserve_of_everything_leaves_nothing_for_browsing() -> None:
    plan = QuotaPlan.build("shop", "5 per second", 1)
    assert plan is not None
    assert plan.limit_for("list_consents") == 0 and plan.limit_for("redeem") == 5


@pytest.mark.parametrize(
    ("quota", "share"),
    [("10/hour;3/minute", 0), ("10 per hour", -0.1), ("10 per hour", 1.01), ("ten per hour", 0)],
)
def test_bad_plans_are_refused(quota: str, share: float) -> None:
    with pytest.raises(ValueError):
        QuotaPlan.build("shop", quota, share)
    with pytest.raises(ValueError):
        QuotaPlan(5, 60, 6, "k")


def test_projects_and_windows_have_their_own_ledgers() -> None:
    keys = {
        QuotaPlan.build("shop", "10 per minute", 0).key,  # type: ignore[union-attr]
        QuotaPlan.build("blog", "10 per minute", 0).key,  # type: ignore[union-attr]
        QuotaPlan.build("shop", "10 per hour", 0).key,  # type: ignore[union-attr]
    }
    assert len(keys) == 3
    # a new q (a reload) keeps the count of the same window
    assert QuotaPlan.build("shop", "20 per minute", 0).key == QuotaPlan.build("shop", "10 per minute", 0).key  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("seconds", "at_most", "expected"),
    [(0.0, None, 1), (0.2, None, 1), (1.0, None, 1), (1.01, None, 2), (59.5, 60, 60), (3600, 60, 60)],
)
def test_whole_seconds(seconds: float, at_most: int | None, expected: int) -> None:
    assert whole_seconds(seconds, at_most=at_most) == expected


def test_whole_seconds_of_something_not_finite_is_the_bound() -> None:
    assert whole_seconds(float("inf"), at_most=60) == 60
    assert whole_seconds(float("nan")) == 1


# ---------------------------------------------------------------------------------------------- Voucherify's 429


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([], 1),
        ([("Retry-After", "7")], 7),
        ([("retry-after", " 7 ")], 7),
        ([("RETRY-AFTER", "007")], 7),
        ([("Retry-After", "0")], 1),
        ([("Retry-After", "60")], 60),
        ([("Retry-After", "61")], 60),
        ([("Retry-After", "3600")], 60),
        ([("Retry-After", "99999999999999999999999999")], 60),  # seconds all the same: clamped
        ([("Retry-After", "9" * 5000)], 60),  # longer than Python converts: not converted
        ([("Retry-After", "9999999999")], 60),
        ([("X-Rate-Limit-Retry", "12")], 12),
        ([("x-rate-limit-retry", "120")], 60),
        ([("Retry-After", "5"), ("X-Rate-Limit-Retry", "30")], 5),  # Retry-After first
        ([("X-Rate-Limit-Retry", "30"), ("Retry-After", "5")], 5),
        ([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], 1),  # an HTTP-date
        ([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"), ("X-Rate-Limit-Retry", "30")], 1),
        ([("Retry-After", "5.5")], 1),
        ([("Retry-After", "-5")], 1),
        ([("Retry-After", "+5")], 1),
        ([("Retry-After", "")], 1),
        ([("Retry-After", "5s")], 1),
        ([("Retry-After", "\u0665")], 1),  # ARABIC-INDIC DIGIT FIVE: not an ASCII digit
        ([("Retry-After", "\u00b2")], 1),  # SUPERSCRIPT TWO
        ([("Retry-After", "5, 30")], 1),
        ([("Retry-After", "5"), ("Retry-After", "30")], 1),  # twice: which to believe? neither
        ([("X-Rate-Limit-Retry", "abc")], 1),
        ([("X-Rate-Limit-Limit", "100"), ("X-Rate-Limit-Remaining", "0")], 1),
    ],
)
def test_the_seconds_a_429_asks_for(headers: list[tuple[str, str]], seconds: int) -> None:
    assert retry_after_of_429(headers) == seconds


# ---------------------------------------------------------------------------------------------- hold-off


def test_a_hold_off_lasts_its_seconds_and_reports_what_is_left() -> None:
    clock = Clock()
    hold = HoldOff(clock)
    assert hold.remaining("shop") is None
    assert hold.start("shop", 10) is True
    assert hold.remaining("shop") == 10
    clock.now += 3.5
    assert hold.remaining("shop") == 7  # 6.5 s left: rounded up
    clock.now += 6.4
    assert hold.remaining("shop") == 1  # 0.1 s left is still a second to wait
    clock.now += 0.1
    assert hold.remaining("shop") is None
    assert hold.active() == ()


def test_a_hold_off_is_per_project() -> None:
    clock = Clock()
    hold = HoldOff(clock)
    hold.start("shop", 10)
    assert hold.remaining("blog") is None
    assert hold.active() == ("shop",)


def test_one_episode_per_run_of_429s_and_a_hold_off_only_grows() -> None:
    clock = Clock()
    hold = HoldOff(clock)
    assert hold.start("shop", 10) is True
    clock.now += 1
    assert hold.start("shop", 3) is False  # calls that were in flight: same episode, end unchanged
    assert hold.remaining("shop") == 9
    assert hold.start("shop", 20) is False  # a longer ask lengthens it
    assert hold.remaining("shop") == 20
    clock.now += 20
    assert hold.start("shop", 2) is True  # a new episode once the last one ended
    assert hold.remaining("shop") == 2
    assert hold.start("blog", 2) is True
