"""Tracing end to end: a gateway on a real port exporting over OTLP/HTTP to a real receiver (the tests'
own, decoding the protobuf as a collector does), in front of the recording upstream double.

In-process gateways here are built as `serve` builds them (the tracing sink in the accounting, its
starter in the app); their accounting is flushed by the test, as `serve`'s flusher would every 0.2 s.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gateway.app import STATE, create_app
from gateway.models import Outcome
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting
from gateway.observe.otlp import export_request
from gateway.observe.tracing import OtlpHttpSender, Tracing
from tests.conftest import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN, GatewayFactory, base_policy, make_policy
from tests.support.constants import JSON_H, H
from tests.support.otlp_receiver import CLIENT, SERVER, STATUS_ERROR, WAIT, OtlpReceiver
from tests.support.processes import GatewayProcessFactory
from tests.support.upstream_double import Reply, UpstreamDouble

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
HEX32 = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")
SERVER_KEYS = {
    "voucherify.project",
    "voucherify.operation",
    "gateway.decision",
    "gateway.request_id",
    "http.request.method",
    "http.response.status_code",
}
BODY = b'{"redeemables":[{"object":"voucher","id":"body-secret-CODE"}]}'


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = await OtlpReceiver().start()
    yield found
    await found.close()


@pytest.fixture(autouse=True)
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's standard variables: export every 20 ms (default 5 s), give up an export after 1 s."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")


@dataclass
class Traced:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    tracing: Tracing
    accounting: Accounting

    def flush(self) -> None:
        self.accounting.flush()


TracedFactory = Callable[..., Awaitable[Traced]]


@pytest.fixture
async def traced(upstream: UpstreamDouble, receiver: OtlpReceiver) -> AsyncIterator[TracedFactory]:
    """`await traced(tree=None, endpoint=None, **tracing_keys)`: an in-process gateway, tracing on."""
    made: list[Traced] = []

    async def start(tree: dict[str, Any] | None = None, endpoint: str | None = None, **keys: Any) -> Traced:
        tree = tree if tree is not None else base_policy(upstream.url)
        tree["tracing"] = {"otlp_endpoint": endpoint or receiver.url, **keys}
        policy = make_policy(tree)
        tracing = Tracing(policy.tracing)
        accounting = Accounting([AccessLog(), tracing])
        app = create_app(policy, accounting, tracer=tracing.starter)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        made.append(Traced(client, app, tracing, accounting))
        return made[-1]

    yield start
    for one in made:
        await one.client.close()
        await asyncio.to_thread(one.tracing.shutdown)


def upstream_traceparent(upstream: UpstreamDouble, index: int = -1) -> tuple[str, str, str]:
    found = TRACEPARENT.fullmatch(upstream.received[index].headers["traceparent"])
    assert found is not None, upstream.received[index].headers["traceparent"]
    return found.group(1), found.group(2), found.group(3)


def access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    for record in caplog.records:
        fields = getattr(record, "fields", None)
        if record.name == "gateway.access" and fields and fields.get("request_id") == request_id:
            return dict(fields)
    raise AssertionError(f"no access line for {request_id}")


# --------------------------------------------------------------------------------- span tree and names


async def test_spans_of_a_forwarded_request_and_the_traceparent_upstream_got(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    gw = await traced()
    resp = await gw.client.post("/client/v1/validations", data=BODY, headers=JSON_H)
    assert resp.status == 200
    trace_id, client_span_id, flags = upstream_traceparent(upstream)
    assert flags == "01"
    assert "tracestate" not in upstream.received[0].headers  # none was sent
    gw.flush()
    server, client = await receiver.wait_for_trace(trace_id)

    assert server.name == "validate_stackable" and server.kind == SERVER
    assert server.parent_span_id == ""  # a new trace: the caller sent no traceparent
    assert server.attributes == {
        "voucherify.project": "shop",
        "voucherify.operation": "validate_stackable",
        "gateway.decision": "forwarded",
        "gateway.request_id": resp.headers["X-Request-Id"],
        "http.request.method": "POST",
        "http.response.status_code": 200,
    }
    assert isinstance(server.attributes["http.response.status_code"], int)
    assert server.status != STATUS_ERROR
    [(event, limit)] = server.events
    assert event == "rate_limit"
    assert limit["gateway.rate_limit.bucket"] == "per_ip"
    assert limit["gateway.rate_limit.decision"] == "allowed"
    assert limit["gateway.rate_limit.store"] == "memory"
    assert limit["gateway.rate_limit.store_ms"] >= 0

    assert client.name == "upstream" and client.kind == CLIENT
    assert client.span_id == client_span_id  # the upstream call's parent is the CLIENT span
    assert client.parent_span_id == server.span_id
    port = int(upstream.url.rsplit(":", 1)[1])
    assert client.attributes == {
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.request.method": "POST",
        "http.response.status_code": 200,
    }
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert server.resource["service.name"] == "voucherify-gateway"
    assert server.scope == "voucherify-gateway"


async def test_an_incoming_traceparent_is_continued_and_its_tracestate_sent_upstream(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    gw = await traced(service_name="checkout-gateway")
    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    resp = await gw.client.post(
        "/client/v1/validations",
        data=BODY,
        headers={**JSON_H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": state},
    )
    assert resp.status == 200
    trace_id, client_span_id, flags = upstream_traceparent(upstream)
    assert (trace_id, flags) == (TRACE_ID, "01")
    assert client_span_id != PARENT_ID
    assert upstream.received[0].headers.getall("tracestate") == [state]  # as received
    gw.flush()
    server, client = await receiver.wait_for_trace(TRACE_ID)
    assert server.parent_span_id == PARENT_ID
    assert client.parent_span_id == server.span_id and client.span_id == client_span_id
    assert server.trace_state == "" and client.trace_state == ""  # the caller's text stays out of spans
    assert server.resource["service.name"] == "checkout-gateway"


async def test_an_unsampled_caller_is_not_exported_but_keeps_its_trace(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await traced(sample_ratio=1.0)
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    resp = await gw.client.get(
        "/client/v1/validate?code=A", headers={**H, "traceparent": f"00-{unsampled}-{PARENT_ID}-00"}
    )
    assert resp.status == 200
    assert upstream_traceparent(upstream)[0] == unsampled
    assert upstream_traceparent(upstream)[2] == "00"  # the caller's decision travels on
    marker = await gw.client.get(
        "/client/v1/validate?code=B", headers={**H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    )
    assert marker.status == 200
    gw.flush()
    await receiver.wait_for_trace(TRACE_ID)  # exported in the same batch as the unsampled one would be
    assert receiver.trace(unsampled) == []
    assert access_line(caplog, resp.headers["X-Request-Id"])["trace_id"] == unsampled
    assert access_line(caplog, marker.headers["X-Request-Id"])["trace_id"] == TRACE_ID


MALFORMED = [
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # short
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    "",
    "x" * 4000,
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_a_malformed_traceparent_starts_a_new_trace(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver, value: str
) -> None:
    gw = await traced()
    resp = await gw.client.get(
        "/client/v1/validate?code=A", headers={**H, "traceparent": value, "tracestate": "rojo=1"}
    )
    assert resp.status == 200  # never an error
    trace_id, _, flags = upstream_traceparent(upstream)
    assert trace_id != TRACE_ID and flags == "01"
    assert "tracestate" not in upstream.received[0].headers  # it belonged to the traceparent ignored
    gw.flush()
    [server, _] = await receiver.wait_for_trace(trace_id)
    assert server.parent_span_id == ""


async def test_two_traceparent_headers_are_malformed(traced: TracedFactory, upstream: UpstreamDouble) -> None:
    gw = await traced()
    headers = [*H.items(), *[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")] * 2]
    resp = await gw.client.get("/client/v1/validate?code=A", headers=headers)
    assert resp.status == 200
    assert upstream_traceparent(upstream)[0] != TRACE_ID


async def test_a_tracestate_too_long_or_unprintable_is_not_sent_upstream(
    traced: TracedFactory, upstream: UpstreamDouble
) -> None:
    gw = await traced()
    parent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    for state in ("a=" + "x" * 600, "a=\u00e9t\u00e9"):
        resp = await gw.client.get(
            "/client/v1/validate?code=A", headers={**H, "traceparent": parent, "tracestate": state}
        )
        assert resp.status == 200
        assert "tracestate" not in upstream.received[-1].headers
        assert upstream_traceparent(upstream)[0] == TRACE_ID


async def test_sample_ratio_zero_exports_no_new_trace_yet_logs_each_trace_id(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await traced(sample_ratio=0.0)
    ids = []
    for _ in range(5):
        resp = await gw.client.get("/client/v1/validate?code=A", headers=H)
        assert resp.status == 200
        ids.append(resp.headers["X-Request-Id"])
        assert upstream_traceparent(upstream)[2] == "00"
    marker = await gw.client.get(
        "/client/v1/validate?code=B", headers={**H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    )
    gw.flush()
    await receiver.wait_for_trace(TRACE_ID)  # a caller's sampled trace is recorded whatever the ratio
    assert {span.trace_id for span in receiver.spans} == {TRACE_ID}
    logged = [access_line(caplog, request_id)["trace_id"] for request_id in ids]
    assert all(HEX32.fullmatch(trace_id) for trace_id in logged)
    assert len(set(logged)) == 5
    assert access_line(caplog, marker.headers["X-Request-Id"])["trace_id"] == TRACE_ID


async def test_sample_ratio_samples_about_that_share_of_new_traces(
    traced: TracedFactory, upstream: UpstreamDouble
) -> None:
    gw = await traced(sample_ratio=0.25)
    flags = []
    for _ in range(200):
        resp = await gw.client.get("/client/v1/validate?code=A", headers=H)
        assert resp.status == 200
        flags.append(upstream_traceparent(upstream)[2])
    sampled = flags.count("01")
    assert 20 <= sampled <= 80, sampled  # binomial(200, 0.25): mean 50, sd 6; 0 or 200 would be a bug


# --------------------------------------------------------------------------- refusals, preflights, errors


async def test_a_preflight_and_a_refusal_have_their_server_span(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await traced()
    parent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    preflight = await gw.client.options(
        "/client/v1/validations",
        headers={
            **H,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, traceparent, tracestate",
            "traceparent": parent,
        },
    )
    assert preflight.status == 204
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"traceparent", "tracestate"} <= allowed
    missing = await gw.client.get("/client/v1/nope?code=x", headers={**H, "traceparent": parent})
    assert missing.status == 404
    refused = await gw.client.get(
        "/client/v1/validate", headers={"Origin": "https://evil.test", "traceparent": parent}
    )
    assert refused.status == 403
    assert upstream.received == []
    gw.flush()
    spans = await receiver.wait_for_trace(TRACE_ID, count=3)
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"validate_stackable", "not_found", "validate"}
    assert all(span.kind == SERVER and span.parent_span_id == PARENT_ID for span in spans)
    assert by_name["validate_stackable"].attributes["gateway.decision"] == "preflight"
    assert by_name["validate_stackable"].attributes["http.request.method"] == "OPTIONS"
    assert by_name["validate_stackable"].attributes["http.response.status_code"] == 204
    assert by_name["not_found"].attributes == {  # a known project, no operation
        "voucherify.project": "shop",
        "gateway.decision": "not_found",
        "gateway.request_id": missing.headers["X-Request-Id"],
        "http.request.method": "GET",
        "http.response.status_code": 404,
    }
    assert by_name["validate"].attributes["gateway.decision"] == "origin_not_allowed"
    assert by_name["validate"].attributes["http.response.status_code"] == 403
    assert by_name["validate"].events == []  # refused before the rate limit
    assert access_line(caplog, preflight.headers["X-Request-Id"])["trace_id"] == TRACE_ID


async def test_an_unknown_method_is_named_other_in_spans(
    traced: TracedFactory, receiver: OtlpReceiver
) -> None:
    gw = await traced()
    resp = await gw.client.request(
        "PROPFIND",
        "/client/v1/validate",
        headers={**H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert resp.status == 405
    gw.flush()
    [server] = await receiver.wait_for_trace(TRACE_ID, count=1)
    assert server.attributes["http.request.method"] == "_OTHER"


async def test_a_failed_upstream_call_is_an_error_client_span(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    gw = await traced()
    upstream.reply(Reply(reset=True), Reply(503, {"code": 503}))
    for expected in (502, 503):
        resp = await gw.client.post("/client/v1/validations", data=BODY, headers=JSON_H)
        assert resp.status == expected
    gw.flush()
    reset = await receiver.wait_for_trace(upstream_traceparent(upstream, 0)[0])
    answered = await receiver.wait_for_trace(upstream_traceparent(upstream, 1)[0])
    server, client = reset
    assert server.attributes["http.response.status_code"] == 502
    assert server.attributes["gateway.decision"] == "upstream_unavailable"
    assert server.status == STATUS_ERROR
    assert client.status == STATUS_ERROR
    assert "http.response.status_code" not in client.attributes
    assert client.attributes["error.type"] == "upstream_unavailable"
    server, client = answered
    assert client.status == STATUS_ERROR and client.attributes["http.response.status_code"] == 503


async def test_a_limited_request_has_the_decision_as_an_event(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    # storage_timeout long: the third request is refused from memory however slow this machine is
    limits = {"per_ip": "1 per minute", "storage_timeout": 30}
    gw = await traced(tree={**base_policy(upstream.url), "rate_limit": limits})
    parent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    for expected in (200, 429, 429):
        resp = await gw.client.get("/client/v1/validate?code=A", headers={**H, "traceparent": parent})
        assert resp.status == expected
    gw.flush()
    spans = await receiver.wait_for_trace(TRACE_ID, count=4)
    limited = [s for s in spans if s.attributes.get("gateway.decision") == "too_many_requests"]
    limited.sort(key=lambda s: s.start_ns)
    [(first, asked)], [(second, remembered)] = (s.events for s in limited)
    assert first == second == "rate_limit"
    assert asked["gateway.rate_limit.decision"] == "limited" and asked["gateway.rate_limit.store_ms"] >= 0
    assert "gateway.rate_limit.remembered" not in asked  # the store refused it
    # the store was not asked again: no round trip to report, and the event says why
    assert remembered["gateway.rate_limit.decision"] == "limited"
    assert remembered["gateway.rate_limit.remembered"] is True
    assert remembered["gateway.rate_limit.store"] == "memory"
    assert "gateway.rate_limit.store_ms" not in remembered
    assert [s.name for s in spans if s.kind == CLIENT] == ["upstream"]  # the 429s called nobody


# ----------------------------------------------------------------------- what spans never hold


async def test_spans_hold_no_credential_body_query_or_client_address(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    tree = base_policy(upstream.url)
    tree["client_ip"] = {"trusted_proxies": ["127.0.0.1/32"]}
    gw = await traced(tree=tree)
    client_ip = "203.0.113.77"
    hostile = {
        **JSON_H,
        "X-Forwarded-For": client_ip,
        "X-Client-Token": "browser-secret-token-1",
        "Authorization": "Bearer secret-token-2",
        "Cookie": "session=secret-token-3",
        "tracestate": "v=secret-token-4",
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "User-Agent": "ua-MARKER-5",
    }
    resp = await gw.client.post("/client/v1/validations?code=QUERYSECRET", data=BODY, headers=hostile)
    assert resp.status == 200
    resp = await gw.client.get("/client/v1/validate?code=QUERYSECRET2&x=1", headers=hostile)
    assert resp.status == 200
    gw.flush()
    await receiver.wait_for_trace(TRACE_ID, count=4)
    exported = b"".join(receiver.payloads)
    for needle in (
        CLIENT_APP_ID,
        CLIENT_TOKEN,
        "secret-token",
        "body-secret",
        "QUERYSECRET",
        "code=",
        "ua-MARKER",
        client_ip,
        "/client/v1",
        ORIGIN,
    ):
        assert needle.encode() not in exported, needle
    keys = {key for span in receiver.spans for key in span.attributes}
    assert not keys & {"client.address", "network.peer.address", "url.query", "url.full", "url.path"}


# ------------------------------------------------------------------- tracing off: nothing changes


async def test_tracing_off_sends_no_trace_headers_upstream_and_logs_no_trace_id(
    gateway: GatewayFactory, upstream: UpstreamDouble, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway()
    resp = await client.get(
        "/client/v1/validate?code=A",
        headers={**H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "rojo=1"},
    )
    assert resp.status == 200
    [seen] = upstream.received
    assert "traceparent" not in seen.headers and "tracestate" not in seen.headers
    preflight = await client.options(
        "/client/v1/validate",
        headers={
            **H,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "traceparent",
        },
    )
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"traceparent", "tracestate"} <= allowed  # whether tracing is on or not
    assert client.app is not None
    client.app[STATE].accounting.flush()
    assert "trace_id" not in access_line(caplog, resp.headers["X-Request-Id"])


# ------------------------------------------------------------- a collector down, hanging, refusing


async def _timed(gw: Traced, count: int) -> list[float]:
    took = []
    for _ in range(count):
        started = time.perf_counter()
        resp = await gw.client.post("/client/v1/validations", data=BODY, headers=JSON_H)
        took.append((time.perf_counter() - started) * 1000)
        assert resp.status == 200
        gw.flush()  # as serve's flusher: spans are handed to the exporter while requests go on
    return took


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _tracing_warnings(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.tracing" and r.levelno == logging.WARNING and what in r.getMessage()
    ]


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", ["hang", "refuse", "unavailable", "down"])
async def test_a_failing_collector_costs_requests_nothing_and_is_logged_once(
    traced: TracedFactory,
    upstream: UpstreamDouble,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    healthy = await traced()
    baseline = await _timed(healthy, 150)
    collector = await OtlpReceiver(mode=mode).start()  # this gateway's own, failing
    try:
        if mode == "down":
            from gateway.serve import free_port

            endpoint = f"http://user:secret-token-6@127.0.0.1:{free_port()}/v1/traces?key=secret-token-7"
        else:
            endpoint = collector.url
        failing = await traced(endpoint=endpoint)
        took = await _timed(failing, 150)
        print(
            f"\n  collector {mode}: p50 {statistics.median(took):.2f} ms, p99 {_p99(took):.2f} ms; "
            f"healthy: p50 {statistics.median(baseline):.2f} ms, p99 {_p99(baseline):.2f} ms"
        )
        await _until(lambda: bool(_tracing_warnings(caplog, "are failing")), "no warning")
        attempts = collector.attempts
        await _timed(failing, 20)
        if mode in ("refuse", "unavailable"):
            await collector.wait_for_attempts(attempts + 1)  # more exports failed after the first one
        [warning] = _tracing_warnings(caplog, "are failing")  # once, not per attempt or span
        assert "secret-token" not in warning and "key=" not in warning
        assert "http://127.0.0.1:" in warning and "/v1/traces" in warning
        assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= 30]
        if mode == "down":
            return
        collector.mode = "ok"  # the collector is back
        collector._release.set()
        await _timed(failing, 20)  # spans to export: the next export says it succeeds again
        await _until(lambda: bool(_tracing_warnings(caplog, "succeed again")), "no recovery line")
        await collector.wait_for_trace(upstream_traceparent(upstream)[0])
        assert len(_tracing_warnings(caplog, "succeed again")) == 1
        assert len(_tracing_warnings(caplog, "are failing")) == 1
    finally:
        await collector.close()


async def test_a_collector_trickling_its_answer_is_cut_at_the_timeout_and_logged(
    traced: TracedFactory, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_TIMEOUT (1 s here) bounds an export, not each read of its answer: a
    collector sending a byte every 50 ms held the export thread for as long as it liked, every span after
    was dropped from the full queue, and no warning ever said so."""
    receiver.mode = "trickle"
    gw = await traced()
    await _timed(gw, 1)
    await receiver.wait_for_attempts(1)
    deadline = time.monotonic() + WAIT
    while not _tracing_warnings(caplog, "are failing"):
        assert time.monotonic() < deadline, "the trickled export was never given up"
        gw.flush()  # as serve's flusher, every 0.2 s
        await asyncio.sleep(0.02)
    assert gw.tracing.dropped == 1 and gw.tracing.busy_since == 0.0


