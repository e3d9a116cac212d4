"""Voucherify's limits as the sandbox emulates them: the server-side plan limit (N requests a minute per
project, with X-Rate-Limit-* headers) next to the client-side 5 requests per 5 seconds per IP."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from gateway.sandbox import SANDBOX_STORE, create_sandbox_app
from gateway.sandbox.ratelimit import PlanLimit
from tests.sandbox.conftest import (
    CLIENT_HEADERS,
    SERVER_HEADERS,
    Client,
    MakeClient,
    raw_request,
    standalone_sandbox,
)

TOO_MANY = {"code": 429, "message": "Too many requests hit the API too quickly."}


async def test_plan_limit_counts_server_calls_and_answers_429_like_voucherify(
    make_client: MakeClient,
) -> None:
    client = await make_client(plan_limit=3)
    # Not counted: a request that fails authentication belongs to no project, and the client side has
    # its own per-IP limit.
    assert (await client.get("/v1/consents", headers={"X-App-Id": "x", "X-App-Token": "y"})).status == 401
    for _ in range(6):
        assert (await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).status == 200
    seen = []
    for path in ("/v1/consents", "/v1/promotions/tiers", "/v1/vouchers/NOSUCHCODE/redemption"):
        method = "POST" if path.endswith("redemption") else "GET"
        response = await client.request(method, path, headers=SERVER_HEADERS)
        seen.append(
            (
                response.status,
                response.headers["X-Rate-Limit-Limit"],
                response.headers["X-Rate-Limit-Remaining"],
            )
        )
        assert "X-Rate-Limit-Retry" not in response.headers
        assert "Retry-After" not in response.headers
    # An error answer is a call like any other, and carries the usage too.
    assert seen == [(200, "3", "2"), (200, "3", "1"), (404, "3", "0")]
    refused = await client.get("/v1/consents", headers=SERVER_HEADERS)
    assert refused.status == 429
    assert await refused.json() == TOO_MANY
    assert refused.headers["X-Rate-Limit-Limit"] == "3"
    assert refused.headers["X-Rate-Limit-Remaining"] == "0"
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert refused.headers["X-Rate-Limit-Retry"] == str(retry)
    # The client side is still served: the plan limit is the server-side API's.
    client_answer = await client.get("/client/v1/consents", headers=CLIENT_HEADERS)
    assert client_answer.status == 200
    assert "X-Rate-Limit-Limit" not in client_answer.headers


async def test_plan_limit_refusal_changes_nothing(make_client: MakeClient) -> None:
    client = await make_client(plan_limit=1)
    assert (await client.get("/v1/consents", headers=SERVER_HEADERS)).status == 200
    refused = await client.post("/v1/vouchers/ONEUSE/redemption", headers=SERVER_HEADERS)
    assert refused.status == 429
    assert client.app is not None
    assert client.app[SANDBOX_STORE].vouchers["ONEUSE"].redeemed_quantity == 0


async def test_plan_limit_is_exact_under_concurrency(make_client: MakeClient) -> None:
    client = await make_client(plan_limit=5)
    responses = await asyncio.gather(*(client.get("/v1/consents", headers=SERVER_HEADERS) for _ in range(20)))
    assert sorted(r.status for r in responses) == [200] * 5 + [429] * 15
    remaining = sorted(int(r.headers["X-Rate-Limit-Remaining"]) for r in responses if r.status == 200)
    assert remaining == [0, 1, 2, 3, 4]


async def test_no_plan_headers_without_the_option(client: Client) -> None:
    statuses = set()
    for _ in range(8):
        response = await client.get("/v1/consents", headers=SERVER_HEADERS)
        statuses.add(response.status)
        assert not any(name.lower().startswith("x-rate-limit") for name in response.headers)
    assert statuses == {200}


async def test_both_limits_together(make_client: MakeClient) -> None:
    client = await make_client(plan_limit=2, emulate_client_rate_limit=True)
    for _ in range(5):
        assert (await client.get("/client/v1/consents", headers=CLIENT_HEADERS)).status == 200
    per_ip = await client.get("/client/v1/consents", headers=CLIENT_HEADERS)
    assert per_ip.status == 429
    assert await per_ip.json() == TOO_MANY
    assert per_ip.headers["Retry-After"] == "5"
    assert "X-Rate-Limit-Limit" not in per_ip.headers
    statuses = [(await client.get("/v1/consents", headers=SERVER_HEADERS)).status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_plan_window_frees_slots_as_they_age() -> None:
    now = [0.0]
    plan = PlanLimit(3, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert plan.hit().allowed
    now[0] = 30.0
    refused = plan.hit()
    assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 0, 30)
    assert refused.headers() == {
        "X-Rate-Limit-Limit": "3",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Retry": "30",
    }
    now[0] = 59.5
    assert plan.hit().retry_after == 1  # never 0 while refused
    now[0] = 60.0  # the hit at 0 has left the minute: one slot again
    usage = plan.hit()
    assert (usage.allowed, usage.remaining, usage.retry_after) == (True, 0, 0)
    assert "X-Rate-Limit-Retry" not in usage.headers()
    assert not plan.hit().allowed


@pytest.mark.parametrize("bad", [0, -1])
def test_plan_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="plan_limit"):
        create_sandbox_app(plan_limit=bad)


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
async def test_standalone_runner_takes_plan_limit() -> None:
    request = (
        b"GET /v1/consents HTTP/1.1\r\nHost: x\r\nX-App-Id: sandbox-app-id\r\n"
        b"X-App-Token: sandbox-secret-key\r\nConnection: close\r\n\r\n"
    )
    async with standalone_sandbox("--plan-limit", "1") as port:
        first = await raw_request(port, request)
        second = await raw_request(port, request)
    assert first.startswith(b"HTTP/1.1 200")
    assert b"\r\nX-Rate-Limit-Remaining: 0\r\n" in first
    assert second.startswith(b"HTTP/1.1 429")
    assert b"\r\nX-Rate-Limit-Limit: 1\r\n" in second
    assert re.search(rb"\r\nRetry-After: \d+\r\n", second)


async def test_standalone_runner_refuses_a_bad_plan_limit() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.sandbox",
        "--plan-limit",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert b"--plan-limit" in stderr
