"""Upstream faults on raw sockets, through a real gateway process: what the browser gets, what Voucherify saw.

Each test starts a tiny asyncio server that misbehaves one way (tests/support/raw_upstream.py) and a
`voucherify-gateway serve` in front of it; each asserts the browser's status and error key and exactly which
requests reached the upstream, on which connection (a POST is never sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import assert_gateway_error, base_policy
from tests.support.constants import JSON_H, H
from tests.support.processes import GatewayProcess, GatewayProcessFactory
from tests.support.raw_upstream import RawConnection, RawUpstream, Script, answer, raw_upstream

READ_TIMEOUT = 1.0
TIERS = "/client/v1/promotions/tiers"
REDEEM = "/client/v1/redeem?code=A"
ORDER = b'{"order":{"amount":100}}'


class Through:
    def __init__(self, gateway: GatewayProcess, upstream: RawUpstream, session: aiohttp.ClientSession):
        self.gateway = gateway
        self.upstream = upstream
        self.session = session

    async def get(self, path: str = TIERS) -> tuple[int, Any, Any]:
        async with self.session.get(self.gateway.url + path, headers=H) as response:
            return response.status, await response.json(), response.headers

    async def redeem(self) -> tuple[int, Any, Any]:
        async with self.session.post(self.gateway.url + REDEEM, data=ORDER, headers=JSON_H) as response:
            return response.status, await response.json(), response.headers

    async def decision(self, count: int = 1) -> str:
        """The `count`-th access line's decision (access lines are written in batches)."""
        await self.gateway.wait_for('"logger": "gateway.access"', count=count)
        return str(self.gateway.access_lines()[count - 1]["decision"])


@contextlib.asynccontextmanager
async def through(gateway_process: GatewayProcessFactory, script: Script) -> AsyncIterator[Through]:
    async with raw_upstream(script) as upstream:
        tree = base_policy(upstream.url, danger_zone={"redeem": True})
        tree["upstream"] = {"connect_timeout": 2, "read_timeout": READ_TIMEOUT}
        gateway = await gateway_process(tree)
        async with aiohttp.ClientSession() as session:
            yield Through(gateway, upstream, session)


async def idle(conn: RawConnection) -> None:
    """Hold the connection open, reading nothing more, until the test ends."""
    await asyncio.sleep(3600)


def late(seconds: float) -> Script:
    async def script(conn: RawConnection) -> None:
        while await conn.request() is not None:
            await asyncio.sleep(seconds)
            await conn.write(answer())

    return script


async def test_headers_later_than_the_read_timeout_are_a_504(gateway_process: GatewayProcessFactory) -> None:
    async with through(gateway_process, late(3 * READ_TIMEOUT)) as t:
        status, body, headers = await t.redeem()
        assert_gateway_error(status, body, headers, 504, "upstream_timeout")
        assert [(s.method, s.body) for s in t.upstream.seen] == [("POST", ORDER)]
        assert t.upstream.connections == 1  # not resent on a new connection after the timeout
        assert await t.decision() == "upstream_timeout"


async def test_a_body_that_trickles_is_a_504_within_the_read_timeout(
    gateway_process: GatewayProcessFactory,
) -> None:
    async def trickle(conn: RawConnection) -> None:
        await conn.request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # a byte every 50 ms: 50 s for the whole body, each gap far under the timeout
            await conn.write(b" ")
            await asyncio.sleep(0.05)

    async with through(gateway_process, trickle) as t:
        status, body, headers = await t.get()
        assert_gateway_error(status, body, headers, 504, "upstream_timeout")
        assert len(t.upstream.seen) == 1
        assert await t.decision() == "upstream_timeout"


async def test_a_reset_mid_body_is_a_502_and_the_post_is_not_resent(
    gateway_process: GatewayProcessFactory,
) -> None:
    async def reset(conn: RawConnection) -> None:
        await conn.request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        await conn.write(b'{"valid": tr')
        conn.reset()

    async with through(gateway_process, reset) as t:
        status, body, headers = await t.redeem()
        assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
        assert "valid" not in str(body)  # nothing of the half answer reaches the browser
        assert [(s.method, s.body) for s in t.upstream.seen] == [("POST", ORDER)]
        assert t.upstream.connections == 1
        assert await t.decision() == "upstream_unavailable"


async def test_a_garbage_status_line_is_a_502(gateway_process: GatewayProcessFactory) -> None:
    lines = [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ]

    async def garbage(conn: RawConnection) -> None:
        await conn.request()
        await conn.write(lines[conn.index])
        await idle(conn)  # no close: the verdict must come from the bytes, not from an EOF

    async with through(gateway_process, garbage) as t:
        for _ in lines:
            status, body, headers = await t.redeem()
            assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
        assert [s.connection for s in t.upstream.seen] == [0, 1, 2]  # each POST once, never retried
        await t.gateway.wait_for("ProtocolError", count=len(lines))  # logs are written in batches


async def test_a_huge_or_endless_body_is_a_502(gateway_process: GatewayProcessFactory) -> None:
    heads = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
    ]
    chunk = b"x" * 65536

    async def endless(conn: RawConnection) -> None:
        await conn.request()
        await conn.write(heads[conn.index])
        while True:  # until the gateway closes
            await conn.write(chunk)

    async with through(gateway_process, endless) as t:
        for _ in heads:
            status, body, headers = await t.get()
            assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
        assert [s.connection for s in t.upstream.seen] == [0, 1]
        await t.gateway.wait_for("ResponseTooLarge", count=2)


async def test_a_pooled_connection_closed_between_two_requests_gets_a_new_one(
    gateway_process: GatewayProcessFactory,
) -> None:
    async def once_then_close(conn: RawConnection) -> None:
        while await conn.request() is not None:
            await conn.write(answer())  # keep-alive: the gateway pools it
            if conn.index == 0:
                return  # ... and then the upstream closes it (FIN) while it is idle

    async with through(gateway_process, once_then_close) as t:
        assert (await t.get())[0] == 200
        for _ in range(500):  # until the gateway has seen the close (a bound, not a timing)
            if t.upstream.open == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        status, body, _ = await t.redeem()
        assert status == 200, body
        assert [(s.method, s.connection) for s in t.upstream.seen] == [("GET", 0), ("POST", 1)]


async def test_a_pooled_connection_closed_under_a_post_is_a_502_and_the_post_is_not_resent(
    gateway_process: GatewayProcessFactory,
) -> None:
    async def close_on_the_second(conn: RawConnection) -> None:
        await conn.request()
        await conn.write(answer())
        await conn.request()  # the POST on the pooled connection: read, then the connection drops
        conn.reset()

    async with through(gateway_process, close_on_the_second) as t:
        assert (await t.get())[0] == 200
        status, body, headers = await t.redeem()
        assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
        # the redemption may have happened upstream: it is never sent again, on this or another connection
        assert [(s.method, s.connection) for s in t.upstream.seen] == [("GET", 0), ("POST", 0)]
        assert t.upstream.connections == 1
        assert (await t.get())[0] == 200  # and the next request gets a fresh connection
        assert t.upstream.connections == 2


async def test_an_upstream_that_never_reads_is_a_504(gateway_process: GatewayProcessFactory) -> None:
    async with through(gateway_process, idle) as t:
        status, body, headers = await t.redeem()
        assert_gateway_error(status, body, headers, 504, "upstream_timeout")
        assert t.upstream.connections == 1
        assert t.upstream.seen == []  # it read nothing
        assert await t.decision() == "upstream_timeout"
