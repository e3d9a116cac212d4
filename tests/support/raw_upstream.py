"""A stand-in for Voucherify on a raw socket that misbehaves on purpose: one asyncio server per fault.

Each connection runs `script(conn)`; a script reads requests with `conn.request()` and writes whatever bytes
it likes (late headers, a trickle, a reset, garbage, an endless body) or never reads at all. The server
records every connection and every whole request it read, so a test can assert what the upstream saw (a
POST sent once, not twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Script = Callable[["RawConnection"], Awaitable[None]]


@dataclass
class Seen:
    """One whole request as the upstream read it."""

    connection: int  # which connection (0, 1, ...) it came on
    method: str
    target: str
    head: bytes
    body: bytes


@dataclass
class RawConnection:
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    upstream: RawUpstream
    buffer: bytearray = field(default_factory=bytearray)

    async def request(self) -> Seen | None:
        """The next whole request on this connection (Content-Length bodies), None at EOF."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                size = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        size = int(value)
                if len(self.buffer) >= end + 4 + size:
                    body = bytes(self.buffer[end + 4 : end + 4 + size])
                    del self.buffer[: end + 4 + size]
                    method, target, _ = head.split(b" ", 2)
                    seen = Seen(self.index, method.decode(), target.decode(), head, body)
                    self.upstream.seen.append(seen)
                    return seen
            data = await self.reader.read(65536)
            if not data:
                return None
            self.buffer += data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class RawUpstream:
    def __init__(self, script: Script, *, backlog: int = 100) -> None:
        self.script = script
        self.backlog = backlog
        self.connections = 0
        self.open = 0
        self.seen: list[Seen] = []
        self.url = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = self.connections
        self.connections += 1
        self.open += 1
        try:
            await self.script(RawConnection(index, reader, writer, self))
        except (ConnectionError, asyncio.CancelledError):
            pass  # the gateway went away, or the test is over
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()

    async def wait_seen(self, count: int, bound: float = 30.0) -> None:
        """Until `count` whole requests were read; fails after `bound` seconds (a bound, not a timing)."""
        for _ in range(int(bound / 0.02)):
            if len(self.seen) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{len(self.seen)} of {count} requests reached the upstream")

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=self.backlog)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def answer(status: str = "200 OK", body: bytes = b'{"valid": true}', *extra: str) -> bytes:
    """A whole, well-formed JSON answer."""
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def raw_upstream(script: Script, **options: int) -> AsyncIterator[RawUpstream]:
    server = await RawUpstream(script, **options).start()
    try:
        yield server
    finally:
        await server.close()
