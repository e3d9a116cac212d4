"""End to end: a real HTTP client, the gateway on a real port, the recording upstream double on another."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    CLIENT_APP_ID,
    CLIENT_TOKEN,
    ORIGIN,
    GatewayFactory,
    assert_gateway_error,
    base_policy,
    raw_url,
)
from tests.support.constants import JSON_H, H
from tests.support.rawhttp import raw_request, read_response, request_bytes, send
from tests.support.upstream_double import Reply, UpstreamDouble

ALL_DANGER = dict.fromkeys(
    ["redeem", "publish", "list_vouchers", "create_customers", "create_loyalty_referral_events"], True
)


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(await resp.read())
    return error


# --- what the upstream receives


async def test_validate_forwarded_with_injected_credentials(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    query = "code=SAVE%2010&customer%5Bsource_id%5D=c%201&item[0][price]=100&metadata[k]=a/b?c&x=&y&z=%7e~"
    resp = await client.session.get(
        raw_url(client, f"/client/v1/validate?{query}"),
        headers={**H, "X-Client-Token": "browser-placeholder"},
    )
    assert resp.status == 200
    assert (await resp.json())["valid"] is True
    [seen] = upstream.received
    assert seen.method == "GET"
    assert seen.raw_path == f"/client/v1/validate?{query}"
    assert seen.body == b""
    assert seen.headers["X-Client-Application-Id"] == CLIENT_APP_ID
    assert seen.headers["X-Client-Token"] == CLIENT_TOKEN
    assert seen.headers.getall("X-Client-Token") == [CLIENT_TOKEN]
    assert seen.headers["Origin"] == ORIGIN
    assert seen.headers["X-Request-Id"] == resp.headers["X-Request-Id"]
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Vary"] == "Origin"
    assert "RateLimit" in resp.headers["Access-Control-Expose-Headers"]


BROWSER_CREDENTIALS = [
    ("X-Client-Application-Id", "browser-app-id"),
    ("X-Client-Token", "browser-token"),
    ("X-Client-Anything", "x"),
    ("X-App-Id", "browser-server-app-id"),
    ("X-App-Anything", "x"),
    ("X-Management-Id", "browser-mgmt-id"),
    ("X-Management-Anything", "x"),
    ("Authorization", "Bearer browser-oauth"),
    ("Cookie", "session=browser-cookie"),
    ("X-Forwarded-For", "198.51.100.1"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Port", "1"),
    ("Forwarded", "for=198.51.100.1"),
    ("X-Real-IP", "198.51.100.1"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Voucherify-API-Version", "v2018-08-01"),
    ("X-Request-Id", "browser-chosen-id"),
]


async def test_only_allowed_headers_cross_and_the_gateways_credentials_replace_the_browsers(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    headers = [
        ("Origin", ORIGIN),
        ("Content-Type", "application/json; charset=utf-8"),
        ("Accept", "application/json"),
        ("Accept-Language", "pl-PL"),
        ("User-Agent", "Mozilla/5.0 test"),
        ("X-Voucherify-Channel", "Browser-ClientSide-SDK-v2.9.0"),
        ("X-Voucherify-Double-Opt-In", "true"),
        *BROWSER_CREDENTIALS,
    ]
    resp = await send(
        client.port, "POST", "/client/v1/qualifications?x=1", headers, b'{"customer":{"id":"c"}}'
    )
    assert resp.status == 200
    [seen] = upstream.received
    assert (seen.method, seen.raw_path, seen.body) == (
        "POST",
        "/client/v1/qualifications?x=1",
        b'{"customer":{"id":"c"}}',
    )
    for name, value in [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Accept", "application/json"),
        ("Accept-Language", "pl-PL"),
        ("User-Agent", "Mozilla/5.0 test"),
        ("X-Voucherify-Channel", "Browser-ClientSide-SDK-v2.9.0"),
        ("X-Voucherify-Double-Opt-In", "true"),
        ("Origin", ORIGIN),
        ("X-Client-Application-Id", CLIENT_APP_ID),
        ("X-Client-Token", CLIENT_TOKEN),
        ("X-Request-Id", resp.headers["X-Request-Id"]),
    ]:
        assert seen.headers.getall(name) == [value], name
    names = {name.lower() for name in seen.headers}
    for prefix in [
        "x-app-",
        "x-management-",
        "x-forwarded-",
        "x-http-method",
        "x-method",
        "x-real-ip",
        "forwarded",
        "authorization",
        "cookie",
        "x-voucherify-api-version",
    ]:
        assert not any(name.startswith(prefix) for name in names), (prefix, names)
    assert not {n for n in names if n.startswith("x-client-")} - {"x-client-application-id", "x-client-token"}
    raw = json.dumps(list(seen.headers.items()))
    for _, value in BROWSER_CREDENTIALS:
        if value not in ("x", "1", "http", "DELETE"):
            assert value not in raw, value


async def test_hop_by_hop_headers_are_dropped_both_ways(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    upstream.reply(
        Reply(
            200,
            headers={
                "Cache-Control": "no-store",
                "ETag": '"abc"',
                "Connection": "ETag",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Trailer": "X-T",
                "Upgrade": "h2c",
            },
        )
    )
    headers = [
        ("Origin", ORIGIN),
        ("Accept-Language", "pl"),
        ("User-Agent", "UA"),
        ("Accept", "application/json"),
        ("Connection", "keep-alive, Accept-Language, X-Voucherify-Channel"),
        ("X-Voucherify-Channel", "SDK"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
    ]
    resp = await send(client.port, "GET", "/client/v1/validate", headers)
    assert resp.status == 200
    [seen] = upstream.received
    names = {name.lower() for name in seen.headers}
    assert "accept-language" not in names and "x-voucherify-channel" not in names  # named in Connection
    assert not names & {"keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"}
    assert seen.headers["User-Agent"] == "UA"
    assert seen.headers["Accept"] == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "ETag" not in resp.headers  # named in the upstream's Connection
    for name in ["Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"]:
        assert name not in resp.headers


OPERATIONS = [
    # name, method, path as sent (after /client/v1), body, danger-zone option
    ("validate", "GET", "/validate?code=SAVE10&amount=1000", None, None),
    ("validate", "GET", "/promotions/validation?customer%5Bsource_id%5D=c1", None, None),
    (
        "validate_stackable",
        "POST",
        "/validations",
        {"redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        None,
    ),
    ("redeem", "POST", "/redeem?code=SAVE10&tracking_id=t1", {"order": {"amount": 1000}}, "redeem"),
    (
        "redeem_stackable",
        "POST",
        "/redemptions",
        {"redeemables": [{"object": "voucher", "id": "SAVE10"}]},
        "redeem",
    ),
    (
        "redeem_promotion_tier",
        "POST",
        "/promotions/tiers/promo_t%201/redemption",
        {"order": {"amount": 1}},
        "redeem",
    ),
    (
        "publish",
        "POST",
        "/publish?campaign=Summer&join_once=true",
        {"customer": {"source_id": "c1"}},
        "publish",
    ),
    ("qualifications", "POST", "/qualifications", {"customer": {"source_id": "c1"}}, None),
    ("list_promotion_tiers", "GET", "/promotions/tiers?is_available=true&limit=10", None, None),
    ("track_event", "POST", "/events", {"event": "viewed", "customer": {"source_id": "c1"}}, None),
    (
        "list_vouchers",
        "GET",
        "/vouchers?campaign=Summer&created_at[before]=2026-01-01",
        None,
        "list_vouchers",
    ),
    ("create_customer", "POST", "/customers", {"source_id": "c1", "email": "a@b.c"}, "create_customers"),
    ("list_consents", "GET", "/consents", None, None),
    ("update_consents", "PUT", "/customers/c%201%2Fx/consents", {"unsubscribed": True}, None),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "option"), OPERATIONS, ids=[o[0] + o[2][:14] for o in OPERATIONS]
)
@pytest.mark.parametrize("prefix", ["/client/v1", "/shop/client/v1", "//client/v1"])
async def test_every_operation_is_forwarded_as_sent(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    name: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    option: str | None,
    prefix: str,
) -> None:
    client = await gateway(danger_zone=ALL_DANGER)
    data = json.dumps(body).encode() if body is not None else None
    resp = await client.session.request(
        method, raw_url(client, prefix + path), data=data, headers=JSON_H if data else H
    )
    assert resp.status == 200, await resp.text()
    [seen] = upstream.received
    assert (seen.method, seen.raw_path) == (method, "/client/v1" + path)
    assert seen.body == (data or b"")
    if data:
        assert seen.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(("name", "method", "path", "body", "option"), [o for o in OPERATIONS if o[4]])
async def test_danger_zone_operations_are_refused_when_their_option_is_off(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    name: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    option: str,
) -> None:
    others = {key: key != option for key in ALL_DANGER}  # every other option on: only its own counts
    client = await gateway(danger_zone=others)
    data = json.dumps(body).encode() if body is not None else None
    resp = await client.session.request(
        method, raw_url(client, "/client/v1" + path), data=data, headers=JSON_H if data else H
    )
    error = await error_of(resp)
    assert_gateway_error(resp.status, error, resp.headers, 403, "danger_zone_disabled")
    assert option in error["details"] and name in error["details"]
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert upstream.received == []


@pytest.mark.parametrize(
    ("body", "needs_option"),
    [
        ({"event": "viewed"}, False),
        ({"event": "viewed", "loyalty": None, "referral": None}, False),
        ({"event": "x", "loyalty": {"code": "L1"}}, True),
        ({"event": "x", "referral": {"code": "R1", "referrer_id": "c0"}}, True),
        ({"event": "x", "loyalty": None, "referral": {"code": "R1"}}, True),
    ],
)
@pytest.mark.parametrize("option_on", [False, True])
async def test_track_event(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    body: dict[str, Any],
    needs_option: bool,
    option_on: bool,
) -> None:
    client = await gateway(danger_zone={"create_loyalty_referral_events": option_on})
    data = json.dumps(body).encode()
    resp = await client.post("/client/v1/events", data=data, headers=JSON_H)
    if needs_option and not option_on:
        error = await error_of(resp)
        assert_gateway_error(resp.status, error, resp.headers, 403, "danger_zone_disabled")
        assert "create_loyalty_referral_events" in error["details"]
        assert upstream.received == []
    else:
        assert resp.status == 200
        assert [seen.body for seen in upstream.received] == [data]


# --- every error the gateway makes, in Voucherify's shape


async def test_each_request_error_key(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = base_policy(upstream.url)
    tree["listen"] = {"max_body_bytes": 100}
    client = await gateway(tree)
    cases = [
        ("GET", "/client/v1/nope", H, None, 404, "not_found"),
        ("GET", "/nope/client/v1/validate", H, None, 404, "not_found"),
        ("DELETE", "/client/v1/validate", H, None, 405, "method_not_allowed"),
        ("GET", "/client/v1/validate", {**H, "X-App-Token": "sk"}, None, 400, "secret_key_exposed"),
        ("GET", "/client/v1/validate", {"Origin": "https://evil.test"}, None, 403, "origin_not_allowed"),
        ("GET", "/client/v1/validate", {}, None, 403, "origin_not_allowed"),
        ("GET", "/client/v1/vouchers", H, None, 403, "danger_zone_disabled"),
        ("POST", "/client/v1/validations", JSON_H, b"{" + b" " * 200 + b"}", 413, "payload_too_large"),
        (
            "POST",
            "/client/v1/validations",
            {**H, "Content-Type": "text/plain"},
            b"{}",
            415,
            "unsupported_media_type",
        ),
        ("POST", "/client/v1/validations", JSON_H, b"{nope", 400, "invalid_payload"),
    ]
    for method, path, headers, data, status, key in cases:
        resp = await client.request(method, path, headers=headers, data=data)
        assert_gateway_error(resp.status, await error_of(resp), resp.headers, status, key)
    assert upstream.received == []


async def test_405_has_an_allow_header(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway()
    for method, path, allow in [
        ("POST", "/client/v1/validate", "GET"),
        ("HEAD", "/client/v1/validate", "GET"),
        ("PUT", "/client/v1/customers", "POST"),
        ("GET", "/client/v1/customers/c1/consents", "PUT"),
        ("PATCH", "/client/v1/events", "POST"),
    ]:
        resp = await client.request(method, path, headers=H)
        assert resp.status == 405
        assert resp.headers["Allow"] == allow
        if method != "HEAD":
            body = await error_of(resp)
            assert_gateway_error(resp.status, body, resp.headers, 405, "method_not_allowed")
            assert body["message"] == "HTTP Method Not Allowed"
            assert allow in body["details"]
    assert upstream.received == []


async def test_request_ids_are_unique_and_the_browsers_is_ignored(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    ids = []
    for _ in range(5):
        resp = await client.get("/client/v1/validate", headers={**H, "X-Request-Id": "chosen"})
        ids.append(resp.headers["X-Request-Id"])
    assert len(set(ids)) == 5 and "chosen" not in ids
    assert all(re.fullmatch(r"gw-[0-9a-f]{16}", i) for i in ids)  # 64 random bits, zero-padded
    assert [seen.headers.getall("X-Request-Id") for seen in upstream.received] == [[i] for i in ids]


# --- the order of the checks


@pytest.mark.parametrize(
    ("method", "path", "headers", "data", "status", "key"),
    [
        (
            "GET",
            "/client/v1/redeem/x",
            {"Origin": "https://evil.test", "X-App-Token": "sk"},
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/client/v1/redeem",
            {"Origin": "https://evil.test", "X-App-Token": "sk"},
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/client/v1/redeem",
            {"Origin": "https://evil.test", "X-Management-Token": "mk"},
            b"{}",
            400,
            "secret_key_exposed",
        ),
        (
            "POST",
            "/client/v1/redeem",
            {"Origin": "https://evil.test", "Content-Type": "text/plain"},
            b"x" * 500,
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            "/client/v1/redeem",
            {**H, "Content-Type": "text/plain"},
            b"x" * 500,
            403,
            "danger_zone_disabled",
        ),
        (
            "POST",
            "/client/v1/validations",
            {**H, "Content-Type": "text/plain"},
            b"x" * 500,
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/client/v1/validations",
            {**H, "Content-Type": "text/plain"},
            b"[]",
            415,
            "unsupported_media_type",
        ),
        ("POST", "/client/v1/validations", JSON_H, b"[]", 400, "invalid_payload"),
        (
            "POST",
            "/client/v1/events",
            {**H, "Content-Type": "text/plain"},
            b'{"loyalty": {"code": "L"}}',
            415,
            "unsupported_media_type",
        ),
    ],
)
async def test_the_first_failing_check_answers(
    gateway: GatewayFactory,
    upstream: UpstreamDouble,
    method: str,
    path: str,
    headers: dict[str, str],
    data: bytes | None,
    status: int,
    key: str,
) -> None:
    tree = base_policy(upstream.url)
    tree["listen"] = {"max_body_bytes": 100}
    client = await gateway(tree)
    resp = await client.request(method, path, headers=headers, data=data)
    assert_gateway_error(resp.status, await error_of(resp), resp.headers, status, key)
    assert upstream.received == []


async def test_refusals_for_an_allowed_origin_carry_cors_and_others_do_not(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    for path in ["/client/v1/nope", "/client/v1/vouchers"]:
        resp = await client.get(path, headers=H)
        assert resp.status in (403, 404)
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        resp = await client.get(path, headers={"Origin": "https://evil.test"})
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert resp.headers["Vary"] == "Origin"


# --- bodies


def limited_body(upstream_url: str, limit: int = 1000) -> dict[str, Any]:
    tree = base_policy(upstream_url)
    tree["listen"] = {"max_body_bytes": limit}
    return tree


async def test_413_from_content_length_before_reading_and_the_connection_closes(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(limited_body(upstream.url))
    # Only the head is sent: the answer cannot wait for a body that never comes.
    head = request_bytes("POST", "/client/v1/validations", [*JSON_H.items(), ("Content-Length", "10000000")])
    resp = await raw_request(client.port, head, timeout=3, check_closed=True)
    assert_gateway_error(resp.status, resp.json(), resp.headers, 413, "payload_too_large")
    assert resp.closed
    assert upstream.received == []


async def test_413_while_reading_a_chunked_body(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(limited_body(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            request_bytes(
                "POST", "/client/v1/validations", [*JSON_H.items(), ("Transfer-Encoding", "chunked")]
            )
        )
        writer.write(b"1\r\n{\r\n")
        for _ in range(3):  # 1.5 KB of a body that never ends
            writer.write(b"200\r\n" + b" " * 0x200 + b"\r\n")
            await writer.drain()
        resp = await read_response(reader, timeout=3, check_closed=True)
    finally:
        writer.close()
    assert_gateway_error(resp.status, resp.json(), resp.headers, 413, "payload_too_large")
    assert resp.closed
    assert upstream.received == []


async def test_a_whole_chunked_body_over_the_limit_in_one_packet_is_413(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    # No Content-Length to refuse up front, and the body is complete before the handler runs.
    client = await gateway(limited_body(upstream.url))
    head = request_bytes(
        "POST", "/client/v1/validations", [*JSON_H.items(), ("Transfer-Encoding", "chunked")]
    )
    for size, status in ((1001, 413), (1000, 200)):
        body = b'{"a": "' + b"x" * (size - 9) + b'"}'
        chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        resp = await raw_request(client.port, head + chunked, timeout=3)
        assert resp.status == status, size
    assert len(upstream.received) == 1


async def test_bodies_at_the_limit_pass_chunked_or_not(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(limited_body(upstream.url))
    body = b'{"a": "' + b"x" * 991 + b'"}'
    assert len(body) == 1000
    assert (await client.post("/client/v1/validations", data=body, headers=JSON_H)).status == 200

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:500]
        yield body[500:]

    assert (await client.post("/client/v1/validations", data=chunks(), headers=JSON_H)).status == 200
    assert [seen.body for seen in upstream.received] == [body, body]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"name": "\xff\xfe"}',
        b"\xef\xbb\xbf{}",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 5000 + b"]" * 5000,
        b'{"amount": NaN}',
        b'{"a": 1, "a": 2}',
    ],
    ids=[
        "text",
        "array",
        "string",
        "null",
        "latin1",
        "bom",
        "deep-objects",
        "deep-arrays",
        "nan",
        "duplicate",
    ],
)
async def test_bodies_that_are_not_a_json_object_are_400(
    gateway: GatewayFactory, upstream: UpstreamDouble, body: bytes
) -> None:
    client = await gateway(limited_body(upstream.url, 100_000))
    resp = await client.post("/client/v1/validations", data=body, headers=JSON_H)
    assert_gateway_error(resp.status, await error_of(resp), resp.headers, 400, "invalid_payload")
    assert upstream.received == []


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        None,
    ],
)
async def test_a_body_of_another_type_is_415(
    gateway: GatewayFactory, upstream: UpstreamDouble, content_type: str | None
) -> None:
    client = await gateway()
    headers = [("Origin", ORIGIN)] + ([("Content-Type", content_type)] if content_type else [])
    resp = await send(client.port, "POST", "/client/v1/validations", headers, b"{}")
    assert_gateway_error(resp.status, resp.json(), resp.headers, 415, "unsupported_media_type")
    assert upstream.received == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON;charset=UTF-8"]
)
async def test_json_media_types_with_parameters_are_accepted(
    gateway: GatewayFactory, upstream: UpstreamDouble, content_type: str
) -> None:
    client = await gateway()
    resp = await client.post(
        "/client/v1/validations", data=b"{}", headers={**H, "Content-Type": content_type}
    )
    assert resp.status == 200
    assert upstream.received[0].headers["Content-Type"] == content_type


async def test_an_empty_body_needs_no_content_type_and_is_forwarded_empty(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    resp = await send(
        client.port, "POST", "/client/v1/qualifications", [("Origin", ORIGIN), ("Content-Length", "0")]
    )
    assert resp.status == 200
    resp = await send(client.port, "POST", "/client/v1/qualifications", [("Origin", ORIGIN)])
    assert resp.status == 200
    for seen in upstream.received:
        assert seen.body == b""
        assert "Content-Type" not in seen.headers
        assert seen.headers.get("Content-Length", "0") == "0"


@pytest.mark.parametrize(
    "framing",
    [[("Content-Length", "2")], [("Transfer-Encoding", "chunked")]],
    ids=["content-length", "chunked"],
)
async def test_a_get_with_a_body_is_refused(
    gateway: GatewayFactory, upstream: UpstreamDouble, framing: list[tuple[str, str]]
) -> None:
    client = await gateway()
    body = b"2\r\n{}\r\n0\r\n\r\n" if framing[0][0] == "Transfer-Encoding" else b"{}"
    resp = await send(client.port, "GET", "/client/v1/validate", [*JSON_H.items(), *framing], body)
    assert_gateway_error(resp.status, resp.json(), resp.headers, 400, "invalid_payload")
    assert upstream.received == []


# --- CORS

SDK_HEADERS = "content-type,x-client-application-id,x-client-token,x-voucherify-channel"


async def test_preflight_is_answered_by_the_gateway(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(tree={**base_policy(upstream.url), "rate_limit": {"per_ip": "1 per minute"}})
    for path, methods in [
        ("/client/v1/validations", "POST"),
        ("/client/v1/customers/c%201/consents", "PUT"),
        ("/client/v1/validate", "GET"),
        ("/shop/client/v1/redeem", "POST"),
    ]:
        for _ in range(3):
            resp = await client.options(
                path,
                headers={
                    **H,
                    "Access-Control-Request-Method": methods,
                    "Access-Control-Request-Headers": SDK_HEADERS,
                },
            )
            assert resp.status == 204
            assert await resp.read() == b""
            assert resp.headers["Access-Control-Allow-Methods"] == methods
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {
                "content-type",
                "x-client-application-id",
                "x-client-token",
                "x-voucherify-channel",
                "x-voucherify-double-opt-in",
            } <= allowed
            assert int(resp.headers["Access-Control-Max-Age"]) > 0
            assert resp.headers["Vary"] == "Origin"
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "RateLimit" not in resp.headers
    assert upstream.received == []
    # twelve preflights later, the one request of the budget still passes
    assert (await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)).status == 200


async def test_preflights_for_refused_origins_unknown_paths(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    resp = await client.options("/client/v1/validations", headers={"Origin": "https://evil.test"})
    assert_gateway_error(resp.status, await error_of(resp), resp.headers, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Access-Control-Allow-Methods" not in resp.headers
    resp = await client.options("/client/v1/nope", headers=H)
    assert resp.status == 404
    assert upstream.received == []


@pytest.mark.parametrize(
    ("origin", "acao", "credentials"),
    [
        (ORIGIN, ORIGIN, True),
        ("https://SHOP.example.com:443", "https://SHOP.example.com:443", True),
        ("https://a.b.example.org", "https://a.b.example.org", True),
        ("https://anyone.test", "*", False),
        ("http://shop.example.com", "*", False),
    ],
)
async def test_allowed_origins_and_the_star(
    gateway: GatewayFactory, upstream: UpstreamDouble, origin: str, acao: str, credentials: bool
) -> None:
    client = await gateway(allowed_origins=[ORIGIN, "https://*.example.org", "*"])
    for method in ["GET", "OPTIONS"]:
        resp = await client.request(method, "/client/v1/validate", headers={"Origin": origin})
        assert resp.status in (200, 204)
        assert resp.headers.getall("Access-Control-Allow-Origin") == [acao]
        assert ("Access-Control-Allow-Credentials" in resp.headers) is credentials
        if credentials:
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert resp.headers["Vary"] == "Origin"
    assert upstream.received[0].headers["Origin"] == origin


@pytest.mark.parametrize(
    "origin",
    ["https://evil.test", "https://example.org", "http://a.example.org", "null", "https://shop.example.com/"],
)
async def test_refused_origins_get_no_cors_headers(
    gateway: GatewayFactory, upstream: UpstreamDouble, origin: str
) -> None:
    client = await gateway()
    resp = await client.get("/client/v1/validate", headers={"Origin": origin})
    assert_gateway_error(resp.status, await error_of(resp), resp.headers, 403, "origin_not_allowed")
    assert not [name for name in resp.headers if name.lower().startswith("access-control-")]
    assert upstream.received == []


async def test_missing_origin_for_native_apps(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(allow_missing_origin=True)
    resp = await client.get("/client/v1/validate")
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"] == "Origin"
    assert "Origin" not in upstream.received[0].headers
    resp = await client.get("/client/v1/validate", headers={"Origin": "https://evil.test"})
    assert resp.status == 403  # an Origin that is present is still checked


async def test_null_origin_only_by_an_entry_null(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(allowed_origins=["null"])
    resp = await client.get("/client/v1/validate", headers={"Origin": "null"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "null"


async def test_a_trickled_body_is_cut_off_with_408(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    """A client that sends its body too slowly does not hold a handler for ever (listen.body_timeout)."""
    tree = base_policy(upstream.url)
    tree["listen"] = {"body_timeout": 0.5}
    client = await gateway(tree)
    head = request_bytes(
        "POST",
        "/client/v1/validations",
        [("Origin", ORIGIN), ("Content-Type", "application/json"), ("Content-Length", "100")],
        b'{"redeemables": [',  # 17 of the 100 bytes announced, then nothing
    )
    response = await raw_request(client.port, head, timeout=10, check_closed=True)
    assert response.status == 408
    assert response.json()["key"] == "request_timeout"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.closed
    assert upstream.received == []


async def test_a_body_within_the_timeout_is_forwarded(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url)
    tree["listen"] = {"body_timeout": 5}
    client = await gateway(tree)
    resp = await client.post("/client/v1/validations", headers=JSON_H, data=b'{"redeemables": []}')
    assert resp.status == 200
    assert upstream.received[0].body == b'{"redeemables": []}'


async def test_an_absolute_form_target_is_served_by_its_path(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """RFC 9112 3.2.2: a server must accept `GET http://host/path`; the authority in it changes nothing."""
    client = await gateway()
    for target in (
        "http://gateway.test/client/v1/validate?code=A",
        "http://evil.example/client/v1/validate?code=B",
    ):
        resp = await raw_request(client.port, request_bytes("GET", target, [("Origin", ORIGIN)]), timeout=3)
        assert resp.status == 200, target
    assert [seen.raw_path for seen in upstream.received] == [
        "/client/v1/validate?code=A",
        "/client/v1/validate?code=B",
    ]
    refused = request_bytes("GET", "http://gateway.test/client/v1/vouchers", [("Origin", ORIGIN)])
    assert (await raw_request(client.port, refused, timeout=3)).status == 403  # still the danger zone
    assert len(upstream.received) == 2
