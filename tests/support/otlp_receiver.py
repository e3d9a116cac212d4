"""A real OTLP/HTTP trace receiver for the tests: an aiohttp server on a real socket that decodes what it
is sent with opentelemetry-proto, as a collector does, and records every span.

`mode` says how it answers: "ok" (200 with an ExportTraceServiceResponse), "refuse" (400, a permanent
error for an exporter: no retry), "unavailable" (503, retried by exporters), "hang" (reads the request,
never answers until closed) or "trickle" (reads the request, then answers 200 one byte of its body at a
time, each well within any timeout, until closed). Every export it received is also kept as text and
registered with the suite's credential scan (log_scan.py), so no span may ever hold a credential. With
`ssl_context` it listens over TLS; `keepalive` is how long (seconds) an idle connection stays open.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.log_scan import register_lines

WAIT = 30.0  # an upper bound for what normally takes milliseconds; never a pass/fail timing

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2  # Status.StatusCode


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    parent_span_id: str  # "" for a root span
    trace_state: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: int
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    scope: str


@dataclass
class OtlpReceiver:
    mode: str = "ok"
    spans: list[ReceivedSpan] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # each export as protobuf text, for the credential scan
    payloads: list[bytes] = field(default_factory=list)  # each export's decoded bytes
    attempts: int = 0  # export requests received, whatever was answered
    headers: list[dict[str, str]] = field(default_factory=list)  # each export request's headers
    peers: list[tuple[str, int]] = field(default_factory=list)  # each export request's connection
    ssl_context: ssl.SSLContext | None = None
    keepalive: float = 75.0  # aiohttp's default
    url: str = ""
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        register_lines(self.texts)

    async def _export(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        self.headers.append(dict(request.headers))
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else ("", 0))
        body = await request.read()  # aiohttp decodes a gzip or deflate Content-Encoding, as collectors do
        if self.mode == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if self.mode == "trickle":
            answer = web.StreamResponse()
            answer.enable_chunked_encoding()
            await answer.prepare(request)
            while not self._release.is_set():
                await answer.write(b"\x00")
                await asyncio.sleep(0.05)
            return answer
        if self.mode == "refuse":
            return web.Response(status=400, text="refused by the test")
        if self.mode == "unavailable":
            return web.Response(status=503, text="unavailable")
        assert request.headers.get("Content-Type") == "application/x-protobuf", request.headers
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.payloads.append(body)
        self.texts.extend(str(export).splitlines())
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            trace_state=span.trace_state,
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status=span.status.code,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def start(self) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, keepalive_timeout=self.keepalive
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "http" if self.ssl_context is None else "https"
        self.url = f"{scheme}://127.0.0.1:{port}/v1/traces"
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for_trace(self, trace_id: str, count: int = 2) -> list[ReceivedSpan]:
        """The spans of `trace_id`, once `count` of them arrived (the SERVER span first)."""
        deadline = time.monotonic() + WAIT
        while len(self.trace(trace_id)) < count:
            assert time.monotonic() < deadline, f"{len(self.trace(trace_id))} of {count} spans of {trace_id}"
            await asyncio.sleep(0.02)
        return sorted(self.trace(trace_id), key=lambda span: span.kind != SERVER)

    async def wait_for_attempts(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.attempts < count:
            assert time.monotonic() < deadline, f"{self.attempts} of {count} export attempts"
            await asyncio.sleep(0.02)
