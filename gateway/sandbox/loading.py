"""Loading the fixtures file (``fixtures.yaml``'s shape) into the sandbox's domain objects."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.sandbox.errors import Json
from gateway.sandbox.models import Campaign, Conditions, Consent, Discount, PromotionTier, Voucher, to_int

DEFAULT_FIXTURES = Path(__file__).with_name("fixtures.yaml")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Seed:
    """The parsed fixtures; customers stay payloads, created through the store like any other."""

    vouchers: dict[str, Voucher] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    promotion_tiers: dict[str, PromotionTier] = field(default_factory=dict)
    consents: dict[str, Consent] = field(default_factory=dict)
    customers: list[Json] = field(default_factory=list)


def read_fixtures(path: Path | None = None) -> Json:
    """The fixtures file's mapping (the built-in one by default)."""
    source = path or DEFAULT_FIXTURES
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the fixtures file must hold a mapping")
    return data


def parse_date(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _voucher(raw: Json, now: datetime) -> Voucher:
    redemption = raw.get("redemption") or {}
    return Voucher(
        code=str(raw["code"]),
        id=str(raw.get("id") or new_id("v")),
        discount=Discount.from_mapping(raw["discount"]),
        created_at=now,
        campaign=raw.get("campaign"),
        campaign_id=raw.get("campaign_id"),
        category=raw.get("category"),
        start_date=parse_date(raw.get("start_date")),
        expiration_date=parse_date(raw.get("expiration_date")),
        active=bool(raw.get("active", True)),
        quantity=to_int(redemption.get("quantity"), "redemption.quantity"),
        redeemed_quantity=int(redemption.get("redeemed_quantity", 0)),
        metadata=dict(raw.get("metadata") or {}),
        conditions=Conditions.from_mapping(raw.get("conditions")),
    )


def _campaign(raw: Json) -> Campaign:
    code_config = raw.get("code_config") or {}
    return Campaign(
        id=str(raw.get("id") or new_id("camp")),
        name=str(raw["name"]),
        discount=Discount.from_mapping(raw["discount"]),
        prefix=str(code_config.get("prefix", "")),
        length=int(code_config.get("length", 8)),
        vouchers_count=to_int(raw.get("vouchers_count"), "vouchers_count"),
        conditions=Conditions.from_mapping(raw.get("conditions")),
        expiration_date=parse_date(raw.get("expiration_date")),
    )


def _tier(raw: Json, now: datetime) -> PromotionTier:
    campaign_data = raw.get("campaign") or {}
    return PromotionTier(
        id=str(raw["id"]),
        name=str(raw.get("name", raw["id"])),
        campaign_id=str(campaign_data.get("id") or new_id("camp")),
        campaign_name=str(campaign_data.get("name", "")),
        discount=Discount.from_mapping(raw["discount"]),
        created_at=now,
        banner=str(raw.get("banner", "")),
        conditions=Conditions.from_mapping(raw.get("conditions")),
        active=bool(raw.get("active", True)),
        start_date=parse_date(raw.get("start_date")),
        expiration_date=parse_date(raw.get("expiration_date")),
        hierarchy=int(raw.get("hierarchy", 1)),
        metadata=dict(raw.get("metadata") or {}),
    )


def _consent(raw: Json, now: datetime) -> Consent:
    return Consent(
        id=str(raw["id"]),
        name=str(raw.get("name", raw["id"])),
        description=str(raw.get("description", "")),
        category=str(raw.get("category", "")),
        created_at=now,
    )


def parse_fixtures(data: Json, now: datetime) -> Seed:
    """Build the domain objects from the fixtures mapping (see ``fixtures.yaml`` for the keys)."""
    seed = Seed(customers=list(data.get("customers") or []))
    for raw in data.get("vouchers") or []:
        voucher = _voucher(raw, now)
        seed.vouchers[voucher.code] = voucher
    for raw in data.get("campaigns") or []:
        campaign = _campaign(raw)
        seed.campaigns[campaign.name] = campaign
    for raw in data.get("promotion_tiers") or []:
        tier = _tier(raw, now)
        seed.promotion_tiers[tier.id] = tier
    for raw in data.get("consents") or []:
        consent = _consent(raw, now)
        seed.consents[consent.id] = consent
    return seed
