"""The validation and redemption rules: does this voucher or promotion tier apply to this order, now?

Pure: the caller passes the objects, the order and the time; nothing here reads a clock or changes state.
A code that does not exist fails with a 404 ``not_found``; one that exists but does not apply (disabled,
not started, expired, used up, order rules) fails with a 400 and its own key, never a 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.sandbox.errors import Json, SandboxError, invalid_payload
from gateway.sandbox.models import Customer, Order, PromotionTier, Voucher, as_object

MAX_REDEEMABLES = 30


@dataclass(frozen=True)
class Failure:
    """Why a voucher or promotion tier does not apply, in Voucherify's words."""

    status: int
    key: str
    message: str
    reason: str
    details: str
    resource_id: str
    resource_type: str

    @property
    def unknown(self) -> bool:
        """True when the code (or tier) does not exist: what the gateway's failed-code budget counts."""
        return self.status == 404

    def error(self, **extra: object) -> SandboxError:
        return SandboxError(
            self.status,
            self.key,
            self.message,
            self.details,
            resource_id=self.resource_id,
            resource_type=self.resource_type,
            extra=dict(extra),
        )


def refused(key: str, reason: str, details: str, resource_id: str, resource_type: str) -> Failure:
    """A 400 for something that exists but does not apply."""
    return Failure(400, key, reason, reason, details, resource_id, resource_type)


def missing(resource_type: str, resource_id: str) -> Failure:
    """A 404 for something that does not exist."""
    return Failure(
        404,
        "not_found",
        "Resource not found",
        f"{resource_type.replace('_', ' ')} not found",
        f"Cannot find {resource_type} with id {resource_id}",
        resource_id,
        resource_type,
    )


@dataclass(frozen=True)
class Context:
    """What a validation, redemption or qualification request says about the purchase."""

    order: Order
    customer: Customer | None
    tracking_id: str | None
    metadata: Json
    session: Json | None


@dataclass
class Evaluated:
    """One requested redeemable after checking: either ``failure`` or a discount on the running total."""

    object: str
    id: str
    target: Voucher | PromotionTier | None
    failure: Failure | None = None
    discount_before: int = 0
    discount: int = 0


def check_voucher(voucher: Voucher | None, code: str, order: Order, now: datetime) -> Failure | None:
    if voucher is None:
        return missing("voucher", code)
    if not voucher.active:
        return refused("voucher_disabled", "voucher is disabled", f"{code} is disabled", code, "voucher")
    if voucher.start_date is not None and now < voucher.start_date:
        return refused(
            "voucher_not_active", "voucher not active", f"{code} is not active yet", code, "voucher"
        )
    if voucher.expiration_date is not None and now >= voucher.expiration_date:
        return refused("voucher_expired", "voucher expired", f"{code} has expired", code, "voucher")
    if voucher.quantity is not None and voucher.redeemed_quantity >= voucher.quantity:
        details = f"{code} has been redeemed the maximum number of times ({voucher.quantity})"
        return refused("quantity_exceeded", "quantity exceeded", details, code, "voucher")
    if not voucher.conditions.allows(order):
        details = f"the order does not meet the validation rules of {code}"
        return refused(
            "order_rules_violated", "order does not match validation rules", details, code, "voucher"
        )
    return None


def tier_available(tier: PromotionTier, now: datetime) -> bool:
    if not tier.active:
        return False
    if tier.start_date is not None and now < tier.start_date:
        return False
    return not (tier.expiration_date is not None and now >= tier.expiration_date)


def check_tier(tier: PromotionTier | None, tier_id: str, order: Order, now: datetime) -> Failure | None:
    if tier is None:
        return missing("promotion_tier", tier_id)
    if not tier.active:
        return refused(
            "promotion_inactive", "promotion inactive", f"{tier_id} is inactive", tier_id, "promotion_tier"
        )
    if not tier_available(tier, now):
        details = f"{tier_id} is not active in the current timeframe"
        return refused(
            "promotion_not_active_now", "promotion not active now", details, tier_id, "promotion_tier"
        )
    if not tier.conditions.allows(order):
        details = f"the order does not meet the validation rules of {tier_id}"
        return refused(
            "order_rules_violated",
            "order does not match validation rules",
            details,
            tier_id,
            "promotion_tier",
        )
    return None


def evaluate(
    raw: object,
    vouchers: Mapping[str, Voucher],
    tiers: Mapping[str, PromotionTier],
    order: Order,
    now: datetime,
) -> list[Evaluated]:
    """Check each of a request's ``redeemables`` in order, each discount taken off what the previous left."""
    if not isinstance(raw, list) or not raw:
        raise invalid_payload("redeemables must be a non-empty array")
    if len(raw) > MAX_REDEEMABLES:
        raise invalid_payload(f"redeemables must hold at most {MAX_REDEEMABLES} items")
    running = 0
    evaluated: list[Evaluated] = []
    for index, entry in enumerate(raw):
        data = as_object(entry, f"redeemables[{index}]")
        kind, ident = data.get("object"), data.get("id")
        if not isinstance(kind, str) or not isinstance(ident, str) or not ident:
            raise invalid_payload(f"redeemables[{index}] needs an object and an id")
        target: Voucher | PromotionTier | None
        if kind == "voucher":
            target = vouchers.get(ident)
            failure = check_voucher(target, ident, order, now)
        elif kind == "promotion_tier":
            target = tiers.get(ident)
            failure = check_tier(target, ident, order, now)
        else:
            target, failure = None, missing(kind, ident)
        item = Evaluated(kind, ident, target, failure, discount_before=running)
        if failure is None and target is not None:
            item.discount = target.discount.amount_for(order.amount - running)
            running += item.discount
        evaluated.append(item)
    return evaluated


def first_failure(evaluated: list[Evaluated]) -> Failure | None:
    """The failure a refused stackable redemption reports: the first unknown code if there is one (so a
    code that does not exist is never hidden behind one that merely does not apply), else the first."""
    failures = [item.failure for item in evaluated if item.failure is not None]
    return next((f for f in failures if f.unknown), failures[0] if failures else None)
