"""Per-IP limits on a real Sentinel group (master, replica, three sentinels) whose master is killed.

While the sentinels fail over, no request waits past `storage_timeout` (plus the rest of its pipeline), and
once the replica is promoted the limits hold again, with the counts it replicated, without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from tests.conftest import GatewayClient, GatewayFactory, base_policy
from tests.support.constants import H
from tests.support.processes import SentinelGroup, redis_call
from tests.support.upstream_double import UpstreamDouble

VALIDATE = "/client/v1/validate?code=SAVE10"
STORAGE_TIMEOUT = 0.5
# A request may take the storage timeout (once per store call: the hit; a connection error is retried
# once) plus the rest of the pipeline; a request that hung on the dead master would take the client's 10 s.
BOUND = 2 * STORAGE_TIMEOUT + 2.0


async def _round(client: GatewayClient, n: int) -> list[tuple[int, float]]:
    async def one() -> tuple[int, float]:
        started = time.monotonic()
        resp = await client.get(VALIDATE, headers=H, timeout=aiohttp.ClientTimeout(total=10))
        await resp.read()
        return resp.status, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("mode", ["deny", "allow"])
async def test_sentinel_failover_keeps_requests_bounded_and_limits_back(
    mode: str, redis_sentinel: SentinelGroup, upstream: UpstreamDouble, gateway: GatewayFactory
) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {
        "storage": redis_sentinel.url,
        "per_ip": "3 per hour",
        "on_storage_error": mode,
        "storage_timeout": STORAGE_TIMEOUT,
    }
    client = await gateway(tree)
    assert [status for status, _ in await _round(client, 3)] == [200, 200, 200]
    assert [status for status, _ in await _round(client, 2)] == [429, 429]
    assert redis_call(redis_sentinel.master.port, "WAIT", "1", "5000") == 1  # the replica has the counts

    redis_sentinel.kill_master()
    during: list[tuple[int, float]] = []
    promoted = asyncio.create_task(asyncio.to_thread(redis_sentinel.wait_failover))
    while not promoted.done():  # requests all through the failover, ten at a time
        during += await _round(client, 10)
    await promoted
    during += await _round(client, 10)  # and right after it

    slowest = max(elapsed for _, elapsed in during)
    print(
        f"{mode}: {len(during)} requests during the failover, {Counter(s for s, _ in during)}, slowest {slowest:.2f}s"
    )
    slow = [elapsed for _, elapsed in during if elapsed >= BOUND]
    assert not slow, f"{len(slow)} of {len(during)} requests took {max(slow):.2f}s"
    outage = {503} if mode == "deny" else {200}
    assert {status for status, _ in during} <= outage | {429}, Counter(s for s, _ in during)

    # limits hold again on the promoted replica, which kept the three hits: no new 200 passes
    for _ in range(100):  # a bound on a busy machine, not a timing
        after = await _round(client, 5)
        if all(status == 429 for status, _ in after):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"limits not back after the failover: {after}")
    assert all(elapsed < BOUND for _, elapsed in after)
    assert int(redis_call(redis_sentinel.replica.port, "DBSIZE")) >= 1
