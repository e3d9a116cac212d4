"""The sandbox's aiohttp application: request recording, auth, rate limit and error rendering."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from gateway.headers import PREFLIGHT_ALLOWED_HEADERS
from gateway.sandbox.errors import Json, SandboxError
from gateway.sandbox.loading import DEFAULT_FIXTURES, read_fixtures
from gateway.sandbox.ratelimit import MovingWindowLimiter, PlanLimit
from gateway.sandbox.routes import REQUEST_ID, SANDBOX_STORE, Handler, add_routes
from gateway.sandbox.store import Store

__all__ = ["DEFAULT_FIXTURES", "SandboxCredentials", "create_sandbox_app", "load_store"]
TOO_MANY_REQUESTS: Json = {"code": 429, "message": "Too many requests hit the API too quickly."}
# What a page may send Voucherify's client-side API: what it may send the gateway (gateway/headers.py),
# and a bearer token, which Voucherify also takes and the gateway never forwards.
CORS_ALLOW_HEADERS = f"{PREFLIGHT_ALLOWED_HEADERS}, Authorization"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class SandboxCredentials:
    client_application_id: str = "sandbox-client-app-id"
    client_secret_key: str = "sandbox-client-secret-key"
    application_id: str = "sandbox-app-id"
    secret_key: str = "sandbox-secret-key"
    allowed_origins: tuple[str, ...] = ("*",)  # Voucherify's "Allowed website URLs"; "*" = any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # raw path, percent-encoding kept, no query
    query_string: str  # raw query, no "?"
    headers: dict[str, str]  # lower-case names
    body: bytes
    api: Literal["client", "server"]


SANDBOX_RECORDS: web.AppKey[list[RecordedRequest]] = web.AppKey("sandbox_records", list)
SANDBOX_CREDENTIALS: web.AppKey[SandboxCredentials] = web.AppKey("sandbox_credentials", SandboxCredentials)
SANDBOX_LIMITER: web.AppKey[MovingWindowLimiter | None] = web.AppKey("sandbox_limiter")
SANDBOX_PLAN_LIMIT: web.AppKey[PlanLimit | None] = web.AppKey("sandbox_plan_limit")


def load_store(fixtures: Path | None = None) -> Store:
    return Store.from_mapping(read_fixtures(fixtures))


def create_sandbox_app(
    credentials: SandboxCredentials = SandboxCredentials(),
    *,
    fixtures: Path | None = None,
    emulate_client_rate_limit: bool = False,
    plan_limit: int | None = None,
) -> web.Application:
    """An offline Voucherify: ``/client/v1/…`` with client keys and Origin, ``/v1/…`` with server keys.

    ``emulate_client_rate_limit``: Voucherify's 5 client-side requests per 5 seconds per IP (429 before
    anything else is checked). ``plan_limit``: the server-side API's per-project plan limit of that many
    authenticated requests a minute, answered with Voucherify's ``X-Rate-Limit-*`` headers (429 past it).
    """
    if plan_limit is not None and plan_limit < 1:
        raise ValueError("plan_limit must be at least 1 request a minute")
    app = web.Application(middlewares=[_sandbox_middleware])
    app[SANDBOX_RECORDS] = []
    app[SANDBOX_CREDENTIALS] = credentials
    app[SANDBOX_LIMITER] = MovingWindowLimiter(5, 5.0) if emulate_client_rate_limit else None
    app[SANDBOX_PLAN_LIMIT] = PlanLimit(plan_limit) if plan_limit is not None else None
    app[SANDBOX_STORE] = load_store(fixtures)
    add_routes(app)
    return app


# ------------------------------------------------------------------ origins


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path or parts.query or parts.username:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Voucherify's matching: ``*``; ``.example.com`` (any subdomain); ``example.com`` (that host, any
    scheme); an exact origin ``https://shop.example.com``; or ``https://*.example.com``."""
    if "*" in allowed:
        return True
    if origin is None:
        return False
    parsed = _split_origin(origin)
    if parsed is None:
        return False
    scheme, host, port = parsed
    for entry in (e.strip().lower() for e in allowed):
        if entry.startswith("."):
            if host.endswith(entry):
                return True
        elif "://" in entry:
            entry_scheme, _, entry_host = entry.partition("://")
            if entry_host.startswith("*."):
                wildcard = _split_origin(f"{entry_scheme}://{entry_host[2:]}")
                if (
                    wildcard
                    and (scheme, port) == (wildcard[0], wildcard[2])
                    and host.endswith("." + wildcard[1])
                ):
                    return True
            elif _split_origin(entry) == parsed:
                return True
        else:
            bare = _split_origin(f"{scheme}://{entry}")
            if bare is not None and bare[1] == host and (":" not in entry or bare[2] == port):
                return True
    return False


