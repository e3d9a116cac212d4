"""Per-IP limits on a real 3-master Redis Cluster: exact over two gateways of two workers each, per strategy."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from tests.conftest import base_policy
from tests.support.constants import H
from tests.support.processes import GatewayProcessFactory, RedisCluster
from tests.support.upstream_double import UpstreamDouble

STRATEGIES = ["moving-window", "fixed-window", "sliding-window-counter"]
VALIDATE = "/client/v1/validate?code=SAVE10"
CLIENTS = [f"203.0.113.{i}" for i in range(1, 7)]  # six clients: their keys land in several slots and nodes
LIMIT = 7
PER_CLIENT = 40


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_exact_per_ip_limits_over_two_gateways_on_a_cluster(
    strategy: str,
    redis_cluster: RedisCluster,
    upstream: UpstreamDouble,
    gateway_process: GatewayProcessFactory,
) -> None:
    tree = base_policy(upstream.url)
    # deny and a generous store timeout: a slow answer on a loaded machine shows as a 503, never as a
    # fail-open 200, so exactness does not depend on timing
    tree["rate_limit"] = {
        "storage": redis_cluster.url,
        "strategy": strategy,
        "per_ip": f"{LIMIT} per hour",
        "on_storage_error": "deny",
        "storage_timeout": 20,
    }
    tree["client_ip"] = {"trusted_proxies": ["127.0.0.0/8"]}
    tree["logging"] = {"level": "warning"}
    gateways = await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2)))

    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # new connections spread over the workers
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> tuple[str, int]:
            client = CLIENTS[i % len(CLIENTS)]
            headers = {**H, "X-Forwarded-For": client}
            url = gateways[(i // len(CLIENTS)) % 2].url + VALIDATE
            async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                return client, resp.status

        results = await asyncio.gather(*(one(i) for i in range(PER_CLIENT * len(CLIENTS))))

    for client in CLIENTS:
        statuses = Counter(status for who, status in results if who == client)
        assert statuses == {200: LIMIT, 429: PER_CLIENT - LIMIT}, (client, statuses)
    assert len(upstream.received) == LIMIT * len(CLIENTS)
    spread = redis_cluster.keys_per_node()
    assert sum(1 for keys in spread if keys) >= 2, spread  # the counts really live on several masters
