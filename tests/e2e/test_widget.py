"""The widget is served by every gateway, cacheable, and holds no credential; the demo page only in demo."""

from __future__ import annotations

from gateway.widget import WIDGET_ETAG, WIDGET_JS
from tests.conftest import CLIENT_APP_ID, CLIENT_TOKEN, GatewayFactory
from tests.support.upstream_double import UpstreamDouble


async def test_widget_served_with_etag_and_revalidated(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    first = await client.get("/widget.js")
    assert first.status == 200
    assert first.headers["Content-Type"].startswith("application/javascript")
    assert first.headers["ETag"] == WIDGET_ETAG
    assert "max-age" in first.headers["Cache-Control"]
    assert first.headers["X-Content-Type-Options"] == "nosniff"
    assert first.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert await first.read() == WIDGET_JS
    again = await client.get("/widget.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""
    stale = await client.get("/widget.js", headers={"If-None-Match": '"something-else"'})
    assert stale.status == 200
    assert upstream.received == []


async def test_widget_holds_no_credential(gateway: GatewayFactory) -> None:
    client = await gateway()
    body = await (await client.get("/widget.js")).text()
    assert CLIENT_APP_ID not in body and CLIENT_TOKEN not in body
    assert "X-Client-Token" not in body


async def test_demo_page_is_not_on_a_normal_gateway(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.get("/", headers={"Origin": "https://shop.example.com"})
    assert resp.status == 404
    assert (await resp.json())["key"] == "not_found"


async def test_widget_revalidation_compares_entity_tags_weakly(gateway: GatewayFactory) -> None:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): a proxy that compresses the script turns
    its ETag into W/"…", and browsers behind it send that back. Each such revalidation was a full 200."""
    client = await gateway()
    weak = "W/" + WIDGET_ETAG
    for tags in (weak, f'"other", {weak}', f' {WIDGET_ETAG} , "other"'):
        again = await client.get("/widget.js", headers={"If-None-Match": tags})
        assert again.status == 304, tags
        assert again.headers["ETag"] == WIDGET_ETAG
    stale = await client.get("/widget.js", headers={"If-None-Match": 'W/"something-else"'})
    assert stale.status == 200
