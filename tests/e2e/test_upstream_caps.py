"""A hung upstream holds only its own host's slots: a real gateway, a silent region and a healthy one."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp

from tests.conftest import assert_gateway_error, base_policy
from tests.support.constants import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN, H
from tests.support.processes import GatewayProcessFactory
from tests.support.raw_upstream import RawConnection, raw_upstream
from tests.support.upstream_double import UpstreamDouble

CAP = 20
TIERS = "/client/v1/promotions/tiers"


async def test_a_hung_region_costs_another_project_nothing(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    async def silent(conn: RawConnection) -> None:  # reads every request, answers none
        while await conn.request() is not None:
            pass

    async with raw_upstream(silent) as hung:
        tree = base_policy(upstream.url)
        tree["projects"]["hung"] = {
            "region": hung.url,
            "credentials": {"client_application_id": CLIENT_APP_ID, "client_secret_key": CLIENT_TOKEN},
            "allowed_origins": [ORIGIN],
        }
        # timeouts far beyond the test: a request that waited for a slot or a timeout would still be waiting
        tree["upstream"] = {"connect_timeout": 60, "read_timeout": 60, "max_in_flight_per_host": CAP}
        gateway = await gateway_process(tree)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def call(path: str) -> tuple[int, Any, Any]:
                async with session.get(gateway.url + path, headers=H) as response:
                    return response.status, await response.json(), response.headers

            stuck = [asyncio.create_task(call("/hung" + TIERS)) for _ in range(CAP)]
            await hung.wait_seen(CAP)

            started = time.monotonic()
            for _ in range(5):  # the hung host's cap is full: a 502 in the gateway's shape, nothing sent
                status, body, headers = await call("/hung" + TIERS)
                assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
            overflow = time.monotonic() - started
            started = time.monotonic()
            for _ in range(10):  # another project, another host: served as if nothing were wrong
                status, body, _ = await call(TIERS)
                assert status == 200, body
            healthy = time.monotonic() - started
            print(f"5 overflow 502s in {overflow * 1000:.0f} ms, 10 healthy 200s in {healthy * 1000:.0f} ms")

            assert not any(task.done() for task in stuck)  # all answered while the hung ones still hang
            assert len(hung.seen) == CAP  # the overflow never reached the hung upstream
            assert len(upstream.received) == 10

            await hung.close()  # the region comes back down hard: its requests end, as 502s
            for status, body, headers in await asyncio.gather(*stuck):
                assert_gateway_error(status, body, headers, 502, "upstream_unavailable")
        await gateway.wait_for(re.compile(r'"project": ?"hung"'), count=CAP + 5)
        assert len(gateway.lines("its cap")) == 1  # logged once, not once per refusal
        access = [line for line in gateway.access_lines() if line.get("project") == "hung"]
        assert sorted(line["status"] for line in access) == [502] * (CAP + 5)
