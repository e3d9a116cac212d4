"""Issue 17: hostile clients against the public port as `serve` runs it (`gateway.listen.GatewayRunner`),
each attack sent as raw bytes over a real socket to a gateway in front of the recording upstream double."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import gateway.app
from gateway.app import create_app
from gateway.listen import GatewayRunner, GatewayServer
from gateway.models import Outcome
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting
from tests.conftest import CLIENT_TOKEN, ORIGIN, assert_gateway_error, base_policy, make_policy
from tests.support.processes import GatewayProcessFactory, running_demo
from tests.support.rawhttp import RawResponse, read_response, request_bytes
from tests.support.upstream_double import Received, UpstreamDouble

WAIT = 30.0  # an upper bound for what takes milliseconds; never a pass/fail timing
ORIGIN_H = ("Origin", ORIGIN)
JSON_CT = ("Content-Type", "application/json")
APP_ID = "server-app-id-hostile-3a1f"
APP_TOKEN = "server-secret-token-hostile-77c2"


class Recorder:
    """An accounting sink next to the access log: what was accounted, kept for the assertions."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.accounting = Accounting([AccessLog(), self])

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        self.outcomes.extend(batch)

    def decisions(self) -> list[tuple[str, int]]:
        self.accounting.flush()
        return [(o.decision, o.status) for o in self.outcomes]


@dataclass
class Served:
    port: int
    recorder: Recorder
    server: GatewayServer

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(
        self, data: bytes, *, responses: int = 1, watch: bool = False
    ) -> tuple[list[RawResponse], bool]:
        """Write `data` at once; read up to `responses` answers; and (`watch`) whether the gateway then
        closed the connection (a second's wait when it did not)."""
        reader, writer = await self.connect()
        try:
            writer.write(data)
            answers = []
            for _ in range(responses):
                try:
                    answers.append(await read_response(reader, WAIT))
                except asyncio.IncompleteReadError:
                    break
            return answers, await closed(reader) if watch else False
        finally:
            writer.close()


