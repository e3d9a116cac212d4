"""The request path's values, at the bottom of the import graph: every layer above speaks in these.

Like httpx's `_models.py` or h11's `_events.py`, this module imports nothing of the gateway's, and nothing
that does I/O: the decision core (`decide`, `compiled`, `modes`) and the I/O shell (`app`, `upstream`,
`ratelimit`) both import from here, never from each other's modules, so `import gateway.decide` loads no
Redis client, no HTTP parser and no aiohttp (tests/unit/test_layers.py pins it).

- `Timeouts`, `UpstreamCall`, `UpstreamResponse`: what is asked of Voucherify and what it answered.
- `Strategy`, `RateItem`, `Bucket`: a rate limit as the policy states it, parsed here with `limits`' own
  grammar and keyed with `limits`' own key names (so counts are shared with gateways running `limits`'
  strategies).
- `Target`: the project's operation a request addresses.
- `Outcome`: what a finished request leaves behind for the access log, metrics and traces.

A value built for every request is a named tuple: here `UpstreamCall`, `UpstreamResponse` and `Target`;
above, the chain's steps and answers (gateway/ratelimit/store.py), `decide`'s verdicts and `GatewayError`.
It is as immutable as a frozen dataclass and built in 40 % of the time (a frozen dataclass sets each field
through `object.__setattr__`: 700 ns for six fields against 270). Values built once, with the policy, stay
frozen dataclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # types only: these modules are above this one
    from gateway.catalog import Route
    from gateway.client_ip import Client
    from gateway.compiled import ProjectRuntime
    from gateway.observe.trace_context import RequestTrace


# ------------------------------------------------------------------------------------------ upstream


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float  # seconds for DNS, TCP connect and TLS handshake
    read: float  # seconds from the request written to the answer's last byte


class UpstreamCall(NamedTuple):
    """What Voucherify is asked, in either mode (`gateway.modes`)."""

    method: str
    path: str  # raw path and query under the project's base URL, e.g. "/v1/vouchers/A%2FB/redemption"
    body: bytes
    content_type: str | None = None  # replaces the caller's Content-Type when the body was rebuilt


class UpstreamResponse(NamedTuple):
    """Voucherify's answer, its headers already through the response allow-list."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float  # seconds, request written to answer read
    # a 429's Retry-After and X-Rate-Limit-Retry as Voucherify sent them, before the allow-list (which drops
    # X-Rate-Limit-*): read for the hold-off only, never sent on
    throttle: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------------------------------ rate limits


class Strategy(StrEnum):
    """How a bucket's items count (the policy's `rate_limit.strategy`), named as `limits` names them."""

    MOVING_WINDOW = "moving-window"
    FIXED_WINDOW = "fixed-window"
    SLIDING_WINDOW_COUNTER = "sliding-window-counter"


# `limits`' grammar (limits.util.parse_many), kept here so that parsing a policy loads no storage code:
# "5 per 5 seconds", "100/minute;10/second"; items separated by , ; or |.
_SEPARATORS = re.compile(r"[,;|]{1}")
_SINGLE = r"\s*([0-9]+)\s*(/|\s*per\s*)\s*([0-9]+)?\s*([a-z]+)\s*"
_SINGLE_EXPR = re.compile(_SINGLE, re.IGNORECASE)
_EXPR = re.compile(rf"^{_SINGLE}(:?{_SEPARATORS.pattern}{_SINGLE})*$", re.IGNORECASE)
GRANULARITIES = {  # limits.limits.TIME_TYPES
    "second": 1,
    "minute": 60,
    "hour": 60 * 60,
    "day": 60 * 60 * 24,
    "month": 60 * 60 * 24 * 30,
    "year": 60 * 60 * 24 * 30 * 12,
}


