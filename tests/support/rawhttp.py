"""HTTP/1.1 over a plain asyncio socket, for requests aiohttp's client would normalise or refuse to send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

Headers = Sequence[tuple[str, str]]


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    closed: bool  # the server said or showed that it closed the connection after this response

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(method: str, target: str, headers: Headers = (), body: bytes = b"") -> bytes:
    """A request head (and body) exactly as given; `Host` is added unless present."""
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append("Host: gateway.test")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(
    reader: asyncio.StreamReader, timeout: float = 5.0, *, check_closed: bool = False
) -> RawResponse:
    """One response: status line, headers, then a Content-Length or chunked body.

    With `check_closed`, also find out whether the server then closed the connection (waits up to 0.5 s).
    """
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    if "Content-Length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), timeout)
    elif headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), timeout)
    closed = headers.get("Connection", "").lower() == "close"
    if check_closed and not closed:
        try:  # a closed connection reads EOF at once; an open one times out
            closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
        except TimeoutError:
            closed = False
    return RawResponse(status, headers, body, closed)


async def raw_request(
    port: int,
    data: bytes,
    *,
    host: str = "127.0.0.1",
    local_addr: tuple[str, int] | None = None,
    timeout: float = 5.0,
    check_closed: bool = False,
) -> RawResponse:
    """Send `data` as written and read one response (see `read_response` for `check_closed`)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout, check_closed=check_closed)
    finally:
        writer.close()


async def send(
    port: int,
    method: str,
    target: str,
    headers: Headers = (),
    body: bytes = b"",
) -> RawResponse:
    """A request with a Content-Length when it has a body, target and headers sent exactly as given."""
    all_headers = list(headers)
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in all_headers):
        all_headers.append(("Content-Length", str(len(body))))
    return await raw_request(port, request_bytes(method, target, all_headers, body))
