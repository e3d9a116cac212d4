"""A stand-in for Voucherify on a real socket: records what it received, answers in Voucherify's shapes."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.serving import port_of


@dataclass
class Received:
    method: str
    raw_path: str  # path and query, exactly as received
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def query(self) -> str:
        return self.raw_path.partition("?")[2]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False  # drop the connection instead of answering


class UpstreamDouble:
    """Answers each request with the next queued Reply, or a default Voucherify-like 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path, request.headers, body))
        reply = self.replies.popleft() if self.replies else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        payload = reply.body
        if payload is None:
            payload = {"valid": True, "code": "SAVE10", "request_id": "v-double"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = CIMultiDict(reply.headers)
        headers.setdefault("Content-Type", "application/json")
        if reply.status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(status=reply.status, body=data, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{port_of(self._runner)}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class GarbageServer:
    """Answers every connection with bytes that are not HTTP."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.read(1024)
        writer.write(b"\x00\x01garbage that is not http\r\n\r\n")
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
