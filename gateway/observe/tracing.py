"""The tracing sink: each sampled request's spans, encoded and exported over OTLP/HTTP off the event loop.

The one module of the gateway that imports OpenTelemetry (the `tracing` extra); `serve` imports it only
when `tracing.otlp_endpoint` is set. The request path records plain values (`observe.trace_context`);
this sink, fed by `Accounting` like the access log and the metrics, queues each sampled request's outcome
(a bounded queue: past OTEL_BSP_MAX_QUEUE_SIZE requests, the oldest are dropped), and one thread of its
own encodes them in batches (`observe.otlp`: one SERVER span, one CLIENT span per upstream call) and posts
each batch to the collector. Nothing a request waits for.

From OpenTelemetry: the resource (`Resource.create`: `service.name` and the SDK's own attributes, with
OTEL_RESOURCE_ATTRIBUTES merged), its protobuf form, and the standard variables: OTEL_BSP_SCHEDULE_DELAY,
OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, and OTEL_EXPORTER_OTLP_[TRACES_]HEADERS,
_TIMEOUT, _COMPRESSION (gzip) and _CERTIFICATE. The endpoint is the policy's. The SDK's span encoder is
not used: it costs about 100 µs of CPU per span (see `observe.otlp`).

A collector that is down, slow or refusing costs requests nothing: a failed batch is dropped, not retried
(memory stays bounded), and `ExportWatch` says so once at warning, naming the collector (scheme, host,
port and path: never user info or a query), when exports start failing, and once when they succeed again.

What a span holds: names and values of the policy and the catalog (project, operation, decision), the
method, status codes, the request id, the upstream's host and port, the rate-limit event. Never a
credential, a header value, a body, a query string, a path or a client address; the caller's
`tracestate` is not kept in spans either.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import http.client
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from urllib.parse import unquote, urlsplit

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.util.re import parse_env_headers

from gateway.models import Outcome
from gateway.observe.otlp import SpanWriter, export_request
from gateway.observe.trace_context import TraceStarter
from gateway.policy import Tracing as TracingConfig

__all__ = ["ExportWatch", "Tracing", "collector_name"]

log = logging.getLogger("gateway.tracing")

SCOPE = "voucherify-gateway"
SHUTDOWN_WAIT = 2.0  # seconds the last spans get to leave at exit, while exports succeed
STUCK_AFTER = 0.5  # seconds an export may take before the exit stops waiting for the collector
ANSWER_BYTES = 64 * 1024  # of a collector's answer (an empty ExportTraceServiceResponse, or an error text)


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


class ExportWatch:
    """Logs the start of a run of failed exports, and its end, once each."""

    def __init__(self, collector: str) -> None:
        self.collector = collector
        self.failing = False

    def exported(self, ok: bool) -> None:
        if ok:
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


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _number(default: float, *names: str) -> float:
    """A positive number, as the SDK takes these settings: 0, a negative, NaN, inf or past what a thread or
    socket can wait (a delay that spins the export thread, a size or timeout that kills it) is refused,
    and the default used."""
    value = _env(*names)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number <= threading.TIMEOUT_MAX:
        log.warning("tracing: %s is not a positive number; using %g", names[0], default)
        return default
    return number


def _headers(*names: str) -> dict[str, str]:
    """The collector's headers from the first of `names` that is set, parsed as the SDK parses them. The
    SDK's parser warns of an entry it cannot read (`x-api-key: secret`, not `x-api-key=secret`) with the
    entry as written, so its warnings are dropped and one of the gateway's says how many, quoting none."""
    name = next((name for name in names if _env(name) is not None), None)
    if name is None:
        return {}
    unread: list[logging.LogRecord] = []

    def drop(record: logging.LogRecord) -> bool:
        unread.append(record)
        return False

    sdk_log = logging.getLogger("opentelemetry.util.re")
    sdk_log.addFilter(drop)
    try:
        headers = dict(parse_env_headers(_env(name) or "", liberal=True))
    finally:
        sdk_log.removeFilter(drop)
    if unread:
        log.warning(
            "tracing: %d entr%s of %s not name=value, not sent (not shown: a value may be a secret)",
            len(unread),
            "y" if len(unread) == 1 else "ies",
            name,
        )
    return headers


