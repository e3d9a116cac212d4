"""End to end: a real HTTP client, the gateway on a real port, the upstream double on another."""

from __future__ import annotations

from tests.conftest import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN, raw_url

H = {"Origin": ORIGIN}


async def test_validate_forwarded_with_injected_credentials(gateway, upstream):
    client = await gateway()
    query = "code=SAVE10&customer%5Bsource_id%5D=c%201&item[0][price]=100"
    resp = await client.session.get(
        raw_url(client, f"/client/v1/validate?{query}"),
        headers={**H, "X-Client-Token": "browser-placeholder"},
    )
    assert resp.status == 200
    assert (await resp.json())["valid"] is True
    [seen] = upstream.received
    assert seen.method == "GET"
    assert seen.raw_path == f"/client/v1/validate?{query}"
    assert seen.headers["X-Client-Application-Id"] == CLIENT_APP_ID
    assert seen.headers["X-Client-Token"] == CLIENT_TOKEN
    assert seen.headers["Origin"] == ORIGIN
    assert seen.headers["X-Request-Id"] == resp.headers["X-Request-Id"]
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Vary"] == "Origin"
    assert "RateLimit" in resp.headers["Access-Control-Expose-Headers"]
