"""Typed domain objects of the sandbox and their Voucherify JSON views. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.sandbox.errors import Json, SandboxError, invalid_payload


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_int(value: Any, name: str) -> int | None:
    """An amount as Voucherify takes it: an integer (cents), an integral float or a numeric string."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid_payload(f"{name} must be a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                raise invalid_payload(f"{name} must be a number") from None
            if as_float.is_integer():
                return int(as_float)
    raise invalid_payload(f"{name} must be an integer")


def as_object(value: Any, name: str) -> Json:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_payload(f"{name} must be an object")
    return value


def tracking_id_for(source_id: str) -> str:
    """Voucherify answers a hashed customer source id as ``tracking_id``."""
    return "track_" + hashlib.sha256(source_id.encode()).hexdigest()[:24]


def empty_list() -> Json:
    return {"object": "list", "data_ref": "data", "data": [], "total": 0}


@dataclass(frozen=True)
class Discount:
    """AMOUNT (``amount_off`` in cents) or PERCENT (``percent_off``, optional ``amount_limit`` in cents)."""

    type: str
    amount_off: int | None = None
    percent_off: float | None = None
    amount_limit: int | None = None
    effect: str = "APPLY_TO_ORDER"

    @classmethod
    def from_mapping(cls, data: Json) -> Discount:
        kind = str(data.get("type", "")).upper()
        if kind not in ("AMOUNT", "PERCENT"):
            raise ValueError(f"unsupported discount type {kind!r} (AMOUNT or PERCENT)")
        percent = data.get("percent_off")
        return cls(
            type=kind,
            amount_off=to_int(data.get("amount_off"), "amount_off"),
            percent_off=float(percent) if percent is not None else None,
            amount_limit=to_int(data.get("amount_limit"), "amount_limit"),
            effect=str(data.get("effect", "APPLY_TO_ORDER")),
        )

    def amount_for(self, base: int) -> int:
        """The discount on an order worth ``base`` cents, never more than ``base``."""
        if base <= 0:
            return 0
        if self.type == "AMOUNT":
            off = self.amount_off or 0
        else:
            off = round(base * (self.percent_off or 0.0) / 100)
            if self.amount_limit is not None:
                off = min(off, self.amount_limit)
        return max(0, min(off, base))

    def to_json(self) -> Json:
        body: Json = {"type": self.type, "effect": self.effect}
        if self.type == "AMOUNT":
            body["amount_off"] = self.amount_off
        else:
            body["percent_off"] = self.percent_off
            if self.amount_limit is not None:
                body["amount_limit"] = self.amount_limit
        return body


@dataclass(frozen=True)
class Conditions:
    """The validation rules the sandbox understands: bounds on the order amount (cents)."""

    min_order_amount: int | None = None
    max_order_amount: int | None = None

    @classmethod
    def from_mapping(cls, data: Json | None) -> Conditions:
        data = data or {}
        return cls(
            min_order_amount=to_int(data.get("min_order_amount"), "min_order_amount"),
            max_order_amount=to_int(data.get("max_order_amount"), "max_order_amount"),
        )

    def allows(self, order: Order) -> bool:
        if self.min_order_amount is not None and order.amount < self.min_order_amount:
            return False
        return not (self.max_order_amount is not None and order.amount > self.max_order_amount)


@dataclass(frozen=True)
class Order:
    """An order as sent in a request; ``amount`` falls back to the items' amounts or price * quantity."""

    amount: int
    items: tuple[Json, ...] = ()
    metadata: Json = field(default_factory=dict)
    source_id: str | None = None
    id: str | None = None

    @classmethod
    def from_payload(cls, payload: Any) -> Order:
        data = as_object(payload, "order")
        items: list[Json] = []
        raw_items = data.get("items") or []
        if not isinstance(raw_items, list):
            raise invalid_payload("order.items must be an array")
        for index, raw in enumerate(raw_items):
            item = dict(as_object(raw, f"order.items[{index}]"))
            quantity = to_int(item.get("quantity"), f"order.items[{index}].quantity")
            price = to_int(item.get("price"), f"order.items[{index}].price")
            amount = to_int(item.get("amount"), f"order.items[{index}].amount")
            if amount is None and price is not None:
                amount = price * (quantity if quantity is not None else 1)
            for key, value in (("quantity", quantity), ("price", price), ("amount", amount)):
                if value is not None:
                    item[key] = value
            item["object"] = "order_item"
            items.append(item)
        amount = to_int(data.get("amount"), "order.amount")
        if amount is None:
            amount = sum(int(item.get("amount", 0)) for item in items)
        if amount < 0:
            raise SandboxError(400, "invalid_amount", "Invalid amount", "order amount must not be negative")
        source_id = data.get("source_id")
        order_id = data.get("id")
        return cls(
            amount=amount,
            items=tuple(items),
            metadata=as_object(data.get("metadata"), "order.metadata"),
            source_id=str(source_id) if source_id is not None else None,
            id=str(order_id) if order_id is not None else None,
        )

    def calculated(self, discount_before: int, applied: int) -> Json:
        """Voucherify's "order calculated" view after ``discount_before`` + ``applied`` cents off."""
        total_discount = min(self.amount, discount_before + applied)
        body: Json = {
            "amount": self.amount,
            "initial_amount": self.amount,
            "discount_amount": total_discount,
            "items_discount_amount": 0,
            "total_discount_amount": total_discount,
            "total_amount": self.amount - total_discount,
            "applied_discount_amount": applied,
            "items_applied_discount_amount": 0,
            "total_applied_discount_amount": applied,
            "items": list(self.items),
            "metadata": self.metadata,
            "object": "order",
        }
        if self.id is not None:
            body["id"] = self.id
        if self.source_id is not None:
            body["source_id"] = self.source_id
        return body


