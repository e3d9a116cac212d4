"""The floor of a Python relay: an asyncio protocol on httptools' parser, `gateway.http1`'s client, uvloop.

bare-http1 with aiohttp's server taken out: no request or response objects, no stream reader, one
`transport.write` per answer. Its CPU per request against bare-http1's is what aiohttp's server layer costs
a relay (informational, not a target): what the gateway could save at most by owning its public port's
protocol. No timeouts, no limits, no error answers: a contender, not a server to run.

python -m bench.bare_httptools PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import cast

import httptools
import uvloop

from bench.configs import IN_FLIGHT
from gateway.http1 import Http1Client, UpstreamError
from gateway.models import Timeouts

COPIED = frozenset({b"content-type", b"accept", b"user-agent", b"origin"})
TIMEOUTS = Timeouts(connect=2, read=10)
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Request = tuple[str, str, list[tuple[str, str]], bytes, bool]  # method, target, headers, body, keep-alive


class Relay(asyncio.Protocol):
    """One connection: requests parsed as they come, answered one at a time in their order."""

    def __init__(self, client: Http1Client, upstream: str) -> None:
        self.client, self.upstream = client, upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.url, self.headers, self.body = b"", list[tuple[str, str]](), list[bytes]()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools' callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in COPIED:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        method, keep_alive = parser.get_method().decode("ascii"), parser.should_keep_alive()
        self.queue.append((method, self.url.decode("latin-1"), self.headers, b"".join(self.body), keep_alive))
        self.url, self.headers, self.body = b"", [], []
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self.answer())

    async def answer(self) -> None:
        while self.queue and self.transport is not None:
            method, target, headers, body, keep_alive = self.queue.popleft()
            try:
                answer = await self.client.request(self.upstream, method, target, headers, body, TIMEOUTS)
            except UpstreamError:
                self.transport.write(BAD_GATEWAY)
                self.transport.close()
                break
            content_type = next((v for n, v in answer.headers if n.lower() == "content-type"), "")
            head = (
                f"HTTP/1.1 {answer.status} OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n\r\n"
            )
            self.transport.write(head.encode("latin-1") + answer.body)
            if not keep_alive:
                self.transport.close()
                break
        self.worker = None


async def main(port: int, upstream: str) -> None:
    client = Http1Client(IN_FLIGHT)  # the bench policy's cap: scenario (b)'s 2,000 in flight fit
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Relay(client, upstream), "127.0.0.1", port, backlog=1024)
    print(f"bare httptools proxy listening on 127.0.0.1:{port}", flush=True)
    try:
        await server.serve_forever()
    finally:
        await client.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2].rstrip("/")))
