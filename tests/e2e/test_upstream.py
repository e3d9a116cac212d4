"""What crosses to Voucherify and back: header allow-lists, and the upstream's faults."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict

from gateway.headers import request_headers, response_headers
from tests.conftest import ORIGIN, GatewayFactory, assert_gateway_error, base_policy, free_port
from tests.support.constants import CLIENT_TOKEN, JSON_H, H
from tests.support.raw_upstream import RawConnection, raw_upstream
from tests.support.upstream_double import GarbageServer, Reply, UpstreamDouble

CREDENTIALS = (("X-Client-Application-Id", "app"), ("X-Client-Token", "tok"))


# --- header allow-lists, without sockets

BROWSER = CIMultiDict(
    [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Accept-Language", "pl"),
        ("User-Agent", "Mozilla/5.0"),
        ("X-Voucherify-Channel", "Browser-ClientSide-SDK-v2.9.0"),
        ("X-Voucherify-Double-Opt-In", "true"),
        ("Origin", ORIGIN),
        ("X-Client-Application-Id", "browser-app"),
        ("X-Client-Token", "browser-token"),
        ("X-App-Id", "a"),
        ("X-App-Token", "b"),
        ("X-Management-Id", "c"),
        ("X-Management-Token", "d"),
        ("X-Voucherify-API-Version", "v2018-08-01"),
        ("Authorization", "Bearer e"),
        ("Cookie", "session=f"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Host", "evil"),
        ("X-Forwarded-Proto", "http"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Request-Id", "browser-chosen"),
        ("Host", "gateway.test"),
        ("Content-Length", "2"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-Y"),
    ]
)


def test_request_headers_are_an_allow_list() -> None:
    out = request_headers(BROWSER, CREDENTIALS, ORIGIN, "gw-1", forward_origin=True)
    assert dict(out) == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Accept-Language": "pl",
        "User-Agent": "Mozilla/5.0",
        "X-Voucherify-Channel": "Browser-ClientSide-SDK-v2.9.0",
        "X-Voucherify-Double-Opt-In": "true",
        "Origin": ORIGIN,
        "X-Client-Application-Id": "app",
        "X-Client-Token": "tok",
        "X-Request-Id": "gw-1",
    }
    assert len(out) == 10  # one value each


def test_request_headers_without_origin_and_in_server_mode() -> None:
    out = request_headers(
        BROWSER, (("X-App-Id", "id"), ("X-App-Token", "tok")), ORIGIN, "gw-1", forward_origin=False
    )
    assert "Origin" not in out
    assert out["X-App-Token"] == "tok"
    out = request_headers(CIMultiDict(), CREDENTIALS, None, "gw-1", forward_origin=True)
    assert dict(out) == {"X-Client-Application-Id": "app", "X-Client-Token": "tok", "X-Request-Id": "gw-1"}


def test_headers_named_in_connection_are_dropped() -> None:
    incoming = CIMultiDict(
        [
            ("Accept-Language", "pl"),
            ("User-Agent", "UA"),
            ("Accept", "*/*"),
            ("Connection", "Accept-Language, user-agent"),
        ]
    )
    assert dict(request_headers(incoming, (), None, "id", forward_origin=True)) == {
        "Accept": "*/*",
        "X-Request-Id": "id",
    }


def test_response_headers_are_an_allow_list() -> None:
    upstream = (  # as the client hands them over: (name, value) pairs in the order received
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("ETag", '"e"'),
            ("X-Rate-Limit-Limit", "100"),
            ("X-Rate-Limit-Remaining", "99"),
            ("X-Rate-Limit-Retry", "0"),
            ("X-Rate-Limit-Type", "project"),
            ("Set-Cookie", "a=b"),
            ("Access-Control-Allow-Origin", "*"),
            ("Access-Control-Allow-Credentials", "true"),
            ("Server", "nginx"),
            ("Connection", "keep-alive, ETag"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "10"),
            ("Content-Encoding", "gzip"),
            ("Strict-Transport-Security", "max-age=1"),
            ("X-Request-Id", "v-upstream"),
            ("Vary", "Accept-Encoding"),
            ("Proxy-Authenticate", "Basic"),
            ("Upgrade", "h2c"),
        ]
    )
    assert response_headers(upstream) == [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Cache-Control", "no-store"),
    ]


# --- end to end


async def test_upstream_status_body_and_errors_pass_through(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    error_400 = {
        "code": 400,
        "key": "invalid_payload",
        "message": "Invalid payload",
        "details": "x",
        "request_id": "v-1",
    }
    error_404 = {
        "code": 404,
        "key": "not_found",
        "message": "Resource not found",
        "details": "Cannot find voucher with id NOPE",
        "request_id": "v-2",
        "resource_id": "NOPE",
        "resource_type": "voucher",
    }
    invalid_code = {
        "valid": False,
        "reason": "voucher expired",
        "code": "OLD",
        "error": {"code": 400, "key": "voucher_expired"},
    }
    upstream.reply(
        Reply(400, error_400),
        Reply(404, error_404),
        Reply(200, invalid_code),
        Reply(401, {"code": 401, "key": "unauthorized", "message": "Unauthorized"}),
        Reply(204, b""),
        Reply(500, b"<html>oops</html>", {"Content-Type": "text/html"}),
    )
    for status, body in [(400, error_400), (404, error_404), (200, invalid_code), (401, None)]:
        resp = await client.get("/client/v1/validate?code=NOPE", headers=H)
        assert resp.status == status
        if body is not None:
            assert json.loads(await resp.read()) == body
        assert resp.headers["Content-Type"] == "application/json"
    resp = await client.put("/client/v1/customers/c1/consents", data=b'{"unsubscribed":true}', headers=JSON_H)
    assert resp.status == 204
    assert await resp.read() == b""
    resp = await client.get("/client/v1/validate", headers=H)
    assert resp.status == 500
    assert await resp.read() == b"<html>oops</html>"
    assert resp.headers["Content-Type"] == "text/html"
    assert resp.headers["Vary"] == "Origin"


async def test_upstream_plan_headers_and_cookies_never_reach_the_browser(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    upstream.reply(
        Reply(
            200,
            headers={
                "X-Rate-Limit-Limit": "100",
                "X-Rate-Limit-Remaining": "99",
                "X-Rate-Limit-Retry": "0",
                "X-Rate-Limit-Type": "project",
                "Set-Cookie": "AWSALB=abc; Path=/",
                "Access-Control-Allow-Origin": "*",
                "X-Powered-By": "voucherify",
            },
        ),
        Reply(
            429,
            {"code": 429, "message": "Too many requests hit the API too quickly."},
            {"Retry-After": "3", "X-Rate-Limit-Retry": "3"},
        ),
    )
    resp = await client.get("/client/v1/validate", headers=H)
    assert resp.status == 200
    for name in resp.headers:
        assert not name.lower().startswith("x-rate-limit"), name
    assert "Set-Cookie" not in resp.headers
    assert "X-Powered-By" not in resp.headers
    assert resp.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
    resp = await client.get("/client/v1/validate", headers=H)
    assert resp.status == 503  # Voucherify's own 429 is the gateway's 503, with its Retry-After
    assert (await resp.json())["key"] == "upstream_quota_exhausted"
    assert resp.headers["Retry-After"] == "3"
    assert "X-Rate-Limit-Retry" not in resp.headers


async def test_compressed_answers_are_decoded(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    import gzip

    client = await gateway()
    upstream.reply(Reply(200, gzip.compress(b'{"valid": true}'), {"Content-Encoding": "gzip"}))
    resp = await client.get("/client/v1/validate", headers=H)
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert await resp.json() == {"valid": True}


async def test_a_transfer_coded_answer_echoing_the_secret_is_a_502(gateway: GatewayFactory) -> None:
    """`Transfer-Encoding: gzip, chunked` was de-chunked and relayed still gzipped: an echo of the
    gateway's `X-Client-Token` in it passed the secret-echo check (a page can gunzip it itself)."""

    async def echo_gzipped(conn: RawConnection) -> None:
        while (seen := await conn.request()) is not None:
            body = gzip.compress(json.dumps({"headers": seen.head.decode()}).encode())
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n"
            )
            await conn.write(head + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    async with raw_upstream(echo_gzipped) as echo:
        client = await gateway(base_policy(echo.url))
        resp = await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)
        raw = await resp.read()
        assert_error(resp.status, json.loads(raw), resp.headers, 502, "upstream_unavailable")
        assert CLIENT_TOKEN.encode() in echo.seen[0].head  # it was sent, and echoed
        assert CLIENT_TOKEN.encode() not in raw


