"""The per-IP gate's verdict (`LimiterPool.gate` through `pass_gates`, as a request runs it: the 429, the
headers, `on_storage_error` applied) and `LimiterPool.readiness` (one answer for the admin listener and the
worker supervisor), on memory, a real redis-server and a dead port."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from gateway.errors import ErrorKey, GatewayError, Refused
from gateway.models import Bucket, Outcome
from gateway.policy import RateLimit
from gateway.ratelimit import LimiterPool
from gateway.ratelimit.gates import pass_gates
from tests.conftest import free_port
from tests.support.processes import RedisServer


def limits(**values: object) -> RateLimit:
    return RateLimit.model_validate({"per_ip": "2 per hour", "storage_timeout": 1, **values})


BUCKET = Bucket.parse("per_ip", "2 per hour", "verdict/per_ip")


@dataclass(frozen=True)
class Verdict:
    error: GatewayError | None  # the refusal, or None: the request passes
    headers: tuple[tuple[str, str], ...]  # the refusal's, or the passed gate's RateLimit fields
    store_error: bool  # what the request's outcome says


async def check(pool: LimiterPool, limits: RateLimit, bucket: Bucket, client_key: str) -> Verdict:
    """One request's per-IP count, as the handler runs it."""
    outcome = Outcome("gw-verdict", "GET")
    store = pool.store(limits.storage, limits.storage_timeout)
    gate = pool.gate(store, limits, bucket, client_key, outcome)
    try:
        await pass_gates(store, [gate])
    except Refused as refused:
        return Verdict(refused.error, refused.headers, outcome.limit_store_error)
    return Verdict(None, gate.headers, outcome.limit_store_error)


async def test_a_verdict_carries_the_headers_and_the_429() -> None:
    pool = LimiterPool()
    verdicts = [await check(pool, limits(), BUCKET, "203.0.113.1") for _ in range(3)]
    assert [v.error for v in verdicts[:2]] == [None, None]
    refused = verdicts[2].error
    assert refused is not None and refused.key == ErrorKey.TOO_MANY_REQUESTS and refused.status == 429
    assert not any(v.store_error for v in verdicts)
    headers = dict(verdicts[2].headers)
    assert headers["RateLimit-Policy"] == '"per_ip";q=2;w=3600'
    assert headers["RateLimit"].startswith('"per_ip";r=0;')
    assert 1 <= int(headers["Retry-After"]) <= 3600
    assert "Retry-After" not in dict(verdicts[0].headers)
    await pool.close()


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_dead_store_follows_on_storage_error_with_one_log_line(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = LimiterPool()
    dead = limits(storage=f"redis://127.0.0.1:{free_port()}/0", on_storage_error=mode)
    with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
        verdicts = [await check(pool, dead, BUCKET, "203.0.113.1") for _ in range(5)]
    assert all(v.store_error and v.headers == () for v in verdicts)
    if mode == "allow":
        assert all(v.error is None for v in verdicts)
    else:
        assert {(v.error.key, v.error.status) for v in verdicts if v.error} == {
            (ErrorKey.RATE_LIMIT_UNAVAILABLE, 503)
        }
        assert all(v.error is not None for v in verdicts)
    lines = [r.getMessage() for r in caplog.records if "rate-limit store unavailable" in r.getMessage()]
    assert len(lines) == 1 and f"on_storage_error={mode}" in lines[0]
    assert "redis://" not in lines[0]  # never a URI: it may carry a password
    await pool.close()


async def test_an_outage_ends_with_one_line(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    pool = LimiterPool()
    shared = limits(storage=redis.url)
    assert (await check(pool, shared, BUCKET, "k")).error is None
    redis.kill()
    with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
        assert (await check(pool, shared, BUCKET, "k")).store_error
        assert (await check(pool, shared, BUCKET, "k")).store_error
        redis.start()
        for _ in range(3):
            assert not (await check(pool, shared, BUCKET, "k")).store_error
    messages = [r.getMessage() for r in caplog.records]
    assert sum("rate-limit store unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    await pool.close()


async def test_readiness(redis: RedisServer) -> None:
    pool = LimiterPool()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    memory, live = limits(), limits(storage=redis.url, on_storage_error="deny")
    ready = await pool.readiness([memory, live])
    assert (ready.ok, ready.check) == (True, "reachable")
    allow = await pool.readiness([memory, limits(storage=dead)])
    assert (allow.ok, allow.check) == (True, "unreachable (on_storage_error: allow, requests pass unlimited)")
    deny = await pool.readiness([memory, limits(storage=dead, on_storage_error="deny")])
    assert (deny.ok, deny.check) == (False, "unreachable (on_storage_error: deny)")
    redis.freeze()
    try:
        frozen = await pool.readiness([live])
        assert (frozen.ok, frozen.check) == (False, "unreachable (on_storage_error: deny)")
    finally:
        redis.thaw()
    assert (await pool.readiness([live])).ok
    assert (await pool.readiness([])).ok
    await pool.close()
