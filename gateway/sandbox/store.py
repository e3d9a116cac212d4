"""The sandbox's in-memory Voucherify: the project's data and the operations on it.

Loading lives in ``loading.py``, the rules in ``rules.py`` and Voucherify's JSON shapes in ``render.py``;
this module holds the state and ties them together. Every public method is synchronous and does its check
and its update with no await in between, so a redemption is atomic even when many requests race for the
last use of a code (the event loop runs one handler's store call to its end before the next).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.sandbox import render
from gateway.sandbox.errors import Json, SandboxError, invalid_payload
from gateway.sandbox.loading import new_id, parse_fixtures
from gateway.sandbox.models import (
    Campaign,
    Consent,
    Customer,
    Order,
    PromotionTier,
    Voucher,
    as_object,
    iso,
    to_int,
    tracking_id_for,
)
from gateway.sandbox.rules import (
    Context,
    Evaluated,
    check_tier,
    check_voucher,
    evaluate,
    first_failure,
    missing,
    tier_available,
)

Clock = Callable[[], datetime]

_CODE_CHARSET = string.ascii_uppercase + string.digits


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    @classmethod
    def from_mapping(cls, data: Json, *, clock: Clock = utcnow) -> Store:
        """Build a store from the fixtures mapping (see ``fixtures.yaml`` for the keys)."""
        seed = parse_fixtures(data, clock())
        store = cls(
            vouchers=seed.vouchers,
            campaigns=seed.campaigns,
            promotion_tiers=seed.promotion_tiers,
            consents=seed.consents,
            clock=clock,
        )
        for raw in seed.customers:
            store.upsert_customer(raw)
        return store

    # ------------------------------------------------------------- validation

    def validate_voucher(self, code: str, payload: Json, *, request_id: str = "") -> Json:
        """Legacy single-code validation: always a 200 answer, ``valid`` false with a reason when it fails
        (an unknown code's ``error.code`` is 404, a code that exists but does not apply has a 400)."""
        context = self._context(payload, create_customer=False)
        voucher = self.vouchers.get(code)
        failure = check_voucher(voucher, code, context.order, self.clock())
        if failure is not None:
            return render.voucher_invalid(code, failure, voucher, context, request_id)
        assert voucher is not None
        return render.voucher_valid(voucher, context, voucher.discount.amount_for(context.order.amount))

    def validate_promotions(self, payload: Json) -> Json:
        """Legacy promotion validation: every promotion tier that applies to the order."""
        context = self._context(payload, create_customer=False)
        now = self.clock()
        promotions = [
            render.promotion_entry(tier, context, tier.discount.amount_for(context.order.amount))
            for tier in self._tiers_by_hierarchy()
            if check_tier(tier, tier.id, context.order, now) is None
        ]
        return render.promotions_validation(promotions, context)

    def validate_stackable(self, payload: Json, *, request_id: str = "") -> Json:
        """POST /validations: the ``redeemables[]`` answer, APPLICABLE / INAPPLICABLE / SKIPPED each."""
        context = self._context(payload, create_customer=False)
        evaluated = self._evaluate(payload, context)
        return render.stackable_validation(evaluated, context, request_id, new_id("valid"))

    # ------------------------------------------------------------- redemption

    def redeem_stackable(self, payload: Json, *, request_id: str = "") -> Json:
        """POST /redemptions: all redeemables or none. Refused: the error of the first unknown code (404)
        or else of the first that does not apply (400), with every element's result in ``redeemables``."""
        context = self._context(payload, create_customer=True)
        evaluated = self._evaluate(payload, context)
        failure = first_failure(evaluated)
        if failure is not None:
            raise failure.error(redeemables=render.redeemables_json(evaluated, context, request_id))
        parent_id = new_id("r")
        children = [self._record(item, context, parent_id) for item in evaluated]
        parent = render.parent_redemption(
            children, context, parent_id=parent_id, date=iso(self.clock()) or ""
        )
        self.redemptions.append(parent)
        return render.stackable_redemption(children, parent, context)

    def redeem_voucher(self, code: str, payload: Json) -> Json:
        """Legacy single-code redemption; 404 for an unknown code, 400 for one that does not apply."""
        context = self._context(payload, create_customer=True)
        voucher = self.vouchers.get(code)
        failure = check_voucher(voucher, code, context.order, self.clock())
        return self._redeem_one(Evaluated("voucher", code, voucher, failure), context)

    def redeem_promotion_tier(self, tier_id: str, payload: Json) -> Json:
        context = self._context(payload, create_customer=True)
        tier = self.promotion_tiers.get(tier_id)
        failure = check_tier(tier, tier_id, context.order, self.clock())
        return self._redeem_one(Evaluated("promotion_tier", tier_id, tier, failure), context)

    def _redeem_one(self, item: Evaluated, context: Context) -> Json:
        if item.failure is not None:
            raise item.failure.error()
        assert item.target is not None
        item.discount = item.target.discount.amount_for(context.order.amount)
        return self._record(item, context, None)

    def _record(self, item: Evaluated, context: Context, parent_id: str | None) -> Json:
        """Count one use and log it; callers have checked that the use is allowed."""
        assert item.target is not None
        item.target.redeemed_quantity += 1
        redemption = render.redemption(
            item, context, redemption_id=new_id("r"), parent_id=parent_id, date=iso(self.clock()) or ""
        )
        self.redemptions.append(redemption)
        return redemption

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
            raise missing("campaign", campaign_name).error()
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
        publication = render.publication(
            voucher,
            customer,
            as_object(payload.get("metadata"), "metadata"),
            ident=new_id("pub"),
            date=iso(self.clock()) or "",
            channel=payload.get("channel"),
            source_id=source_id,
            tracking_id=tracking_id_for(customer.source_id) if customer.source_id else None,
        )
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
            candidates += self._tiers_by_hierarchy()
        now = self.clock()
        data: list[Json] = []
        for target in candidates:
            if isinstance(target, Voucher):
                failure = check_voucher(target, target.code, context.order, now)
            else:
                failure = check_tier(target, target.id, context.order, now)
            if failure is None:
                discount = target.discount.amount_for(context.order.amount)
                data.append(render.qualification_entry(target, context, discount))
        if str(options.get("sorting_rule", "")).upper() == "BEST_DEAL":
            data.sort(key=lambda e: -int(e["order"]["total_applied_discount_amount"]))
        return render.qualifications(data, limit, context)

    # ------------------------------------------------------------------ lists

    def list_promotion_tiers(self, *, is_available: bool | None, limit: int, page: int) -> Json:
        tiers = self._tiers_by_hierarchy()
        if is_available:
            now = self.clock()
            tiers = [t for t in tiers if tier_available(t, now)]
        chunk = tiers[(page - 1) * limit : page * limit]
        return render.tiers_list(chunk, len(tiers), page * limit < len(tiers))

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
        return render.vouchers_list(selected[(page - 1) * limit : page * limit], len(selected))

    def list_consents(self) -> Json:
        return render.consents_list([c.to_json() for c in self.consents.values()])

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
            raise missing("customer", customer_id).error()
        for key, value in payload.items():
            if not isinstance(value, bool):
                raise invalid_payload(f"{key} must be a boolean")
            if key == "unsubscribed":
                if value:
                    customer.consents = dict.fromkeys(self.consents, False)
                continue
            if key not in self.consents:
                raise missing("consent", key).error()
            customer.consents[key] = value
        customer.updated_at = self.clock()

    def track_event(self, payload: Json) -> Json:
        event = payload.get("event")
        if not isinstance(event, str) or not event:
            raise invalid_payload("event is required and must be a string")
        customer = self._customer(payload, create=True)
        if customer is None:
            raise SandboxError(400, "missing_customer", "Missing customer", "customer.source_id is required")
        stored: Json = {
            "id": new_id("evcus"),
            "object": "event",
            "type": event,
            "customer": customer.reference(),
            "metadata": as_object(payload.get("metadata"), "metadata"),
            "referral": payload.get("referral"),
            "loyalty": payload.get("loyalty"),
            "created_at": iso(self.clock()),
        }
        self.events.append(stored)
        return render.event(stored)

    # ---------------------------------------------------------------- helpers

    def _tiers_by_hierarchy(self) -> list[PromotionTier]:
        return sorted(self.promotion_tiers.values(), key=lambda t: t.hierarchy)

    def _evaluate(self, payload: Json, context: Context) -> list[Evaluated]:
        return evaluate(
            payload.get("redeemables"), self.vouchers, self.promotion_tiers, context.order, self.clock()
        )

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

    def _fresh_code(self, campaign: Campaign) -> str:
        while True:
            code = campaign.prefix + "".join(secrets.choice(_CODE_CHARSET) for _ in range(campaign.length))
            if code not in self.vouchers:
                return code
