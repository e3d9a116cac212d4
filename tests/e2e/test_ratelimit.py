"""Per-IP rate limits: the limiter on its own, then through the gateway on real sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from gateway.errors import TOO_MANY_REQUESTS_MESSAGE
from gateway.models import Bucket, Strategy
from gateway.ratelimit import Limiter, LimiterPool, StoreUnavailable, open_storage
from tests.conftest import ORIGIN, GatewayFactory, assert_gateway_error, base_policy, free_port
from tests.support.constants import H
from tests.support.upstream_double import UpstreamDouble

STRATEGY_NAMES = sorted(s.value for s in Strategy)  # plain strings: they go into policy files
RATE_LIMIT = re.compile(r'^"per_ip";r=(\d+);t=(\d+)$')


def remaining_and_reset(header: str) -> tuple[int, int]:
    """A one-item RateLimit header's r and t."""
    match = RATE_LIMIT.match(header)
    assert match is not None, header
    remaining, reset = map(int, match.groups())
    return remaining, reset


# --- the limiter, without sockets


def test_bucket_policy_header() -> None:
    assert Bucket.parse("per_ip", "5 per 5 seconds", "shop/per_ip").policy_header == '"per_ip";q=5;w=5'
    assert Bucket.parse("redeem", "3/minute", "shop/redeem").policy_header == '"redeem";q=3;w=60'
    several = Bucket.parse("per_ip", "100/minute;10/second", "shop/per_ip")
    assert several.policy_header == '"per_ip";q=100;w=60, "per_ip-2";q=10;w=1'


def test_open_storage_refuses_a_scheme_the_policy_would_not_accept() -> None:
    with pytest.raises(ValueError, match="memcached://"):
        open_storage("memcached://127.0.0.1:11211", 0.5)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
async def test_exactly_k_of_a_concurrent_burst_pass(strategy: str) -> None:
    pool = LimiterPool()
    limiter = Limiter(pool.store("memory://", 5), Strategy(strategy))
    # a day: fixed windows start on the clock, and a burst across a window's edge would pass twice
    bucket = Bucket.parse("per_ip", "7 per day", "shop/per_ip")
    results = await asyncio.gather(*(limiter.hit(bucket, "203.0.113.7") for _ in range(300)))
    assert sum(r.allowed for r in results) == 7
    refused = [r for r in results if not r.allowed]
    assert all(r.headers["RateLimit-Policy"] == '"per_ip";q=7;w=86400' for r in results)
    for result in refused:
        remaining, reset = remaining_and_reset(result.headers["RateLimit"])
        assert remaining == 0
        assert (
            1 <= result.retry_after == int(result.headers["Retry-After"])
            and reset <= result.retry_after <= 86400
        )
    # another client and another bucket namespace are untouched
    assert (await limiter.hit(bucket, "203.0.113.8")).allowed
    other_project = Bucket.parse("per_ip", "7 per day", "other/per_ip")
    assert (await limiter.hit(other_project, "203.0.113.7")).allowed
    await pool.close()


async def test_remaining_counts_down() -> None:
    pool = LimiterPool()
    limiter = Limiter(pool.store("memory://", 5), Strategy.MOVING_WINDOW)
    bucket = Bucket.parse("per_ip", "3 per 10 seconds", "shop/per_ip")
    seen = []
    for _ in range(4):
        result = await limiter.hit(bucket, "k")
        seen.append((result.allowed, result.headers["RateLimit"]))
    assert seen == [
        (True, '"per_ip";r=2;t=10'),
        (True, '"per_ip";r=1;t=10'),
        (True, '"per_ip";r=0;t=10'),
        (False, '"per_ip";r=0;t=10'),
    ]
    await pool.close()


def test_the_pool_shares_storages_across_reloads() -> None:
    pool = LimiterPool()
    moving = Limiter(pool.store("memory://", 0.5), Strategy.MOVING_WINDOW)
    assert Limiter(pool.store("memory://", 2.0), Strategy.FIXED_WINDOW).store is moving.store
    assert pool.store("memory://", 1.0) is moving.store


async def test_an_unreachable_store_is_reported() -> None:
    pool = LimiterPool()
    limiter = Limiter(pool.store(f"redis://127.0.0.1:{free_port()}/0", 2), Strategy.MOVING_WINDOW)
    with pytest.raises(StoreUnavailable):
        await limiter.hit(Bucket.parse("per_ip", "5/second", "ns"), "k")
    assert not await limiter.store.ready()
    await pool.close()


# --- through the gateway


def limited(upstream_url: str, per_ip: str = "5 per 5 seconds", **rate_limit: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url)
    tree["rate_limit"] = {"per_ip": per_ip, **rate_limit}
    return tree


def assert_429(status: int, body: dict[str, Any], headers: Mapping[str, str]) -> None:
    assert_gateway_error(status, body, headers, 429, "too_many_requests")
    assert body["message"] == TOO_MANY_REQUESTS_MESSAGE == "Too many requests hit the API too quickly."
    assert int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
