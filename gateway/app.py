"""The aiohttp wiring: one handler whose pipeline reads top to bottom in `_pipeline`.

  decide (route, method, secrets, origin, danger zone, body headers: `decide.py`, sans-IO)
  -> read the body (413, 408) -> check the body (400, 403) -> the mode's upstream call (400)
  -> rate limit (429, 503) -> Idempotency-Key (400, 409, 422, 503, or a replay: `guards/idempotency_hold.py`)
  -> failed-code budget (429) -> cache -> upstream quota (503) -> Voucherify (502, 504) -> the mode's view
  of the answer (the budget keeps its unknown codes and gives the rest back; a held Idempotency-Key keeps
  the answer). The rate limit, the budget and the quota are one store call (`ratelimit/gates.py`), two
  around an Idempotency-Key's claim; a cached operation's quota is reserved only once its cache missed.

After `decide`, each step returns its value or raises `errors.Refused`, caught once in `_pipeline`. Only a
request that passed every check is counted against its rate limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway import errors
from gateway.answer import Answer
from gateway.compiled import CompiledPolicy, compile_policy
from gateway.decide import Admit, Preflight, Refuse, check_body, decide
from gateway.errors import GatewayError, Refused, describe_exception
from gateway.expect import continue_if_admitted
from gateway.guards import idempotency, idempotency_hold
from gateway.guards.failed_code_hold import CodeHold
from gateway.guards.idempotency import REPLAYED, REPLAYED_DECISION, Replay
from gateway.guards.idempotency_hold import Hold, Holder
from gateway.guards.sparing import API_VERSION_HEADER, QuotaHold, Sparing, not_sent
from gateway.headers import IDEMPOTENCY_KEY, request_headers
from gateway.lint import policy_warnings
from gateway.models import Outcome, Target, UpstreamCall, UpstreamResponse
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting
from gateway.observe.trace_context import CURRENT, TraceStarter
from gateway.policy import PolicyFile
from gateway.ratelimit import LimiterPool, Store
from gateway.ratelimit.gates import pass_gates
from gateway.upstream import Http1Transport, Transport
from gateway.widget import add_demo_page, add_widget

log = logging.getLogger("gateway")

JSON = "application/json"


class GatewayState:
    """Everything the handler needs, swapped atomically on reload (`policy` is one reference)."""

    def __init__(
        self,
        policy: PolicyFile,
        accounting: Accounting | None = None,
        transport: Transport | None = None,
        tracer: TraceStarter | None = None,
    ) -> None:
        self.limiters = LimiterPool()
        self.transport: Transport = (
            transport if transport is not None else Http1Transport(policy.upstream.max_in_flight_per_host)
        )
        self.accounting = accounting if accounting is not None else Accounting([AccessLog()])
        self.draining = False
        self.holder = Holder()  # Idempotency-Key records still to be settled, their handlers maybe gone
        self.tracer = tracer  # None: tracing is off (read once at start: `tracing` changes need a restart)
        self.sparing = Sparing()  # cached reads and hold-offs, per process, kept across reloads
        self.policy: CompiledPolicy
        self.set_policy(policy)

    def set_policy(self, policy: PolicyFile) -> None:
        compiled = compile_policy(policy)
        for project in compiled.projects.values():  # open storages now, not on the first request
            limits = project.rate_limit
            self.limiters.store(limits.storage, limits.storage_timeout)
        if hasattr(self, "policy"):  # a reload: a project whose upstream changed loses its kept answers
            self.sparing.forget_changed(self.policy.projects, compiled.projects)
        self.policy = compiled
        if isinstance(self.transport, Http1Transport):
            self.transport.max_in_flight = policy.upstream.max_in_flight_per_host
        for warning in policy_warnings(policy):
            log.warning("%s", warning)


STATE = web.AppKey("state", GatewayState)


class ClientGone(Exception):
    """The client went away before its whole body arrived: accounted `client_closed`, nothing sent."""


def new_request_id() -> str:
    return "gw-" + random.getrandbits(64).to_bytes(8, "big").hex()  # a third of a format spec's cost


def _respond(
    status: int,
    body: bytes,
    request_id: str,
    cors: Iterable[tuple[str, str]],
    extra: Iterable[tuple[str, str]] = (),
    content_type: str | None = JSON,
) -> Answer:
    fields = [*extra, *cors, ("Vary", "Origin"), ("X-Request-Id", request_id)]
    return Answer(status, fields, body, content_type)  # `content_type` unless `extra` gives one


def error_answer(
    error: GatewayError,
    request_id: str,
    cors: Iterable[tuple[str, str]] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> Answer:
    """A refusal's answer: its JSON body, Allow, and a closed connection when the error says so."""
    if error.allow:
        extra = (*extra, ("Allow", ", ".join(error.allow)))
    response = _respond(error.status, error.body(request_id), request_id, cors, extra)
    if error.close_connection:
        response.force_close()
    return response


