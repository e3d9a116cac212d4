"""W3C trace context on the request path, without OpenTelemetry: what a request's trace is, and what the
upstream call carries.

With tracing on, `handle` asks `TraceStarter.begin` for the request's `RequestTrace` (its trace id, its
SERVER span's id, the caller's span as parent, the sampling decision) and makes it the task's `CURRENT`
trace; `Http1Transport.send` reads `CURRENT` and records each upstream call as a CLIENT span (`ClientCall`)
and sends the gateway's own `traceparent`. Nothing here imports OpenTelemetry: the spans are only built,
in batches, by the tracing sink (`observe.tracing`), which is the one module that does, and only when
`tracing.otlp_endpoint` is set. With tracing off there is no `TraceStarter`, `CURRENT` stays None, and the
request path costs one `ContextVar.get` in the transport.

What a browser sends is hostile: a `traceparent` is taken only when it is exactly W3C's form (one header,
lowercase hex, no all-zero id, version not `ff`); anything else is ignored and a new trace starts. Its
`tracestate` is kept only alongside a valid `traceparent`, only as printable ASCII of at most
TRACESTATE_CHARS characters, and only to be sent upstream as received: never into a span.
"""

from __future__ import annotations

import random
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata

from multidict import MultiMapping

__all__ = [
    "CURRENT",
    "ClientCall",
    "RequestTrace",
    "TraceStarter",
    "new_span_id",
    "parse_traceparent",
    "ratio_bound",
    "tracing_unavailable",
]

TRACESTATE_CHARS = 512  # W3C: vendors propagate at least 512 characters; longer lists may be dropped
_MASK_64 = (1 << 64) - 1
# version-traceid-parentid-flags; a future version may append fields after a "-"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_PRINTABLE = re.compile(r"[ -~]*")
_getrandbits = random.getrandbits

# The extra's distributions, by the names pip knows them (looked up without importing anything).
TRACING_DISTRIBUTIONS = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")


def tracing_unavailable() -> str | None:
    """Why tracing cannot run here (the `tracing` extra is not installed), or None."""
    missing = []
    for name in TRACING_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if not missing:
        return None
    return (
        f"tracing.otlp_endpoint is set, but {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: "
        "pip install 'voucherify-gateway[tracing]', or set tracing.otlp_endpoint to null"
    )


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C `traceparent`, or None when it is malformed."""
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    version, trace_hex, span_hex, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def ratio_bound(ratio: float) -> int:
    """The bound under which a new trace id's low 64 bits are sampled: OpenTelemetry's TraceIdRatioBased
    (`get_bound_for_rate`), so a ratio means the same here as in every other OpenTelemetry service."""
    return round(ratio * (_MASK_64 + 1))


def new_span_id() -> int:
    while True:
        span_id = _getrandbits(64)
        if span_id:
            return span_id


@dataclass(slots=True)
class ClientCall:
    """One upstream call of a request: its CLIENT span."""

    span_id: int
    host: str  # server.address: the upstream's host name, never its user info, path or query
    port: int
    method: str
    start_ns: int
    end_ns: int = 0
    status: int | None = None  # Voucherify's HTTP status; None when no answer came
    error: str | None = None  # why there was none: the gateway's error key (or "cancelled")


@dataclass(slots=True)
class RequestTrace:
    """A request's trace: its SERVER span, the caller's span as parent, its upstream calls and events."""

    trace_id: int
    span_id: int
    parent_span_id: int  # 0: a new trace (no valid incoming traceparent)
    sampled: bool
    tracestate: str | None  # the caller's, sent upstream as received; never exported
    start_ns: int
    end_ns: int = 0  # once answered (0: the span ends after the request's duration)
    calls: list[ClientCall] = field(default_factory=list)
    events: list[tuple[str, int, dict[str, str | int | float | bool]]] = field(default_factory=list)

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    def start_call(self, host: str, port: int, method: str) -> ClientCall:
        call = ClientCall(new_span_id(), host, port, method, time.time_ns())
        self.calls.append(call)
        return call

    def traceparent(self, span_id: int) -> str:
        """The `traceparent` that makes `span_id` (a CLIENT span's) the parent of what comes next."""
        return f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}"

    def event(self, name: str, **attributes: str | int | float | bool) -> None:
        """A span event on the SERVER span (the rate-limit decision, a storage round trip, ...)."""
        self.events.append((name, time.time_ns(), attributes))

    def codes_checked(self, named: int, refused: bool, store_error: bool, seconds: float) -> None:
        """The `failed_codes` event: the codes the request names, the budget's decision and the storage
        round trip in milliseconds. Kept only when sampled."""
        if not self.sampled:
            return
        decision = "store_error" if store_error else "limited" if refused else "allowed"
        attributes: dict[str, str | int | float | bool] = {
            "gateway.failed_codes.named": named,
            "gateway.failed_codes.decision": decision,
            "gateway.failed_codes.store_ms": round(seconds * 1000, 3),
        }
        self.event("failed_codes", **attributes)

    def limit_checked(
        self, bucket: str, storage: str, refused: bool, store_error: bool, seconds: float
    ) -> None:
        """The `rate_limit` event: the bucket, the decision, the store's kind (its URI's scheme only: the
        rest may hold a password) and the storage round trip in milliseconds. Kept only when sampled."""
        if not self.sampled:
            return
        decision = "store_error" if store_error else "limited" if refused else "allowed"
        attributes: dict[str, str | int | float | bool] = {
            "gateway.rate_limit.bucket": bucket,
            "gateway.rate_limit.decision": decision,
            "gateway.rate_limit.store": storage.partition("://")[0],
            "gateway.rate_limit.store_ms": round(seconds * 1000, 3),
        }
        self.event("rate_limit", **attributes)


CURRENT: ContextVar[RequestTrace | None] = ContextVar("gateway_trace", default=None)


class TraceStarter:
    """Each request's trace, continued from the caller's `traceparent` or new and sampled at `ratio`."""

    def __init__(self, ratio: float) -> None:
        self.bound = ratio_bound(ratio)

    def begin(self, headers: MultiMapping[str]) -> RequestTrace:
        values = headers.getall("traceparent", ())
        parent = parse_traceparent(values[0]) if len(values) == 1 else None
        if parent is not None:
            trace_id, parent_id, sampled = parent
            tracestate = _tracestate(headers.getall("tracestate", ()))
        else:
            trace_id = _getrandbits(128) or 1
            parent_id, sampled, tracestate = 0, (trace_id & _MASK_64) < self.bound, None
        return RequestTrace(trace_id, new_span_id(), parent_id, sampled, tracestate, time.time_ns())


def _tracestate(values: list[str] | tuple[str, ...]) -> str | None:
    """The caller's `tracestate` header(s), combined as W3C says (joined with commas), when it is printable
    ASCII of at most TRACESTATE_CHARS characters; None otherwise (W3C lets a vendor drop it)."""
    if not values:
        return None
    combined = values[0] if len(values) == 1 else ",".join(values)
    if not combined.strip() or len(combined) > TRACESTATE_CHARS or not _PRINTABLE.fullmatch(combined):
        return None
    return combined
