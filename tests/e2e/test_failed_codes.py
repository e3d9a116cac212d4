"""The failed-code budget through the gateway on real sockets: refusals that never reach the upstream
double, exact counts under concurrent bursts (memory, real Redis over two `--workers 2` gateways),
known codes costing nothing, answers that never came giving everything back, reloads, server mode."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from gateway.app import STATE
from gateway.errors import TOO_MANY_FAILED_CODES_MESSAGE
from tests.conftest import GatewayFactory, assert_gateway_error, base_policy, make_policy
from tests.support.constants import JSON_H, H
from tests.support.ops import OpsGatewayFactory, labels
from tests.support.processes import GatewayProcessFactory, RedisServer
from tests.support.upstream_double import Reply, UpstreamDouble

VALIDATE = "/client/v1/validate?code=NOPE"
STATE_MEMBER = re.compile(r'"failed_codes";r=(\d+);t=(\d+)')
UNKNOWN_VALIDATE = {"valid": False, "code": "NOPE", "reason": "voucher not found", "error": {"code": 404}}
KNOWN_VALIDATE = {"valid": True, "code": "SAVE10"}
NOT_FOUND = {
    "code": 404,
    "key": "not_found",
    "message": "Resource not found",
    "details": "Cannot find voucher",
}


def budget_policy(upstream_url: str, budget: str = "3 per hour", **rate_limit: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url, danger_zone={"redeem": True})
    tree["rate_limit"].update(failed_codes=budget, **rate_limit)
    return tree


def stackable(*codes: str) -> dict[str, Any]:
    return {"redeemables": [{"object": "voucher", "id": code} for code in codes], "order": {"amount": 100}}


def stackable_answer(*unknown: bool) -> dict[str, Any]:
    return {
        "valid": not any(unknown),
        "redeemables": [
            {"object": "voucher", "id": f"C{i}", "status": "INAPPLICABLE", "result": {"error": NOT_FOUND}}
            if u
            else {"object": "voucher", "id": f"C{i}", "status": "APPLICABLE", "result": {}}
            for i, u in enumerate(unknown)
        ],
    }


def remaining(headers: Mapping[str, str]) -> int:
    found = STATE_MEMBER.search(headers["RateLimit"])
    assert found is not None, headers.get("RateLimit")
    return int(found[1])


async def assert_refused(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert_gateway_error(resp.status, body, resp.headers, 429, "too_many_failed_codes")
    assert body["message"] == TOO_MANY_FAILED_CODES_MESSAGE
    assert int(resp.headers["Retry-After"]) >= 1
    assert re.search(r', "failed_codes";q=\d+;w=\d+$', resp.headers["RateLimit-Policy"])
    return body


# ------------------------------------------------------------------------------------------ in memory


async def test_unknown_codes_spend_the_budget_then_nothing_reaches_the_upstream(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url))
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    seen = []
    for _ in range(3):
        resp = await client.get(VALIDATE, headers=H)
        assert resp.status == 200
        assert resp.headers["RateLimit-Policy"] == '"per_ip";q=1000;w=60, "failed_codes";q=3;w=3600'
        assert resp.headers["RateLimit"].startswith('"per_ip";r=')
        seen.append(remaining(resp.headers))
    assert seen == [2, 1, 0]
    refused: list[tuple[str, dict[str, Any]]] = [
        (VALIDATE, {}),
        ("/client/v1/validations", {"json": stackable("X")}),
        ("/client/v1/redeem?code=X", {"json": {}}),
        ("/client/v1/redemptions", {"json": stackable("X")}),
    ]
    for path, kwargs in refused:
        method = client.get if path.startswith("/client/v1/validate?") else client.post
        resp = await method(path, headers=JSON_H if kwargs else H, **kwargs)
        await assert_refused(resp)
        assert remaining(resp.headers) == 0
    assert len(upstream.received) == 3
    # other operations of that client are untouched, and so are requests naming no code
    upstream.default = Reply(200, {"valid": True, "promotions": []})
    untouched: list[tuple[str, dict[str, Any]]] = [
        ("/client/v1/promotions/validation?amount=100", {}),
        ("/client/v1/qualifications", {"json": {"order": {"amount": 100}}}),
        ("/client/v1/validations", {"json": {"order": {"amount": 100}}}),  # no redeemables: names 0
    ]
    for path, kwargs in untouched:
        method = client.get if not kwargs else client.post
        resp = await method(path, headers=JSON_H if kwargs else H, **kwargs)
        assert resp.status == 200, await resp.text()
    assert len(upstream.received) == 6


async def test_known_codes_cost_nothing(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(budget_policy(upstream.url, "1 per hour"))
    upstream.default = Reply(200, KNOWN_VALIDATE)
    expired = {"valid": False, "reason": "voucher expired", "error": {"code": 400, "key": "voucher_expired"}}
    upstream.reply(*[Reply(200, expired)] * 3)
    for _ in range(10):
        resp = await client.get(VALIDATE, headers=H)
        assert resp.status == 200
        assert remaining(resp.headers) == 1
    assert len(upstream.received) == 10


async def test_a_stackable_request_is_charged_its_unknown_codes_and_refused_what_it_cannot_cover(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url, "5 per hour"))
    upstream.reply(Reply(200, stackable_answer(False, True, False)))
    resp = await client.post(
        "/client/v1/validations", headers=JSON_H, json=stackable("SAVE10", "NOPE", "PERCENT20")
    )
    assert resp.status == 200
    assert remaining(resp.headers) == 4  # 3 held, 2 existed and came back
    # five codes do not fit in four: refused whole, nothing sent
    resp = await client.post("/client/v1/validations", headers=JSON_H, json=stackable(*"ABCDE"))
    await assert_refused(resp)
    assert remaining(resp.headers) == 4
    assert len(upstream.received) == 1
    # four do
    upstream.reply(Reply(200, stackable_answer(True, True, True, True)))
    resp = await client.post("/client/v1/redemptions", headers=JSON_H, json=stackable(*"ABCD"))
    assert resp.status == 200
    assert remaining(resp.headers) == 0
    assert len(upstream.received) == 2


async def test_an_upstream_404_counts_one_and_never_more_than_named(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url, "5 per hour"))
    upstream.reply(Reply(404, NOT_FOUND), Reply(200, stackable_answer(*[True] * 9)))
    resp = await client.post("/client/v1/redemptions", headers=JSON_H, json=stackable("A", "B"))
    assert resp.status == 404
    assert remaining(resp.headers) == 4
    resp = await client.post("/client/v1/validations", headers=JSON_H, json=stackable("A", "B"))
    assert remaining(resp.headers) == 2  # nine 404s in the answer, two named


async def test_an_answer_nested_deeper_than_the_parser_goes_does_not_make_its_unknown_codes_free(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """A browser reads an answer nested thousands of levels deep (an echo of a request's `metadata` further
    in than the request had it); the budget's parser gave up on it and counted nothing, so every such
    validation told the client its code did not exist, free of charge."""
    client = await gateway(budget_policy(upstream.url, "1 per hour"))
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    shallow = json.dumps({**stackable("NOPE"), "metadata": 0}).encode()
    echo = json.dumps({**stackable_answer(True), "metadata": 0}).encode()
    upstream.default = Reply(200, echo[: echo.rindex(b"0}")] + deep + b"}")
    statuses = []
    for _ in range(3):
        resp = await client.post("/client/v1/validations", headers=JSON_H, data=shallow)
        statuses.append(resp.status)
    assert statuses == [200, 429, 429]
    assert len(upstream.received) == 1


async def test_a_body_naming_redeemables_twice_is_refused_and_costs_nothing(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url, "1 per hour"))
    long = json.dumps(stackable(*"ABCDEFGH")["redeemables"])
    for body in (
        f'{{"redeemables": [], "redeemables": {long}}}',
        f'{{"redeemables": {long}, "redeemables": []}}',
    ):
        resp = await client.post("/client/v1/validations", headers=JSON_H, data=body)
        assert_gateway_error(resp.status, await resp.json(), resp.headers, 400, "invalid_payload")
    assert upstream.received == []


async def test_forty_at_once_with_one_unit_left_at_most_one_reaches_the_upstream(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url, "3 per hour"))
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    for _ in range(2):
        assert (await client.get(VALIDATE, headers=H)).status == 200
    upstream.received.clear()
    upstream.default = Reply(200, UNKNOWN_VALIDATE, delay=0.3)  # all forty are in flight together

    async def one() -> int:
        resp = await client.get(VALIDATE, headers=H)
        await resp.read()
        return resp.status

    statuses = Counter(await asyncio.gather(*(one() for _ in range(40))))
    assert statuses == {200: 1, 429: 39}
    assert len(upstream.received) == 1


@pytest.mark.parametrize("failure", ["reset", "timeout"])
async def test_no_answer_from_voucherify_costs_nothing(
    gateway: GatewayFactory, upstream: UpstreamDouble, failure: str
) -> None:
    tree = budget_policy(upstream.url, "1 per hour")
    tree["upstream"] = {"read_timeout": 0.3}
    client = await gateway(tree)
    broken = Reply(reset=True) if failure == "reset" else Reply(200, UNKNOWN_VALIDATE, delay=1.0)
    upstream.reply(broken, broken)
    for _ in range(2):
        resp = await client.get(VALIDATE, headers=H)
        assert resp.status == (502 if failure == "reset" else 504)
        assert remaining(resp.headers) == 1
    upstream.reply(Reply(200, UNKNOWN_VALIDATE))
    resp = await client.get(VALIDATE, headers=H)
    assert resp.status == 200 and remaining(resp.headers) == 0


async def test_a_client_that_goes_away_still_gets_its_hold_given_back(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """The test server cancels the handler of a request whose client left (as a drain does): the upstream
    call is abandoned unread, so the request got no answer and its held code comes back."""
    client = await gateway(budget_policy(upstream.url, "1 per hour"))
    upstream.reply(Reply(200, UNKNOWN_VALIDATE, delay=1.0))
    with pytest.raises(asyncio.TimeoutError):
        await client.get(VALIDATE, headers=H, timeout=aiohttp.ClientTimeout(total=0.2))
    assert len(upstream.received) == 1
    upstream.default = Reply(200, KNOWN_VALIDATE)
    deadline = time.monotonic() + 10
    while True:  # the cancelled handler settles in a task of its own, soon after
        resp = await client.get(VALIDATE, headers=H)
        if resp.status == 200:
            break
        await assert_refused(resp)
        assert time.monotonic() < deadline, "the abandoned request's hold was never given back"
        await asyncio.sleep(0.05)
    assert remaining(resp.headers) == 1
    await asyncio.sleep(1.0)  # the abandoned answer arrives: nobody reads it, nothing is charged
    assert remaining((await client.get(VALIDATE, headers=H)).headers) == 1


async def test_the_window_running_out_gives_the_budget_back(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(budget_policy(upstream.url, "1 per 2 seconds"))
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    assert (await client.get(VALIDATE, headers=H)).status == 200
    resp = await client.get(VALIDATE, headers=H)
    await assert_refused(resp)
    wait = int(resp.headers["Retry-After"])
    assert 1 <= wait <= 2
    await asyncio.sleep(wait + 0.1)
    resp = await client.get(VALIDATE, headers=H)
    assert resp.status == 200
    assert len(upstream.received) == 2


async def test_a_reload_that_changes_the_budget_keeps_counts_exact(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = budget_policy(upstream.url, "5 per hour")
    client = await gateway(tree)
    state = client.app[STATE]
    upstream.reply(*[Reply(200, UNKNOWN_VALIDATE, delay=0.4)] * 2)
    in_flight = [asyncio.ensure_future(client.get(VALIDATE, headers=H)) for _ in range(2)]
    await asyncio.sleep(0.2)
    tree["rate_limit"]["failed_codes"] = "3 per hour"
    state.set_policy(make_policy(tree))  # a reload while both are in flight
    for resp in await asyncio.gather(*in_flight):
        assert resp.status == 200
    upstream.reply(Reply(200, KNOWN_VALIDATE))
    resp = await client.get(VALIDATE, headers=H)
    assert resp.headers["RateLimit-Policy"].endswith('"failed_codes";q=3;w=3600')
    assert remaining(resp.headers) == 1  # the two unknown codes still count under the new budget
    upstream.reply(Reply(200, UNKNOWN_VALIDATE))
    assert remaining((await client.get(VALIDATE, headers=H)).headers) == 0
    await assert_refused(await client.get(VALIDATE, headers=H))


async def test_a_project_with_null_has_no_budget(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = budget_policy(upstream.url, "1 per hour")
    tree["projects"]["shop"]["rate_limit"] = {"failed_codes": None}
    client = await gateway(tree)
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    for _ in range(3):
        resp = await client.get(VALIDATE, headers=H)
        assert resp.status == 200
        assert "failed_codes" not in resp.headers["RateLimit-Policy"]


async def test_server_mode_counts_the_answers_the_browser_gets(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = budget_policy(upstream.url, "2 per hour")
    tree["projects"]["shop"].update(
        upstream_auth="server", credentials={"application_id": "app-id-1", "secret_key": "server-secret-1"}
    )
    client = await gateway(tree)
    upstream.reply(Reply(404, NOT_FOUND), Reply(200, stackable_answer(True)))
    resp = await client.get(VALIDATE, headers=H)
    assert resp.status == 404 and remaining(resp.headers) == 1
    assert upstream.received[0].path == "/v1/vouchers/NOPE/validate"
    resp = await client.post("/client/v1/validations", headers=JSON_H, json=stackable("X"))
    assert resp.status == 200 and remaining(resp.headers) == 0
    await assert_refused(await client.post("/client/v1/redeem?code=Y", headers=JSON_H, json={}))
    assert len(upstream.received) == 2


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_store_that_is_down_follows_on_storage_error(
    gateway: GatewayFactory, upstream: UpstreamDouble, mode: str
) -> None:
    from gateway.serve import free_port

    tree = budget_policy(
        upstream.url, "1 per hour", storage=f"redis://127.0.0.1:{free_port()}/0", on_storage_error=mode
    )
    client = await gateway(tree)
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    for _ in range(3):
        resp = await client.get(VALIDATE, headers=H)
        if mode == "allow":
            assert resp.status == 200
        else:
            assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "rate_limit_unavailable")
    assert len(upstream.received) == (3 if mode == "allow" else 0)


async def test_operators_see_unknown_codes_and_refusals(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await ops_gateway(budget_policy(upstream.url, "2 per hour"))
    upstream.reply(Reply(200, stackable_answer(True, True)))
    assert (
        await gw.public.post("/client/v1/validations", headers=JSON_H, json=stackable("A", "B"))
    ).status == 200
    await assert_refused(await gw.public.get(VALIDATE, headers=H))
    await assert_refused(await gw.public.get(VALIDATE, headers=H))
    assert await gw.samples("gateway_failed_codes_total") == {labels(project="shop"): 2}
    assert await gw.samples("gateway_failed_code_refusals_total") == {labels(project="shop"): 2}
    requests = await gw.samples("gateway_requests_total")
    refused = labels(project="shop", operation="validate", decision="too_many_failed_codes", status="429")
    assert requests[refused] == 2


# ------------------------------------------------------------------------------------------ on Redis


async def _burst_with_one_unit_left(urls: list[str], upstream: Any) -> list[int]:
    """Spend 2 of a budget of 3 (one request on each URL), then 40 at once over every URL."""
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # new connections spread over the workers
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            url = urls[i % len(urls)] + VALIDATE
            async with session.get(url, headers=H, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                return resp.status

        assert [await one(0), await one(1)] == [200, 200]
        upstream.received.clear()
        upstream.default = Reply(200, UNKNOWN_VALIDATE, delay=0.3)
        return list(await asyncio.gather(*(one(i) for i in range(40))))


async def test_forty_at_once_over_two_gateways_with_two_workers_each_on_one_redis(
    redis: RedisServer, upstream: Any, gateway_process: GatewayProcessFactory
) -> None:
    # deny and a generous store timeout: a slow answer on a loaded machine is a 503 here, never a pass
    tree = budget_policy(
        upstream.url, "3 per hour", storage=redis.url, on_storage_error="deny", storage_timeout=20
    )
    tree["logging"] = {"level": "warning"}
    gateways = await asyncio.gather(*(gateway_process(tree, workers=2) for _ in range(2)))
    statuses = await _burst_with_one_unit_left([g.url for g in gateways], upstream)
    assert Counter(statuses) == {200: 1, 429: 39}
    assert len(upstream.received) == 1


async def test_forty_at_once_on_a_three_master_redis_cluster(
    redis_cluster: Any, upstream: Any, gateway_process: GatewayProcessFactory
) -> None:
    tree = budget_policy(
        upstream.url, "3 per hour", storage=redis_cluster.url, on_storage_error="deny", storage_timeout=20
    )
    tree["logging"] = {"level": "warning"}
    gateway = await gateway_process(tree, workers=2)
    statuses = await _burst_with_one_unit_left([gateway.url], upstream)
    assert Counter(statuses) == {200: 1, 429: 39}
    assert len(upstream.received) == 1


async def test_the_access_line_of_a_refused_request_says_too_many_failed_codes(
    upstream: Any, gateway_process: GatewayProcessFactory
) -> None:
    gateway = await gateway_process(budget_policy(upstream.url, "1 per hour"))
    upstream.default = Reply(200, UNKNOWN_VALIDATE)
    async with aiohttp.ClientSession() as session:
        for expected in (200, 429):
            async with session.get(gateway.url + VALIDATE, headers=H) as resp:
                assert resp.status == expected
                request_id = resp.headers["X-Request-Id"]
    await gateway.wait_for('"logger": "gateway.access"', count=2)
    refused = [line for line in gateway.access_lines() if line["request_id"] == request_id]
    assert len(refused) == 1
    assert (refused[0]["decision"], refused[0]["status"], refused[0]["operation"]) == (
        "too_many_failed_codes",
        429,
        "validate",
    )
    assert len(upstream.received) == 1
