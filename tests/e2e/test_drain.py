"""SIGTERM with slow requests in flight: all finish, new connections are refused, /readyz is 503, exit 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import ORIGIN, base_policy, free_port
from tests.support.processes import GatewayProcess, GatewayProcessFactory
from tests.support.upstream_double import Reply, UpstreamDouble

SLOW = 5


async def test_sigterm_drains_in_flight_requests(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble
) -> None:
    upstream.default = Reply(delay=2)
    admin_port, port = free_port(), free_port()
    tree = base_policy(upstream.url)
    tree["listen"] = {"drain_timeout": 20}
    tree["admin"] = {"port": admin_port}
    gw: GatewayProcess = await gateway_process(tree, port)

    async with aiohttp.ClientSession() as session:

        async def slow() -> int:
            async with session.get(f"{gw.url}/client/v1/validate", headers={"Origin": ORIGIN}) as resp:
                await resp.read()
                return resp.status

        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
            assert resp.status == 200
        in_flight = [asyncio.create_task(slow()) for _ in range(SLOW)]
        for _ in range(3000):  # until the upstream double holds every one of them
            if len(upstream.received) == SLOW or any(t.done() for t in in_flight):
                break
            await asyncio.sleep(0.01)
        assert len(upstream.received) == SLOW

        gw.send(signal.SIGTERM)
        await gw.wait_for("draining: no new connections")
        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
            assert resp.status == 503
            assert "draining" in (await resp.json())["checks"]
        assert not all(t.done() for t in in_flight)  # that 503 was answered during the drain
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            pass
        else:
            writer.close()
            raise AssertionError("a new connection was accepted while draining")

        assert await asyncio.gather(*in_flight) == [200] * SLOW
    assert await gw.exit_code() == 0
    await gw.wait_for("drained, exiting")
