"""The pure rules and shapes, without a server: time boundaries, the reported failure, 404 vs 400 errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.sandbox import render
from gateway.sandbox.models import Discount, Order, Voucher
from gateway.sandbox.rules import Evaluated, check_voucher, evaluate, first_failure, missing, refused

NOW = datetime(2030, 6, 1, 12, tzinfo=UTC)


def _voucher(**kwargs: object) -> Voucher:
    return Voucher(code="C", id="v_c", discount=Discount("AMOUNT", amount_off=100), created_at=NOW, **kwargs)  # type: ignore[arg-type]


def test_time_boundaries_follow_voucherify() -> None:
    order = Order(amount=1000)
    assert check_voucher(_voucher(start_date=NOW), "C", order, NOW) is None  # starts at that instant
    before = check_voucher(_voucher(start_date=NOW + timedelta(seconds=1)), "C", order, NOW)
    assert before is not None and before.key == "voucher_not_active"
    expired = check_voucher(_voucher(expiration_date=NOW), "C", order, NOW)  # expires at that instant
    assert expired is not None and (expired.status, expired.key) == (400, "voucher_expired")
    used = check_voucher(_voucher(quantity=2, redeemed_quantity=2), "C", order, NOW)
    assert used is not None and (used.status, used.key) == (400, "quantity_exceeded")
    assert check_voucher(_voucher(quantity=2, redeemed_quantity=1), "C", order, NOW) is None
    unknown = check_voucher(None, "C", order, NOW)
    assert unknown is not None and unknown.unknown and unknown.status == 404


def test_first_failure_prefers_an_unknown_code() -> None:
    expired = refused("voucher_expired", "voucher expired", "d", "A", "voucher")
    items = [
        Evaluated("voucher", "OK", None),
        Evaluated("voucher", "A", None, expired),
        Evaluated("voucher", "B", None, missing("voucher", "B")),
        Evaluated("voucher", "C", None, missing("voucher", "C")),
    ]
    reported = first_failure(items)
    assert reported is not None and reported.resource_id == "B"
    assert first_failure(items[:2]) is expired
    assert first_failure(items[:1]) is None


def test_error_json_names_the_resource_only_when_unknown() -> None:
    assert render.error_json(missing("voucher", "X"), "v-1") == {
        "code": 404,
        "key": "not_found",
        "message": "Resource not found",
        "details": "Cannot find voucher with id X",
        "request_id": "v-1",
        "resource_id": "X",
        "resource_type": "voucher",
    }
    body = render.error_json(
        refused("voucher_expired", "voucher expired", "X has expired", "X", "voucher"), "v-2"
    )
    assert body == {
        "code": 400,
        "key": "voucher_expired",
        "message": "voucher expired",
        "details": "X has expired",
        "request_id": "v-2",
    }


def test_stacked_discounts_run_on_what_is_left() -> None:
    vouchers = {
        "A": _voucher(),
        "P": Voucher(code="P", id="v_p", discount=Discount("PERCENT", percent_off=50), created_at=NOW),
    }
    items = evaluate(
        [{"object": "voucher", "id": "A"}, {"object": "voucher", "id": "P"}],
        vouchers,
        {},
        Order(amount=1000),
        NOW,
    )
    assert [(i.discount_before, i.discount) for i in items] == [(0, 100), (100, 450)]