async def test_a_burst_of_hundreds_from_one_ip_lets_exactly_k_through(
    gateway: GatewayFactory, upstream: UpstreamDouble, strategy: str
) -> None:
    client = await gateway(limited(upstream.url, "10 per day", strategy=strategy))  # no window edge

    async def one() -> int:
        async with client.session.get(client.make_url("/client/v1/validate?code=A"), headers=H) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one() for _ in range(300)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 290
    assert len(upstream.received) == 10


async def test_headers_on_allowed_and_refused(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(limited(upstream.url))
    for expected_remaining in [4, 3, 2, 1, 0]:
        resp = await client.get("/client/v1/validate", headers=H)
        assert resp.status == 200
        assert resp.headers["RateLimit-Policy"] == '"per_ip";q=5;w=5'
        remaining, reset = remaining_and_reset(resp.headers["RateLimit"])
        assert remaining == expected_remaining
        assert 0 <= reset <= 5
        assert "Retry-After" not in resp.headers
        for name in ["RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"]:
            assert name in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.get("/client/v1/validate", headers=H)
    body = await resp.json()
    assert_429(resp.status, body, resp.headers)
    assert resp.headers["RateLimit-Policy"] == '"per_ip";q=5;w=5'
    remaining, reset = remaining_and_reset(resp.headers["RateLimit"])
    assert remaining == 0
    assert 1 <= reset <= int(resp.headers["Retry-After"]) <= 5
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # the browser can read the 429
    assert len(upstream.received) == 5


async def test_a_flood_after_the_stores_429_gets_its_answer_after_the_checks_before_it(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """After the store's 429, a flood is refused from memory (gateway/ratelimit/refusals.py, counted in
    tests/unit/test_refusals.py) with the store's answer: the same body, CORS and RateLimit fields. A bad
    body still gets its 400 first (the contract's order), and a preflight its 204."""
    client = await gateway(limited(upstream.url, "2 per minute", storage_timeout=30))
    assert [(await client.get("/client/v1/validate", headers=H)).status for _ in range(2)] == [200, 200]
    first = await client.get("/client/v1/validate", headers=H)  # the store refuses
    first_body = await first.json()
    assert_429(first.status, first_body, first.headers)
    same = ["Content-Type", "Vary", "RateLimit-Policy", "Access-Control-Allow-Origin"]
    same += ["Access-Control-Allow-Credentials", "Access-Control-Expose-Headers"]
    for _ in range(5):
        resp = await client.get("/client/v1/validate", headers=H)
        body = await resp.json()
        assert_429(resp.status, body, resp.headers)
        assert {**body, "request_id": ""} == {**first_body, "request_id": ""}
        assert body["request_id"] != first_body["request_id"]
        assert set(resp.headers) - {"Date"} == set(first.headers) - {"Date"}
        assert [resp.headers[name] for name in same] == [first.headers[name] for name in same]
        remaining, reset = remaining_and_reset(resp.headers["RateLimit"])
        assert remaining == 0 and 0 <= remaining_and_reset(first.headers["RateLimit"])[1] - reset <= 1
        assert int(resp.headers["Retry-After"]) == max(reset, 1)
    bad = await client.post(
        "/client/v1/validations", data=b"[]", headers={**H, "Content-Type": "application/json"}
    )
    assert bad.status == 400
    assert (await client.options("/client/v1/validate", headers=H)).status == 204
    assert len(upstream.received) == 2


async def test_refusals_and_preflights_do_not_count(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(limited(upstream.url, "2 per minute"))
    for _ in range(5):
        assert (await client.options("/client/v1/validations", headers=H)).status == 204
        assert (await client.get("/client/v1/nope", headers=H)).status == 404
        assert (await client.post("/client/v1/validate", headers=H)).status == 405
        assert (
            await client.get("/client/v1/validate", headers={"Origin": "https://evil.test"})
        ).status == 403
        assert (await client.get("/client/v1/vouchers", headers=H)).status == 403
        assert (await client.get("/client/v1/validate", headers={**H, "X-App-Token": "x"})).status == 400
        assert (
            await client.post(
                "/client/v1/validations", data=b"[]", headers={**H, "Content-Type": "application/json"}
            )
        ).status == 400
        assert (
            await client.post(
                "/client/v1/validations", data=b"{}", headers={**H, "Content-Type": "text/plain"}
            )
        ).status == 415
    statuses = [(await client.get("/client/v1/validate", headers=H)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    # a preflight after the budget is spent is still answered, without rate-limit headers
    preflight = await client.options("/client/v1/validate", headers=H)
    assert preflight.status == 204
    assert "RateLimit" not in preflight.headers


async def test_distinct_peers_have_separate_budgets(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(limited(upstream.url, "2 per minute"))
    url = client.make_url("/client/v1/validate")

    async def statuses(local: str) -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(local, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            result = []
            for _ in range(3):
                async with session.get(url, headers=H) as resp:
                    result.append(resp.status)
            return result

    assert await statuses("127.0.0.1") == [200, 200, 429]
    assert await statuses("127.0.0.2") == [200, 200, 429]
    assert await statuses("127.0.0.1") == [429, 429, 429]


async def test_spoofed_xff_from_an_untrusted_peer_shares_the_peers_budget(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(limited(upstream.url, "2 per minute"))
    statuses = [
        (await client.get("/client/v1/validate", headers={**H, "X-Forwarded-For": f"198.51.100.{i}"})).status
        for i in range(4)
    ]
    assert statuses == [200, 200, 429, 429]
    assert all("X-Forwarded-For" not in seen.headers for seen in upstream.received)


# the load balancer 127.0.0.1, also written IPv4-mapped (as a dual-stack socket shows it): peers are
# compared unmapped, so a mapped entry was accepted by `check` and never matched
@pytest.mark.parametrize("proxies", ["127.0.0.0/8", "::ffff:127.0.0.0/104"])
async def test_xff_from_a_trusted_proxy_separates_clients(
    gateway: GatewayFactory, upstream: UpstreamDouble, proxies: str
) -> None:
    tree = limited(upstream.url, "2 per minute")
    tree["client_ip"] = {"trusted_proxies": [proxies]}
    client = await gateway(tree)

    async def status(xff: str) -> int:
        return (await client.get("/client/v1/validate", headers={**H, "X-Forwarded-For": xff})).status

    assert [await status("198.51.100.1") for _ in range(3)] == [200, 200, 429]
    assert [await status("198.51.100.2") for _ in range(3)] == [200, 200, 429]
    # the client's own entries to the left are not believed: the right-most untrusted one counts
    assert await status("198.51.100.9, 198.51.100.1") == 429
    # one IPv6 /64 is one client
    assert [await status(f"2001:db8:1:2::{i}") for i in range(1, 4)] == [200, 200, 429]
    assert await status("2001:db8:1:3::1") == 200
    # an IPv4-mapped address is its IPv4 client
    assert await status("::ffff:198.51.100.2") == 429


async def test_per_operation_buckets(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = limited(upstream.url, "3 per minute", operations={"redeem": "1 per minute"})
    tree["projects"]["shop"]["danger_zone"] = {"redeem": True}
    client = await gateway(tree)
    headers = {**H, "Content-Type": "application/json"}
    first = await client.post("/client/v1/redeem?code=A", data=b"{}", headers=headers)
    assert first.status == 200
    assert first.headers["RateLimit-Policy"] == '"redeem";q=1;w=60'
    assert first.headers["RateLimit"].startswith('"redeem";r=0;')
    second = await client.post("/client/v1/redeem?code=A", data=b"{}", headers=headers)
    assert_429(second.status, await second.json(), second.headers)
    assert second.headers["RateLimit-Policy"] == '"redeem";q=1;w=60'
    # the redemption did not use the shared budget, and the shared budget is its own
    statuses = [(await client.get("/client/v1/validate", headers=H)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await client.post("/client/v1/redeem?code=A", data=b"{}", headers=headers)).status == 429


async def test_project_overrides_and_separate_counts(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = limited(upstream.url, "2 per minute")
    shop = tree["projects"]["shop"]
    tree["projects"]["kiosk"] = {**shop, "rate_limit": {"per_ip": "4 per minute"}}
    tree["projects"]["app"] = dict(shop)
    client = await gateway(tree)

    async def statuses(prefix: str, count: int) -> list[int]:
        return [(await client.get(f"{prefix}/client/v1/validate", headers=H)).status for _ in range(count)]

    assert await statuses("", 3) == [200, 200, 429]
    assert await statuses("/shop", 1) == [429]  # the default project under both prefixes: one budget
    assert await statuses("/app", 3) == [200, 200, 429]  # same limit, counted separately
    assert await statuses("/kiosk", 5) == [200, 200, 200, 200, 429]
    resp = await client.get("/kiosk/client/v1/validate", headers=H)
    assert resp.headers["RateLimit-Policy"] == '"per_ip";q=4;w=60'


async def test_store_down_allow_passes_and_deny_refuses(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = await gateway(limited(upstream.url, storage=dead, storage_timeout=1))
    resp = await client.get("/client/v1/validate", headers=H)
    assert resp.status == 200
    assert "RateLimit" not in resp.headers
    assert len(upstream.received) == 1

    client = await gateway(limited(upstream.url, storage=dead, on_storage_error="deny", storage_timeout=1))
    resp = await client.get("/client/v1/validate", headers=H)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 503, "rate_limit_unavailable")
    assert len(upstream.received) == 1


def test_bucket_keys_are_the_keys_limits_names() -> None:
    """Old and new gateways share counts in Redis only if the keys are limits' own."""
    bucket = Bucket.parse("per_ip", "10 per second;100/minute;1000 per 2 hours", "shop/per_ip")
    for client in ("203.0.113.9", "2001:db8:1:2::/64", "unknown"):
        assert bucket.keys(client) == [item.key_for("shop/per_ip", client) for item in bucket.items]
