"""The public port skips aiohttp's router for the gateway's own route (`listen.direct_dispatch`), and only
for it: the widget, the demo page and `Expect: 100-continue` still take the router's way."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.listen import Handler, direct_dispatch
from tests.conftest import GatewayFactory, base_policy, make_policy
from tests.support.constants import ORIGIN
from tests.support.upstream_double import UpstreamDouble


def counting_router(client: Any) -> list[str]:
    """The paths the app's router resolves from now on."""
    router = client.server.app.router
    resolved: list[str] = []
    resolve = router.resolve

    async def counted(request: web.Request) -> Any:
        resolved.append(request.path)
        return await resolve(request)

    router.resolve = counted
    return resolved


async def test_the_gateways_route_is_dispatched_without_the_router(
    gateway: GatewayFactory, upstream: UpstreamDouble
) -> None:
    client = await gateway()
    resolved = counting_router(client)
    answer = await client.get("/client/v1/validate?code=SAVE10", headers={"Origin": ORIGIN})
    assert answer.status == 200 and len(upstream.received) == 1
    assert resolved == []
    missing = await client.post("/widget.js", headers={"Origin": ORIGIN})  # routed: the catch-all's
    assert missing.status == 404 and (await missing.json())["key"] == "not_found"
    assert resolved == ["/widget.js"]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/widget.js", {}),
        ("HEAD", "/widget.js", {}),
        ("POST", "/client/v1/validations", {"Expect": "100-continue", "Content-Type": "application/json"}),
    ],
)
async def test_the_apps_other_routes_and_expect_take_the_router(
    gateway: GatewayFactory, upstream: UpstreamDouble, method: str, path: str, headers: dict[str, str]
) -> None:
    client = await gateway()
    resolved = counting_router(client)
    answer = await client.request(method, path, headers={"Origin": ORIGIN, **headers}, data=b"{}")
    assert answer.status == 200
    assert resolved == [path]


async def items(request: web.Request) -> web.Response:
    return web.Response(text=request.match_info["id"])


async def test_an_app_with_a_route_it_does_not_know_keeps_the_router(upstream: UpstreamDouble) -> None:
    app = create_app(make_policy(base_policy(upstream.url)))
    app.router.add_get("/items/{id}", items)  # not a plain path: the shortcut cannot tell what it takes
    routed = cast(Handler, app._handle)
    assert direct_dispatch(app, routed) is routed
    plain = create_app(make_policy(base_policy(upstream.url)))
    assert direct_dispatch(plain, cast(Handler, plain._handle)) is not plain._handle