async def _request_body(request: web.Request, policy: CompiledPolicy) -> bytes:
    """The whole body; Refused: 413 past `max_body_bytes`, 408 when it takes longer than `body_timeout`,
    400 when it does not match its Content-Encoding."""
    content, limit = request.content, policy.max_body_bytes
    if not request.body_exists:
        return b""
    try:
        if content.is_eof():  # the whole body came with the headers (the usual case): no wait, no timer
            body: bytes | None = content.read_nowait()
        else:
            async with asyncio.timeout(policy.body_timeout):  # a trickled body must not hold a handler
                body = await _read_body(request, limit)
    except TimeoutError:
        raise Refused(errors.request_timeout(policy.body_timeout)) from None
    except web.RequestPayloadError:  # gzip over plain JSON, deflate followed by junk, broken chunks
        error = errors.invalid_payload("The request body does not match its Content-Encoding or framing.")
        raise Refused(error._replace(close_connection=True)) from None  # the rest is unframed
    except ConnectionError:  # aiohttp hands the reader the connection's loss
        raise ClientGone from None
    if body is None or len(body) > limit:
        raise Refused(errors.payload_too_large(limit))
    return body


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` (the rest is not read). A client that went
    away after its last byte arrived still sent its whole body: it is returned, and forwarded."""
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in content.iter_any():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except ConnectionError:
        if not (content.is_eof() and size == content.total_bytes):
            raise
    return b"".join(chunks)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    policy = state.policy  # this request finishes under the policy it started with
    started = time.perf_counter()
    outcome = Outcome(new_request_id(), request.method, truncate_ip=policy.truncate_ips)
    state.accounting.started()
    trace = outcome.trace = None if state.tracer is None else state.tracer.begin(request.headers)
    traced = None if trace is None else CURRENT.set(trace)  # for the upstream call's CLIENT span
    try:
        response = await _pipeline(request, state, policy, outcome)
    except asyncio.CancelledError:
        outcome.decision, outcome.status = "client_closed", 499
        raise
    except Exception as exc:  # the last resort: this request's id, accounted, never aiohttp's text/plain 500
        log.error("request %s failed: %s", outcome.request_id, describe_exception(exc))
        outcome.decision, outcome.status = errors.ErrorKey.INTERNAL_ERROR.value, 500
        response = error_answer(errors.internal_error(), outcome.request_id)
    finally:
        outcome.duration_ms = (time.perf_counter() - started) * 1000
        outcome.finished = time.time()
        if traced is not None:  # the SERVER span's times are the outcome's: finished, duration_ms
            CURRENT.reset(traced)
        state.accounting.record(outcome)
    return response


async def _pipeline(
    request: web.Request, state: GatewayState, policy: CompiledPolicy, outcome: Outcome
) -> web.StreamResponse:
    client = policy.client_ip.client(request.remote, request.headers.getall("X-Forwarded-For", []))
    outcome.client = client  # in every access-log line, refused requests included
    outcome.origin = request.headers.get("Origin")

    decision = decide(policy, request.method, request.raw_path, request.headers)
    if isinstance(decision, Refuse):
        return _refused(decision, outcome)
    if isinstance(decision, Preflight):
        outcome.project, outcome.operation = decision.project.name, decision.operation
        outcome.decision, outcome.status = "preflight", 204
        return _respond(204, b"", outcome.request_id, decision.headers, content_type=None)
    admit = decision
    target = admit.target
    mode = target.project.mode
    outcome.project, outcome.operation = target.project.name, target.operation

    hold: Hold | None = None
    codes = CodeHold()  # the failed-code budget's hold: its RateLimit members, given back in `finally`
    quota = QuotaHold()  # the upstream call's place in the quota, given back in `finally` when unsent
    project = target.project
    store = _store(state, target)
    per_ip = state.limiters.gate(
        store, project.rate_limit, project.buckets[target.operation], client.bucket_key, outcome
    )
    try:
        body = await _request_body(request, policy)
        document = check_body(admit, body)
        call = mode.request(target, body, document)  # server mode refuses a bad `code` here: before counting
        per_ip.refuse_remembered()  # a client the store refused a moment ago: 429 again, no store call
        codes.ask(store, target, client.bucket_key, document, outcome)
        quota.ask(state.sparing, store, target, outcome)
        keys = request.headers.getall(IDEMPOTENCY_KEY, [])
        claiming = idempotency.claims(project.idempotency, target, keys)
        # per-IP (429, 503) -> failed-code budget (429) -> upstream quota (503): one store call, or two
        # around the Idempotency-Key's claim (400, 409, 422, 503, or a replay)
        await pass_gates(store, (per_ip,) if claiming else (per_ip, codes, quota))
        if claiming:
            held = await _idempotency(state, target, keys, body, outcome)
            if isinstance(held, Replay):
                return _replayed(held, admit.cors, per_ip.headers, outcome)
            hold = held
            await pass_gates(store, (codes, quota))

        async def voucherify() -> UpstreamResponse:  # cache -> (its quota) -> Voucherify (429: hold-off)
            try:  # settles its codes itself: a held call may outlive its handler
                answer = await state.sparing.answer(
                    target,
                    outcome,
                    lambda: _spared_send(state, policy, admit, call, request.headers, outcome, quota),
                )
                codes.answered(answer, outcome)  # keeps the codes the answer says do not exist
                return answer
            finally:
                codes.release()

        answer = await (voucherify() if hold is None else hold.run(voucherify))
    except Refused as refused:
        extra = codes.fields((*per_ip.headers, *refused.headers))
        return _refused(admit.refuse(refused.error), outcome, extra)
    except ClientGone:  # answered to no one: aiohttp drops it quietly (an exception is an ERROR line)
        outcome.decision, outcome.status = "client_closed", 499
        return web.Response(status=499)
    finally:
        if hold is None or not hold.settled:  # a call `hold.run` took over settles its codes itself
            codes.release()  # gives back the rest, also when no answer came or the handler is cancelled
        quota.release()  # a reserved call never sent (refused later, cancelled) stops counting
        if hold is not None:  # refused or cancelled before Voucherify's call: the key is free again
            await hold.release()
    outcome.status = answer.status
    headers_out = [*answer.headers, *codes.fields(per_ip.headers)]
    return _respond(
        answer.status, answer.body, outcome.request_id, admit.cors, headers_out, content_type=None
    )


async def _idempotency(
    state: GatewayState, target: Target, values: list[str], body: bytes, outcome: Outcome
) -> Hold | Replay | None:
    """Claim the request's Idempotency-Key: a hold on it, the kept answer to replay, None without a key;
    Refused: 400 (bad or missing key), 409 (in flight), 422 (another request's), 503 (store down)."""
    store = _store(state, target)
    return await idempotency_hold.claim(
        target.project.idempotency, store, target, values, body, outcome, state.holder
    )


def _replayed(
    replay: Replay,
    cors: Iterable[tuple[str, str]],
    limit_headers: Iterable[tuple[str, str]],
    outcome: Outcome,
) -> Answer:
    """The kept answer again, with this request's own CORS, id and RateLimit fields."""
    status, content_type, body = replay.answer(outcome.request_id)
    outcome.decision, outcome.status = REPLAYED_DECISION, status
    headers = [REPLAYED, *limit_headers]
    return _respond(status, body, outcome.request_id, cors, headers, content_type=content_type)


def _store(state: GatewayState, target: Target) -> Store:
    limits = target.project.rate_limit
    return state.limiters.store(limits.storage, limits.storage_timeout)


async def _spared_send(
    state: GatewayState,
    policy: CompiledPolicy,
    admit: Admit,
    call: UpstreamCall,
    browser: CIMultiDictProxy[str],
    outcome: Outcome,
    quota: QuotaHold,
) -> UpstreamResponse:
    """Voucherify (a cached operation's quota reserved first, after its cache missed) and the mode's view of
    its answer; a reserved call that surely reached nothing is given back, a 429 starts the hold-off
    (Refused, 503). What Voucherify is sent is built here, on a miss only: a cache hit, a replay and a
    refusal never need it."""
    target = admit.target
    project = target.project
    headers = request_headers(
        browser,
        project.credential_headers,
        admit.origin,
        outcome.request_id,
        forward_origin=project.mode.forwards_origin,
    )
    if project.api_version is not None:
        headers[API_VERSION_HEADER] = project.api_version
    await state.sparing.reserve(quota)
    quota.sending()
    try:
        answer = await state.transport.send(target.project.base_url, call, headers, policy.upstream_timeouts)
    except Refused as refused:
        if not_sent(refused):
            quota.give_back()
        raise
    outcome.upstream_ms = answer.elapsed * 1000
    state.sparing.throttled(target, answer, outcome)
    return target.project.mode.response(target, answer)


def _refused(refusal: Refuse, outcome: Outcome, extra: Iterable[tuple[str, str]] = ()) -> Answer:
    error = refusal.error
    if refusal.project is not None:
        outcome.project = refusal.project.name
    outcome.operation = refusal.operation or outcome.operation
    outcome.decision = error.key.value
    outcome.status = error.status
    return error_answer(error, outcome.request_id, refusal.cors, extra)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.transport.start()
    await state.limiters.start()
    yield
    await state.holder.wait(state.policy.upstream_timeouts.connect + state.policy.upstream_timeouts.read)
    state.accounting.flush()  # the last requests' lines and counts
    await state.transport.close()
    await state.limiters.close()


def create_app(
    policy: PolicyFile,
    accounting: Accounting | None = None,
    *,
    demo_page: bool = False,
    transport: Transport | None = None,
    tracer: TraceStarter | None = None,
) -> web.Application:
    """The gateway's app. `transport` replaces the HTTP client to Voucherify (tests, embedding); `tracer`
    (with tracing on: `observe.tracing.Tracing.starter`, whose sink is in `accounting`) traces requests."""
    app = web.Application()  # bodies are read and limited by the handler (`_request_body`), not by aiohttp
    app[STATE] = GatewayState(policy, accounting, transport, tracer)
    app.cleanup_ctx.append(_lifecycle)
    add_widget(app)  # /widget.js, the one public addition to the contract's routes
    if demo_page:
        add_demo_page(app)
    expect = continue_if_admitted(lambda: app[STATE].policy)  # 100 Continue only for what passes decide
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle, expect_handler=expect)  # every path, newlines too
    return app
