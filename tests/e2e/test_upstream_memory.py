"""Refused oversized answers give their memory back: a real gateway in front of a raw-socket upstream.

The gateway keeps the cyclic garbage collector rare (serve.settle_heap), so an answer's buffers must be freed
by reference counting as the answer fails; this measures the gateway's resident memory to show they are.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import assert_gateway_error, base_policy
from tests.support.constants import H
from tests.support.processes import GatewayProcessFactory
from tests.support.raw_upstream import RawConnection, answer, raw_upstream

MIB = 1 << 20
CHUNK = b"x" * MIB
TIERS = "/client/v1/promotions/tiers"
MAX_BODY = 16 * MIB  # the gateway's bound on one answer (http1.MAX_BODY)

HEADS = {
    # a declared length far over the bound, with the body really coming
    "declared-1GiB": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
    # no length at all: read until close, so the bound is met only by counting what arrives
    "close-delimited": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
    # chunks without end
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("kind", list(HEADS))
async def test_refused_oversized_answers_do_not_stay_in_memory(
    kind: str, gateway_process: GatewayProcessFactory
) -> None:
    served: list[int] = []

    async def endless(conn: RawConnection) -> None:
        while (seen := await conn.request()) is not None:
            served.append(conn.index)
            if seen.target.endswith("ok"):
                await conn.write(answer())
                continue
            await conn.write(HEADS[kind])
            chunk = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if kind == "chunked" else CHUNK
            while True:  # until the gateway gives up and closes: ConnectionError ends the script
                await conn.write(chunk)

    async with raw_upstream(endless) as upstream:
        gateway = await gateway_process(base_policy(upstream.url))
        assert gateway.proc is not None
        pid = gateway.proc.pid
        async with aiohttp.ClientSession() as session:

            async def refused() -> None:
                async with session.get(gateway.url + TIERS, headers=H) as response:
                    assert_gateway_error(
                        response.status, await response.json(), response.headers, 502, "upstream_unavailable"
                    )

            await refused()  # warm: the allocator's arenas exist before the first measure
            before = rss_mib(pid)
            for _ in range(20):
                await refused()
            after = rss_mib(pid)
            async with session.get(gateway.url + TIERS + "?ok", headers=H) as response:
                assert response.status == 200  # and the gateway still serves
        # 20 answers held would be 20 x 16 MiB; two answers' worth of slack for the allocator's own keeping
        assert after - before < 2 * MAX_BODY / MIB, f"RSS {before:.0f} -> {after:.0f} MiB after 20 refusals"
        assert len(served) == 22
        await gateway.wait_for("ResponseTooLarge", count=21)  # logs are written in batches
        assert len(gateway.lines("ResponseTooLarge")) == 21
