"""Thin aiohttp handlers: parse the request, call the store, answer JSON. Auth lives in ``app.py``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from gateway.sandbox.errors import Json, SandboxError, invalid_payload
from gateway.sandbox.querystring import parse_nested_query, validation_body
from gateway.sandbox.store import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Api = Literal["client", "server"]

SANDBOX_STORE: web.AppKey[Store] = web.AppKey("sandbox_store", Store)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("sandbox_request_id", str)  # set by the app's middleware


def _store(request: web.Request) -> Store:
    return request.app[SANDBOX_STORE]


def _request_id(request: web.Request) -> str:
    """The answer's ``X-Request-Id``, which errors inside a 200 answer carry too."""
    return request[REQUEST_ID]


async def _body(request: web.Request) -> Json:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid_payload("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid_payload("the body must be a JSON object")
    return data


def _raw_query(request: web.Request) -> str:
    return request.raw_path.partition("?")[2]


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise SandboxError(
            400,
            "invalid_query_params",
            "Invalid query params",
            f"{name} must be an integer between {low} and {high}",
        )
    return int(raw)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


# -------------------------------------------------------------- validation


async def validate_legacy(request: web.Request) -> web.Response:
    """GET /client/v1/validate?code=…&amount=…&item[0][price]=…"""
    query = parse_nested_query(_raw_query(request))
    code = query.get("code")
    if not isinstance(code, str) or not code:
        raise SandboxError(400, "invalid_query_params", "Invalid query params", "code is required")
    answer = _store(request).validate_voucher(code, validation_body(query), request_id=_request_id(request))
    return web.json_response(answer)


async def validate_voucher(request: web.Request) -> web.Response:
    """POST /v1/vouchers/{code}/validate"""
    body = await _body(request)
    code = request.match_info["code"]
    return web.json_response(_store(request).validate_voucher(code, body, request_id=_request_id(request)))


async def validate_promotions_legacy(request: web.Request) -> web.Response:
    """GET /client/v1/promotions/validation?amount=…"""
    body = validation_body(parse_nested_query(_raw_query(request)))
    return web.json_response(_store(request).validate_promotions(body))


async def validate_promotions(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).validate_promotions(body))


async def validate_stackable(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).validate_stackable(body, request_id=_request_id(request)))


# -------------------------------------------------------------- redemption


async def redeem_stackable(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).redeem_stackable(body, request_id=_request_id(request)))


async def redeem_legacy(request: web.Request) -> web.Response:
    """POST /client/v1/redeem?code=…&tracking_id=…"""
    body = await _body(request)
    code = request.query.get("code")
    if not code:
        raise SandboxError(400, "invalid_query_params", "Invalid query params", "code is required")
    if request.query.get("tracking_id") and "tracking_id" not in body:
        body["tracking_id"] = request.query["tracking_id"]
    return web.json_response(_store(request).redeem_voucher(code, body))


async def redeem_voucher(request: web.Request) -> web.Response:
    """POST /v1/vouchers/{code}/redemption"""
    body = await _body(request)
    return web.json_response(_store(request).redeem_voucher(request.match_info["code"], body))


async def redeem_promotion_tier(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).redeem_promotion_tier(request.match_info["tier_id"], body))


# ------------------------------------------------------------- publication


async def publish_legacy(request: web.Request) -> web.Response:
    """POST /client/v1/publish?campaign=…&join_once=…"""
    body = await _body(request)
    store = _store(request)
    join_once = _flag(request.query.get("join_once"))
    return web.json_response(store.publish(request.query.get("campaign"), body, join_once=join_once))


async def create_publication(request: web.Request) -> web.Response:
    """POST /v1/publications?join_once=… with ``campaign: {name}`` (or a campaign name) in the body."""
    body = await _body(request)
    campaign = body.get("campaign")
    name = campaign.get("name") if isinstance(campaign, dict) else campaign
    join_once = _flag(request.query.get("join_once"))
    store = _store(request)
    return web.json_response(
        store.publish(name if isinstance(name, str) else None, body, join_once=join_once)
    )


# --------------------------------------------------------- everything else


async def qualifications(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).qualifications(body))


async def list_promotion_tiers(request: web.Request) -> web.Response:
    is_available = request.query.get("is_available")
    limit = _query_int(request, "limit", 10, 1, 100)
    page = _query_int(request, "page", 1, 1, 1_000_000)
    available = _flag(is_available) if is_available is not None else None
    return web.json_response(
        _store(request).list_promotion_tiers(is_available=available, limit=limit, page=page)
    )


async def track_event(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).track_event(body))


async def list_vouchers(request: web.Request) -> web.Response:
    query = request.query
    limit = _query_int(request, "limit", 10, 1, 100)
    page = _query_int(request, "page", 1, 1, 1_000_000)
    listing = _store(request).list_vouchers(
        campaign=query.get("campaign"),
        category=query.get("category"),
        customer=query.get("customer"),
        limit=limit,
        page=page,
    )
    return web.json_response(listing)


async def create_customer(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(_store(request).upsert_customer(body))


async def list_consents(request: web.Request) -> web.Response:
    return web.json_response(_store(request).list_consents())


async def update_consents(request: web.Request) -> web.Response:
    body = await _body(request)
    _store(request).update_consents(request.match_info["customer_id"], body)
    return web.Response(status=204)


# ------------------------------------------------------------------ tables

# (method, path under the API's base, handler); the base is /client/v1 or /v1.
CLIENT_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/validate", validate_legacy),
    ("GET", "/promotions/validation", validate_promotions_legacy),
    ("POST", "/validations", validate_stackable),
    ("POST", "/redemptions", redeem_stackable),
    ("POST", "/redeem", redeem_legacy),
    ("POST", "/promotions/tiers/{tier_id}/redemption", redeem_promotion_tier),
    ("POST", "/publish", publish_legacy),
    ("POST", "/qualifications", qualifications),
    ("GET", "/promotions/tiers", list_promotion_tiers),
    ("POST", "/events", track_event),
    ("GET", "/vouchers", list_vouchers),
    ("POST", "/customers", create_customer),
    ("GET", "/consents", list_consents),
    ("PUT", "/customers/{customer_id}/consents", update_consents),
]

SERVER_ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/validations", validate_stackable),
    ("POST", "/redemptions", redeem_stackable),
    ("POST", "/qualifications", qualifications),
    ("GET", "/promotions/tiers", list_promotion_tiers),
    ("POST", "/events", track_event),
    ("POST", "/customers", create_customer),
    ("GET", "/consents", list_consents),
    ("PUT", "/customers/{customer_id}/consents", update_consents),
    ("GET", "/vouchers", list_vouchers),
    ("POST", "/vouchers/{code}/redemption", redeem_voucher),
    ("POST", "/promotions/tiers/{tier_id}/redemption", redeem_promotion_tier),
    ("POST", "/publications", create_publication),
    ("POST", "/vouchers/{code}/validate", validate_voucher),
    ("POST", "/promotions/validation", validate_promotions),
]

API_BASES: dict[Api, str] = {"client": "/client/v1", "server": "/v1"}


def add_routes(app: web.Application) -> None:
    tables: tuple[tuple[Api, list[tuple[str, str, Handler]]], ...] = (
        ("client", CLIENT_ROUTES),
        ("server", SERVER_ROUTES),
    )
    for api, table in tables:
        base = API_BASES[api]
        for method, path, handler in table:
            app.router.add_route(method, base + path, handler)