async def closed(reader: asyncio.StreamReader, within: float = 1.0) -> bool:
    """EOF (or a reset) comes; False when the connection is still open after `within` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:  # a reset, or our own write failing on the closed connection
        return True


Start = Callable[..., Awaitable[Served]]


@pytest.fixture
async def hardened(upstream: UpstreamDouble) -> AsyncIterator[Start]:
    """`await hardened(tree=None, listen=None, **project)`: the app behind GatewayRunner on a free port."""
    runners: list[GatewayRunner] = []

    async def start(
        tree: dict[str, Any] | None = None, listen: dict[str, Any] | None = None, **project: Any
    ) -> Served:
        tree = tree if tree is not None else base_policy(upstream.url, **project)
        if listen:
            tree["listen"] = listen
        policy = make_policy(tree)
        recorder = Recorder()
        runner = GatewayRunner(create_app(policy, recorder.accounting), policy.listen)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        assert isinstance(runner.server, GatewayServer)
        return Served(runner.addresses[0][1], recorder, runner.server)

    yield start
    for runner in runners:
        await runner.cleanup()


def post(path: str, body: bytes, *headers: tuple[str, str]) -> bytes:
    return request_bytes("POST", path, [*headers, ("Content-Length", str(len(body)))], body)


# --- 1. chunked trailers must never reach another request


TRAILER_ATTACK = (
    b"POST /client/v1/validations HTTP/1.1\r\nHost: gw\r\nOrigin: https://shop.example.com\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n%s\r\n\r\n"
    b"POST /client/v1/qualifications HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


@pytest.mark.parametrize(
    "trailer", [b"Origin: https://shop.example.com", b"X-App-Token: sk_trailer_secret", b"X-A: 1\r\nX-B: 2"]
)
async def test_a_chunked_requests_trailers_never_reach_the_next_request(
    hardened: Start, upstream: UpstreamDouble, trailer: bytes
) -> None:
    served = await hardened(allow_missing_origin=True)
    answers, was_closed = await served.exchange(TRAILER_ATTACK % trailer, responses=2, watch=True)
    assert [a.status for a in answers] == [200]  # the chunked request is answered, then nothing else is read
    assert answers[0].headers["Connection"] == "close" and was_closed
    assert [r.path for r in upstream.received] == ["/client/v1/validations"]
    # the innocent request, sent again on its own connection, is served as it was written
    answers, _ = await served.exchange(post("/client/v1/qualifications", b"{}", JSON_CT))
    assert answers[0].status == 200
    assert "Origin" not in upstream.received[-1].headers


async def test_http_1_0_with_transfer_encoding_is_answered_then_closed(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened()
    data = (
        b"POST /client/v1/validations HTTP/1.0\r\nHost: gw\r\nOrigin: https://shop.example.com\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
        b"GET /client/v1/promotions/tiers HTTP/1.0\r\nOrigin: https://shop.example.com\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    answers, was_closed = await served.exchange(data, responses=2, watch=True)
    assert [a.status for a in answers] == [200] and was_closed  # RFC 9112 6.1: faulty framing
    assert len(upstream.received) == 1


# --- 4. close at once after 413 and 408


async def test_a_declared_oversized_upload_is_refused_and_closed_without_being_read(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened()
    reader, writer = await served.connect()
    total = 50 * 1024 * 1024
    head = request_bytes(
        "POST", "/client/v1/validations", [ORIGIN_H, JSON_CT, ("Content-Length", str(256 * 1024 * 1024))]
    )
    sent = 0

    async def upload() -> None:
        nonlocal sent
        writer.write(head)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    uploading = asyncio.create_task(upload())
    try:
        answer = await read_response(reader, WAIT)
        assert_gateway_error(answer.status, answer.json(), answer.headers, 413, "payload_too_large")
        assert await closed(reader, WAIT)  # EOF (or a reset, as the upload goes on) right after the answer
        await asyncio.wait_for(uploading, WAIT)  # the gateway stopped taking bytes: the upload failed
        assert sent < total, "the gateway read the whole 50 MiB after answering 413"
    finally:
        uploading.cancel()
        writer.close()
    assert upstream.received == []


async def test_a_trickled_body_gets_408_then_eof_at_once(hardened: Start, upstream: UpstreamDouble) -> None:
    served = await hardened(tree=None, listen={"body_timeout": 0.5})
    reader, writer = await served.connect()
    writer.write(
        request_bytes("POST", "/client/v1/validations", [ORIGIN_H, JSON_CT, ("Content-Length", "100")])
    )
    writer.write(b'{"a"')
    try:
        answer = await read_response(reader, WAIT)
        assert_gateway_error(answer.status, answer.json(), answer.headers, 408, "request_timeout")
        writer.write(b": 1")  # still sending: discarded, and the EOF is already there
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    finally:
        writer.close()


# --- 5. Content-Encoding mismatches and the last resort


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"{}"),
        ("deflate", b'{"a": 1}'),
        ("gzip", gzip.compress(b"{}") + b"junk after the member"),
        ("deflate", zlib.compress(b"{}")[:-3]),
    ],
    ids=["gzip-over-plain", "deflate-over-plain", "gzip-then-junk", "deflate-truncated"],
)
async def test_a_body_that_does_not_match_its_content_encoding_is_400_and_accounted(
    hardened: Start, upstream: UpstreamDouble, caplog: pytest.LogCaptureFixture, encoding: str, body: bytes
) -> None:
    served = await hardened()
    with caplog.at_level(logging.DEBUG):
        answers, _ = await served.exchange(
            post("/client/v1/validations", body, ORIGIN_H, JSON_CT, ("Content-Encoding", encoding))
        )
    answer = answers[0]
    assert_gateway_error(answer.status, answer.json(), answer.headers, 400, "invalid_payload")
    assert served.recorder.decisions() == [("invalid_payload", 400)]
    assert upstream.received == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_an_exception_in_the_pipeline_is_a_json_500_with_the_request_id_and_accounted(
    hardened: Start,
    upstream: UpstreamDouble,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = await hardened()

    def broken(*args: object) -> None:
        raise RuntimeError(f"a message quoting {CLIENT_TOKEN}")

    monkeypatch.setattr(gateway.app, "check_body", broken)
    answers, _ = await served.exchange(post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT))
    answer = answers[0]
    assert_gateway_error(answer.status, answer.json(), answer.headers, 500, "internal_error")
    assert served.recorder.decisions() == [("internal_error", 500)]
    assert served.recorder.outcomes[0].request_id == answer.headers["X-Request-Id"]
    assert "RuntimeError" in caplog.text and CLIENT_TOKEN not in caplog.text


# --- 6. header bytes that cannot go upstream


async def test_a_latin_1_byte_in_a_forwarded_header_is_400_before_counting(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "1 per minute"}
    served = await hardened(tree)
    bad = post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT).replace(
        b"Content-Length", b"X-Voucherify-Channel: Caf\xe9-SDK\r\nContent-Length"
    )
    for _ in range(3):
        answers, _ = await served.exchange(bad)
        assert_gateway_error(answers[0].status, answers[0].json(), answers[0].headers, 400, "invalid_payload")
        assert "X-Voucherify-Channel" in answers[0].json()["details"]
    answers, _ = await served.exchange(post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT))
    assert answers[0].status == 200  # none of the refused ones was counted against the 1 per minute
    assert len(upstream.received) == 1


# --- 7. credential values echoed by the upstream


class EchoDouble(UpstreamDouble):
    """An upstream that answers with the headers it was sent (an echo service, a debug proxy)."""

    def __init__(self, *, in_header: bool = False) -> None:
        super().__init__()
        self.in_header = in_header

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path, request.headers, body))
        if self.in_header:  # the ETag (relayed) made from a header value
            token = request.headers.get("X-App-Token") or request.headers.get("X-Client-Token", "")
            return web.json_response({"valid": True}, headers={"ETag": f'"{token}"'})
        return web.json_response({"valid": True, "headers": dict(request.headers)})


@pytest.fixture(params=["body", "header"])
async def echo(request: pytest.FixtureRequest) -> AsyncIterator[EchoDouble]:
    double = EchoDouble(in_header=request.param == "header")
    await double.start()
    yield double
    await double.close()


@pytest.mark.parametrize("mode", ["client", "server"])
async def test_an_upstream_answer_echoing_the_gateways_secret_is_never_relayed(
    hardened: Start, echo: EchoDouble, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    project: dict[str, Any] = {}
    secret, name = CLIENT_TOKEN, "X-Client-Token"
    if mode == "server":
        project = {
            "upstream_auth": "server",
            "credentials": {"application_id": APP_ID, "secret_key": APP_TOKEN},
        }
        secret, name = APP_TOKEN, "X-App-Token"
    served = await hardened(base_policy(echo.url, **project))
    answers, _ = await served.exchange(post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT))
    answer = answers[0]
    assert len(echo.received) == 1 and echo.received[0].headers[name] == secret  # it was sent, and echoed
    assert_gateway_error(answer.status, answer.json(), answer.headers, 502, "upstream_unavailable")
    assert secret.encode() not in answer.body and secret not in str(answer.headers)
    assert served.recorder.decisions() == [("upstream_unavailable", 502)]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(name in line for line in lines), lines
    assert not any(secret in line for line in lines)


# --- 9. Host (RFC 9112 3.2)


@pytest.mark.parametrize(
    "hosts",
    [["user:pw@evil.example"], ["evil example"], ["user@gw"], ["gw", "evil.example"], ["gw/path"], ["gw?x"]],
)
async def test_a_host_that_is_not_host_port_is_400(
    hardened: Start, upstream: UpstreamDouble, hosts: list[str]
) -> None:
    served = await hardened()
    head = [("Host", host) for host in hosts]
    answers, was_closed = await served.exchange(
        request_bytes("GET", "/client/v1/promotions/tiers", [*head, ORIGIN_H]), watch=True
    )
    assert_gateway_error(answers[0].status, answers[0].json(), answers[0].headers, 400, "invalid_payload")
    assert was_closed
    if len(hosts) == 1:  # two are refused by aiohttp's parser already, as a malformed request
        assert "Host" in answers[0].json()["details"]
    assert upstream.received == []


@pytest.mark.parametrize("host", ["gw", "gw:8080", "127.0.0.1:1", "[::1]:8080", "xn--bcher-kva.example", ""])
async def test_hosts_that_are_host_port_are_served(
    hardened: Start, upstream: UpstreamDouble, host: str
) -> None:
    served = await hardened()
    answers, _ = await served.exchange(
        request_bytes("GET", "/client/v1/promotions/tiers", [("Host", host), ORIGIN_H])
    )
    assert answers[0].status == 200


# --- also decided: every answer on the public port is the gateway's


@pytest.mark.parametrize(
    ("data", "status", "key"),
    [
        (
            b"GET /client/v1/validate HTTP/1.1\r\nHost: gw\r\nX-App-Token: sk_echo_me\r\nBad Header\r\n\r\n",
            400,
            "invalid_payload",
        ),
        (
            b"GET /client/v1/validate HTTP/1.1\r\nX-App-Token: sk_echo_me\r\n\r\n",
            400,
            "invalid_payload",
        ),  # no Host
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03sk_echo_me\r\n\r\n", 400, "invalid_payload"),  # TLS
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "invalid_payload"),
        (
            b"GET /client/v1/validate HTTP/2.0\r\nHost: gw\r\nX-App-Token: sk_echo_me\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "not_found"),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 404, "not_found"),
    ],
    ids=["bad-header", "no-host", "tls", "h2-preface", "http-2.0", "options-star", "connect"],
)
async def test_what_aiohttp_answered_itself_is_in_the_gateways_shape_and_accounted(
    hardened: Start,
    upstream: UpstreamDouble,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
    key: str,
) -> None:
    served = await hardened()
    with caplog.at_level(logging.DEBUG):
        answers, _ = await served.exchange(data)
    answer = answers[0]
    assert_gateway_error(answer.status, answer.json(), answer.headers, status, key)
    assert b"sk_echo_me" not in answer.body and b"Bad Header" not in answer.body
    assert served.recorder.decisions() == [(key, status)]
    assert served.recorder.outcomes[0].request_id == answer.headers["X-Request-Id"]
    assert "sk_echo_me" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert upstream.received == []


async def test_every_answer_says_nosniff_and_no_versions(hardened: Start, upstream: UpstreamDouble) -> None:
    served = await hardened()
    close = ("Connection", "close")  # a 204 has no length: its end is the connection's
    for data in (
        post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT, close),
        request_bytes("GET", "/nowhere", [close]),
        request_bytes("GET", "/widget.js", [close]),
        request_bytes(
            "OPTIONS", "/client/v1/validations", [ORIGIN_H, ("Access-Control-Request-Method", "POST"), close]
        ),
    ):
        answers, _ = await served.exchange(data)
        assert answers[0].headers["X-Content-Type-Options"] == "nosniff"
        assert answers[0].headers["Server"] == "voucherify-gateway"


async def test_100_continue_only_after_the_header_checks_pass(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened()
    expect = ("Expect", "100-continue")
    for headers, status in (
        ([("Origin", "https://evil.example"), JSON_CT, ("Content-Length", "2")], 403),
        ([ORIGIN_H, JSON_CT, ("Content-Length", str(10 * 1024 * 1024))], 413),
        ([ORIGIN_H, ("Content-Type", "text/plain"), ("Content-Length", "2")], 415),
    ):
        answers, _ = await served.exchange(
            request_bytes("POST", "/client/v1/validations", [*headers, expect])
        )
        assert answers[0].status == status  # the refusal first: no 100 Continue before it
    reader, writer = await served.connect()
    try:
        writer.write(
            request_bytes(
                "POST", "/client/v1/validations", [ORIGIN_H, JSON_CT, ("Content-Length", "2"), expect]
            )
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        assert (await read_response(reader, WAIT)).status == 200
    finally:
        writer.close()
    assert len(upstream.received) == 1


async def test_a_look_alike_origin_is_refused_and_never_echoed(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened()
    data = "GET /client/v1/promotions/tiers HTTP/1.1\r\nHost: gw\r\nOrigin: https://\u212aiosk.example.org\r\n\r\n"
    answers, _ = await served.exchange(data.encode())
    assert_gateway_error(answers[0].status, answers[0].json(), answers[0].headers, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in answers[0].headers
    assert upstream.received == []


async def test_connection_cannot_strip_the_judged_content_type(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened()
    answers, _ = await served.exchange(
        post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT, ("Connection", "Content-Type"))
    )
    assert answers[0].status == 200
    assert upstream.received[0].headers["Content-Type"] == "application/json"


async def test_a_cross_site_browser_request_without_origin_is_refused_for_native_app_projects(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened(allow_missing_origin=True)
    answers, _ = await served.exchange(
        request_bytes("GET", "/client/v1/promotions/tiers", [("Sec-Fetch-Site", "cross-site")])
    )
    assert_gateway_error(answers[0].status, answers[0].json(), answers[0].headers, 403, "origin_not_allowed")
    answers, _ = await served.exchange(request_bytes("GET", "/client/v1/promotions/tiers"))  # a native app
    assert answers[0].status == 200
    assert len(upstream.received) == 1


# --- 2. slow heads, idle connections and the connection cap: hundreds held, a normal client answered

SLOW = 300


async def normal_client(served: Served, rounds: int = 20) -> list[int]:
    statuses = []
    for _ in range(rounds):
        answers, _ = await served.exchange(post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT))
        statuses.append(answers[0].status if answers else 0)
    return statuses


async def open_many(served: Served, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await served.connect() for _ in range(count)]


def close_all(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()


async def test_slow_heads_get_408_after_header_timeout_while_a_normal_client_is_answered(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened(listen={"header_timeout": 1})
    connections = await open_many(served, SLOW)
    stop = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[RawResponse, bool]:
        answer = asyncio.ensure_future(read_response(reader, WAIT))
        writer.write(b"POST /client/v1/validations HTTP/1.1\r\nHost: gw\r\n")
        with contextlib.suppress(ConnectionError):
            while not answer.done() and not stop.is_set():  # a header line now and then, never the end
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.2)
        return await answer, await closed(reader, WAIT)

    trickling = [asyncio.create_task(trickle(reader, writer)) for reader, writer in connections]
    try:
        assert await normal_client(served) == [200] * 20
        for answer, was_closed in await asyncio.gather(*trickling):
            assert_gateway_error(answer.status, answer.json(), answer.headers, 408, "request_timeout")
            assert was_closed
    finally:
        stop.set()
        await asyncio.gather(*trickling, return_exceptions=True)
        close_all(connections)
    decisions = served.recorder.decisions()
    assert decisions.count(("request_timeout", 408)) == SLOW
    assert decisions.count(("forwarded", 200)) == 20


async def test_idle_keep_alive_connections_are_closed_while_a_normal_client_is_answered(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened(listen={"keepalive_timeout": 1})
    connections = await open_many(served, SLOW)
    try:
        for _, writer in connections:  # one request each, then idle with the connection kept
            writer.write(request_bytes("GET", "/client/v1/promotions/tiers", [ORIGIN_H]))
        answers = await asyncio.gather(*(read_response(reader, WAIT) for reader, _ in connections))
        assert {a.status for a in answers} == {200} and not any(a.closed for a in answers)
        assert await normal_client(served) == [200] * 20
        eofs = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), WAIT) for reader, _ in connections), return_exceptions=True
        )
        assert eofs == [b""] * SLOW  # every idle one closed by the gateway, without a word
    finally:
        close_all(connections)
    assert served.recorder.decisions().count(("forwarded", 200)) == SLOW + 20  # and no request invented


async def test_past_max_connections_the_longest_waiting_give_way_to_a_normal_client(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    served = await hardened(listen={"max_connections": 50, "header_timeout": 600, "keepalive_timeout": 600})
    connections = await open_many(served, SLOW)
    try:
        for _, writer in connections:
            writer.write(b"POST /client/v1/validations HTTP/1.1\r\nHost: gw\r\n")  # and never the rest
        await asyncio.sleep(0)
        statuses = []
        for _ in range(20):
            statuses += await normal_client(served, rounds=1)
            assert served.server.open <= 50
        assert statuses == [200] * 20
        gone = await asyncio.gather(*(closed(reader) for reader, _ in connections))
        assert sum(gone) >= SLOW - 50  # the oldest were closed to make room
        assert served.server.evicted >= SLOW - 50 and served.server.refused == 0
    finally:
        close_all(connections)


async def test_past_max_connections_with_every_connection_busy_a_new_one_is_closed(
    hardened: Start, upstream: UpstreamDouble
) -> None:
    from tests.support.upstream_double import Reply

    served = await hardened(listen={"max_connections": 3})
    upstream.reply(*[Reply(delay=1.0)] * 3)
    busy = [
        asyncio.create_task(served.exchange(post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT)))
        for _ in range(3)
    ]
    for _ in range(1000):  # until all three are in the handler
        if len(upstream.received) == 3:
            break
        await asyncio.sleep(0.01)
    answers, was_closed = await served.exchange(
        post("/client/v1/validations", b"{}", ORIGIN_H, JSON_CT), watch=True
    )
    assert answers == [] and was_closed and served.server.refused == 1
    assert [r[0][0].status for r in await asyncio.gather(*busy)] == [200] * 3


# --- serve uses all of it, on either aiohttp parser


@pytest.mark.parametrize("extensions", ["c-parser", "python-parser"])
async def test_serve_holds_the_trailer_attack_and_answers_in_its_own_shape(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, extensions: str
) -> None:
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if extensions == "python-parser" else {}
    tree = base_policy(upstream.url, allow_missing_origin=True)
    process = await gateway_process(tree, env=env)
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(TRAILER_ATTACK % b"Origin: https://shop.example.com")
        first = await read_response(reader, WAIT)
        assert first.status == 200 and first.headers["Connection"] == "close"
        assert first.headers["Server"] == "voucherify-gateway"
        assert await closed(reader, WAIT)
    finally:
        writer.close()
    assert [r.path for r in upstream.received] == ["/client/v1/validations"]
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = await read_response(reader, WAIT)
        assert_gateway_error(answer.status, answer.json(), answer.headers, 404, "not_found")
    finally:
        writer.close()
    line = await process.wait_for(answer.headers["X-Request-Id"])  # its access line
    assert json.loads(line)["decision"] == "not_found"


async def test_demo_serves_its_gateway_through_the_hardened_runner() -> None:
    """`voucherify-gateway demo`: the public port's answers are GatewayRunner's (Server, OPTIONS *, trailers)."""
    async with running_demo(WAIT) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n")
            answer = await read_response(reader, WAIT)
        finally:
            writer.close()
        assert_gateway_error(answer.status, answer.json(), answer.headers, 404, "not_found")
        assert answer.headers["Server"] == "voucherify-gateway"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # the demo page's own origin: a chunked request is answered, then the connection closed
            writer.write(
                (TRAILER_ATTACK % b"X-A: 1").replace(
                    b"Origin: https://shop.example.com", f"Origin: http://127.0.0.1:{port}".encode()
                )
            )
            first = await read_response(reader, WAIT)
            assert first.headers["Connection"] == "close" and await closed(reader, WAIT)
        finally:
            writer.close()
