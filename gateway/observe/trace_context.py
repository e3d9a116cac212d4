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
from importlib import metadata

from multidict import MultiMapping

__all__ = [
    "CURRENT",
    "FAILED_CODES",
    "RATE_LIMIT",
    "AttributeValue",
    "ClientCall",
    "Event",
    "EventKind",
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
    return _getrandbits(64) or 1  # never the invalid all-zero id


class EventKind:
    """A span event the gateway records: its name, the attributes that take a few values (a bucket, a
    decision: written once per combination and kept by the writer), and the one that varies (a storage
    round trip, in milliseconds). Compared by identity: there is one of each."""

    __slots__ = ("keys", "measure", "name")

    def __init__(self, name: str, keys: tuple[str, ...], measure: str | None) -> None:
        self.name, self.keys, self.measure = name, keys, measure  # measure None: `RequestTrace.event`'s


RATE_LIMIT = EventKind(
    "rate_limit",
    ("gateway.rate_limit.bucket", "gateway.rate_limit.decision", "gateway.rate_limit.store"),
    "gateway.rate_limit.store_ms",
)
# A 429 answered from a refusal the store gave a moment ago (gateway/ratelimit/refusals.py): no store call,
# so no round trip to measure.
RATE_LIMIT_REMEMBERED = EventKind("rate_limit", (*RATE_LIMIT.keys, "gateway.rate_limit.remembered"), None)
FAILED_CODES = EventKind(
    "failed_codes",
    ("gateway.failed_codes.named", "gateway.failed_codes.decision"),
    "gateway.failed_codes.store_ms",
)
AttributeValue = str | bool | int | float
# (kind, time.time_ns(), the values of kind.keys, seconds of kind.measure: written in milliseconds)
Event = tuple[EventKind, int, tuple[AttributeValue, ...], float]


def _decision(refused: bool, store_error: bool) -> str:
    return "store_error" if store_error else "limited" if refused else "allowed"


class ClientCall:
    """One upstream call of a request: its CLIENT span."""

    __slots__ = ("end_ns", "error", "host", "method", "port", "span_id", "start_ns", "status")

    def __init__(self, span_id: int, host: str, port: int, method: str, start_ns: int) -> None:
        self.span_id = span_id
        self.host = host  # server.address: the upstream's host name, never its user info, path or query
        self.port = port
        self.method = method
        self.start_ns = start_ns
        self.end_ns = 0  # 0: never ended (the span ends with the request)
        self.status: int | None = None  # Voucherify's HTTP status; None when no answer came
        self.error: str | None = None  # why there was none: the gateway's error key (or "cancelled")


class RequestTrace:
    """A request's trace: its SERVER span, the caller's span as parent, its upstream calls and events.

    The SERVER span's times are the request's own (`Outcome.finished` and `duration_ms`): nothing here
    reads a clock for it."""

    __slots__ = (
        "calls",
        "events",
        "parent_span_id",
        "sampled",
        "span_id",
        "trace_id",
        "trace_id_hex",
        "tracestate",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        sampled: bool,
        tracestate: str | None,
    ) -> None:
        self.trace_id = trace_id
        self.trace_id_hex = trace_id.to_bytes(16, "big").hex()  # as the access log and traceparent say it
        self.span_id = span_id
        self.parent_span_id = parent_span_id  # 0: a new trace (no valid incoming traceparent)
        self.sampled = sampled
        self.tracestate = tracestate  # the caller's, sent upstream as received; never exported
        self.calls: list[ClientCall] = []
        self.events: list[Event] = []

    def start_call(self, host: str, port: int, method: str) -> ClientCall:
        call = ClientCall(new_span_id(), host, port, method, time.time_ns())
        self.calls.append(call)
        return call

    def traceparent(self, span_id: int) -> str:
        """The `traceparent` that makes `span_id` (a CLIENT span's) the parent of what comes next."""
        span = span_id.to_bytes(8, "big").hex()  # a third of f"{span_id:016x}"'s cost
        return f"00-{self.trace_id_hex}-{span}-{'01' if self.sampled else '00'}"

    def event(self, name: str, **attributes: AttributeValue) -> None:
        """A span event on the SERVER span, with attributes of any values. Kept only when sampled."""
        if self.sampled:
            kind = EventKind(name, tuple(attributes), None)
            self.events.append((kind, time.time_ns(), tuple(attributes.values()), 0.0))

    def codes_checked(self, named: int, refused: bool, store_error: bool, seconds: float) -> None:
        """The `failed_codes` event: the codes the request names, the budget's decision and the storage
        round trip. Kept only when sampled."""
        if self.sampled:
            values = (named, _decision(refused, store_error))
            self.events.append((FAILED_CODES, time.time_ns(), values, seconds))

    def limit_checked(
        self, bucket: str, storage: str, refused: bool, store_error: bool, seconds: float
    ) -> None:
        """The `rate_limit` event: the bucket, the decision, the store's kind (its URI's scheme only: the
        rest may hold a password) and the storage round trip. Kept only when sampled."""
        if self.sampled:
            values = (bucket, _decision(refused, store_error), storage.partition("://")[0])
            self.events.append((RATE_LIMIT, time.time_ns(), values, seconds))

    def limit_remembered(self, bucket: str, storage: str) -> None:
        """The `rate_limit` event of a 429 repeated from the store's recent refusal: `limited`, with
        `.remembered` true and no `.store_ms`, since the store was not asked. Kept only when sampled."""
        if self.sampled:
            values = (bucket, "limited", storage.partition("://")[0], True)
            self.events.append((RATE_LIMIT_REMEMBERED, time.time_ns(), values, 0.0))


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
            return RequestTrace(trace_id, new_span_id(), parent_id, sampled, tracestate)
        trace_id = _getrandbits(128) or 1
        return RequestTrace(trace_id, new_span_id(), 0, (trace_id & _MASK_64) < self.bound, None)


def _tracestate(values: list[str] | tuple[str, ...]) -> str | None:
    """The caller's `tracestate` header(s), combined as W3C says (joined with commas), when it is printable
    ASCII of at most TRACESTATE_CHARS characters; None otherwise (W3C lets a vendor drop it)."""
    if not values:
        return None
    combined = values[0] if len(values) == 1 else ",".join(values)
    if not combined.strip() or len(combined) > TRACESTATE_CHARS or not _PRINTABLE.fullmatch(combined):
        return None
    return combined
