"""The tracing sink: each sampled request's spans, built in batches and exported over OTLP/HTTP.

The one module of the gateway that imports OpenTelemetry (the `tracing` extra); `serve` imports it only
when `tracing.otlp_endpoint` is set. The request path records plain values (`observe.trace_context`);
this sink, fed by `Accounting` like the access log and the metrics, turns each sampled request into one
SERVER span and one CLIENT span per upstream call (the SDK's `ReadableSpan`), and hands them to the SDK's
`BatchSpanProcessor`, whose own thread encodes and sends them: a bounded queue (spans past it are
dropped), nothing on the event loop, nothing a request waits for.

A collector that is down, slow or refusing costs requests nothing; `WatchedExporter` says so once at
warning, naming the collector (scheme, host, port and path: never user info or a query), when exports
start failing, and once when they succeed again. The SDK's own per-attempt log lines are silenced.

What a span holds: names and values of the policy and the catalog (project, operation, decision), the
method, status codes, the request id, the upstream's host and port. Never a credential, a header value,
a body, a query string, a path or a client address; the caller's `tracestate` is not kept in spans either.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.models import Outcome
from gateway.observe.trace_context import RequestTrace, TraceStarter
from gateway.policy import Tracing as TracingConfig

__all__ = ["KNOWN_METHODS", "Tracing", "WatchedExporter", "collector_name"]

log = logging.getLogger("gateway.tracing")

SCOPE = "voucherify-gateway"
# http.request.method takes a known method as it is, anything else as "_OTHER" (OpenTelemetry's HTTP
# conventions): a method is a token of the client's choosing, of any length.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
SHUTDOWN_WAIT = 2.0  # seconds the last spans get to leave at exit, while exports succeed
STUCK_AFTER = 0.5  # seconds an export may take before the exit stops waiting for the collector
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NO_STATE = TraceState()
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)


def collector_name(endpoint: str) -> str:
    """The collector as a log line may name it: scheme, host, port and path, never user info or a query."""
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WatchedExporter(SpanExporter):
    """An exporter that logs the start of a run of failed exports, and its end, once each."""

    def __init__(self, inner: SpanExporter, collector: str) -> None:
        self.inner = inner
        self.collector = collector
        self.failing = False
        self.exported = 0  # spans accepted by the collector (for tests and the bench)
        self.busy_since = 0.0  # time.monotonic() when the export under way began; 0 when none is

    @property
    def stuck(self) -> bool:
        """Failing, or an export has waited on the collector for longer than a healthy one takes."""
        busy = self.busy_since
        return self.failing or (busy > 0 and time.monotonic() - busy > STUCK_AFTER)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.busy_since = time.monotonic()
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not kill the processor's thread
            result = SpanExportResult.FAILURE
        finally:
            self.busy_since = 0.0
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            if self.failing:
                self.failing = False
                log.warning("tracing: exports to the collector %s succeed again", self.collector)
        elif not self.failing:
            self.failing = True
            log.warning(
                "tracing: exports to the collector %s are failing (down, slow or refusing); spans are "
                "dropped until it takes them again, and requests are not affected",
                self.collector,
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """Tracing for one process: the `TraceStarter` for the request path, and the sink of its spans.

    `exporter` replaces the OTLP/HTTP exporter (tests). The processor's sizes and delays are the SDK's,
    so the standard `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_TRACES_*` environment variables (headers,
    timeout, compression, certificates) apply; the endpoint is the policy's.
    """

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        assert config.otlp_endpoint is not None, "tracing is off"
        # The SDK logs every failed attempt and every dropped span; WatchedExporter says it once instead.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
        version = _version()
        self.starter = TraceStarter(config.sample_ratio)
        self.resource = Resource.create(
            {"service.name": config.service_name, "service.version": version, "process.pid": os.getpid()}
        )
        self.scope = InstrumentationScope(SCOPE, version)
        self.collector = collector_name(config.otlp_endpoint)
        inner = exporter if exporter is not None else OTLPSpanExporter(endpoint=config.otlp_endpoint)
        self.exporter = WatchedExporter(inner, self.collector)
        self.processor = BatchSpanProcessor(self.exporter)
        self._closed = False

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        on_end = self.processor.on_end
        for outcome in batch:
            trace = outcome.trace
            if trace is None or not trace.sampled:
                continue
            for span in self.spans(outcome, trace):
                on_end(span)

    def spans(self, outcome: Outcome, trace: RequestTrace) -> Iterator[ReadableSpan]:
        """The request's SERVER span, then a CLIENT span per upstream call."""
        trace_id = trace.trace_id
        context = SpanContext(trace_id, trace.span_id, False, _SAMPLED, _NO_STATE)
        parent = None
        if trace.parent_span_id:
            parent = SpanContext(trace_id, trace.parent_span_id, True, _SAMPLED, _NO_STATE)
        attributes: dict[str, Any] = {}
        if outcome.project is not None:
            attributes["voucherify.project"] = outcome.project
        if outcome.operation is not None:
            attributes["voucherify.operation"] = outcome.operation
        method = outcome.method
        attributes["gateway.decision"] = outcome.decision
        attributes["gateway.request_id"] = outcome.request_id
        attributes["http.request.method"] = method if method in KNOWN_METHODS else "_OTHER"
        if outcome.status:
            attributes["http.response.status_code"] = outcome.status
        start = trace.start_ns
        end = trace.end_ns or start + int(outcome.duration_ms * 1_000_000)
        events = [Event(name, attrs, at) for name, at, attrs in trace.events] if trace.events else ()
        yield ReadableSpan(
            name=outcome.operation or "not_found",
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.SERVER,
            status=_ERROR if outcome.status >= 500 or not outcome.status else _UNSET,
            start_time=start,
            end_time=end,
            instrumentation_scope=self.scope,
        )
        for call in trace.calls:
            call_attributes: dict[str, Any] = {
                "server.address": call.host,
                "server.port": call.port,
                "http.request.method": call.method if call.method in KNOWN_METHODS else "_OTHER",
            }
            if call.status is not None:
                call_attributes["http.response.status_code"] = call.status
            if call.error is not None:
                call_attributes["error.type"] = call.error
            failed = call.status is None or call.status >= 500
            yield ReadableSpan(
                name="upstream",
                context=SpanContext(trace_id, call.span_id, False, _SAMPLED, _NO_STATE),
                parent=context,
                resource=self.resource,
                attributes=call_attributes,
                kind=SpanKind.CLIENT,
                status=_ERROR if failed else _UNSET,
                start_time=call.start_ns,
                end_time=call.end_ns or end,
                instrumentation_scope=self.scope,
            )

    def shutdown(self) -> None:
        """Send what is queued, waiting at most SHUTDOWN_WAIT seconds, and not at all while exports fail
        or one is stuck (a collector that is down or slow never holds the exit). Blocking: run it off the
        event loop."""
        if self._closed:
            return
        self._closed = True
        # The SDK's shutdown waits up to 30 s for its thread (and a hung collector holds that thread for
        # its export timeout): it runs in a daemon thread of its own, which the exit does not wait for.
        closing = threading.Thread(target=self.processor.shutdown, name="tracing-shutdown", daemon=True)
        closing.start()
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while closing.is_alive() and not self.exporter.stuck and time.monotonic() < deadline:
            closing.join(0.05)


def _version() -> str:
    try:
        return metadata.version("voucherify-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0"
