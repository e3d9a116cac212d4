"""The bench's trace collector: accepts OTLP/HTTP trace exports and answers as a collector does (an empty
ExportTraceServiceResponse), counting the exports and bytes it took; nothing is decoded or kept.

python -m bench.otlp_sink PORT
"""

import sys

import uvloop
from aiohttp import web

EXPORTS = web.AppKey("exports", list)


async def export(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[EXPORTS].append(len(body))
    return web.Response(body=b"", content_type="application/x-protobuf")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EXPORTS] = []
    app.router.add_post("/v1/traces", export)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