@dataclass
class Voucher:
    code: str
    id: str
    discount: Discount
    created_at: datetime
    campaign: str | None = None
    campaign_id: str | None = None
    category: str | None = None
    start_date: datetime | None = None
    expiration_date: datetime | None = None
    active: bool = True
    quantity: int | None = None
    redeemed_quantity: int = 0
    metadata: Json = field(default_factory=dict)
    conditions: Conditions = field(default_factory=Conditions)
    holder_id: str | None = None
    publications: int = 0

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "code": self.code,
            "campaign": self.campaign,
            "campaign_id": self.campaign_id,
            "category": self.category,
            "type": "DISCOUNT_VOUCHER",
            "discount": self.discount.to_json(),
            "gift": None,
            "loyalty_card": None,
            "start_date": iso(self.start_date),
            "expiration_date": iso(self.expiration_date),
            "active": self.active,
            "metadata": self.metadata,
            "is_referral_code": False,
            "holder_id": self.holder_id,
            "created_at": iso(self.created_at),
            "redemption": {
                "quantity": self.quantity,
                "redeemed_quantity": self.redeemed_quantity,
                "object": "list",
                "url": f"/v1/vouchers/{self.code}/redemptions?page=1&limit=10",
            },
            "publish": {
                "object": "list",
                "count": self.publications,
                "url": f"/v1/vouchers/{self.code}/publications?page=1&limit=10",
            },
            "object": "voucher",
        }


@dataclass
class Campaign:
    """A campaign that publication hands codes out from (``prefix`` + ``length`` random characters)."""

    id: str
    name: str
    discount: Discount
    prefix: str = ""
    length: int = 8
    vouchers_count: int | None = None
    conditions: Conditions = field(default_factory=Conditions)
    expiration_date: datetime | None = None
    issued: int = 0


@dataclass
class PromotionTier:
    id: str
    name: str
    campaign_id: str
    campaign_name: str
    discount: Discount
    created_at: datetime
    banner: str = ""
    conditions: Conditions = field(default_factory=Conditions)
    active: bool = True
    start_date: datetime | None = None
    expiration_date: datetime | None = None
    hierarchy: int = 1
    metadata: Json = field(default_factory=dict)
    redeemed_quantity: int = 0

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "object": "promotion_tier",
            "name": self.name,
            "banner": self.banner,
            "created_at": iso(self.created_at),
            "campaign": {
                "id": self.campaign_id,
                "name": self.campaign_name,
                "start_date": iso(self.start_date),
                "expiration_date": iso(self.expiration_date),
                "active": self.active,
                "object": "campaign",
            },
            "campaign_id": self.campaign_id,
            "active": self.active,
            "start_date": iso(self.start_date),
            "expiration_date": iso(self.expiration_date),
            "hierarchy": self.hierarchy,
            "action": {"discount": self.discount.to_json()},
            "metadata": self.metadata,
            "validation_rule_assignments": empty_list(),
            "summary": {"redemptions": {"total_redeemed": self.redeemed_quantity}},
        }


@dataclass(frozen=True)
class Consent:
    id: str
    name: str
    description: str
    category: str
    created_at: datetime

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "created_at": iso(self.created_at),
            "updated_at": None,
            "object": "consent",
        }


@dataclass
class Customer:
    id: str
    source_id: str | None
    created_at: datetime
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    birthdate: str | None = None
    address: Json | None = None
    metadata: Json = field(default_factory=dict)
    consents: dict[str, bool] = field(default_factory=dict)
    updated_at: datetime | None = None

    def reference(self) -> Json:
        return {"id": self.id, "source_id": self.source_id, "object": "customer"}

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "source_id": self.source_id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "birthdate": self.birthdate,
            "address": self.address,
            "metadata": self.metadata,
            "system_metadata": {
                "consents": {k: {"date": None, "value": v} for k, v in self.consents.items()}
            },
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "object": "customer",
        }
