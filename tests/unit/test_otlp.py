"""The gateway's OTLP writer against opentelemetry-proto's decoder, and the sink's bounded queue."""

from __future__ import annotations

import logging

import pytest
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

from gateway.models import Outcome
from gateway.observe.otlp import SpanWriter, export_request
from gateway.observe.trace_context import TraceStarter
from gateway.observe.tracing import OtlpHttpSender, Tracing
from gateway.policy import Tracing as TracingConfig
from gateway.serve import free_port

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _decode(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


FINISHED = 1_767_225_600.25  # time.time() when answered: the SERVER span's end, its start duration_ms before


def _outcome(**fields: object) -> Outcome:
    outcome = Outcome(
        "gw-0123", "POST", project="shop", operation="redeem", status=200, duration_ms=2.5, finished=FINISHED
    )
    for name, value in fields.items():
        setattr(outcome, name, value)
    return outcome


def test_a_request_decodes_as_otlp_with_every_field() -> None:
    trace = TraceStarter(1.0).begin(CIMultiDict({"traceparent": PARENT}))
    trace.event("custom", flag=True, count=-3, ratio=0.5, text="é" * 100)  # varint lengths over 127
    trace.limit_checked("redeem", "redis+sentinel://:pw@h:1/m", True, False, 0.002)
    call = trace.start_call("api.voucherify.io", 443, "POST")
    call.status, call.end_ns = 503, call.start_ns + 1000
    failed = trace.start_call("api.voucherify.io", 443, "POST")
    failed.error = "upstream_timeout"
    outcome = _outcome(trace=trace, decision="upstream_timeout", status=504)
    scope = InstrumentationScope(name="s", version="1").SerializeToString()
    writer = SpanWriter()
    body = export_request(b"", scope, [writer.request(outcome, trace), writer.request(outcome, trace)])
    [resource_spans] = _decode(body).resource_spans
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "s"
    server, client, timed_out, *again = scope_spans.spans
    assert len(again) == 3  # the second request: the cached attribute blocks write the same bytes
    assert again[0] == server
    assert server.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    assert server.span_id == trace.span_id.to_bytes(8, "big")
    assert server.name == "redeem" and server.kind == 2 and server.status.code == 2
    assert server.flags == 0x301  # sampled, with a remote parent
    assert abs(server.end_time_unix_nano - 1_767_225_600_250_000_000) < 1000  # a float's precision
    assert server.start_time_unix_nano == server.end_time_unix_nano - 2_500_000
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["http.response.status_code"].int_value == 504
    assert attributes["gateway.request_id"].string_value == "gw-0123"
    custom, limit = server.events
    values = {a.key: a.value for a in custom.attributes}
    assert values["flag"].bool_value is True and values["count"].int_value == -3
    assert values["ratio"].double_value == 0.5 and values["text"].string_value == "é" * 100
    values = {a.key: a.value for a in limit.attributes}
    assert values["gateway.rate_limit.store"].string_value == "redis+sentinel"
    assert values["gateway.rate_limit.decision"].string_value == "limited"
    assert values["gateway.rate_limit.store_ms"].double_value == 2.0
    assert b"pw@" not in body
    assert client.parent_span_id == server.span_id and client.name == "upstream" and client.kind == 3
    assert client.status.code == 2 and client.end_time_unix_nano == call.start_ns + 1000
    assert {a.key: a.value.int_value for a in client.attributes if a.key.endswith("code")} == {
        "http.response.status_code": 503
    }
    errors = {a.key: a.value.string_value for a in timed_out.attributes}
    assert errors["error.type"] == "upstream_timeout" and "http.response.status_code" not in errors
    assert timed_out.end_time_unix_nano == server.end_time_unix_nano  # never ended: ends with the request


def test_a_new_trace_has_no_parent_and_unknown_methods_are_other() -> None:
    trace = TraceStarter(1.0).begin(CIMultiDict())
    outcome = _outcome(trace=trace, method="PROPFIND", operation=None, project=None, status=404)
    [span] = (
        _decode(export_request(b"", b"", [SpanWriter().request(outcome, trace)]))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    assert span.parent_span_id == b"" and span.flags == 0x101 and span.name == "not_found"
    attributes = {a.key: a.value for a in span.attributes}
    assert "voucherify.project" not in attributes and "voucherify.operation" not in attributes
    assert attributes["http.request.method"].string_value == "_OTHER"
    assert span.status.code == 0


def test_the_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # the export thread never wakes by itself
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000")  # at most the queue: 10
    tracing = Tracing(TracingConfig(otlp_endpoint=f"http://127.0.0.1:{free_port()}/v1/traces"))
    try:
        starter = TraceStarter(1.0)
        outcomes = [_outcome(trace=starter.begin(CIMultiDict())) for _ in range(100)]
        unsampled = _outcome(trace=TraceStarter(0.0).begin(CIMultiDict()))
        assert tracing.batch == 10
        tracing.account([*outcomes, unsampled], 0)  # the export thread may take the last 10 meanwhile
        assert len(tracing._queue) <= 10 and tracing.dropped >= 90
        assert all(outcome in outcomes[-10:] for outcome in list(tracing._queue))  # the newest are kept
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300"])
def test_a_setting_that_is_no_positive_number_takes_its_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    """The SDK refuses them too: a delay of 0, -1 or NaN spun the export thread (the GIL taken from the
    event loop), and inf killed it (OverflowError), as an infinite timeout did at its first export; an
    infinite or huge queue size failed the start."""
    names = (
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    )
    for name in names:
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="gateway.tracing"):
        tracing = Tracing(TracingConfig(otlp_endpoint=f"http://127.0.0.1:{free_port()}/v1/traces"))
    try:
        assert (tracing.delay, tracing.max_queue, tracing.batch, tracing.sender.timeout) == (5, 2048, 512, 10)
        assert [name in caplog.text for name in names] == [True] * len(names)
        assert tracing._thread.is_alive()
    finally:
        tracing.shutdown()


def test_a_header_the_sdk_cannot_read_is_not_quoted_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`name: value` instead of `name=value`: the SDK's parser warned with the entry as written, the
    collector's API key in the gateway's log."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key: collector-secret-9f1e,x-team=shop")
    with caplog.at_level(logging.DEBUG):
        sender = OtlpHttpSender("http://127.0.0.1:4318/v1/traces")
    assert sender.headers == {"x-team": "shop", "Content-Type": "application/x-protobuf"}
    assert "collector-secret-9f1e" not in caplog.text
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.name == "gateway.tracing" and "OTEL_EXPORTER_OTLP_TRACES_HEADERS" in warning.getMessage()
