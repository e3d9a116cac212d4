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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gateway.models import Outcome
from gateway.observe.trace_context import AttributeValue, EventKind, RequestTrace

__all__ = ["SpanWriter", "attribute", "export_request", "field_bytes"]


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
    scope_field = field_bytes(1, scope)
    size = len(scope_field) + sum(map(len, spans))  # the spans are copied once, into the request
    head = field_bytes(1, resource) + _TAGS[2] + _varint(size)
    return b"".join((_TAGS[1], _varint(len(head) + size), head, scope_field, *spans))


_REQUEST_ID_KEY = _text(1, "gateway.request_id")
# (pack, its field's tag and length, the fixed fields): pack(lead, ids and times..., fixed)
_ClientShape = tuple[Callable[..., bytes], bytes, bytes]
# (pack, tag, length and the time's tag, the fixed fields up to the measure): pack(lead, time, middle, ms)
_EventShape = tuple[Callable[[bytes, int, bytes, float], bytes], bytes, bytes]
_SERVER_FLAGS = b"\x85\x01" + _pack_i(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE)  # field 16, fixed32
_REMOTE_FLAGS = b"\x85\x01" + _pack_i(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE)
_ERROR = b"\x7a\x02\x18\x02"  # status { code: ERROR }
# A span's trace id (1), span id (2), [parent span id (4),] start (7) and end (8) times, tags included;
# each tag as a little-endian number (0x100a: b"\x0a\x10", field 1 of 16 bytes).
_IDS = "H16sH8s"
_TIMES = "BQBQ"
_server_head = struct.Struct(f"<{_IDS}{_TIMES}").pack
_remote_head = struct.Struct(f"<{_IDS}H8s{_TIMES}").pack
_CLIENT_IDS = struct.calcsize(f"<{_IDS}H8s{_TIMES}")


