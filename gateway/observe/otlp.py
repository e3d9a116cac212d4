"""OTLP's protobuf wire format for the gateway's own spans, written directly as bytes.

The SDK's encoder (`opentelemetry-exporter-otlp-proto-common`) builds a protobuf object per span, per
attribute and per value, and hashes the resource for each span: about 100 µs of CPU per span here, where
the gateway's whole request costs about as much. The gateway's spans all have the same few shapes, so
this writes each span's fields straight to the wire (`opentelemetry/proto/trace/v1/trace.proto`), with
the attribute blocks that repeat (a project, operation, decision, method and status; an upstream host,
port and status) encoded once and kept. The tests decode what it writes with opentelemetry-proto, as a
collector does.

Pure functions of plain values; imports nothing of OpenTelemetry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.models import Outcome
from gateway.observe.trace_context import ClientCall, RequestTrace

__all__ = ["SpanWriter", "attribute", "export_request", "field_bytes"]

AttributeValue = str | bool | int | float

# Span.SpanKind, Status.StatusCode, and SpanFlags (trace.proto)
KIND_SERVER, KIND_CLIENT = 2, 3
STATUS_ERROR = 2
FLAG_SAMPLED = 0x01
FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE = 0x100, 0x200
# http.request.method takes a known method as it is, anything else as "_OTHER" (OpenTelemetry's HTTP
# conventions): a method is a token of the client's choosing, of any length.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
CACHED_SHAPES = 4096  # attribute blocks kept; their keys take bounded values, this only caps a surprise

_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack
_pack_d = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as protobuf writes it: ten bytes, two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = {number: _varint(number << 3 | 2) for number in range(1, 17)}
_SHORT = [bytes((n,)) for n in range(0x80)]


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    size = len(payload)
    return _TAGS[number] + (_SHORT[size] if size < 0x80 else _varint(size)) + payload


def _text(number: int, value: str) -> bytes:
    return field_bytes(number, value.encode("utf-8", "replace"))


def _any_value(value: AttributeValue) -> bytes:
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    return _text(1, str(value))


def attribute(key: str, value: AttributeValue, number: int = 9) -> bytes:
    """One KeyValue as field `number` of its message (9: Span.attributes, 3: Event.attributes)."""
    return field_bytes(number, _text(1, key) + field_bytes(2, _any_value(value)))


def _attributes(pairs: Iterable[tuple[str, AttributeValue]], number: int = 9) -> bytes:
    return b"".join(attribute(key, value, number) for key, value in pairs)


def export_request(resource: bytes, scope: bytes, spans: Sequence[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one ResourceSpans with one ScopeSpans holding `spans` (each a
    whole `Span` field of ScopeSpans, as `SpanWriter.request` returns them)."""
    scope_spans = field_bytes(1, scope) + b"".join(spans)
    return field_bytes(1, field_bytes(1, resource) + field_bytes(2, scope_spans))


_REQUEST_ID_KEY = _text(1, "gateway.request_id")
_STORE_MS_KEY = _text(1, "gateway.rate_limit.store_ms")


