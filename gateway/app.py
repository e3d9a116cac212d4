"""The aiohttp wiring: one handler that decides, reads the body, limits, forwards and answers.

The pipeline, in order (see `decide.py` for the checks themselves):
  decide (route, method, secrets, origin, danger zone, body headers) -> read body (413) -> check body
  -> translate for the project's mode (400) -> rate limit (429 / 503) -> upstream -> answer.
Only a request that passed every check is counted against its rate limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from multidict import MultiMapping

from gateway import errors
from gateway.compiled import CompiledPolicy, compile_policy
from gateway.decide import Admit, Preflight, Refuse, check_body, decide
from gateway.errors import GatewayError
from gateway.models import Outcome, Target, UpstreamCall, UpstreamResponse
from gateway.observe import Observer
from gateway.policy import PolicyFile
from gateway.ratelimit import LimiterPool
from gateway.server_mode import client_view, keys_rejected_log, rejects_gateway_keys
from gateway.translate import upstream_call
from gateway.upstream import UpstreamPool, request_headers
from gateway.widget import add_demo_page, add_widget

log = logging.getLogger("gateway")

JSON = "application/json"


class GatewayState:
    """Everything the handler needs, swapped atomically on reload (`policy` is one reference)."""

    def __init__(self, policy: PolicyFile, observer: Observer | None = None) -> None:
        self.limiters = LimiterPool()
        self.upstream = UpstreamPool(policy.upstream.connect_timeout, policy.upstream.read_timeout)
        self.observer = observer or Observer()
        self.draining = False
        self.policy: CompiledPolicy
        self.set_policy(policy)

    def set_policy(self, policy: PolicyFile) -> None:
        compiled = compile_policy(policy)
        for project in compiled.projects.values():  # open storages now, not on the first request
            limits = project.rate_limit
            self.limiters.store(limits.storage, limits.storage_timeout)
        self.policy = compiled
        names = ", ".join(n for n, p in compiled.projects.items() if p.origins.allow_any)
        if names:
            log.warning(
                "allowed_origins has '*' in %s: any website can call these projects through the gateway",
                names,
            )


STATE = web.AppKey("state", GatewayState)


def new_request_id() -> str:
    return f"gw-{random.getrandbits(64):016x}"


def _respond(
    status: int,
    body: bytes,
    request_id: str,
    cors: Iterable[tuple[str, str]],
    extra: Iterable[tuple[str, str]] = (),
    content_type: str | None = JSON,
) -> web.Response:
    response = web.Response(status=status, body=body)
    headers = response.headers
    for name, value in extra:
        headers.add(name, value)
    if content_type is not None and "Content-Type" not in headers:
        headers["Content-Type"] = content_type
    for name, value in cors:
        headers[name] = value
    headers["Vary"] = "Origin"
    headers["X-Request-Id"] = request_id
    return response


def _error(
    error: GatewayError,
    request_id: str,
    cors: Iterable[tuple[str, str]] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> web.Response:
    extra = list(extra)
    if error.allow:
        extra.append(("Allow", ", ".join(error.allow)))
    response = _respond(error.status, error.body(request_id), request_id, cors, extra)
    if error.close_connection:
        response.force_close()
    return response


async def _request_body(request: web.Request, policy: CompiledPolicy) -> bytes | GatewayError:
    """The whole body; 413 past `max_body_bytes`, 408 when it takes longer than `body_timeout`."""
    content, limit = request.content, policy.max_body_bytes
    if not request.body_exists:
        return b""
    if content.is_eof():  # the whole body came with the headers (the usual case): no wait, no timer
        body: bytes | None = content.read_nowait()
    else:
        try:
            async with asyncio.timeout(policy.body_timeout):  # a trickled body must not hold a handler
                body = await _read_body(request, limit)
        except TimeoutError:
            return errors.request_timeout(policy.body_timeout)
    if body is None or len(body) > limit:
        return errors.payload_too_large(limit)
    return body


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    policy = state.policy  # this request finishes under the policy it started with
    started = time.perf_counter()
    outcome = Outcome(new_request_id(), request.method, truncate_ip=policy.truncate_ips)
    state.observer.started()
    try:
        response = await _pipeline(request, state, policy, outcome)
    except asyncio.CancelledError:
        outcome.decision, outcome.status = "client_closed", 499
        raise
    finally:
        outcome.duration_ms = (time.perf_counter() - started) * 1000
        outcome.finished = time.time()
        state.observer.record(outcome)
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
    outcome.project, outcome.operation = target.project.name, target.operation

    body = await _request_body(request, policy)
    if isinstance(body, GatewayError):
        return _refused(admit.refuse(body), outcome)
    refusal = check_body(admit, body)
    if refusal is not None:
        return _refused(refusal, outcome)
    call = upstream_call(target, body)  # server mode refuses a bad `code` here (400): before counting
    if isinstance(call, GatewayError):
        return _refused(admit.refuse(call), outcome)

    limit_headers, limit_error = await _rate_limit(state, target, client.bucket_key, outcome)
    if limit_error is not None:
        return _refused(admit.refuse(limit_error), outcome, limit_headers)

    answer = await _forward(state, policy, admit, call, request.headers, outcome)
    if isinstance(answer, GatewayError):
        return _refused(admit.refuse(answer), outcome, limit_headers)
    outcome.status = answer.status
    headers = [*answer.headers, *limit_headers]
    return _respond(answer.status, answer.body, outcome.request_id, admit.cors, headers, content_type=None)


async def _rate_limit(
    state: GatewayState, target: Target, client_key: str, outcome: Outcome
) -> tuple[tuple[tuple[str, str], ...], GatewayError | None]:
    """Count the request in its bucket: the RateLimit headers, and a 429 or 503 when it may not pass."""
    project = target.project
    verdict = await state.limiters.check(project.rate_limit, project.buckets[target.operation], client_key)
    outcome.limit_store_error = verdict.store_error
    return verdict.headers, verdict.error


async def _forward(
    state: GatewayState,
    policy: CompiledPolicy,
    admit: Admit,
    call: UpstreamCall,
    incoming: MultiMapping[str],
    outcome: Outcome,
) -> UpstreamResponse | GatewayError:
    """Call Voucherify and turn its answer into the browser's."""
    target = admit.target
    project = target.project
    headers = request_headers(
        incoming,
        project.credential_headers,
        admit.origin,
        outcome.request_id,
        forward_origin=not project.server_mode,
    )
    answer = await state.upstream.send(project.base_url, call, headers, policy.upstream_timeouts)
    if isinstance(answer, GatewayError):
        return answer
    outcome.upstream_ms = answer.elapsed * 1000
    if not project.server_mode:
        return answer
    if rejects_gateway_keys(answer.status):
        log.error("%s", keys_rejected_log(project.name, target.operation, answer.status, answer.body))
        return errors.upstream_rejected()
    view = client_view(target.operation, answer.status, answer.headers, answer.body)
    if isinstance(view, GatewayError):
        return view
    return dataclasses.replace(answer, headers=view[0], body=view[1])


def _refused(refusal: Refuse, outcome: Outcome, extra: Iterable[tuple[str, str]] = ()) -> web.Response:
    error = refusal.error
    if refusal.project is not None:
        outcome.project = refusal.project.name
    outcome.operation = refusal.operation or outcome.operation
    outcome.decision = error.key.value
    outcome.status = error.status
    return _error(error, outcome.request_id, refusal.cors, extra)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.upstream.start()
    await state.limiters.start()
    yield
    state.observer.flush()  # the last requests' lines and counts
    await state.upstream.close()
    await state.limiters.close()


def create_app(
    policy: PolicyFile, observer: Observer | None = None, *, demo_page: bool = False
) -> web.Application:
    app = web.Application()  # bodies are read and limited by the handler (`_request_body`), not by aiohttp
    app[STATE] = GatewayState(policy, observer)
    app.cleanup_ctx.append(_lifecycle)
    add_widget(app)  # /widget.js, the one public addition to the contract's routes
    if demo_page:
        add_demo_page(app)
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)  # every path, newlines included
    return app