async def test_trailer_fields_never_reach_the_browser_as_headers(gateway: GatewayFactory) -> None:
    """A chunked answer's trailer fields were appended to its headers, so the browser (and any cache in
    front of the gateway) got a trailer's `Cache-Control` and a second `Content-Type`."""

    async def with_trailers(conn: RawConnection) -> None:
        while await conn.request() is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            trailers = b"Content-Type: text/html\r\nCache-Control: public, max-age=31536000\r\n"
            await conn.write(head + b'f\r\n{"valid": true}\r\n0\r\n' + trailers + b"\r\n")

    async with raw_upstream(with_trailers) as upstream:
        client = await gateway(base_policy(upstream.url))
        resp = await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)
        assert resp.status == 200
        assert await resp.json() == {"valid": True}
        assert resp.headers.getall("Content-Type") == ["application/json"]
        assert "Cache-Control" not in resp.headers


def assert_error(status: int, body: dict[str, Any], headers: Mapping[str, str], code: int, key: str) -> None:
    assert_gateway_error(status, body, headers, code, key)
    assert headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_refused_port_is_502(gateway: GatewayFactory) -> None:
    client = await gateway(base_policy(f"http://127.0.0.1:{free_port()}"))
    resp = await client.get("/client/v1/validate", headers=H)
    assert_error(resp.status, await resp.json(), resp.headers, 502, "upstream_unavailable")