def _method(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


class SpanWriter:
    """Writes a finished request's spans: its SERVER span, then one CLIENT span per upstream call.

    A span's fields go in any order on the wire (protobuf), so each is written as its ids and times
    followed by every field its shape decides (name, kind, attributes, status, flags), written once per
    shape and kept with a `struct` format that writes the rest in one call."""

    def __init__(self) -> None:
        self._server: dict[tuple[str | None, str | None, str, str, int, bool], bytes] = {}
        self._client: dict[tuple[str, int, str, int | None, str | None], _ClientShape] = {}
        self._events: dict[tuple[EventKind, tuple[AttributeValue, ...]], _EventShape] = {}

    def request(self, outcome: Outcome, trace: RequestTrace) -> bytes:
        """The request's spans, each as a `spans` field of ScopeSpans, concatenated."""
        trace_id = trace.trace_id.to_bytes(16, "big")
        server_id = trace.span_id.to_bytes(8, "big")
        end = int(outcome.finished * 1e9)
        start = end - int(outcome.duration_ms * 1e6)
        parent = trace.parent_span_id
        key = (
            outcome.project,
            outcome.operation,
            outcome.decision,
            _method(outcome.method),
            outcome.status,
            parent != 0,
        )
        shape = self._server.get(key) or self._server_shape(key)
        if parent:
            head = _remote_head(
                0x100A, trace_id, 0x0812, server_id, 0x0822, parent.to_bytes(8, "big"), 0x39, start, 0x41, end
            )
        else:
            head = _server_head(0x100A, trace_id, 0x0812, server_id, 0x39, start, 0x41, end)
        parts = [head, shape, _request_id(outcome.request_id)]
        for kind, at, values, seconds in trace.events:
            if kind.measure is None:  # an event of `RequestTrace.event`: written whole
                pairs = _attributes(zip(kind.keys, values, strict=True), 3)
                parts.append(field_bytes(11, b"\x09" + _pack_q(at) + _text(2, kind.name) + pairs))
                continue
            pack, lead, middle = self._events.get((kind, values)) or self._event_shape(
                kind, kind.measure, values
            )
            parts.append(pack(lead, at, middle, seconds * 1000))
        spans = [field_bytes(2, b"".join(parts))]
        for call in trace.calls:
            method = _method(call.method)
            pack, lead, fixed = self._client.get(
                (call.host, call.port, method, call.status, call.error)
            ) or self._client_shape(call.host, call.port, method, call.status, call.error)
            spans.append(
                pack(
                    lead,
                    0x100A,
                    trace_id,
                    0x0812,
                    call.span_id.to_bytes(8, "big"),
                    0x0822,
                    server_id,
                    0x39,
                    call.start_ns,
                    0x41,
                    call.end_ns or end,
                    fixed,
                )
            )
        return b"".join(spans)

    def _server_shape(self, key: tuple[str | None, str | None, str, str, int, bool]) -> bytes:
        project, operation, decision, method, status, remote = key
        pairs: list[tuple[str, AttributeValue]] = []
        if project is not None:
            pairs.append(("voucherify.project", project))
        if operation is not None:
            pairs.append(("voucherify.operation", operation))
        pairs += (("gateway.decision", decision), ("http.request.method", method))
        if status:
            pairs.append(("http.response.status_code", status))
        shape = b"".join(
            (
                _text(5, operation or "not_found"),
                b"\x30\x02",  # kind: SERVER
                _attributes(pairs),
                _ERROR if status >= 500 or not status else b"",
                _REMOTE_FLAGS if remote else _SERVER_FLAGS,
            )
        )
        self._keep(self._server, key, shape)
        return shape

    def _client_shape(
        self, host: str, port: int, method: str, status: int | None, error: str | None
    ) -> _ClientShape:
        pairs: list[tuple[str, AttributeValue]] = [
            ("server.address", host),
            ("server.port", port),
            ("http.request.method", method),
        ]
        if status is not None:
            pairs.append(("http.response.status_code", status))
        if error is not None:
            pairs.append(("error.type", error))
        fixed = b"".join(
            (
                b"\x2a\x08upstream",  # name
                b"\x30\x03",  # kind: CLIENT
                _attributes(pairs),
                _ERROR if status is None or status >= 500 else b"",
                _SERVER_FLAGS,
            )
        )
        lead = _TAGS[2] + _varint(_CLIENT_IDS + len(fixed))  # the span's field tag and length
        shape = (struct.Struct(f"<{len(lead)}s{_IDS}H8s{_TIMES}{len(fixed)}s").pack, lead, fixed)
        self._keep(self._client, (host, port, method, status, error), shape)
        return shape

    def _event_shape(self, kind: EventKind, key: str, values: tuple[AttributeValue, ...]) -> _EventShape:
        """An event's field tag, length and time's tag; then its name, attributes and the measure's key
        (`key`), up to the double that follows it."""
        measure = _text(1, key) + b"\x12\x09\x21"  # value { double_value: ... }
        middle = b"".join(
            (
                _text(2, kind.name),
                _attributes(zip(kind.keys, values, strict=True), 3),
                _TAGS[3],
                _varint(len(measure) + 8),
                measure,
            )
        )
        lead = _TAGS[11] + _varint(9 + len(middle) + 8) + b"\x09"
        shape = (struct.Struct(f"<{len(lead)}sQ{len(middle)}sd").pack, lead, middle)
        self._keep(self._events, (kind, values), shape)
        return shape

    @staticmethod
    def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= CACHED_SHAPES:
            cache.clear()
        cache[key] = value


# gateway.request_id's KeyValue up to its value's text, by the text's length (the gateway's ids are short)
_REQUEST_ID_HEADS = [
    field_bytes(9, _REQUEST_ID_KEY + field_bytes(2, _text(1, "x" * size)))[: -size or None]
    for size in range(64)
]


def _request_id(request_id: str) -> bytes:
    """The SERVER span's gateway.request_id attribute."""
    if len(request_id) < len(_REQUEST_ID_HEADS) and request_id.isascii():
        return _REQUEST_ID_HEADS[len(request_id)] + request_id.encode()
    return attribute("gateway.request_id", request_id)
