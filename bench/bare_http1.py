"""The gateway's own transport with no policy: aiohttp's server, `gateway.http1`'s client, uvloop.

The gateway replaced aiohttp's client with `gateway/http1.py`; this contender shows what that transport costs
alone, so the gateway's ratio to it is the price of the policy itself (informational, not a target).

python -m bench.bare_http1 PORT UPSTREAM_URL
"""

import sys
from collections.abc import AsyncIterator

import uvloop
from aiohttp import web

from bench.configs import IN_FLIGHT
from gateway.http1 import Http1Client
from gateway.models import Timeouts

COPIED = ("Content-Type", "Accept", "User-Agent", "Origin")
CLIENT = web.AppKey("client", Http1Client)
UPSTREAM = web.AppKey("upstream", str)
TIMEOUTS = Timeouts(connect=2, read=10)


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = Http1Client(IN_FLIGHT)  # the bench policy's cap: scenario (b)'s 2,000 in flight fit
    yield
    await app[CLIENT].close()


async def handle(request: web.Request) -> web.Response:
    headers = [(name, request.headers[name]) for name in COPIED if name in request.headers]
    body = await request.read()
    answer = await request.app[CLIENT].request(
        request.app[UPSTREAM], request.method, request.raw_path, headers, body, TIMEOUTS
    )
    content_type = next((v for n, v in answer.headers if n.lower() == "content-type"), None)
    return web.Response(status=answer.status, body=answer.body, headers={"Content-Type": content_type or ""})


if __name__ == "__main__":
    app = web.Application()
    app[UPSTREAM] = sys.argv[2].rstrip("/")
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    print(f"bare http1 proxy listening on 127.0.0.1:{sys.argv[1]}", flush=True)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        backlog=1024,  # as `voucherify-gateway serve`: scenario (b) opens 2,000 connections at once
        print=None,
        loop=uvloop.new_event_loop(),
    )
