"""The sandbox's in-memory Voucherify: validation, redemption, publication, qualification, customers.

Every public method is synchronous and does its check and its update with no await in between, so a
redemption is atomic even when many requests race for the last use of a code.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.sandbox.errors import Json, SandboxError, invalid_payload, not_found
from gateway.sandbox.models import (
    Campaign,
    Conditions,
    Consent,
    Customer,
    Discount,
    Order,
    PromotionTier,
    Voucher,
    as_object,
    empty_list,
    iso,
    to_int,
    tracking_id_for,
)

Clock = Callable[[], datetime]

MAX_REDEEMABLES = 30
STACKING_RULES: Json = {
    "redeemables_limit": MAX_REDEEMABLES,
    "applicable_redeemables_limit": 5,
    "applicable_exclusive_redeemables_limit": 1,
    "exclusive_categories": [],
    "joint_categories": [],
    "redeemables_application_mode": "ALL",
    "redeemables_sorting_rule": "REQUESTED_ORDER",
}
_CODE_CHARSET = string.ascii_uppercase + string.digits


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


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

    def error(self) -> SandboxError:
        return SandboxError(
            self.status,
            self.key,
            self.message,
            self.details,
            resource_id=self.resource_id,
            resource_type=self.resource_type,
        )

    def error_json(self) -> Json:
        return {"code": self.status, "key": self.key, "message": self.message, "details": self.details}


def _failure(key: str, reason: str, details: str, resource_id: str, resource_type: str) -> Failure:
    return Failure(400, key, reason, reason, details, resource_id, resource_type)


def _missing(resource_type: str, resource_id: str) -> Failure:
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


@dataclass
class Store:
    """The sandbox project's data. Build it with :meth:`from_mapping` (the fixtures file's shape)."""

    vouchers: dict[str, Voucher] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    promotion_tiers: dict[str, PromotionTier] = field(default_factory=dict)
    consents: dict[str, Consent] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    clock: Clock = utcnow
    redemptions: list[Json] = field(default_factory=list)
    publications: list[Json] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    _joined: dict[tuple[str, str], Json] = field(default_factory=dict)
    _publication_sources: dict[str, Json] = field(default_factory=dict)

    # ----------------------------------------------------------------- loading

    @classmethod
    def from_mapping(cls, data: Json, *, clock: Clock = utcnow) -> Store:
        """Build a store from the fixtures mapping (see ``fixtures.yaml`` for the keys)."""
        store = cls(clock=clock)
        now = clock()
        for raw in data.get("vouchers") or []:
            redemption = raw.get("redemption") or {}
            voucher = Voucher(
                code=str(raw["code"]),
                id=str(raw.get("id") or new_id("v")),
                discount=Discount.from_mapping(raw["discount"]),
                created_at=now,
                campaign=raw.get("campaign"),
                campaign_id=raw.get("campaign_id"),
                category=raw.get("category"),
                start_date=_parse_date(raw.get("start_date")),
                expiration_date=_parse_date(raw.get("expiration_date")),
                active=bool(raw.get("active", True)),
                quantity=to_int(redemption.get("quantity"), "redemption.quantity"),
                redeemed_quantity=int(redemption.get("redeemed_quantity", 0)),
                metadata=dict(raw.get("metadata") or {}),
                conditions=Conditions.from_mapping(raw.get("conditions")),
            )
            store.vouchers[voucher.code] = voucher
        for raw in data.get("campaigns") or []:
            code_config = raw.get("code_config") or {}
            campaign = Campaign(
                id=str(raw.get("id") or new_id("camp")),
                name=str(raw["name"]),
                discount=Discount.from_mapping(raw["discount"]),
                prefix=str(code_config.get("prefix", "")),
                length=int(code_config.get("length", 8)),
                vouchers_count=to_int(raw.get("vouchers_count"), "vouchers_count"),
                conditions=Conditions.from_mapping(raw.get("conditions")),
                expiration_date=_parse_date(raw.get("expiration_date")),
            )
            store.campaigns[campaign.name] = campaign
        for raw in data.get("promotion_tiers") or []:
            campaign_data = raw.get("campaign") or {}
            tier = PromotionTier(
                id=str(raw["id"]),
                name=str(raw.get("name", raw["id"])),
                campaign_id=str(campaign_data.get("id") or new_id("camp")),
                campaign_name=str(campaign_data.get("name", "")),
                discount=Discount.from_mapping(raw["discount"]),
                created_at=now,
                banner=str(raw.get("banner", "")),
                conditions=Conditions.from_mapping(raw.get("conditions")),
                active=bool(raw.get("active", True)),
                start_date=_parse_date(raw.get("start_date")),
                expiration_date=_parse_date(raw.get("expiration_date")),
                hierarchy=int(raw.get("hierarchy", 1)),
                metadata=dict(raw.get("metadata") or {}),
            )
            store.promotion_tiers[tier.id] = tier
        for raw in data.get("consents") or []:
            consent = Consent(
                id=str(raw["id"]),
                name=str(raw.get("name", raw["id"])),
                description=str(raw.get("description", "")),
                category=str(raw.get("category", "")),
                created_at=now,
            )
            store.consents[consent.id] = consent
        for raw in data.get("customers") or []:
            store.upsert_customer(raw)
        return store

    # ------------------------------------------------------------- validation

    def validate_voucher(self, code: str, payload: Json) -> Json:
        """Legacy single-code validation: always an answer, ``valid`` false with a reason when it fails."""
        context = self._context(payload, create_customer=False)
        voucher, failure = self._check_voucher(code, context.order)
        if failure is not None or voucher is None:
            assert failure is not None
            return {
                "valid": False,
                "code": code,
                "reason": failure.reason,
                "error": failure.error_json(),
                "tracking_id": context.tracking_id,
                "customer_id": context.customer.id if context.customer else None,
                "metadata": voucher.metadata if voucher else {},
            }
        discount = voucher.discount.amount_for(context.order.amount)
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

    def validate_promotions(self, payload: Json) -> Json:
        """Legacy promotion validation: every promotion tier that applies to the order."""
        context = self._context(payload, create_customer=False)
        promotions: list[Json] = []
        for tier in sorted(self.promotion_tiers.values(), key=lambda t: t.hierarchy):
            if self._check_tier(tier.id, context.order)[1] is not None:
                continue
            discount = tier.discount.amount_for(context.order.amount)
            promotions.append(
                {
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
            )
        return {"valid": bool(promotions), "promotions": promotions, "tracking_id": context.tracking_id}

    def validate_stackable(self, payload: Json) -> Json:
        """POST /validations: the ``redeemables[]`` answer, APPLICABLE / INAPPLICABLE / SKIPPED each."""
        context = self._context(payload, create_customer=False)
        evaluated = self._evaluate(payload, context)
        valid = all(item.failure is None for item in evaluated)
        total = sum(item.discount for item in evaluated) if valid else 0
        body: Json = {
            "valid": valid,
            "redeemables": [self._redeemable_json(item, context, valid) for item in evaluated],
            "order": context.order.calculated(0, total),
            "tracking_id": context.tracking_id,
            "stacking_rules": STACKING_RULES,
        }
        if context.session is not None:
            body["session"] = context.session
        return body

    # ------------------------------------------------------------- redemption

    def redeem_stackable(self, payload: Json) -> Json:
        """POST /redemptions: all redeemables or none; the first failure is the error."""
        context = self._context(payload, create_customer=True)
        evaluated = self._evaluate(payload, context)
        for item in evaluated:
            if item.failure is not None:
                raise item.failure.error()
        parent_id = new_id("r")
        date = iso(self.clock())
        children = [self._record_redemption(item, context, parent_id) for item in evaluated]
        total = sum(item.discount for item in evaluated)
        parent: Json = {
            "id": parent_id,
            "object": "redemption",
            "date": date,
            "customer_id": context.customer.id if context.customer else None,
            "tracking_id": context.tracking_id,
            "metadata": context.metadata,
            "amount": total,
            "redemption": None,
            "result": "SUCCESS",
            "status": "SUCCEEDED",
            "order": context.order.calculated(0, total),
            "customer": context.customer.reference() if context.customer else None,
            "related_redemptions": {"redemptions": [{"id": c["id"], "date": c["date"]} for c in children]},
            "channel": {"channel_type": "API"},
        }
        self.redemptions.append(parent)
        return {
            "redemptions": children,
            "parent_redemption": parent,
            "order": context.order.calculated(0, total),
            "inapplicable_redeemables": [],
        }

    def redeem_voucher(self, code: str, payload: Json) -> Json:
        """Legacy single-code redemption; 404 for an unknown code, 400 for an invalid one."""
        context = self._context(payload, create_customer=True)
        return self._redeem_one("voucher", code, *self._check_voucher(code, context.order), context)

    def redeem_promotion_tier(self, tier_id: str, payload: Json) -> Json:
        context = self._context(payload, create_customer=True)
        return self._redeem_one("promotion_tier", tier_id, *self._check_tier(tier_id, context.order), context)

    def _redeem_one(
        self,
        kind: str,
        ident: str,
        target: Voucher | PromotionTier | None,
        failure: Failure | None,
        context: Context,
    ) -> Json:
        if failure is not None:
            raise failure.error()
        assert target is not None
        discount = target.discount.amount_for(context.order.amount)
        return self._record_redemption(Evaluated(kind, ident, target, discount=discount), context, None)

    # ------------------------------------------------------------ publication

    def publish(self, campaign_name: str | None, payload: Json, *, join_once: bool) -> Json:
        """Hand out a fresh code from a campaign to a customer (the same one again when ``join_once``)."""
        if not campaign_name:
            raise SandboxError(
                400, "invalid_publish_params", "Invalid publish params", "campaign name is required"
            )
        campaign = self.campaigns.get(campaign_name) or next(
            (c for c in self.campaigns.values() if c.id == campaign_name), None
        )
        if campaign is None:
            raise not_found("campaign", campaign_name)
        customer = self._customer(payload, create=True)
        if customer is None:
            raise SandboxError(
                400, "missing_customer", "Missing customer", "publication requires customer.source_id or id"
            )
        source_id = payload.get("source_id")
        if isinstance(source_id, str) and source_id in self._publication_sources:
            return self._publication_sources[source_id]
        if join_once and (campaign.id, customer.id) in self._joined:
            return self._joined[(campaign.id, customer.id)]
        if campaign.vouchers_count is not None and campaign.issued >= campaign.vouchers_count:
            raise SandboxError(
                400,
                "no_voucher_suitable_for_publication",
                "Couldn't find any voucher suitable for publication.",
                f"campaign {campaign.name} has no codes left to publish",
                resource_id=campaign.id,
                resource_type="campaign",
            )
        voucher = Voucher(
            code=self._fresh_code(campaign),
            id=new_id("v"),
            discount=campaign.discount,
            created_at=self.clock(),
            campaign=campaign.name,
            campaign_id=campaign.id,
            expiration_date=campaign.expiration_date,
            conditions=campaign.conditions,
            holder_id=customer.id,
            publications=1,
        )
        self.vouchers[voucher.code] = voucher
        campaign.issued += 1
        channel = payload.get("channel")
        publication: Json = {
            "id": new_id("pub"),
            "object": "publication",
            "created_at": iso(self.clock()),
            "customer_id": customer.id,
            "tracking_id": tracking_id_for(customer.source_id) if customer.source_id else None,
            "metadata": as_object(payload.get("metadata"), "metadata"),
            "channel": channel if isinstance(channel, str) else "API",
            "source_id": source_id if isinstance(source_id, str) else None,
            "result": "SUCCESS",
            "customer": customer.reference(),
            "vouchers_id": [voucher.id],
            "voucher": voucher.to_json(),
        }
        self.publications.append(publication)
        self._joined.setdefault((campaign.id, customer.id), publication)
        if isinstance(source_id, str):
            self._publication_sources[source_id] = publication
        return publication

    # --------------------------------------------------------- qualification

    def qualifications(self, payload: Json) -> Json:
        """Every voucher and promotion tier the customer's order qualifies for."""
        context = self._context(payload, create_customer=False)
        scenario = str(payload.get("scenario") or "ALL").upper()
        options = as_object(payload.get("options"), "options")
        limit = to_int(options.get("limit"), "options.limit") or 5
        if not 1 <= limit <= 50:
            raise invalid_payload("options.limit must be between 1 and 50")
        holder = context.customer.id if context.customer else None
        candidates: list[Voucher | PromotionTier] = []
        if scenario in ("ALL", "CUSTOMER_WALLET"):
            candidates += [v for v in self.vouchers.values() if holder is not None and v.holder_id == holder]
        if scenario in ("ALL", "AUDIENCE_ONLY"):
            candidates += [v for v in self.vouchers.values() if v.campaign_id is None]
            tiers = sorted(self.promotion_tiers.values(), key=lambda t: t.hierarchy)
            candidates += tiers
        data: list[Json] = []
        for target in candidates:
            if isinstance(target, Voucher):
                failure = self._check_voucher(target.code, context.order)[1]
                kind, ident = "voucher", target.code
            else:
                failure = self._check_tier(target.id, context.order)[1]
                kind, ident = "promotion_tier", target.id
            if failure is not None:
                continue
            discount = target.discount.amount_for(context.order.amount)
            entry: Json = {
                "id": ident,
                "object": kind,
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
            data.append(entry)
        if str(options.get("sorting_rule", "")).upper() == "BEST_DEAL":
            data.sort(key=lambda e: -int(e["order"]["total_applied_discount_amount"]))
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

    # ------------------------------------------------------------------ lists

    def list_promotion_tiers(self, *, is_available: bool | None, limit: int, page: int) -> Json:
        tiers = sorted(self.promotion_tiers.values(), key=lambda t: t.hierarchy)
        if is_available:
            tiers = [t for t in tiers if self._tier_available(t)]
        chunk = tiers[(page - 1) * limit : page * limit]
        return {
            "object": "list",
            "data_ref": "tiers",
            "tiers": [t.to_json() for t in chunk],
            "total": len(tiers),
            "has_more": page * limit < len(tiers),
        }

    def list_vouchers(
        self, *, campaign: str | None, category: str | None, customer: str | None, limit: int, page: int
    ) -> Json:
        vouchers: Iterable[Voucher] = self.vouchers.values()
        if campaign:
            vouchers = [v for v in vouchers if campaign in (v.campaign, v.campaign_id)]
        if category:
            vouchers = [v for v in vouchers if v.category == category]
        if customer:
            found = self._find_customer(customer)
            vouchers = [v for v in vouchers if found is not None and v.holder_id == found.id]
        selected = list(vouchers)
        chunk = selected[(page - 1) * limit : page * limit]
        return {
            "object": "list",
            "data_ref": "vouchers",
            "vouchers": [v.to_json() for v in chunk],
            "total": len(selected),
        }

    def list_consents(self) -> Json:
        consents = [c.to_json() for c in self.consents.values()]
        return {
            "groups": empty_list(),
            "consents": {"object": "list", "data_ref": "data", "data": consents, "total": len(consents)},
        }

    # ------------------------------------------------------ customers, events

    def upsert_customer(self, payload: Json) -> Json:
        """Create a customer, or update the one with the same ``source_id``."""
        source_id = payload.get("source_id")
        if source_id is not None and not isinstance(source_id, str):
            raise SandboxError(400, "invalid_customer", "Invalid customer", "source_id must be a string")
        customer = self._find_customer(source_id) if source_id else None
        now = self.clock()
        if customer is None:
            customer = Customer(id=new_id("cust"), source_id=source_id, created_at=now)
            self.customers[customer.id] = customer
        else:
            customer.updated_at = now
        for name in ("name", "email", "phone", "birthdate"):
            value = payload.get(name)
            if value is not None:
                setattr(customer, name, str(value))
        if payload.get("address") is not None:
            customer.address = as_object(payload.get("address"), "address")
        if payload.get("metadata") is not None:
            customer.metadata = {**customer.metadata, **as_object(payload.get("metadata"), "metadata")}
        return customer.to_json()

    def update_consents(self, customer_id: str, payload: Json) -> None:
        customer = self._find_customer(customer_id)
        if customer is None:
            raise not_found("customer", customer_id)
        for key, value in payload.items():
            if not isinstance(value, bool):
                raise invalid_payload(f"{key} must be a boolean")
            if key == "unsubscribed":
                if value:
                    customer.consents = dict.fromkeys(self.consents, False)
                continue
            if key not in self.consents:
                raise not_found("consent", key)
            customer.consents[key] = value
        customer.updated_at = self.clock()

    def track_event(self, payload: Json) -> Json:
        event = payload.get("event")
        if not isinstance(event, str) or not event:
            raise invalid_payload("event is required and must be a string")
        customer = self._customer(payload, create=True)
        if customer is None:
            raise SandboxError(400, "missing_customer", "Missing customer", "customer.source_id is required")
        referral = payload.get("referral")
        loyalty = payload.get("loyalty")
        stored: Json = {
            "id": new_id("evcus"),
            "object": "event",
            "type": event,
            "customer": customer.reference(),
            "metadata": as_object(payload.get("metadata"), "metadata"),
            "referral": referral,
            "loyalty": loyalty,
            "created_at": iso(self.clock()),
        }
        self.events.append(stored)
        return {
            "object": "event",
            "type": event,
            "customer": customer.reference(),
            "referral": referral,
            "loyalty": loyalty,
        }

    # ---------------------------------------------------------------- helpers

    def _context(self, payload: Json, *, create_customer: bool) -> Context:
        order = Order.from_payload(payload.get("order"))
        customer = self._customer(payload, create=create_customer)
        tracking_id = payload.get("tracking_id")
        if not isinstance(tracking_id, str) or not tracking_id:
            source_id = as_object(payload.get("customer"), "customer").get("source_id")
            tracking_id = tracking_id_for(str(source_id)) if source_id else None
        session_data = as_object(payload.get("session"), "session")
        session: Json | None = None
        if session_data:
            session = {
                "key": str(session_data.get("key") or new_id("ssn")),
                "type": str(session_data.get("type", "LOCK")),
                "ttl": to_int(session_data.get("ttl"), "session.ttl") or 7,
                "ttl_unit": str(session_data.get("ttl_unit") or "DAYS"),
            }
        metadata = as_object(payload.get("metadata"), "metadata")
        return Context(order, customer, tracking_id, metadata, session)

    def _find_customer(self, id_or_source_id: str) -> Customer | None:
        found = self.customers.get(id_or_source_id)
        if found is not None:
            return found
        return next((c for c in self.customers.values() if c.source_id == id_or_source_id), None)

    def _customer(self, payload: Json, *, create: bool) -> Customer | None:
        data = as_object(payload.get("customer"), "customer")
        key = data.get("id") or data.get("source_id")
        if not key:
            return None
        found = self._find_customer(str(key))
        if found is None and create and data.get("source_id"):
            created = self.upsert_customer(data)
            found = self.customers[created["id"]]
        return found

    def _check_voucher(self, code: str, order: Order) -> tuple[Voucher | None, Failure | None]:
        voucher = self.vouchers.get(code)
        if voucher is None:
            return None, _missing("voucher", code)
        now = self.clock()
        if not voucher.active:
            return voucher, _failure(
                "voucher_disabled", "voucher is disabled", f"{code} is disabled", code, "voucher"
            )
        if voucher.start_date is not None and now < voucher.start_date:
            return voucher, _failure(
                "voucher_not_active", "voucher not active", f"{code} is not active yet", code, "voucher"
            )
        if voucher.expiration_date is not None and now >= voucher.expiration_date:
            return voucher, _failure(
                "voucher_expired", "voucher expired", f"{code} has expired", code, "voucher"
            )
        if voucher.quantity is not None and voucher.redeemed_quantity >= voucher.quantity:
            details = f"{code} has been redeemed the maximum number of times ({voucher.quantity})"
            return voucher, _failure("quantity_exceeded", "quantity exceeded", details, code, "voucher")
        if not voucher.conditions.allows(order):
            details = f"the order does not meet the validation rules of {code}"
            return voucher, _failure(
                "order_rules_violated", "order does not match validation rules", details, code, "voucher"
            )
        return voucher, None

    def _tier_available(self, tier: PromotionTier) -> bool:
        now = self.clock()
        if not tier.active:
            return False
        if tier.start_date is not None and now < tier.start_date:
            return False
        return not (tier.expiration_date is not None and now >= tier.expiration_date)

    def _check_tier(self, tier_id: str, order: Order) -> tuple[PromotionTier | None, Failure | None]:
        tier = self.promotion_tiers.get(tier_id)
        if tier is None:
            return None, _missing("promotion_tier", tier_id)
        if not tier.active:
            return tier, _failure(
                "promotion_inactive",
                "promotion inactive",
                f"{tier_id} is inactive",
                tier_id,
                "promotion_tier",
            )
        if not self._tier_available(tier):
            details = f"{tier_id} is not active in the current timeframe"
            return tier, _failure(
                "promotion_not_active_now", "promotion not active now", details, tier_id, "promotion_tier"
            )
        if not tier.conditions.allows(order):
            details = f"the order does not meet the validation rules of {tier_id}"
            return tier, _failure(
                "order_rules_violated",
                "order does not match validation rules",
                details,
                tier_id,
                "promotion_tier",
            )
        return tier, None

    def _evaluate(self, payload: Json, context: Context) -> list[Evaluated]:
        raw = payload.get("redeemables")
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
            failure: Failure | None
            if kind == "voucher":
                target, failure = self._check_voucher(ident, context.order)
            elif kind == "promotion_tier":
                target, failure = self._check_tier(ident, context.order)
            else:
                target, failure = None, _missing(kind, ident)
            item = Evaluated(kind, ident, target, failure, discount_before=running)
            if failure is None and target is not None:
                item.discount = target.discount.amount_for(context.order.amount - running)
                running += item.discount
            evaluated.append(item)
        return evaluated

    def _redeemable_json(self, item: Evaluated, context: Context, valid: bool) -> Json:
        body: Json = {"id": item.id, "object": item.object}
        if item.failure is not None:
            body.update(status="INAPPLICABLE", result={"error": item.failure.error_json()})
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

    def _record_redemption(self, item: Evaluated, context: Context, parent_id: str | None) -> Json:
        """Count one use and log it; callers have checked that the use is allowed."""
        assert item.target is not None
        item.target.redeemed_quantity += 1
        redemption: Json = {
            "id": new_id("r"),
            "object": "redemption",
            "date": iso(self.clock()),
            "customer_id": context.customer.id if context.customer else None,
            "tracking_id": context.tracking_id,
            "metadata": context.metadata,
            "amount": item.discount,
            "redemption": parent_id,
            "result": "SUCCESS",
            "status": "SUCCEEDED",
            "order": context.order.calculated(item.discount_before, item.discount),
            "customer": context.customer.reference() if context.customer else None,
            "related_object_type": item.object,
            "related_object_id": item.target.id,
            item.object: item.target.to_json(),
        }
        self.redemptions.append(redemption)
        return redemption

    def _fresh_code(self, campaign: Campaign) -> str:
        while True:
            code = campaign.prefix + "".join(secrets.choice(_CODE_CHARSET) for _ in range(campaign.length))
            if code not in self.vouchers:
                return code


def _parse_date(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
