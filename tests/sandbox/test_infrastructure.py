"""Request recording, rate-limit emulation, the qs parser, fixtures override and the standalone runner."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway.sandbox import SANDBOX_RECORDS, RecordedRequest, SandboxCredentials
from gateway.sandbox.querystring import parse_nested_query, validation_body
from gateway.sandbox.ratelimit import MovingWindowLimiter
from tests.sandbox.conftest import (
    CLIENT_HEADERS,
    SERVER_HEADERS,
    Client,
    MakeClient,
    raw_request,
    standalone_sandbox,
)

TOO_MANY = {"code": 429, "message": "Too many requests hit the API too quickly."}


async def _raw(client: Client, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """Send bytes as they are: aiohttp's client would re-quote the query string."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {client.host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join([*lines, "Connection: close", "", ""])).encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_records_capture_raw_request(client: Client) -> None:
    answer = await _raw(
        client,
        "PUT",
        "/client/v1/customers/c%201%2Fx/consents?x=%41&y[0]=1",
        {**CLIENT_HEADERS, "Content-Type": "application/json", "X-Voucherify-Channel": "test"},
        b'{"unsubscribed": true}',
    )
    assert answer.startswith(b"HTTP/1.1 404")  # no such customer, but recorded all the same
    await client.get("/v1/vouchers", headers=SERVER_HEADERS)
    assert client.app is not None
    first, second = client.app[SANDBOX_RECORDS]
    assert first == RecordedRequest(
        method="PUT",
        path="/client/v1/customers/c%201%2Fx/consents",
        query_string="x=%41&y[0]=1",
        headers=first.headers,
        body=b'{"unsubscribed": true}',
        api="client",
    )
    assert first.headers["x-voucherify-channel"] == "test"
    assert first.headers["x-client-token"] == "sandbox-client-secret-key"
    assert all(name == name.lower() for name in first.headers)
    assert (second.method, second.path, second.query_string, second.body, second.api) == (
        "GET",
        "/v1/vouchers",
        "",
        b"",
        "server",
    )


async def test_rate_limit_emulation(make_client: MakeClient) -> None:
    client = await make_client(emulate_client_rate_limit=True)
    statuses = []
    for _ in range(5):
        statuses.append((await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).status)
    assert statuses == [200] * 5
    sixth = await client.get("/client/v1/promotions/tiers", headers=CLIENT_HEADERS)
    assert sixth.status == 429
    assert await sixth.json() == TOO_MANY
    # the server side is not limited per IP
    assert (await client.get("/v1/consents", headers=SERVER_HEADERS)).status == 200


async def test_rate_limit_off_by_default(client: Client) -> None:
    statuses = {(await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).status for _ in range(8)}
    assert statuses == {200}


def test_moving_window_frees_slots_as_they_age() -> None:
    now = [0.0]
    limiter = MovingWindowLimiter(5, 5.0, clock=lambda: now[0])
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        now[0] = t
        assert limiter.hit("ip")
    now[0] = 4.9
    assert not limiter.hit("ip")
    assert limiter.hit("other-ip")
    now[0] = 5.0  # the hit at 0.0 has left the window, only one slot is free
    assert limiter.hit("ip")
    assert not limiter.hit("ip")


def test_qs_parser_builds_nested_structures() -> None:
    query = parse_nested_query(
        "code=A%20B&item[1][price]=5&item[0][price]=7&item[0][quantity]=2&customer[metadata][tier]=gold"
        "&order[metadata][k]=v&list[]=a&list[]=b&plain=1"
    )
    assert query == {
        "code": "A B",
        "item": [{"price": "7", "quantity": "2"}, {"price": "5"}],
        "customer": {"metadata": {"tier": "gold"}},
        "order": {"metadata": {"k": "v"}},
        "list": ["a", "b"],
        "plain": "1",
    }
    body = validation_body(query)
    assert body["order"] == {
        "items": [{"price": "7", "quantity": "2"}, {"price": "5"}],
        "metadata": {"k": "v"},
    }
    assert body["customer"] == {"metadata": {"tier": "gold"}}


async def test_fixtures_override(make_client: MakeClient, tmp_path: Path) -> None:
    fixtures = tmp_path / "f.yaml"
    fixtures.write_text("vouchers:\n  - code: ONLYME\n    discount: {type: AMOUNT, amount_off: 1}\n")
    client = await make_client(fixtures=fixtures)
    own = await (await client.get("/client/v1/validate?code=ONLYME&amount=10", headers=CLIENT_HEADERS)).json()
    assert own["valid"] is True
    gone = await (
        await client.get("/client/v1/validate?code=SAVE10&amount=10", headers=CLIENT_HEADERS)
    ).json()
    assert gone["valid"] is False


async def test_custom_credentials(make_client: MakeClient) -> None:
    credentials = SandboxCredentials(client_application_id="a", client_secret_key="b", allowed_origins=("*",))
    client = await make_client(credentials=credentials)
    headers = {"X-Client-Application-Id": "a", "X-Client-Token": "b"}
    assert (await client.get("/client/v1/consents", headers=headers)).status == 200
    assert (await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).status == 401


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
async def test_standalone_runner_prints_its_address() -> None:
    async with standalone_sandbox() as port:
        answer = await raw_request(
            port, b"GET /client/v1/consents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 401")
