"""The ground floor: rate-limit strings parsed and keyed exactly as `limits` parses and keys them."""

from __future__ import annotations

import pytest
from limits import parse_many

from gateway.models import Bucket, RateItem
from gateway.ratelimit import limits_item

SPELLINGS = [
    "5 per 5 seconds",
    "5/second",
    "100/minute;10/second",
    "100/minute,10/second|1/day",
    "1 per hour",
    "2 per 3 Hours",
    "7/MONTH",
    "3 per year",
    "10 per 1 minute",
    " 5 / 5 seconds ",
    "0 per minute",
    "12 per 30 days",
]
NOT_LIMITS = ["", "five per minute", "5 per fortnight", "5 per", "per minute", "5 per minute;", "-1/second"]


@pytest.mark.parametrize("text", SPELLINGS)
def test_items_are_limits_own(text: str) -> None:
    ours = RateItem.parse_many(text)
    theirs = parse_many(text)
    assert [(i.amount, i.expiry) for i in ours] == [(i.amount, i.get_expiry()) for i in theirs]
    assert [i.key_for("ns", "1.2.3.4") for i in ours] == [i.key_for("ns", "1.2.3.4") for i in theirs]
    assert [limits_item(i) for i in ours] == theirs


@pytest.mark.parametrize("text", NOT_LIMITS)
def test_what_limits_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_many(text)
    with pytest.raises(ValueError):
        RateItem.parse_many(text)


def test_bucket_keys_and_headers() -> None:
    bucket = Bucket.parse("per_ip", "5 per 5 seconds;100/hour", "shop/per_ip")
    assert bucket.policy_header == '"per_ip";q=5;w=5, "per_ip-2";q=100;w=3600'
    assert bucket.keys("1.2.3.4") == [
        i.key_for("shop/per_ip", "1.2.3.4") for i in parse_many("5 per 5 seconds;100/hour")
    ]
    assert not bucket.shares_a_key
    assert Bucket.parse("per_ip", "5/minute;5 per minute", "n").shares_a_key