class OtlpHttpSender:
    """POSTs encoded export requests to the collector: one attempt each, bounded by the timeout, over one
    kept-alive connection (`http.client`). A `requests` session cost about four times the CPU per export
    (some 2 µs per request at 512 requests a batch: its settings merged, the environment read, on every
    call). The collector is reached directly: proxy variables do not apply. User info in the endpoint is
    sent as Basic auth (as `requests` sent it), never logged."""

    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        try:
            self.port = parts.port or (443 if self.https else 80)
        except ValueError:  # not a port number: every export fails, and says so once
            self.port = 0
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = _headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
        self.headers = {**headers, "Content-Type": "application/x-protobuf"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("latin-1", "replace")
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self.timeout = _number(10.0, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        compression = _env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
        self.gzip = (compression or "").lower() == "gzip"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.certificate = _env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
        self._connection: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> bool:
        # level 1: a third less CPU than 5 for 7 % more bytes (1.1 vs 1.8 ms for 512 requests' spans)
        data = gzip.compress(body, compresslevel=1) if self.gzip else body
        try:
            connection = self._connection
            if connection is None or _dropped(connection):
                self.close()
                connection = self._connection = self._connect()
            connection.request("POST", self.target, data, self.headers)
            answer = connection.getresponse()
            answer.read(ANSWER_BYTES)
            if not answer.isclosed():  # an answer longer than a collector's: the connection is not reused
                self.close()
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return False
        return 200 <= answer.status < 300

    def _connect(self) -> http.client.HTTPConnection:
        if not self.https:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        context = ssl.create_default_context(cafile=self.certificate)  # verified: the system's CAs, or it
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)

    def abort(self) -> None:
        """End the export under way, from another thread: its socket is shut down, so the read it waits
        on returns and the export fails. The timeout bounds each read; a collector answering a byte at
        a time within it would hold an export for ever."""
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # the base class's: SSLSocket.shutdown drops its TLS state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection was closed by the collector meanwhile (readable while idle: its end,
    or bytes nobody asked for), so that an export is not sent into it. `poll`: a descriptor past 1024
    (the gateway holds many) is out of `select`'s range."""
    sock = connection.sock
    if sock is None:
        return False  # http.client opens it again
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Tracing:
    """Tracing for one process: the `TraceStarter` for the request path, and the sink of its spans."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.otlp_endpoint is not None, "tracing is off"
        version = _version()
        self.starter = TraceStarter(config.sample_ratio)
        resource = Resource.create(
            {"service.name": config.service_name, "service.version": version, "process.pid": os.getpid()}
        )
        self.resource = _resource_bytes(resource)
        self.scope = InstrumentationScope(name=SCOPE, version=version).SerializeToString()
        self.collector = collector_name(config.otlp_endpoint)
        self.watch = ExportWatch(self.collector)
        self.sender = OtlpHttpSender(config.otlp_endpoint)
        self.writer = SpanWriter()
        self.delay = _number(5000, "OTEL_BSP_SCHEDULE_DELAY") / 1000
        self.max_queue = max(1, int(_number(2048, "OTEL_BSP_MAX_QUEUE_SIZE")))
        self.batch = min(self.max_queue, max(1, int(_number(512, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))))
        self.exported = 0  # requests whose spans the collector took
        self.dropped = 0  # requests whose spans were dropped: the queue was full, or their export failed
        self.busy_since = 0.0  # time.monotonic() when the export under way began; 0 when none is
        self._queue: collections.deque[Outcome] = collections.deque(maxlen=self.max_queue)
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tracing-export", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------- the event loop's

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        queue = self._queue
        for outcome in batch:
            trace = outcome.trace
            if trace is not None and trace.sampled:
                if len(queue) == self.max_queue:
                    self.dropped += 1  # deque(maxlen) lets the oldest go
                queue.append(outcome)
        if len(queue) >= self.batch:
            self._wake.set()
        busy = self.busy_since  # every flush (0.2 s): an export past its timeout is given up
        if busy and time.monotonic() - busy > self.sender.timeout:
            self.sender.abort()

    def shutdown(self) -> None:
        """Send what is queued, waiting at most SHUTDOWN_WAIT seconds, and not at all while exports fail
        or one is stuck (a collector that is down or slow never holds the exit). Blocking: run it off the
        event loop."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while self._thread.is_alive() and not self.stuck and time.monotonic() < deadline:
            self._thread.join(0.05)

    @property
    def stuck(self) -> bool:
        """Failing, or an export has waited on the collector for longer than a healthy one takes."""
        busy = self.busy_since
        return self.watch.failing or (busy > 0 and time.monotonic() - busy > STUCK_AFTER)

    # -------------------------------------------------------------------------------- the export thread

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(self.delay)  # by `account`: a whole batch is queued
            self._wake.clear()
            self._export_queued(partial=not woken)
        self._export_queued(partial=True)
        self.sender.close()

    def _export_queued(self, partial: bool) -> None:
        """Export whole batches, and with `partial` (every OTEL_BSP_SCHEDULE_DELAY, and at exit) the
        rest: under load each export carries a whole batch, so its cost per request stays small."""
        queue, writer, batch = self._queue, self.writer, self.batch
        while len(queue) >= batch or (partial and queue):
            outcomes = [queue.popleft() for _ in range(min(batch, len(queue)))]
            spans = [writer.request(outcome, outcome.trace) for outcome in outcomes if outcome.trace]
            body = export_request(self.resource, self.scope, spans)
            self.busy_since = time.monotonic()
            try:
                ok = self.sender.send(body)
            finally:
                self.busy_since = 0.0
            if ok:
                self.exported += len(outcomes)
            else:
                self.dropped += len(outcomes)
            self.watch.exported(ok)
            if self._stopping and self.stuck:
                return


def _resource_bytes(resource: Resource) -> bytes:
    """The resource as OTLP's Resource message, encoded once."""
    message = ResourceMessage()
    for key, value in resource.attributes.items():
        pair = KeyValue(key=key)
        if isinstance(value, bool):
            pair.value.CopyFrom(AnyValue(bool_value=value))
        elif isinstance(value, int):
            pair.value.CopyFrom(AnyValue(int_value=value))
        elif isinstance(value, float):
            pair.value.CopyFrom(AnyValue(double_value=value))
        else:
            pair.value.CopyFrom(AnyValue(string_value=str(value)))
        message.attributes.append(pair)
    encoded: bytes = message.SerializeToString()
    return encoded


def _version() -> str:
    try:
        return metadata.version("voucherify-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0"
