"""The embeddable promo-code widget (`/widget.js`) and the demo checkout page, read once at import."""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

_FILES = resources.files(__name__)
WIDGET_JS = _FILES.joinpath("widget.js").read_bytes()
DEMO_HTML = _FILES.joinpath("demo.html").read_bytes()
WIDGET_ETAG = '"' + hashlib.sha256(WIDGET_JS).hexdigest()[:20] + '"'


async def widget(request: web.Request) -> web.Response:
    headers = {
        "ETag": WIDGET_ETAG,
        "Cache-Control": "public, max-age=300",
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
    }
    tags = request.headers.get("If-None-Match", "")
    if WIDGET_ETAG in (tag.strip() for tag in tags.split(",")) or tags.strip() == "*":
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=WIDGET_JS, content_type="application/javascript", charset="utf-8", headers=headers
    )


async def demo_page(request: web.Request) -> web.Response:
    return web.Response(
        body=DEMO_HTML, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


def add_widget(app: web.Application) -> None:
    app.router.add_get("/widget.js", widget)


def add_demo_page(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