async def test_connection_reset_is_502_and_a_post_is_never_retried(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(danger_zone={"redeem": True})
    # warm a pooled keep-alive connection first: a reset on a reused connection is when clients retry
    assert (await client.get("/client/v1/validate", headers=H)).status == 200
    upstream.reply(Reply(reset=True))
    resp = await client.post("/client/v1/redeem?code=A", data=b'{"order":{"amount":100}}', headers=JSON_H)
    assert_error(resp.status, await resp.json(), resp.headers, 502, "upstream_unavailable")
    await asyncio.sleep(0.2)
    redemptions = [seen for seen in upstream.received if seen.method == "POST"]
    assert len(redemptions) == 1


async def test_a_reset_on_a_fresh_connection_is_not_retried_either(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    upstream.reply(Reply(reset=True))
    resp = await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)
    assert_error(resp.status, await resp.json(), resp.headers, 502, "upstream_unavailable")
    await asyncio.sleep(0.2)
    assert len(upstream.received) == 1


async def test_an_answer_that_is_not_http_is_502(gateway: GatewayFactory) -> None:
    garbage = GarbageServer()
    await garbage.start()
    try:
        client = await gateway(base_policy(garbage.url))
        resp = await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)
        assert_error(resp.status, await resp.json(), resp.headers, 502, "upstream_unavailable")
        assert garbage.connections == 1
    finally:
        await garbage.close()


async def test_a_slow_answer_is_504(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = base_policy(upstream.url)
    tree["upstream"] = {"read_timeout": 0.3}
    client = await gateway(tree)
    upstream.reply(Reply(delay=2))
    resp = await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)
    body = await resp.json()
    assert_error(resp.status, body, resp.headers, 504, "upstream_timeout")
    assert len(upstream.received) == 1
    # an answer inside the timeout is fine
    upstream.reply(Reply(delay=0.1))
    assert (await client.post("/client/v1/validations", data=b"{}", headers=JSON_H)).status == 200


async def test_a_get_is_not_retried_after_a_reset_either(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    assert (await client.get("/client/v1/validate", headers=H)).status == 200
    upstream.reply(Reply(reset=True))
    resp = await client.get("/client/v1/validate?code=A&session_type=LOCK", headers=H)
    assert resp.status == 502
    await asyncio.sleep(0.2)
    assert len(upstream.received) == 2
