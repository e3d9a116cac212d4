"""Metrics values after a scripted mix of requests, read from the real /metrics text of the admin listener."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import base_policy, free_port
from tests.support.constants import H
from tests.support.ops import OpsGatewayFactory, labels, samples
from tests.support.processes import GatewayProcessFactory
from tests.support.upstream_double import Reply, UpstreamDouble


def req(project: str, operation: str, decision: str, status: int) -> tuple[tuple[str, str], ...]:
    return labels(project=project, operation=operation, decision=decision, status=str(status))


async def test_scripted_mix_is_counted(ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "4 per minute"}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: upstream_unavailable
    tree["projects"]["down"] = {**tree["projects"]["shop"], "region": dead}
    tree["projects"]["down"]["rate_limit"] = {"per_ip": "100 per minute"}
    gw = await ops_gateway(tree)
    c = gw.public
    upstream.reply(Reply(status=404, body={"code": 404, "key": "not_found"}))

    for _ in range(5):  # 4 forwarded (the first answered 404 by Voucherify), then 429
        await c.get("/client/v1/validate?code=A", headers=H)
    for _ in range(2):  # refused before the limit: never counted against it
        assert (await c.get("/client/v1/validate", headers={"Origin": "https://evil.example"})).status == 403
    assert (
        await c.options("/client/v1/validate", headers={**H, "Access-Control-Request-Method": "GET"})
    ).status == 204
    assert (await c.get("/nope/client/v1/validate", headers=H)).status == 404
    assert (await c.get("/client/v1/../../etc/passwd", headers=H)).status == 404  # not a project
    assert (await c.post("/client/v1/redeem", json={}, headers=H)).status == 403
    assert (await c.get("/down/client/v1/validate", headers=H)).status == 502

    got = await gw.samples("gateway_requests_total")
    assert got == {
        req("shop", "validate", "forwarded", 200): 3,
        req("shop", "validate", "forwarded", 404): 1,
        req("shop", "validate", "too_many_requests", 429): 1,
        req("shop", "validate", "origin_not_allowed", 403): 2,
        req("shop", "validate", "preflight", 204): 1,
        req("-", "-", "not_found", 404): 2,
        req("shop", "redeem", "danger_zone_disabled", 403): 1,
        req("down", "validate", "upstream_unavailable", 502): 1,
    }
    upstream_counts = await gw.samples("gateway_upstream_duration_seconds_count")
    assert upstream_counts == {labels(project="shop", operation="validate"): 4}
    errors = await gw.samples("gateway_upstream_errors_total")
    assert errors == {labels(project="down", operation="validate", kind="unavailable"): 1}
    assert await gw.samples("gateway_requests_in_flight") == {(): 0}
    assert await gw.samples("gateway_policy_reloads_total") == {
        labels(result="applied"): 0,
        labels(result="rejected"): 0,
    }


async def test_no_label_carries_a_path_ip_or_origin(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    gw = await ops_gateway(base_policy(upstream.url))
    c = gw.public
    await c.get("/client/v1/validate", headers=H)
    await c.get("/client/v1/validate", headers={"Origin": "https://attacker.example"})
    await c.get("/attacker-project/client/v1/validate", headers=H)
    await c.get("/client/v1/customers/evil%2Fpath/consents", headers=H)
    await c.get("/wp-admin/setup.php")
    text = await (await gw.admin.get("/metrics")).text()
    for forbidden in ("attacker", "127.0.0.1", "example", "wp-admin", "evil", "/"):
        assert all(forbidden not in value for value in _label_values(text)), forbidden
    # the public port has no /metrics: it is not an operation
    resp = await c.get("/metrics")
    assert resp.status == 404
    assert (await resp.json())["key"] == "not_found"
    assert (await c.get("/healthz")).status == 404


def _label_values(text: str) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return [v for f in text_string_to_metric_families(text) for s in f.samples for v in s.labels.values()]


async def test_limit_store_errors_and_fail_open_are_counted(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"storage": dead_redis, "on_storage_error": "allow", "storage_timeout": 2}
    tree["projects"]["strict"] = {**tree["projects"]["shop"], "rate_limit": {"on_storage_error": "deny"}}
    gw = await ops_gateway(tree)
    assert (await gw.public.get("/client/v1/validate", headers=H)).status == 200
    assert (await gw.public.get("/client/v1/validate", headers=H)).status == 200
    assert (await gw.public.get("/strict/client/v1/validate", headers=H)).status == 503
    assert await gw.samples("gateway_limit_store_errors_total") == {
        labels(project="shop"): 2,
        labels(project="strict"): 1,
    }
    assert await gw.samples("gateway_rate_limit_fail_open_total") == {labels(project="shop"): 2}
    got = await gw.samples("gateway_requests_total")
    assert got[req("strict", "validate", "rate_limit_unavailable", 503)] == 1


async def test_refusals_answered_without_the_store_are_counted(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = base_policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "2 per minute", "storage_timeout": 30}
    gw = await ops_gateway(tree)
    statuses = [(await gw.public.get("/client/v1/validate", headers=H)).status for _ in range(7)]
    assert statuses == [200, 200] + [429] * 5
    assert await gw.samples("gateway_rate_limit_remembered_total") == {
        labels(project="shop"): 4
    }  # not the first
    got = await gw.samples("gateway_requests_total")
    assert got[req("shop", "validate", "too_many_requests", 429)] == 5


async def test_one_scrape_covers_every_process_in_multiprocess_mode(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set (as `serve --workers` does), values go through the shared files."""
    from tests.conftest import ORIGIN as origin

    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    admin_port = free_port()
    tree = base_policy(upstream.url)
    tree["admin"] = {"port": admin_port}
    gw = await gateway_process(tree, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{gw.url}/client/v1/validate", headers={"Origin": origin}) as resp:
                assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
            text = await resp.text()
    assert any(metrics_dir.iterdir()), "no multiprocess files written"
    got = samples(text, "gateway_requests_total")
    assert got == {req("shop", "validate", "forwarded", 200): 3}
