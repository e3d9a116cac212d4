"""The admin listener: /healthz, /readyz and its failure modes, its own port; upstream timeouts honoured."""

from __future__ import annotations

import aiohttp

from tests.conftest import ROOT, base_policy, free_port
from tests.support.constants import H
from tests.support.ops import OpsGatewayFactory
from tests.support.processes import GatewayProcessFactory
from tests.support.upstream_double import Reply, UpstreamDouble


async def test_health_and_readiness(ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble) -> None:
    gw = await ops_gateway(base_policy(upstream.url))
    resp = await gw.admin.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "alive"
    resp = await gw.admin.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"]["limit_store"] == "reachable"
    assert body["checks"]["upstream_session"] == "open"
    resp = await gw.admin.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "gateway_requests_total" in await resp.text()

    gw.state.draining = True
    resp = await gw.admin.get("/readyz")
    assert resp.status == 503
    assert "draining" in (await resp.json())["checks"]
    assert (await gw.admin.get("/healthz")).status == 200  # alive while draining


async def test_unreachable_limit_store_fails_readiness_only_when_deny(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    dead_redis = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    for on_error, expected in (("allow", 200), ("deny", 503)):
        tree = base_policy(upstream.url)
        tree["rate_limit"] = {"storage": dead_redis, "on_storage_error": on_error}
        gw = await ops_gateway(tree)
        resp = await gw.admin.get("/readyz")
        assert resp.status == expected, on_error
        text = await resp.text()
        assert "unreachable" in text
        assert "hunter2" not in text and "127.0.0.1" not in text  # a storage URL may carry a password


async def test_admin_routes_are_not_on_the_public_port(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    gw = await ops_gateway(base_policy(upstream.url))
    for path in ("/metrics", "/healthz", "/readyz"):
        resp = await gw.public.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["key"] == "not_found"
    assert upstream.received == []


async def test_upstream_read_timeout_is_honoured(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url)
    tree["upstream"] = {"connect_timeout": 1, "read_timeout": 0.2}
    gw = await ops_gateway(tree)
    upstream.reply(Reply(delay=1))
    resp = await gw.public.get("/client/v1/validate", headers=H)
    assert resp.status == 504
    assert (await resp.json())["key"] == "upstream_timeout"
    errors = await gw.samples("gateway_upstream_errors_total")
    assert list(errors.values()) == [1]
    assert dict(next(iter(errors)))["kind"] == "timeout"


async def test_serve_runs_the_admin_listener_on_its_own_port(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble
) -> None:
    admin_port, public_port = free_port(), free_port()
    tree = base_policy(upstream.url)
    tree["admin"] = {"host": "127.0.0.1", "port": admin_port}
    await gateway_process(tree, public_port)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
            assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{public_port}/metrics") as resp:
            assert resp.status == 404
        async with session.get(f"http://127.0.0.1:{admin_port}/client/v1/validate", headers=H) as resp:
            assert resp.status == 404  # and the gateway's routes are not on the admin port
    assert upstream.received == []


async def test_dockerfile_healthcheck_command_probes_healthz(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble
) -> None:
    """The HEALTHCHECK line of the Dockerfile, run as written against a real admin listener."""
    import asyncio
    import os
    import re
    import subprocess
    import sys

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [code] = re.findall(r'^\s*CMD python -c "(.+)"$', dockerfile, re.MULTILINE)
    admin_port = free_port()
    tree = base_policy(upstream.url)
    tree["admin"] = {"port": admin_port}

    def probe() -> int:
        env = {**os.environ, "ADMIN_PORT": str(admin_port)}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=False
        ).returncode

    assert await asyncio.to_thread(probe) != 0  # nothing listens yet: unhealthy
    await gateway_process(tree)
    assert await asyncio.to_thread(probe) == 0
