"""The embeddable promo-code widget (`/widget.js`) and the demo checkout page, read once at import."""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

from gateway.answer import Answer

_FILES = resources.files(__name__)
WIDGET_JS = _FILES.joinpath("widget.js").read_bytes()
DEMO_HTML = _FILES.joinpath("demo.html").read_bytes()
WIDGET_ETAG = '"' + hashlib.sha256(WIDGET_JS).hexdigest()[:20] + '"'


_WIDGET_FIELDS = (
    ("ETag", WIDGET_ETAG),
    ("Cache-Control", "public, max-age=300"),
    ("Access-Control-Allow-Origin", "*"),
    ("Cross-Origin-Resource-Policy", "cross-origin"),  # a page with COEP require-corp may embed it
)


async def widget(request: web.Request) -> Answer:
    tags = request.headers.get("If-None-Match", "")
    # the weak comparison (RFC 9110 13.1.2): W/"x" is "x", as a compressing proxy rewrites the ETag
    if WIDGET_ETAG in (tag.strip().removeprefix("W/") for tag in tags.split(",")) or tags.strip() == "*":
        return Answer(304, _WIDGET_FIELDS)
    return Answer(200, _WIDGET_FIELDS, WIDGET_JS, "application/javascript; charset=utf-8")


async def demo_page(request: web.Request) -> Answer:
    return Answer(200, (("Cache-Control", "no-cache"),), DEMO_HTML, "text/html; charset=utf-8")


def add_widget(app: web.Application) -> None:
    app.router.add_get("/widget.js", widget)


def add_demo_page(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