# ---------------------------------------------------------------------- the serve process, workers


def _traced_tree(upstream: UpstreamDouble, receiver_url: str) -> dict[str, Any]:
    tree = base_policy(upstream.url)
    tree["tracing"] = {"otlp_endpoint": receiver_url, "service_name": "gw-e2e"}
    tree["listen"] = {"drain_timeout": 5}
    return tree


QUICK_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "20", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1"}


async def test_serve_exports_spans_and_logs_trace_ids(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    import aiohttp

    gw = await gateway_process(_traced_tree(upstream, receiver.url), env=QUICK_ENV)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{gw.url}/client/v1/validations", data=BODY, headers=JSON_H)
        assert resp.status == 200
        request_id = resp.headers["X-Request-Id"]
    trace_id = upstream_traceparent(upstream)[0]
    server, client = await receiver.wait_for_trace(trace_id)
    assert server.resource["service.name"] == "gw-e2e"
    assert client.parent_span_id == server.span_id
    await gw.wait_for(request_id)
    [line] = [line for line in gw.access_lines() if line["request_id"] == request_id]
    assert line["trace_id"] == trace_id


async def test_an_answer_made_before_the_app_has_its_trace_id_and_server_span(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    """POLICY.md: with tracing on, each access line carries trace_id. The answers the public port makes
    before the app (a bad Host, HTTP/2.0, CONNECT, what aiohttp cannot parse, a head timeout) had none,
    and no SERVER span."""
    from tests.support.rawhttp import raw_request

    gw = await gateway_process(_traced_tree(upstream, receiver.url), env=QUICK_ENV)
    answer = await raw_request(
        gw.port,
        b"GET /client/v1/promotions/tiers HTTP/1.1\r\nHost: a b\r\n"
        + f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01\r\n\r\n".encode(),
    )
    assert answer.status == 400
    request_id = answer.headers["X-Request-Id"]
    await gw.wait_for(request_id)
    [line] = [line for line in gw.access_lines() if line["request_id"] == request_id]
    assert line["trace_id"] == TRACE_ID  # the caller's, continued as the app's answers continue it
    [server] = await receiver.wait_for_trace(TRACE_ID, count=1)
    assert (server.name, server.parent_span_id, server.attributes["gateway.decision"]) == (
        "not_found",
        PARENT_ID,
        "invalid_payload",
    )


async def test_a_hung_collector_holds_no_drain(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    import signal

    import aiohttp

    receiver.mode = "hang"
    gw = await gateway_process(_traced_tree(upstream, receiver.url), env=QUICK_ENV)
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            resp = await session.post(f"{gw.url}/client/v1/validations", data=BODY, headers=JSON_H)
            assert resp.status == 200
    await receiver.wait_for_attempts(1)  # an export is stuck in the collector
    started = time.monotonic()
    gw.send(signal.SIGTERM)
    assert await gw.exit_code() == 0
    print(f"\n  drain and exit with a hung collector: {time.monotonic() - started:.2f} s")


async def test_each_worker_exports_its_own_spans(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    import aiohttp

    gw = await gateway_process(_traced_tree(upstream, receiver.url), workers=2, env=QUICK_ENV)
    await gw.wait_for(re.compile(r"worker \d+ listening"), count=2)  # stderr may lag the stdout line
    workers = gw.worker_pids()
    assert len(workers) == 2
    exporters: set[int] = set()
    for _ in range(200):  # a new connection each time: the kernel spreads them over the workers
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"{gw.url}/client/v1/validate?code=A", headers=H)
            assert resp.status == 200
        trace_id = upstream_traceparent(upstream)[0]
        [server, _] = await receiver.wait_for_trace(trace_id)
        exporters.add(server.resource["process.pid"])
        if len(exporters) == 2:
            break
    assert exporters == workers


# ------------------------------------------------------------------------- server mode, a reload


async def test_server_mode_carries_the_same_trace_headers(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    from tests.e2e.test_server_mode_e2e import SERVER

    gw = await traced(tree=base_policy(upstream.url, **SERVER))
    resp = await gw.client.post(
        "/client/v1/validations",
        data=BODY,
        headers={**JSON_H, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "rojo=1"},
    )
    assert resp.status == 200
    [seen] = upstream.received
    assert seen.path == "/v1/validations"
    trace_id, client_span_id, _ = upstream_traceparent(upstream)
    assert trace_id == TRACE_ID and seen.headers.getall("tracestate") == ["rojo=1"]
    gw.flush()
    server, client = await receiver.wait_for_trace(TRACE_ID)
    assert (
        client.span_id == client_span_id and server.attributes["voucherify.operation"] == "validate_stackable"
    )


async def test_a_reload_that_changes_tracing_says_it_needs_a_restart(
    traced: TracedFactory, upstream: UpstreamDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.reload import PolicyReloader
    from tests.support.processes import write_policy

    gw = await traced()
    tree = base_policy(upstream.url)
    tree["tracing"] = {"otlp_endpoint": "http://127.0.0.1:9/v1/traces", "sample_ratio": 0.5}
    path = write_policy(tmp_path / "policy.yaml", tree)
    reloader = PolicyReloader(gw.app, path, configure_logs=False)
    assert await reloader.reload()
    assert any(
        "tracing changed" in r.getMessage() and "next restart" in r.getMessage() for r in caplog.records
    )
    assert gw.app[STATE].tracer is gw.tracing.starter  # the running tracer stays
    assert gw.tracing.starter.bound == 1 << 64


async def test_the_failed_code_budget_decision_is_an_event(
    traced: TracedFactory, upstream: UpstreamDouble, receiver: OtlpReceiver
) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "1000 per minute", "failed_codes": "1 per hour"}
    gw = await traced(tree=tree)
    upstream.reply(Reply(404, {"code": 404, "key": "not_found", "message": "Resource not found"}))
    parent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    for expected in (404, 429):
        resp = await gw.client.get("/client/v1/validate?code=NOPE", headers={**H, "traceparent": parent})
        assert resp.status == expected
    gw.flush()
    spans = await receiver.wait_for_trace(TRACE_ID, count=3)
    servers = sorted((s for s in spans if s.kind == SERVER), key=lambda s: s.start_ns)
    decisions = [
        [
            attributes["gateway.failed_codes.decision"]
            for name, attributes in s.events
            if name == "failed_codes"
        ]
        for s in servers
    ]
    assert decisions == [["allowed"], ["limited"]]
    [(_, attributes)] = [e for e in servers[1].events if e[0] == "failed_codes"]
    assert attributes["gateway.failed_codes.named"] == 1 and attributes["gateway.failed_codes.store_ms"] >= 0
    assert servers[1].attributes["gateway.decision"] == "too_many_failed_codes"


# --------------------------------------------------------------------------- the exporter's requests

EMPTY_EXPORT = export_request(b"", b"", [])


def _sender(endpoint: str) -> OtlpHttpSender:
    return OtlpHttpSender(endpoint)


async def test_the_exporter_sends_the_sdk_headers_gzip_and_the_endpoints_user_as_basic_auth(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-collector-key=k%201,x-tenant=shop")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    sender = _sender(receiver.url.replace("http://", "http://gw:pa%40ss@") + "?tenant=1")
    try:
        assert await asyncio.to_thread(sender.send, EMPTY_EXPORT)
    finally:
        sender.close()
    [headers] = receiver.headers
    assert headers["Content-Encoding"] == "gzip" and receiver.payloads == [EMPTY_EXPORT]  # as decoded
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["x-collector-key"] == "k 1" and headers["x-tenant"] == "shop"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"gw:pa@ss").decode()


async def test_exports_share_one_connection_and_one_the_collector_closed_is_not_used(
    receiver: OtlpReceiver,
) -> None:
    collector = await OtlpReceiver(keepalive=0.2).start()  # closes a connection idle for 0.2 s
    sender = _sender(collector.url)
    try:
        for _ in range(3):
            assert await asyncio.to_thread(sender.send, EMPTY_EXPORT)
        assert len(set(collector.peers)) == 1
        await asyncio.sleep(0.6)  # the collector has closed it meanwhile
        assert await asyncio.to_thread(sender.send, EMPTY_EXPORT)  # on a new one, not into the old
        assert len(set(collector.peers)) == 2 and collector.attempts == 4
    finally:
        sender.close()
        await collector.close()


async def test_an_https_collector_is_verified_against_the_sdk_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.tls import self_signed

    server_context, ca_file = self_signed(tmp_path)
    collector = await OtlpReceiver(ssl_context=server_context).start()
    url = collector.url.replace("127.0.0.1", "localhost")
    try:
        refused = _sender(url)  # the system's trust store: a self-signed certificate is refused
        assert not await asyncio.to_thread(refused.send, EMPTY_EXPORT)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(tmp_path / "missing.pem"))
        assert not await asyncio.to_thread(_sender(url).send, EMPTY_EXPORT)  # False, never raised
        assert collector.attempts == 0
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_file)
        trusting = _sender(url)
        for _ in range(2):
            assert await asyncio.to_thread(trusting.send, EMPTY_EXPORT)
        trusting.close()
        assert collector.attempts == 2 and len(set(collector.peers)) == 1
    finally:
        await collector.close()


async def test_a_full_queue_is_exported_in_whole_batches_and_the_rest_at_exit(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no export on the schedule in this test
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    tracing = Tracing(make_policy(_traced_tree_for(receiver.url)).tracing)
    try:
        outcomes = [_sampled_outcome(tracing, i) for i in range(10)]
        tracing.account(outcomes, 0)  # 10 queued: two whole batches go now, two requests wait
        await _until(lambda: tracing.exported == 8, "the two whole batches")
        await asyncio.sleep(0.2)
        assert receiver.attempts == 2 and len(receiver.spans) == 8 and tracing.exported == 8
    finally:
        await asyncio.to_thread(tracing.shutdown)
    assert receiver.attempts == 3 and len(receiver.spans) == 10 and tracing.exported == 10


def _traced_tree_for(endpoint: str) -> dict[str, Any]:
    tree = base_policy("http://127.0.0.1:9")
    tree["tracing"] = {"otlp_endpoint": endpoint}
    return tree


def _sampled_outcome(tracing: Tracing, number: int) -> Outcome:
    trace = tracing.starter.begin(CIMultiDict())
    return Outcome(
        f"gw-{number:016x}", "GET", "shop", "validate", status=200, finished=time.time(), trace=trace
    )
