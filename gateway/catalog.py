"""The client-side operations the gateway exposes: their routes, danger-zone options, server-side twins and
path matching: every fact about an operation is in its one row of the table below.

Nothing outside this table ever reaches the upstream. Matching works on the raw (still percent-encoded)
path: static segments must be equal to the letter, so `%76alidate`, `Validate` or `..` never match, and
path parameters are checked so that no decoded value can climb out of its segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple
from urllib.parse import unquote_to_bytes


class DangerOption(StrEnum):
    REDEEM = "redeem"
    PUBLISH = "publish"
    LIST_VOUCHERS = "list_vouchers"
    CREATE_CUSTOMERS = "create_customers"
    CREATE_LOYALTY_REFERRAL_EVENTS = "create_loyalty_referral_events"


class Twin(StrEnum):
    """The shape of an operation's twin on Voucherify's server-side API (/v1), used in server mode."""

    SAME = "same"  # same method, path under /v1, body and query byte for byte
    CODE_IN_PATH = "code_in_path"  # POST /redeem?code=C -> POST /v1/vouchers/{C}/redemption
    PUBLICATION = "publication"  # POST /publish?campaign=N -> POST /v1/publications, campaign into the body
    QUERY_TO_BODY = "query_to_body"  # GET /validate?… -> POST /v1/…/validate(ion), the query as a JSON body


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    danger: DangerOption | None = None  # needed for every call of the operation
    body_danger: DangerOption | None = (
        None  # needed when the JSON body has a non-null key of `body_danger_keys`
    )
    body_danger_keys: tuple[str, ...] = ()
    twin: Twin = Twin.SAME  # its server-side twin's shape
    narrowed: bool = False  # in server mode its answer is cut down to what the client-side API shows


@dataclass(frozen=True, slots=True)
class Route:
    operation: Operation
    method: str
    template: str  # relative to /client/v1, e.g. "/customers/{customer_id}/consents"
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.template.strip("/").split("/")))

    @property
    def takes_body(self) -> bool:
        return self.method in ("POST", "PUT")


VALIDATE = Operation("validate", twin=Twin.QUERY_TO_BODY)
VALIDATE_STACKABLE = Operation("validate_stackable")
REDEEM = Operation("redeem", danger=DangerOption.REDEEM, twin=Twin.CODE_IN_PATH)
REDEEM_STACKABLE = Operation("redeem_stackable", danger=DangerOption.REDEEM)
REDEEM_PROMOTION_TIER = Operation("redeem_promotion_tier", danger=DangerOption.REDEEM)
PUBLISH = Operation("publish", danger=DangerOption.PUBLISH, twin=Twin.PUBLICATION)
QUALIFICATIONS = Operation("qualifications")
LIST_PROMOTION_TIERS = Operation("list_promotion_tiers")
TRACK_EVENT = Operation(
    "track_event",
    body_danger=DangerOption.CREATE_LOYALTY_REFERRAL_EVENTS,
    body_danger_keys=("loyalty", "referral"),
)
LIST_VOUCHERS = Operation("list_vouchers", danger=DangerOption.LIST_VOUCHERS, narrowed=True)
CREATE_CUSTOMER = Operation("create_customer", danger=DangerOption.CREATE_CUSTOMERS)
LIST_CONSENTS = Operation("list_consents")
UPDATE_CONSENTS = Operation("update_consents")

ROUTES: tuple[Route, ...] = (
    Route(VALIDATE, "GET", "/validate"),
    Route(VALIDATE, "GET", "/promotions/validation"),
    Route(VALIDATE_STACKABLE, "POST", "/validations"),
    Route(REDEEM, "POST", "/redeem"),
    Route(REDEEM_STACKABLE, "POST", "/redemptions"),
    Route(REDEEM_PROMOTION_TIER, "POST", "/promotions/tiers/{tier_id}/redemption"),
    Route(PUBLISH, "POST", "/publish"),
    Route(QUALIFICATIONS, "POST", "/qualifications"),
    Route(LIST_PROMOTION_TIERS, "GET", "/promotions/tiers"),
    Route(TRACK_EVENT, "POST", "/events"),
    Route(LIST_VOUCHERS, "GET", "/vouchers"),
    Route(CREATE_CUSTOMER, "POST", "/customers"),
    Route(LIST_CONSENTS, "GET", "/consents"),
    Route(UPDATE_CONSENTS, "PUT", "/customers/{customer_id}/consents"),
)

OPERATIONS: dict[str, Operation] = {route.operation.name: route.operation for route in ROUTES}

# A path parameter as sent: RFC 3986 path characters, percent-escapes well formed.
_PCHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
# What a decoded parameter may not hold: the C0 controls, DEL, a backslash, and the C1 controls (U+0080 to
# U+009F) in UTF-8, control characters as much as the C0 ones (server mode's `qs.code_segment` refuses them
# in a code too). 0xC2 is never a continuation byte.
_UNSAFE = re.compile(rb"[\x00-\x1f\x7f\\]|\xc2[\x80-\x9f]")


class PathMatch(NamedTuple):
    """The routes sharing one path (one per method) and the raw parameter values."""

    routes: dict[str, Route]  # method -> route
    params: dict[str, str]  # name -> value exactly as sent (still percent-encoded)


def _param_is_safe(raw: str) -> bool:
    if not _PCHARS.fullmatch(raw):
        return False
    decoded = unquote_to_bytes(raw)
    if _UNSAFE.search(decoded):
        return False
    return not any(part in (b".", b"..") for part in decoded.split(b"/"))


class Catalog:
    """Precompiled route table: static paths by tuple, parameterised ones by length."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        self._static: dict[tuple[str, ...], dict[str, Route]] = {}
        self._templated: list[tuple[tuple[str, ...], dict[str, Route]]] = []
        for route in routes:
            if any(seg.startswith("{") for seg in route.segments):
                for segments, by_method in self._templated:
                    if segments == route.segments:
                        by_method[route.method] = route
                        break
                else:
                    self._templated.append((route.segments, {route.method: route}))
            else:
                self._static.setdefault(route.segments, {})[route.method] = route

    def match(self, segments: tuple[str, ...]) -> PathMatch | None:
        """Match the operation part of a path (after /client/v1), raw segments. None if no operation."""
        by_method = self._static.get(segments)
        if by_method is not None:
            return PathMatch(by_method, {})
        for template, by_method in self._templated:
            if len(template) != len(segments):
                continue
            params: dict[str, str] = {}
            for expected, actual in zip(template, segments, strict=True):
                if expected.startswith("{"):
                    if not _param_is_safe(actual):
                        break
                    params[expected[1:-1]] = actual
                elif expected != actual:
                    break
            else:
                return PathMatch(by_method, params)
        return None


CATALOG = Catalog()
