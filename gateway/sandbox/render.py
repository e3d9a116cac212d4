"""Voucherify's JSON shapes for what the store decided. Pure: ids, dates and request ids are passed in."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.sandbox.errors import Json
from gateway.sandbox.models import Customer, PromotionTier, Voucher, empty_list, iso
from gateway.sandbox.rules import MAX_REDEEMABLES, Context, Evaluated, Failure

STACKING_RULES: Json = {
    "redeemables_limit": MAX_REDEEMABLES,
    "applicable_redeemables_limit": 5,
    "applicable_exclusive_redeemables_limit": 1,
    "exclusive_categories": [],
    "joint_categories": [],
    "redeemables_application_mode": "ALL",
    "redeemables_sorting_rule": "REQUESTED_ORDER",
}


def error_json(failure: Failure, request_id: str) -> Json:
    """The ``error`` inside a 200 answer; a 404 also names the resource, as Voucherify's does."""
    body: Json = {
        "code": failure.status,
        "key": failure.key,
        "message": failure.message,
        "details": failure.details,
        "request_id": request_id,
    }
    if failure.unknown:
        body.update(resource_id=failure.resource_id, resource_type=failure.resource_type)
    return body


def _customer_id(context: Context) -> str | None:
    return context.customer.id if context.customer else None


def _customer_ref(customer: Customer | None) -> Json | None:
    return customer.reference() if customer else None


# --------------------------------------------------------------- validation


def voucher_valid(voucher: Voucher, context: Context, discount: int) -> Json:
    body: Json = {
        "valid": True,
        "code": voucher.code,
        "applicable_to": empty_list(),
        "inapplicable_to": empty_list(),
        "campaign": voucher.campaign,
        "campaign_id": voucher.campaign_id,
        "metadata": voucher.metadata,
        "discount": voucher.discount.to_json(),
        "gift": None,
        "loyalty": None,
        "order": context.order.calculated(0, discount),
        "start_date": iso(voucher.start_date),
        "expiration_date": iso(voucher.expiration_date),
        "tracking_id": context.tracking_id,
    }
    if context.session is not None:
        body["session"] = context.session
    return body


def voucher_invalid(
    code: str, failure: Failure, voucher: Voucher | None, context: Context, request_id: str
) -> Json:
    """Legacy validation that fails is still a 200: ``valid`` false, ``reason`` and ``error``."""
    return {
        "valid": False,
        "code": code,
        "reason": failure.reason,
        "error": error_json(failure, request_id),
        "tracking_id": context.tracking_id,
        "customer_id": _customer_id(context),
        "metadata": voucher.metadata if voucher else {},
    }


def promotion_entry(tier: PromotionTier, context: Context, discount: int) -> Json:
    return {
        "id": tier.id,
        "object": "promotion_tier",
        "name": tier.name,
        "banner": tier.banner,
        "discount": tier.discount.to_json(),
        "discount_amount": discount,
        "applied_discount_amount": discount,
        "order": context.order.calculated(0, discount),
        "hierarchy": tier.hierarchy,
        "metadata": tier.metadata,
        "campaign_id": tier.campaign_id,
    }


def promotions_validation(promotions: list[Json], context: Context) -> Json:
    return {"valid": bool(promotions), "promotions": promotions, "tracking_id": context.tracking_id}


def redeemable_json(item: Evaluated, context: Context, valid: bool, request_id: str) -> Json:
    """One element of ``redeemables``: INAPPLICABLE with ``result.error``, SKIPPED (another one failed)
    or APPLICABLE with its share of the order."""
    body: Json = {"id": item.id, "object": item.object}
    if item.failure is not None:
        body.update(status="INAPPLICABLE", result={"error": error_json(item.failure, request_id)})
        return body
    if not valid:
        body.update(status="SKIPPED", result={})
        return body
    assert item.target is not None
    body.update(
        status="APPLICABLE",
        order=context.order.calculated(item.discount_before, item.discount),
        applicable_to=empty_list(),
        inapplicable_to=empty_list(),
        metadata=item.target.metadata,
        categories=[],
        result={"discount": item.target.discount.to_json()},
    )
    return body


def redeemables_json(evaluated: Sequence[Evaluated], context: Context, request_id: str) -> list[Json]:
    valid = all(item.failure is None for item in evaluated)
    return [redeemable_json(item, context, valid, request_id) for item in evaluated]


def stackable_validation(
    evaluated: Sequence[Evaluated], context: Context, request_id: str, validation_id: str
) -> Json:
    valid = all(item.failure is None for item in evaluated)
    total = sum(item.discount for item in evaluated) if valid else 0
    body: Json = {
        "id": validation_id,
        "valid": valid,
        "redeemables": redeemables_json(evaluated, context, request_id),
        "order": context.order.calculated(0, total),
        "tracking_id": context.tracking_id,
        "stacking_rules": STACKING_RULES,
    }
    if context.session is not None:
        body["session"] = context.session
    return body


