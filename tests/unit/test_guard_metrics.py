"""The quota feature's metrics: cache lookups per project, operation and result; quota refusals per project
and reason; Voucherify's 429s per project. Counted from each request's Outcome, labels bounded."""

from __future__ import annotations

from gateway.models import Outcome
from gateway.observe.metrics import Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_cache_quota_and_429_counters() -> None:
    metrics = Metrics()
    batch = [
        Outcome("a", "GET", "shop", "list_consents", cache="hit", status=200),
        Outcome("b", "GET", "shop", "list_consents", cache="hit", status=200),
        Outcome("c", "GET", "shop", "list_consents", cache="miss", status=200),
        Outcome("d", "GET", "shop", "list_promotion_tiers", cache="shared", status=200),
        Outcome(
            "e", "POST", "shop", "validate_stackable", "upstream_quota_exhausted", 503, quota_refusal="quota"
        ),
        Outcome("f", "GET", "shop", "validate", "upstream_quota_exhausted", 503, quota_refusal="hold_off"),
        Outcome("g", "POST", "shop", "redeem", "upstream_quota_exhausted", 503, upstream_429=True),
        Outcome("h", "POST", "shop", "redeem", status=200),
    ]
    metrics.account(batch, in_flight=0)
    lookups = "gateway_cache_lookups_total"
    assert value(metrics, lookups, project="shop", operation="list_consents", result="hit") == 2
    assert value(metrics, lookups, project="shop", operation="list_consents", result="miss") == 1
    assert value(metrics, lookups, project="shop", operation="list_promotion_tiers", result="shared") == 1
    refusals = "gateway_upstream_quota_refusals_total"
    assert value(metrics, refusals, project="shop", reason="quota") == 1
    assert value(metrics, refusals, project="shop", reason="hold_off") == 1
    assert value(metrics, "gateway_upstream_429_total", project="shop") == 1
    assert (
        value(
            metrics,
            "gateway_requests_total",
            project="shop",
            operation="redeem",
            decision="upstream_quota_exhausted",
            status="503",
        )
        == 1
    )
    metrics.account(batch[:2], in_flight=0)  # a later batch adds to the same series
    assert value(metrics, lookups, project="shop", operation="list_consents", result="hit") == 4