@dataclass(frozen=True, slots=True)
class RateItem:
    """One limit of a rate-limit string: `amount` per `multiples` `granularity` (limits' RateLimitItem)."""

    amount: int
    multiples: int
    granularity: str  # a key of GRANULARITIES

    @property
    def expiry(self) -> int:
        """The window in seconds."""
        return GRANULARITIES[self.granularity] * self.multiples

    def key_for(self, *identifiers: str) -> str:
        """limits' `RateLimitItem.key_for`: `LIMITER/<identifiers>/<amount>/<multiples>/<granularity>`."""
        return "/".join(("LIMITER", *identifiers, str(self.amount), str(self.multiples), self.granularity))

    @classmethod
    def parse_many(cls, text: str) -> tuple[RateItem, ...]:
        """The items of a rate-limit string, as `limits.parse_many` reads it; ValueError when it is none."""
        if not isinstance(text, str) or not _EXPR.match(text):
            raise ValueError(f"couldn't parse rate limit string {text!r}")
        items = []
        for part in _SEPARATORS.split(text):
            found = _SINGLE_EXPR.match(part)
            if found is None:  # pragma: no cover - _EXPR matched the whole string
                raise ValueError(f"couldn't parse rate limit string {text!r}")
            amount, _, multiples, unit = found.groups()
            unit = unit.lower()
            granularity = unit[:-1] if unit.endswith("s") and unit[:-1] in GRANULARITIES else unit
            if granularity not in GRANULARITIES:
                raise ValueError(f"no granularity matched for {unit}")
            items.append(cls(int(amount), int(multiples or 1), granularity))
        return tuple(items)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A named budget of a project: `per_ip` or an operation's own. `namespace` keeps projects apart."""

    name: str
    items: tuple[RateItem, ...]
    namespace: str
    policy_header: str = field(init=False)  # its RateLimit-Policy member(s), built once
    item_names: tuple[str, ...] = field(init=False)
    shares_a_key: bool = field(init=False)  # two items count in one key ("5/minute;5 per minute")
    key_parts: tuple[tuple[str, str], ...] = field(init=False)  # each item's storage key around the client

    def __post_init__(self) -> None:
        names = tuple(self.name if i == 0 else f"{self.name}-{i + 1}" for i in range(len(self.items)))
        header = ", ".join(
            f'"{name}";q={item.amount};w={item.expiry}' for name, item in zip(names, self.items, strict=True)
        )
        object.__setattr__(self, "item_names", names)
        object.__setattr__(self, "policy_header", header)
        object.__setattr__(self, "shares_a_key", len({i.key_for() for i in self.items}) < len(self.items))
        # the parts around the client are the same for every request, so they are joined once, here
        parts = []
        for item in self.items:
            before, after = item.key_for(self.namespace, "\0").split("\0")
            parts.append((before, after))
        object.__setattr__(self, "key_parts", tuple(parts))

    def keys(self, client_key: str) -> list[str]:
        """Each item's storage key for a client, as `limits` names it (`RateLimitItem.key_for`)."""
        return [before + client_key + after for before, after in self.key_parts]

    @classmethod
    def parse(cls, name: str, limit: str, namespace: str) -> Bucket:
        return cls(name, RateItem.parse_many(limit), namespace)


# ------------------------------------------------------------------------------------------ requests


class Target(NamedTuple):
    """What the request addresses: a project's operation, with its raw path and query."""

    project: ProjectRuntime
    route: Route
    params: dict[str, str]
    operation_path: str  # raw, relative to /client/v1, e.g. "/customers/c%201/consents"
    query: str  # raw, without "?"

    @property
    def operation(self) -> str:
        return self.route.operation.name


@dataclass(slots=True)
class Outcome:
    """What a request leaves behind, filled in as it goes: one per request, accounted for once it ends."""

    request_id: str
    method: str
    project: str | None = None
    operation: str | None = None
    decision: str = "forwarded"  # "forwarded" or the error key
    status: int = 0
    duration_ms: float = 0.0
    upstream_ms: float | None = None
    client: Client | None = None
    truncate_ip: bool = False  # the request's own policy's `logging.client_ip: truncated`
    origin: str | None = None
    limit_store_error: bool = False  # the rate-limit store failed for this request
    limit_remembered: bool = False  # refused 429 from a refusal the store gave a moment ago (no store call)
    cache: str | None = None  # cached reads: "hit", "miss" or "shared" (`gateway.guards.cache.Lookup`)
    quota_refusal: str | None = None  # upstream_quota_exhausted: "quota" (spent) or "hold_off" (after a 429)
    upstream_429: bool = False  # Voucherify answered this request's call with 429
    unknown_codes: int = 0  # codes Voucherify's answer said do not exist, charged to the failed-code budget
    finished: float = 0.0  # time.time() when answered: the access line's time, however late it is written
    idempotency: str | None = None  # what its Idempotency-Key did (guards.idempotency.Result), if it had one
    trace: RequestTrace | None = None  # with tracing on: its trace id, spans and events
