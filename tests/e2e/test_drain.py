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


# -------------------------------------------------------------------------- the drain's bound (issue 18.3)

DRAIN = 4.0  # seconds: aiohttp's own shutdown took 2 x this before the fix (6.1 s for 3 s)
MARGIN = 2.5  # the stated margin: cancelling leftovers (~3 x serving.CANCEL_GRACE), cleanup, interpreter exit


async def test_a_drain_with_a_hung_upstream_exits_within_drain_timeout(gateway_process):
    """An upstream that never answers holds two requests (a GET and a redemption) past the drain: the
    gateway exits 0 within drain_timeout plus a small margin, not after twice drain_timeout, and not
    before drain_timeout (the requests in flight got their whole time). Both are accounted for."""
    import time

    from tests.support.raw_upstream import RawConnection, raw_upstream

    async def hang(conn: RawConnection) -> None:
        await conn.request()
        await asyncio.sleep(3600)  # never answers

    async with raw_upstream(hang) as hung:
        tree = base_policy(hung.url, danger_zone={"redeem": True})
        tree["listen"] = {"drain_timeout": DRAIN}
        tree["upstream"] = {"connect_timeout": 2, "read_timeout": 60}  # the upstream timeout never ends them
        gw: GatewayProcess = await gateway_process(tree)
        async with aiohttp.ClientSession() as session:
            headers = {"Origin": ORIGIN, "Content-Type": "application/json"}
            calls = [
                session.get(f"{gw.url}/client/v1/promotions/tiers", headers=headers),
                session.post(f"{gw.url}/client/v1/redeem?code=A", data=b"{}", headers=headers),
            ]
            in_flight = [asyncio.create_task(call.__aenter__()) for call in calls]
            await hung.wait_seen(2)
            sent = time.monotonic()
            gw.send(signal.SIGTERM)
            assert await gw.exit_code() == 0
            took = time.monotonic() - sent
            for task in in_flight:  # the browser's connection is closed: no answer
                try:
                    response = await task
                except aiohttp.ClientError:
                    continue
                raise AssertionError(f"an answer after the drain's timeout: {response.status}")
    print(f"exit {took:.2f}s after SIGTERM with drain_timeout {DRAIN}s")  # the figure, for the record
    assert DRAIN - 0.1 <= took <= DRAIN + MARGIN, f"exit {took:.2f}s after SIGTERM, drain_timeout {DRAIN}s"
    await gw.wait_for("drained, exiting")
    cut = [line for line in gw.access_lines() if line["operation"] in ("list_promotion_tiers", "redeem")]
    assert sorted(line["operation"] for line in cut) == ["list_promotion_tiers", "redeem"], gw.output
    assert {line["status"] for line in cut} == {499}, cut
    assert not gw.lines('"level": "error"'), gw.output