# --------------------------------------------------------------- redemption


def redemption(
    item: Evaluated, context: Context, *, redemption_id: str, parent_id: str | None, date: str
) -> Json:
    """A voucher's or tier's redemption object; a stacked one names its parent in ``redemption``."""
    assert item.target is not None
    return {
        "id": redemption_id,
        "object": "redemption",
        "date": date,
        "customer_id": _customer_id(context),
        "tracking_id": context.tracking_id,
        "metadata": context.metadata,
        "amount": item.discount,
        "redemption": parent_id,
        "result": "SUCCESS",
        "status": "SUCCEEDED",
        "order": context.order.calculated(item.discount_before, item.discount),
        "customer": _customer_ref(context.customer),
        "related_object_type": item.object,
        "related_object_id": item.target.id,
        item.object: item.target.to_json(),
    }


def parent_redemption(children: Sequence[Json], context: Context, *, parent_id: str, date: str) -> Json:
    total = sum(int(child["amount"]) for child in children)
    return {
        "id": parent_id,
        "object": "redemption",
        "date": date,
        "customer_id": _customer_id(context),
        "tracking_id": context.tracking_id,
        "metadata": context.metadata,
        "amount": total,
        "redemption": None,
        "result": "SUCCESS",
        "status": "SUCCEEDED",
        "order": context.order.calculated(0, total),
        "customer": _customer_ref(context.customer),
        "related_redemptions": {"redemptions": [{"id": c["id"], "date": c["date"]} for c in children]},
        "channel": {"channel_type": "API"},
    }


def stackable_redemption(children: Sequence[Json], parent: Json, context: Context) -> Json:
    return {
        "redemptions": list(children),
        "parent_redemption": parent,
        "order": context.order.calculated(0, int(parent["amount"])),
        "inapplicable_redeemables": [],
    }


# ------------------------------------------------------ publication, lists


def publication(
    voucher: Voucher,
    customer: Customer,
    payload_metadata: Json,
    *,
    ident: str,
    date: str,
    channel: object,
    source_id: object,
    tracking_id: str | None,
) -> Json:
    return {
        "id": ident,
        "object": "publication",
        "created_at": date,
        "customer_id": customer.id,
        "tracking_id": tracking_id,
        "metadata": payload_metadata,
        "channel": channel if isinstance(channel, str) else "API",
        "source_id": source_id if isinstance(source_id, str) else None,
        "result": "SUCCESS",
        "customer": customer.reference(),
        "vouchers_id": [voucher.id],
        "voucher": voucher.to_json(),
    }


def qualification_entry(target: Voucher | PromotionTier, context: Context, discount: int) -> Json:
    ident = target.code if isinstance(target, Voucher) else target.id
    entry: Json = {
        "id": ident,
        "object": "voucher" if isinstance(target, Voucher) else "promotion_tier",
        "created_at": iso(target.created_at),
        "order": context.order.calculated(0, discount),
        "applicable_to": empty_list(),
        "inapplicable_to": empty_list(),
        "metadata": target.metadata,
        "categories": [],
        "result": {"discount": target.discount.to_json()},
    }
    if isinstance(target, PromotionTier):
        entry.update(name=target.name, banner=target.banner, campaign_id=target.campaign_id)
        entry["campaign_name"] = target.campaign_name
    else:
        entry.update(campaign_name=target.campaign, campaign_id=target.campaign_id)
    return entry


def qualifications(data: list[Json], limit: int, context: Context) -> Json:
    return {
        "redeemables": {
            "object": "list",
            "data_ref": "data",
            "data": data[:limit],
            "total": min(len(data), limit),
            "has_more": len(data) > limit,
            "more_starting_after": None,
        },
        "tracking_id": context.tracking_id,
        "order": context.order.calculated(0, 0),
        "stacking_rules": STACKING_RULES,
    }


def tiers_list(chunk: Sequence[PromotionTier], total: int, has_more: bool) -> Json:
    return {
        "object": "list",
        "data_ref": "tiers",
        "tiers": [t.to_json() for t in chunk],
        "total": total,
        "has_more": has_more,
    }


def vouchers_list(chunk: Sequence[Voucher], total: int) -> Json:
    return {
        "object": "list",
        "data_ref": "vouchers",
        "vouchers": [v.to_json() for v in chunk],
        "total": total,
    }


def consents_list(consents: list[Json]) -> Json:
    return {
        "groups": empty_list(),
        "consents": {"object": "list", "data_ref": "data", "data": consents, "total": len(consents)},
    }


def event(stored: Json) -> Json:
    """What ``POST /events`` answers: the stored event without its id, metadata and date."""
    return {key: stored[key] for key in ("object", "type", "customer", "referral", "loyalty")}
