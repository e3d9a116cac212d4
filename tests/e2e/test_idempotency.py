"""Idempotency-Key end to end: the gateway on a real port in front of the recording upstream double."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tests.conftest import GatewayClient, GatewayFactory, assert_gateway_error, base_policy
from tests.support.constants import CLIENT_TOKEN, JSON_H, ORIGIN
from tests.support.raw_upstream import RawConnection, answer, raw_upstream
from tests.support.rawhttp import send
from tests.support.upstream_double import Reply, UpstreamDouble

DANGER = {"danger_zone": {"redeem": True, "publish": True, "create_customers": True}}
REDEEM = "/client/v1/redeem?code=SAVE10"
BODY = json.dumps({"order": {"amount": 12000}})


def policy(upstream_url: str, idempotency: dict[str, Any] | None = None, **project: Any) -> dict[str, Any]:
    tree = base_policy(upstream_url, **DANGER, **project)
    if idempotency is not None:
        tree["idempotency"] = idempotency
    return tree


async def test_preflight_allows_the_header_and_exposes_the_replay_flag(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    resp = await client.options(
        REDEEM,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,idempotency-key",
        },
    )
    assert resp.status == 204
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "idempotency-key"} <= allowed
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert "idempotent-replayed" in exposed
    assert upstream.received == []


async def test_the_header_never_reaches_the_upstream_even_when_off(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    for idempotency in ({"ttl": 0}, None):
        client = await gateway(policy(upstream.url, idempotency))
        upstream.received.clear()
        resp = await client.post(REDEEM, data=BODY, headers={**JSON_H, "Idempotency-Key": "k-never-sent"})
        assert resp.status == 200
        [seen] = upstream.received
        assert "Idempotency-Key" not in seen.headers
        assert all("k-never-sent" not in value for value in seen.headers.values())


# ---------------------------------------------------------------------------------------------- phase B


def keyed(key: str = "k-1", **more: str) -> dict[str, str]:
    return {**JSON_H, "Idempotency-Key": key, **more}


Answer = tuple[int, CIMultiDictProxy[str], bytes]


async def post(
    client: GatewayClient, key: str = "k-1", body: str = BODY, path: str = REDEEM, **headers: str
) -> Answer:
    resp = await client.post(path, data=body, headers=keyed(key, **headers))
    return resp.status, resp.headers, await resp.read()


async def test_a_retry_gets_the_first_answer_and_voucherify_is_called_once(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(201, {"id": "r_1", "result": "SUCCESS"}, {"X-Other": "1"}))
    first = await post(client)
    assert first[0] == 201 and "Idempotent-Replayed" not in first[1]
    again = await post(client, key='"k-1"')  # the same key, as an sf-string
    assert again[0] == 201 and again[2] == first[2]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[1]["Content-Type"] == first[1]["Content-Type"]
    assert again[1]["X-Request-Id"] != first[1]["X-Request-Id"]
    assert "X-Other" not in again[1]
    assert len(upstream.received) == 1


async def test_a_replay_carries_the_replaying_origins_cors(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    await post(client)
    other = "https://a.example.org"  # allowed by the wildcard entry
    status, headers, _ = await post(client, Origin=other)
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert headers["Access-Control-Allow-Origin"] == other
    assert "Idempotent-Replayed" in headers["Access-Control-Expose-Headers"]
    assert headers["Vary"] == "Origin"
    assert "RateLimit" in headers and "RateLimit-Policy" in headers  # the replaying request's own
    assert len(upstream.received) == 1


async def test_another_request_with_the_key_is_422(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(policy(upstream.url))
    await post(client)
    for body, path in [
        (json.dumps({"order": {"amount": 1}}), REDEEM),
        (BODY, "/client/v1/redeem?code=OTHER"),
        (BODY, "/client/v1/redemptions"),
    ]:
        status, headers, raw = await post(client, body=body, path=path)
        assert_gateway_error(status, json.loads(raw), headers, 422, "idempotency_key_reused")
    assert len(upstream.received) == 1


async def test_twenty_at_once_reach_voucherify_once(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(200, {"id": "r_1"}, delay=0.5))
    answers = await asyncio.gather(*(post(client) for _ in range(20)))
    assert len(upstream.received) == 1
    statuses = Counter("replayed" if h.get("Idempotent-Replayed") == "true" else s for s, h, _ in answers)
    assert statuses[200] == 1, statuses
    assert statuses[409] + statuses["replayed"] == 19, statuses
    for status, headers, raw in answers:
        if status == 409:
            assert_gateway_error(status, json.loads(raw), headers, 409, "idempotency_key_in_flight")
    status, headers, raw = await post(client)  # once the first is done, a replay
    assert (status, headers["Idempotent-Replayed"], raw) == (200, "true", b'{"id": "r_1"}')
    assert len(upstream.received) == 1


# ---------------------------------------------------------------------------------------------- what is kept


async def test_voucherify_errors_below_500_are_kept_too(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(400, {"code": 400, "key": "quota_exceeded"}))
    first = await post(client)
    again = await post(client)
    assert (again[0], again[1]["Idempotent-Replayed"], again[2]) == (400, "true", first[2])
    assert len(upstream.received) == 1


async def test_voucherify_5xx_and_429_keep_nothing_and_the_key_is_free_again(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    for status in (500, 503):
        upstream.received.clear()
        upstream.reply(Reply(status, {"code": status}, {"Retry-After": "1"}))
        key = f"k-{status}"
        first = await post(client, key)
        assert "Idempotent-Replayed" not in first[1]
        second = await post(client, key)  # the retry reaches Voucherify, and succeeds
        assert second[0] == 200 and "Idempotent-Replayed" not in second[1]
        assert len(upstream.received) == 2
        third = await post(client, key)  # and that answer is kept
        assert third[1]["Idempotent-Replayed"] == "true" and len(upstream.received) == 2


async def test_voucherify_429_keeps_nothing(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(429, {"code": 429}, {"Retry-After": "30"}))
    for _ in range(2):  # the gateway's 503 (and then its hold-off): no 409, no replay, the key is free
        status, headers, raw = await post(client)
        assert_gateway_error(status, json.loads(raw), headers, 503, "upstream_quota_exhausted")
        assert "Idempotent-Replayed" not in headers
    assert len(upstream.received) == 1


def assert_replayed_error(first: Answer, again: Answer, code: int, key: str) -> None:
    """The first request's own error again, with the replay's id in its body as in its X-Request-Id
    (POLICY.md: the two are the same id)."""
    assert again[1].get("Idempotent-Replayed") == "true"
    assert_gateway_error(again[0], json.loads(again[2]), again[1], code, key)
    replayed = json.loads(again[2])
    assert replayed["request_id"] != json.loads(first[2])["request_id"]
    assert json.loads(first[2]) | {"request_id": replayed["request_id"]} == replayed


async def test_a_timeout_is_an_unknown_outcome_and_kept(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = policy(upstream.url)
    tree["upstream"] = {"read_timeout": 0.3}
    client = await gateway(tree)
    upstream.reply(Reply(200, {"id": "late"}, delay=1.0))
    first = await post(client)
    assert_gateway_error(first[0], json.loads(first[2]), first[1], 504, "upstream_timeout")
    assert_replayed_error(first, await post(client), 504, "upstream_timeout")
    assert len(upstream.received) == 1  # never a second redemption


async def test_a_502_after_the_request_was_sent_is_kept(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(reset=True))  # the double reads the request, then drops the connection
    first = await post(client)
    assert_gateway_error(first[0], json.loads(first[2]), first[1], 502, "upstream_unavailable")
    assert_replayed_error(first, await post(client), 502, "upstream_unavailable")
    assert len(upstream.received) == 1


async def test_a_502_for_an_answer_echoing_the_secret_is_kept_voucherify_was_called(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """An answer that holds the project's secret is not passed on (502), but the request reached
    Voucherify, which may have redeemed: "a 502 after the request was sent" is kept, and the retry with the
    same key is that 502 again, never a second redemption."""
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(200, {"id": "r-1", "echo": CLIENT_TOKEN}))
    first = await post(client)
    assert_gateway_error(first[0], json.loads(first[2]), first[1], 502, "upstream_unavailable")
    assert CLIENT_TOKEN.encode() not in first[2]
    assert_replayed_error(first, await post(client), 502, "upstream_unavailable")
    assert len(upstream.received) == 1  # never a second redemption


async def test_a_status_that_is_not_http_is_a_502_kept_never_a_second_redemption(
    gateway: GatewayFactory,
) -> None:
    """A 999 from upstream was relayed as the status, and as no status below 500 it kept nothing: the
    retry with the same key redeemed again. It is not HTTP (RFC 9110 15: 100..599): a 502 after sending."""

    async def odd_status(conn: RawConnection) -> None:
        while await conn.request() is not None:
            await conn.write(answer("999 Odd", b'{"id": "r-1", "result": "SUCCESS"}'))

    async with raw_upstream(odd_status) as odd:
        client = await gateway(policy(odd.url))
        first = await post(client)
        assert_gateway_error(first[0], json.loads(first[2]), first[1], 502, "upstream_unavailable")
        assert_replayed_error(first, await post(client), 502, "upstream_unavailable")
        assert len(odd.seen) == 1  # never a second redemption


async def test_a_502_where_nothing_was_sent_keeps_nothing(gateway: GatewayFactory) -> None:
    from gateway.serve import free_port

    client = await gateway(policy(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    for _ in range(2):
        status, headers, raw = await post(client)
        assert_gateway_error(status, json.loads(raw), headers, 502, "upstream_unavailable")
        assert "Idempotent-Replayed" not in headers


async def test_an_answer_near_max_body_bytes_is_kept_whole_and_a_larger_one_is_bounded(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = policy(upstream.url)
    tree["listen"] = {"max_body_bytes": 4000}
    client = await gateway(tree)
    body = json.dumps({"note": "x" * 3900})
    assert 3900 < len(body) <= 4000
    near = json.dumps({"id": "r", "echo": "y" * 3950}).encode()
    assert len(near) <= 4000
    upstream.reply(Reply(200, near))
    first = await post(client, "near", body)
    assert first[0] == 200 and first[2] == near and len(upstream.received[0].body) == len(body)
    again = await post(client, "near", body)
    assert (again[1]["Idempotent-Replayed"], again[2]) == ("true", near)

    upstream.reply(Reply(201, b'{"id":"' + b"z" * 5000 + b'"}'))
    big = await post(client, "big", body)
    assert big[0] == 201 and len(big[2]) > 5000  # the first answer is whole
    replay = await post(client, "big", body)
    document = json.loads(replay[2])
    assert_gateway_error(replay[0], document, replay[1], 502, "upstream_unavailable")
    assert replay[1]["Idempotent-Replayed"] == "true" and "201" in document["details"]
    assert len(upstream.received) == 2


# ---------------------------------------------------------------------------------------------- the header


async def test_bad_values_and_two_headers_are_400_and_nothing_is_sent(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    for value in ['"unclosed', "a\\b", "x" * 256, '""', '"k";a=1', "ké"]:
        status, headers, raw = await post(client, value)
        assert_gateway_error(status, json.loads(raw), headers, 400, "invalid_idempotency_key")
        assert value not in raw.decode()
    for value in ["k\xff", "\xe9t\xe9"]:  # bytes aiohttp's client will not send (its server refuses controls)
        sent = [*JSON_H.items(), ("Idempotency-Key", value)]
        raw_answer = await send(client.port, "POST", REDEEM, sent, BODY.encode())
        assert_gateway_error(
            raw_answer.status, raw_answer.json(), raw_answer.headers, 400, "invalid_idempotency_key"
        )
    two = CIMultiDict(JSON_H)
    two.add("Idempotency-Key", "k-1")
    two.add("Idempotency-Key", "k-1")
    resp = await client.post(REDEEM, data=BODY, headers=two)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 400, "invalid_idempotency_key")
    assert upstream.received == []


async def test_required_makes_a_missing_key_400_on_those_operations_only(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url, {"required": True}))
    resp = await client.post(REDEEM, data=BODY, headers=JSON_H)
    assert_gateway_error(resp.status, await resp.json(), resp.headers, 400, "idempotency_key_required")
    assert "RateLimit" in resp.headers  # after the per-IP limit: it counted
    resp = await client.post("/client/v1/validations", data=BODY, headers=JSON_H)
    assert resp.status == 200
    assert [seen.path for seen in upstream.received] == ["/client/v1/validations"]


async def test_ttl_zero_ignores_the_header_and_required(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url, {"ttl": 0, "required": True}))
    for _ in range(2):
        status, headers, _ = await post(client, '"unclosed')
        assert status == 200 and "Idempotent-Replayed" not in headers
    resp = await client.post(REDEEM, data=BODY, headers=JSON_H)
    assert resp.status == 200
    assert len(upstream.received) == 3


async def test_the_per_ip_limit_comes_first_and_counts_replays(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = policy(upstream.url)
    tree["rate_limit"] = {"per_ip": "2 per minute"}
    client = await gateway(tree)
    assert (await post(client))[0] == 200
    replay = await post(client)
    assert replay[1]["Idempotent-Replayed"] == "true"
    limited = await post(client)  # the third is refused by the limit before its key is looked at
    assert_gateway_error(limited[0], json.loads(limited[2]), limited[1], 429, "too_many_requests")
    assert "Idempotent-Replayed" not in limited[1]


async def test_a_key_belongs_to_its_project(gateway: GatewayFactory, upstream: UpstreamDouble) -> None:
    tree = policy(upstream.url)
    tree["projects"]["other"] = dict(tree["projects"]["shop"])
    client = await gateway(tree)
    await post(client)
    status, headers, _ = await post(client, path="/other/client/v1/redeem?code=SAVE10")
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert len(upstream.received) == 2
    status, headers, _ = await post(client, path="/shop/client/v1/redeem?code=SAVE10")  # the default one
    assert headers["Idempotent-Replayed"] == "true"


# ---------------------------------------------------------------------------------------------- in flight


async def test_a_client_gone_mid_flight_still_has_its_answer_kept_for_the_retry(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(201, {"id": "r_gone"}, delay=0.6))
    gone = asyncio.ensure_future(post(client))
    while not upstream.received:  # noqa: ASYNC110 - until the call is under way
        await asyncio.sleep(0.01)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    in_flight = await post(client)
    assert_gateway_error(
        in_flight[0], json.loads(in_flight[2]), in_flight[1], 409, "idempotency_key_in_flight"
    )
    for _ in range(200):  # until Voucherify's answer came and was kept
        status, headers, raw = await post(client)
        if status != 409:
            break
        await asyncio.sleep(0.02)
    assert (status, headers["Idempotent-Replayed"], raw) == (201, "true", b'{"id": "r_gone"}')
    assert len(upstream.received) == 1


async def test_another_request_with_the_key_in_flight_is_422(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway(policy(upstream.url))
    upstream.reply(Reply(200, {"id": "slow"}, delay=0.5))
    first = asyncio.ensure_future(post(client))
    while not upstream.received:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    other = await post(client, body=json.dumps({"order": {"amount": 2}}))
    assert_gateway_error(other[0], json.loads(other[2]), other[1], 422, "idempotency_key_reused")
    assert (await first)[0] == 200
    assert len(upstream.received) == 1


# ---------------------------------------------------------------------------------------------- reloads


async def test_a_reload_turning_it_off_or_changing_ttl_applies_to_new_requests(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    from gateway.app import STATE
    from tests.conftest import make_policy

    tree = policy(upstream.url)
    client = await gateway(tree)
    state = client.app[STATE]
    await post(client, "before")
    state.set_policy(make_policy(policy(upstream.url, {"ttl": 0})))
    status, headers, _ = await post(client, "before")  # off: the header is ignored, the call made
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert len(upstream.received) == 2
    state.set_policy(make_policy(policy(upstream.url, {"ttl": 0.5})))
    assert (await post(client, "before"))[1]["Idempotent-Replayed"] == "true"  # kept before: still there
    await post(client, "short")
    assert (await post(client, "short"))[1]["Idempotent-Replayed"] == "true"
    await asyncio.sleep(0.7)  # past the new ttl: the key is new again
    status, headers, _ = await post(client, "short")
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert len(upstream.received) == 4


# ---------------------------------------------------------------------------------------------- the sandbox


async def test_a_replay_does_not_spend_the_sandboxes_last_use(gateway: GatewayFactory) -> None:
    """The offline sandbox redeems for real: ONEUSE has one use, and a replay must not take a second."""
    from aiohttp import web

    from gateway.sandbox import SANDBOX_RECORDS, SandboxCredentials, create_sandbox_app

    credentials = SandboxCredentials()
    sandbox = create_sandbox_app(credentials)
    runner = web.AppRunner(sandbox, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        tree = policy(f"http://127.0.0.1:{runner.addresses[0][1]}")
        tree["projects"]["shop"]["credentials"] = {
            "client_application_id": credentials.client_application_id,
            "client_secret_key": credentials.client_secret_key,
        }
        client = await gateway(tree)
        oneuse = "/client/v1/redeem?code=ONEUSE"
        first = await post(client, "pay-1", path=oneuse)
        assert first[0] == 200 and json.loads(first[2])["result"] == "SUCCESS"
        again = await post(client, "pay-1", path=oneuse)
        assert (again[0], again[1]["Idempotent-Replayed"], again[2]) == (200, "true", first[2])
        spent = await post(client, "pay-2", path=oneuse)  # a new key is a new redemption: none left
        assert spent[0] == 400 and "Idempotent-Replayed" not in spent[1]
        assert [r.path for r in sandbox[SANDBOX_RECORDS]] == ["/client/v1/redeem"] * 2
    finally:
        await runner.cleanup()


async def test_a_failed_code_refusal_after_the_claim_keeps_nothing_and_replays_cost_no_budget(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = policy(upstream.url)
    tree["rate_limit"]["failed_codes"] = "1 per hour"
    client = await gateway(tree)
    upstream.reply(Reply(404, {"code": 404, "key": "resource_not_found"}))
    unknown = await post(client, "a")  # an unknown code: the budget is spent
    assert unknown[0] == 404
    for _ in range(2):  # refused by the budget after its key was claimed: the key is free again, not 409
        refused = await post(client, "b")
        assert_gateway_error(refused[0], json.loads(refused[2]), refused[1], 429, "too_many_failed_codes")
    replay = await post(client, "a")  # a replay is answered before the budget, and costs nothing
    assert (replay[0], replay[1]["Idempotent-Replayed"], replay[2]) == (404, "true", unknown[2])
    assert len(upstream.received) == 1


async def test_a_quota_refusal_after_the_claim_keeps_nothing_and_replays_cost_no_quota(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    tree = policy(upstream.url)
    tree["rate_limit"]["upstream_quota"] = "1 per hour"
    client = await gateway(tree)
    first = await post(client, "a")
    assert first[0] == 200
    for _ in range(2):  # refused by the quota after its key was claimed: the key is free again, not 409
        refused = await post(client, "b")
        assert_gateway_error(refused[0], json.loads(refused[2]), refused[1], 503, "upstream_quota_exhausted")
    replay = await post(client, "a")  # answered without Voucherify: the spent quota does not matter
    assert (replay[0], replay[1]["Idempotent-Replayed"], replay[2]) == (200, "true", first[2])
    assert len(upstream.received) == 1


async def test_a_client_gone_mid_flight_is_still_charged_the_unknown_code_its_replay_reveals(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    """The call outlives the handler and its answer is kept: the code it says does not exist is charged,
    or leaving mid-flight and replaying would try codes without spending the failed-code budget."""
    tree = policy(upstream.url)
    tree["rate_limit"]["failed_codes"] = "1 per hour"
    client = await gateway(tree)
    upstream.reply(Reply(404, {"code": 404, "key": "resource_not_found"}, delay=0.4))
    gone = asyncio.ensure_future(post(client, "a"))
    while not upstream.received:  # noqa: ASYNC110 - until the call is under way
        await asyncio.sleep(0.01)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    for _ in range(200):  # until Voucherify's answer came and was kept
        status, headers, raw = await post(client, "a")
        if status != 409:
            break
        await asyncio.sleep(0.02)
    assert (status, headers["Idempotent-Replayed"], json.loads(raw)["key"]) == (
        404,
        "true",
        "resource_not_found",
    )
    refused = await post(client, "b", path="/client/v1/redeem?code=OTHER")  # the budget is spent
    assert_gateway_error(refused[0], json.loads(refused[2]), refused[1], 429, "too_many_failed_codes")
    assert len(upstream.received) == 1


async def test_a_claim_that_took_effect_before_the_store_failed_or_the_client_left_frees_the_key(
    gateway: GatewayFactory, upstream: UpstreamDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store call can take effect and still fail (Redis ran the script, its reply came too late), and a
    handler can be cancelled while its claim is on its way: the 503 and the client gone hold no key."""
    from gateway.ratelimit import StoreUnavailable
    from gateway.ratelimit.memory_store import MemoryStore

    client = await gateway(policy(upstream.url))
    claim = MemoryStore.claim

    async def late(self: MemoryStore, key: str, value: bytes, ttl: float) -> bytes | None:
        await claim(self, key, value, ttl)
        raise StoreUnavailable("its reply came too late")

    monkeypatch.setattr(MemoryStore, "claim", late)
    status, headers, raw = await post(client, "late")
    assert_gateway_error(status, json.loads(raw), headers, 503, "idempotency_unavailable")

    entered = asyncio.Event()

    async def slow(self: MemoryStore, key: str, value: bytes, ttl: float) -> bytes | None:
        held = await claim(self, key, value, ttl)
        entered.set()
        await asyncio.sleep(1)
        return held

    monkeypatch.setattr(MemoryStore, "claim", slow)
    gone = asyncio.ensure_future(post(client, "gone"))
    await entered.wait()
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    monkeypatch.setattr(MemoryStore, "claim", claim)
    for key in ("late", "gone"):
        for _ in range(50):  # the handler's cancellation reaches the server a moment later
            status, headers, _raw = await post(client, key)
            if status != 409:
                break
            await asyncio.sleep(0.02)
        assert status == 200 and "Idempotent-Replayed" not in headers, key
    assert len(upstream.received) == 2
