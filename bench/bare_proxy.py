"""The limit of this stack: aiohttp pass-through, uvloop and one pooled ClientSession, no policy at all.

python -m bench.bare_proxy PORT UPSTREAM_URL
"""

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

COPIED = ("Content-Type", "Accept", "User-Agent", "Origin")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=15)
    app[SESSION] = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[SESSION].close()


async def handle(request: web.Request) -> web.Response:
    headers = {name: request.headers[name] for name in COPIED if name in request.headers}
    body = await request.read()
    url = request.app[UPSTREAM] + request.raw_path
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body) as answer:
        payload = await answer.read()
        return web.Response(status=answer.status, body=payload, content_type=answer.content_type)


if __name__ == "__main__":
    app = web.Application()
    app[UPSTREAM] = sys.argv[2].rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    print(f"bare proxy listening on 127.0.0.1:{sys.argv[1]}", flush=True)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        backlog=1024,  # as `voucherify-gateway serve`: scenario (b) opens 2,000 connections at once
        print=None,
        loop=uvloop.new_event_loop(),
    )