# --------------------------------------------------------------- middleware


def _unauthorized(details: str) -> SandboxError:
    return SandboxError(401, "unauthorized", "Unauthorized", details)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _authenticate(request: web.Request, api: Literal["client", "server"]) -> None:
    credentials = request.app[SANDBOX_CREDENTIALS]
    headers = request.headers
    if api == "server":
        if not (
            _same(headers.get("X-App-Id"), credentials.application_id)
            and _same(headers.get("X-App-Token"), credentials.secret_key)
        ):
            raise _unauthorized("Missing or invalid X-App-Id / X-App-Token")
        return
    if not (
        _same(headers.get("X-Client-Application-Id"), credentials.client_application_id)
        and _same(headers.get("X-Client-Token"), credentials.client_secret_key)
    ):
        raise _unauthorized("Missing or invalid X-Client-Application-Id / X-Client-Token")
    if not origin_allowed(headers.get("Origin"), credentials.allowed_origins):
        raise _unauthorized("The Origin is not in the project's allowed website URLs")


def _error_for(exc: web.HTTPException, method: str) -> SandboxError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = " or ".join(sorted(exc.allowed_methods))
        details = f"{method} is not supported by this endpoint. Did you mean {allowed}?"
        return SandboxError(405, "method_not_allowed", "HTTP Method Not Allowed", details)
    if isinstance(exc, web.HTTPNotFound):
        return SandboxError(404, "not_found", "Resource not found", "No such endpoint")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return SandboxError(413, "query_too_large", "Payload too large", exc.text or "")
    return SandboxError(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, exc.text or "")


def _cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Vary"] = "Origin"


async def _answer(
    request: web.Request, handler: Handler, api: Literal["client", "server"]
) -> web.StreamResponse:
    match_exception = request.match_info.http_exception
    if (
        api == "client"
        and request.method == "OPTIONS"
        and isinstance(match_exception, web.HTTPMethodNotAllowed)
    ):
        preflight = web.Response(status=204)
        preflight.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(match_exception.allowed_methods))
        preflight.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        preflight.headers["Access-Control-Max-Age"] = "600"
        return preflight
    limiter = request.app[SANDBOX_LIMITER]
    if api == "client" and limiter is not None and not limiter.hit(request.remote or ""):
        return web.json_response(TOO_MANY_REQUESTS, status=429, headers={"Retry-After": "5"})
    if match_exception is not None:
        raise match_exception
    _authenticate(request, api)
    plan = request.app[SANDBOX_PLAN_LIMIT]
    if api == "server" and plan is not None:
        return await _within_plan(request, handler, plan)
    return await handler(request)


async def _within_plan(request: web.Request, handler: Handler, plan: PlanLimit) -> web.StreamResponse:
    """The project's plan: every authenticated server-side call counts; past the limit, 429. The usage
    headers go on every answer, errors included, as Voucherify's do."""
    usage = plan.hit()
    if usage.allowed:
        try:
            response = await handler(request)
        except SandboxError as exc:
            response = web.json_response(exc.body(request[REQUEST_ID]), status=exc.status)
    else:
        response = web.json_response(TOO_MANY_REQUESTS, status=429)
        response.headers["Retry-After"] = str(usage.retry_after)
    response.headers.update(usage.headers())
    return response


def _lower_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


@web.middleware
async def _sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = "v-" + secrets.token_hex(9)
    request[REQUEST_ID] = request_id
    raw_path, _, raw_query = request.raw_path.partition("?")
    api: Literal["client", "server"] = "client" if raw_path.startswith("/client/") else "server"
    try:
        body = await request.read()
    except web.HTTPException:
        body = b""
    request.app[SANDBOX_RECORDS].append(
        RecordedRequest(
            method=request.method,
            path=raw_path,
            query_string=raw_query,
            headers=_lower_headers(request),
            body=body,
            api=api,
        )
    )
    response: web.StreamResponse
    try:
        response = await _answer(request, handler, api)
    except SandboxError as exc:
        response = web.json_response(exc.body(request_id), status=exc.status)
    except web.HTTPException as exc:
        error = _error_for(exc, request.method)
        response = web.json_response(error.body(request_id), status=error.status)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    response.headers["X-Request-Id"] = request_id
    if api == "client":
        _cors(request, response)
    return response