class SpanWriter:
    """Writes a finished request's spans: its SERVER span, then one CLIENT span per upstream call."""

    def __init__(self) -> None:
        self._server: dict[tuple[str | None, str | None, str, str, int], bytes] = {}
        self._client: dict[tuple[str, int, str, int | None, str | None], bytes] = {}
        self._events: dict[tuple[str, str, str, str], bytes] = {}

    def request(self, outcome: Outcome, trace: RequestTrace) -> bytes:
        """The request's spans, each as a `spans` field of ScopeSpans, concatenated."""
        trace_id = trace.trace_id.to_bytes(16, "big")
        server_id = trace.span_id.to_bytes(8, "big")
        end = trace.end_ns or trace.start_ns + int(outcome.duration_ms * 1_000_000)
        parts = [
            b"\x0a\x10",
            trace_id,
            b"\x12\x08",
            server_id,
        ]
        flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE
        if trace.parent_span_id:
            parts += (b"\x22\x08", trace.parent_span_id.to_bytes(8, "big"))
            flags |= FLAG_IS_REMOTE
        parts += (
            _text(5, outcome.operation or "not_found"),
            b"\x30\x02",  # kind: SERVER
            b"\x39",
            _pack_q(trace.start_ns),
            b"\x41",
            _pack_q(end),
            self._server_attributes(outcome),
            field_bytes(9, _REQUEST_ID_KEY + field_bytes(2, _text(1, outcome.request_id))),
        )
        for name, at, attributes in trace.events:
            parts.append(self._event(name, at, attributes))
        if outcome.status >= 500 or not outcome.status:
            parts.append(b"\x7a\x02\x18\x02")  # status { code: ERROR }
        parts += (b"\x85\x01", _pack_i(flags))  # field 16, fixed32
        spans = [field_bytes(2, b"".join(parts))]
        for call in trace.calls:
            spans.append(field_bytes(2, self._client_span(trace_id, server_id, call, end)))
        return b"".join(spans)

    def _server_attributes(self, outcome: Outcome) -> bytes:
        method = outcome.method if outcome.method in KNOWN_METHODS else "_OTHER"
        key = (outcome.project, outcome.operation, outcome.decision, method, outcome.status)
        found = self._server.get(key)
        if found is None:
            pairs: list[tuple[str, AttributeValue]] = []
            if outcome.project is not None:
                pairs.append(("voucherify.project", outcome.project))
            if outcome.operation is not None:
                pairs.append(("voucherify.operation", outcome.operation))
            pairs += (("gateway.decision", outcome.decision), ("http.request.method", method))
            if outcome.status:
                pairs.append(("http.response.status_code", outcome.status))
            found = _attributes(pairs)
            self._keep(self._server, key, found)
        return found

    def _client_span(self, trace_id: bytes, parent: bytes, call: ClientCall, end: int) -> bytes:
        method = call.method if call.method in KNOWN_METHODS else "_OTHER"
        key = (call.host, call.port, method, call.status, call.error)
        attributes = self._client.get(key)
        if attributes is None:
            pairs: list[tuple[str, AttributeValue]] = [
                ("server.address", call.host),
                ("server.port", call.port),
                ("http.request.method", method),
            ]
            if call.status is not None:
                pairs.append(("http.response.status_code", call.status))
            if call.error is not None:
                pairs.append(("error.type", call.error))
            attributes = _attributes(pairs)
            self._keep(self._client, key, attributes)
        failed = call.status is None or call.status >= 500
        return b"".join(
            (
                b"\x0a\x10",
                trace_id,
                b"\x12\x08",
                call.span_id.to_bytes(8, "big"),
                b"\x22\x08",
                parent,
                b"\x2a\x08upstream",  # name
                b"\x30\x03",  # kind: CLIENT
                b"\x39",
                _pack_q(call.start_ns),
                b"\x41",
                _pack_q(call.end_ns or end),
                attributes,
                b"\x7a\x02\x18\x02" if failed else b"",
                b"\x85\x01",
                _pack_i(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE),
            )
        )

    def _event(self, name: str, at: int, attributes: dict[str, AttributeValue]) -> bytes:
        if name == "rate_limit":  # the one event of every request: its fixed part is kept
            key = (
                str(attributes.get("gateway.rate_limit.bucket")),
                str(attributes.get("gateway.rate_limit.decision")),
                str(attributes.get("gateway.rate_limit.store")),
                name,
            )
            fixed = self._events.get(key)
            if fixed is None:
                pairs = [(k, v) for k, v in attributes.items() if k != "gateway.rate_limit.store_ms"]
                fixed = _text(2, name) + _attributes(pairs, 3)
                self._keep(self._events, key, fixed)
            rest = b""
            store_ms = attributes.get("gateway.rate_limit.store_ms")
            if isinstance(store_ms, float):
                rest = field_bytes(3, _STORE_MS_KEY + b"\x12\x09\x21" + _pack_d(store_ms))
            return field_bytes(11, b"\x09" + _pack_q(at) + fixed + rest)
        return field_bytes(11, b"\x09" + _pack_q(at) + _text(2, name) + _attributes(attributes.items(), 3))

    @staticmethod
    def _keep(cache: dict[Any, bytes], key: Any, value: bytes) -> None:
        if len(cache) >= CACHED_SHAPES:
            cache.clear()
        cache[key] = value
