"""Which headers cross the gateway, in each direction, and which a page's preflight may ask for.

One table for the request side, so the headers copied upstream and the headers a CORS preflight allows can
never drift apart; both directions are allow-lists. Request: only what Voucherify needs from the browser is
copied, then the project's credentials and the request id are added; credentials, cookies, forwarding and
method-override headers never cross. Response: nothing that describes the gateway's keys or plan
(`X-Rate-Limit-*`, cookies, upstream CORS) reaches the browser. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Flag, auto

from multidict import CIMultiDict, MultiMapping


class Crossing(Flag):
    COPIED = auto()  # copied from the caller to Voucherify
    PREFLIGHT = auto()  # a page may send it: listed in Access-Control-Allow-Headers


IDEMPOTENCY_KEY = "Idempotency-Key"  # read by the gateway (guards/idempotency.py), never copied
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"  # on a replayed answer

# The request headers the gateway knows. X-Client-* are the SDK's placeholders for keys the gateway holds
# itself: a page must be allowed to send them (the SDK always does), but they are never copied.
REQUEST_HEADERS: tuple[tuple[str, Crossing], ...] = (
    ("Content-Type", Crossing.COPIED | Crossing.PREFLIGHT),
    ("Accept", Crossing.COPIED | Crossing.PREFLIGHT),
    ("Accept-Language", Crossing.COPIED | Crossing.PREFLIGHT),
    ("User-Agent", Crossing.COPIED),  # set by the browser itself; never in a preflight
    ("X-Client-Application-Id", Crossing.PREFLIGHT),
    ("X-Client-Token", Crossing.PREFLIGHT),
    ("X-Voucherify-Channel", Crossing.COPIED | Crossing.PREFLIGHT),
    ("X-Voucherify-Double-Opt-In", Crossing.COPIED | Crossing.PREFLIGHT),
    (IDEMPOTENCY_KEY, Crossing.PREFLIGHT),
    # W3C trace context: a page may send them, tracing on or off; never copied as sent. With tracing on,
    # the upstream call carries the gateway's own traceparent and the caller's tracestate (upstream.py).
    ("traceparent", Crossing.PREFLIGHT),
    ("tracestate", Crossing.PREFLIGHT),
)
COPIED_REQUEST_HEADERS = tuple(name for name, crossing in REQUEST_HEADERS if Crossing.COPIED in crossing)
PREFLIGHT_ALLOWED_HEADERS = ", ".join(
    name for name, crossing in REQUEST_HEADERS if Crossing.PREFLIGHT in crossing
)
# Response headers a page's script may read (beyond the CORS-safelisted ones).
EXPOSED_HEADERS = f"X-Request-Id, RateLimit, RateLimit-Policy, Retry-After, {IDEMPOTENT_REPLAYED}"
COPIED_RESPONSE_HEADERS = frozenset(
    {"content-type", "content-language", "cache-control", "etag", "last-modified", "expires", "retry-after"}
)


def _connection_listed(values: Iterable[str]) -> set[str]:
    """Header names a sender marked hop-by-hop in its Connection header(s)."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def request_headers(
    incoming: MultiMapping[str],
    credentials: Iterable[tuple[str, str]],
    origin: str | None,
    request_id: str,
    *,
    forward_origin: bool,
) -> CIMultiDict[str]:
    """What Voucherify is sent: the copied headers, the Origin (client mode), the credentials, the id."""
    # Content-Type is never a connection option (RFC 9110 7.6.1: it is meant for every recipient): the
    # gateway judged the body by it, so Voucherify gets the body with the type it was judged as.
    hop_by_hop = _connection_listed(incoming.getall("Connection", [])) - {"content-type"}
    out: CIMultiDict[str] = CIMultiDict()
    for name in COPIED_REQUEST_HEADERS:
        value = incoming.get(name)
        if value is not None and name.lower() not in hop_by_hop:
            out[name] = value
    if forward_origin and origin is not None:
        out["Origin"] = origin
    for name, value in credentials:
        out[name] = value
    out["X-Request-Id"] = request_id
    return out


def response_headers(upstream: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers (name, value pairs as received) that may reach the browser."""
    hop_by_hop = _connection_listed(value for name, value in upstream if name.lower() == "connection")
    return [
        (name, value)
        for name, value in upstream
        if name.lower() in COPIED_RESPONSE_HEADERS and name.lower() not in hop_by_hop
    ]
