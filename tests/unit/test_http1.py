"""The upstream HTTP/1.1 client (gateway/http1.py) against scripted upstreams on real sockets."""

from __future__ import annotations

import asyncio
import gc
import gzip
import inspect
import logging
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway import http1
from gateway.errors import GatewayError, Refused
from gateway.http1 import (
    ConnectFailed,
    ConnectionLost,
    Http1Client,
    PoolFull,
    ProtocolError,
    ResponseTooLarge,
    UnsafeRequest,
    UpstreamTimeout,
)
from gateway.models import Timeouts, UpstreamCall
from gateway.upstream import Http1Transport
from tests.conftest import free_port
from tests.support.tls import self_signed as _self_signed

T = Timeouts(1, 2)
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


def reply(
    body: bytes = b'{"valid": true}',
    status: str = "200 OK",
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),),
    length: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{n}: {v}" for n, v in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _take_request(buf: bytearray) -> bytes | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[: end + 4])
    size = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            size = int(value)
    if len(buf) < end + 4 + size:
        return None
    request = bytes(buf[: end + 4 + size])
    del buf[: end + 4 + size]
    return request


class Upstream:
    """Counts connections (and how many at once), records every byte, answers each request with `answer`."""

    def __init__(self, answer: Answer, host: str = "127.0.0.1") -> None:
        self.answer = answer
        self.host = host
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.raw = bytearray()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        buf = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                self.raw += data
                buf += data
                while (request := _take_request(buf)) is not None:
                    self.requests.append(request)
                    if not await self.answer(reader, writer, len(self.requests) - 1):
                        return
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def answering(*answers: bytes, keep: bool = True) -> Answer:
    """Answer request i with answers[i] (the last one repeated)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(answers[min(index, len(answers) - 1)])
        await writer.drain()
        return keep

    return answer


class Servers:
    """Starts scripted upstreams for one test and closes them after it."""

    def __init__(self) -> None:
        self.started: list[Upstream] = []

    async def __call__(
        self, answer: Answer, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
    ) -> Upstream:
        server = await Upstream(answer, host).start(ssl_context)
        self.started.append(server)
        return server

    async def close(self) -> None:
        for server in self.started:
            await server.close()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    yield started
    await started.close()


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(10)
    yield http
    await http.close()


async def get(http: Http1Client, server: Upstream, target: str = "/v1/x", **kw: Any) -> http1.Response:
    return await http.request(server.url, kw.pop("method", "GET"), target, kw.pop("headers", ()), b"", T)


# --- what is sent


async def test_the_request_is_exactly_what_was_asked(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply()))
    headers = CIMultiDict([("X-Client-Token", "tok"), ("Accept", "application/json")])
    await client.request(server.url, "POST", "/client/v1/validate?code=A", headers.items(), b"{}", T)
    await client.request(server.url, "GET", "/client/v1/x", (), b"", T)
    await client.request(server.url, "POST", "/client/v1/y", (), b"", T)
    port = server.url.rsplit(":", 1)[1]
    assert server.requests == [
        b"POST /client/v1/validate?code=A HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Accept-Encoding: gzip, deflate\r\n"
        + b"X-Client-Token: tok\r\nAccept: application/json\r\nContent-Length: 2\r\n\r\n{}",
        f"GET /client/v1/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Accept-Encoding: gzip, deflate\r\n\r\n",  # no User-Agent, no Content-Type, no Content-Length
        f"POST /client/v1/y HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Accept-Encoding: gzip, deflate\r\nContent-Length: 0\r\n\r\n",
    ]


async def test_the_client_owns_framing_headers_and_a_base_path_prefix(
    servers: Servers, client: Http1Client
) -> None:
    server = await servers(answering(reply()))
    headers = [
        ("Host", "evil.test"),
        ("Content-Length", "100"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        ("Accept-Encoding", "br"),
        ("X-Ok", "1"),
    ]
    await client.request(server.url + "/prefix", "PUT", "/v1/a", headers, b"abc", T)
    head = server.requests[0].decode()
    assert head.startswith("PUT /prefix/v1/a HTTP/1.1\r\n")
    assert "evil" not in head and "chunked" not in head and "br" not in head and "close" not in head
    assert head.count("Content-Length") == 1 and "Content-Length: 3\r\n" in head
    assert "X-Ok: 1\r\n" in head


# --- how answers are read


async def test_content_length_body(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply(b"hello", headers=(("X-Cafe", "d\xe9j\xe0"),))))
    response = await get(client, server)
    assert response.status == 200
    assert response.body == b"hello"
    assert response.headers == [("X-Cafe", "d\xe9j\xe0"), ("Content-Length", "5")]  # latin-1, as received


async def test_chunked_body(servers: Servers, client: Http1Client) -> None:
    chunked = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    server = await servers(
        answering(reply(chunked, headers=(("Transfer-Encoding", "chunked"),), length=False))
    )
    response = await get(client, server)
    assert response.body == b"hello world"
    assert (await get(client, server)).body == b"hello world"
    assert server.connections == 1


async def test_trailer_fields_are_not_headers(servers: Servers, client: Http1Client) -> None:
    """Fields after a chunked body were appended to the header fields, after every decision made on them
    (framing, encoding): a trailer `Content-Type` or `Cache-Control` became a header the browser got."""
    chunked = b"5\r\nhello\r\n0\r\nContent-Type: text/html\r\nCache-Control: public, max-age=31536000\r\n\r\n"
    server = await servers(
        answering(
            reply(
                chunked,
                headers=(("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")),
                length=False,
            )
        )
    )
    for _ in range(2):
        response = await get(client, server)
        assert response.body == b"hello"
        assert response.headers == [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    assert server.connections == 1


async def test_close_delimited_body(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply(b"until the end", length=False), keep=False))
    response = await get(client, server)
    assert (response.status, response.body) == (200, b"until the end")
    assert (await get(client, server)).body == b"until the end"
    assert server.connections == 2  # a body read to EOF leaves nothing to reuse


async def test_a_close_delimited_body_is_capped_too(servers: Servers) -> None:
    http = Http1Client(10, max_body=1000)
    try:
        server = await servers(answering(reply(b"x" * 5000, length=False), keep=False))
        with pytest.raises(ResponseTooLarge):
            await get(http, server)
    finally:
        await http.close()


async def test_gzip_and_deflate_bodies_are_decoded_and_their_header_dropped(
    servers: Servers, client: Http1Client
) -> None:
    data = b'{"valid": true, "padding": "' + b"x" * 500 + b'"}'
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    answers = [
        reply(gzip.compress(data), headers=(("Content-Encoding", "gzip"), ("ETag", '"e"'))),
        reply(zlib.compress(data), headers=(("Content-Encoding", "deflate"),)),
        reply(raw_deflate.compress(data) + raw_deflate.flush(), headers=(("content-encoding", "Deflate"),)),
    ]
    server = await servers(answering(*answers))
    for _ in answers:
        response = await get(client, server)
        assert response.body == data
        assert all(name.lower() != "content-encoding" for name, _ in response.headers)
    assert server.connections == 1


async def test_an_encoding_not_asked_for_or_broken_is_refused(servers: Servers, client: Http1Client) -> None:
    server = await servers(
        answering(
            reply(b"\x0b\x01\x80hello", headers=(("Content-Encoding", "br"),)),
            reply(gzip.compress(b"hello")[:-6], headers=(("Content-Encoding", "gzip"),)),  # truncated
            reply(b"not gzip at all", headers=(("Content-Encoding", "gzip"),)),
        )
    )
    for _ in range(3):
        with pytest.raises(ProtocolError):
            await get(client, server)


async def test_content_encoding_on_several_lines_is_one_list_of_codings(
    servers: Servers, client: Http1Client
) -> None:
    """Two `Content-Encoding` lines are one list (RFC 9110 5.3): `gzip` twice was decoded once and the still
    gzipped bytes relayed as the answer (past the secret-echo check and the failed-code count), and a `br`
    followed by `identity` was relayed undecoded. Each is refused as `gzip, gzip` on one line is; an
    `identity` among them changes nothing."""
    data = b'{"valid": true}'
    twice = gzip.compress(gzip.compress(data))
    server = await servers(
        answering(
            reply(twice, headers=(("Content-Encoding", "gzip"), ("Content-Encoding", "gzip"))),
            reply(
                b"\x0b\x01\x80hello", headers=(("Content-Encoding", "br"), ("Content-Encoding", "identity"))
            ),
            reply(
                gzip.compress(data), headers=(("Content-Encoding", "gzip"), ("content-encoding", "identity"))
            ),
            reply(gzip.compress(data), headers=(("Content-Encoding", "identity, \tGZIP"),)),
        )
    )
    for _ in range(2):
        with pytest.raises(ProtocolError):
            await get(client, server)
    for _ in range(2):
        response = await get(client, server)
        assert response.body == data
        assert all(name.lower() != "content-encoding" for name, _ in response.headers)


async def test_interim_100_continue_is_skipped(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"real", status="201 Created")))
    response = await get(client, server)
    assert (response.status, response.body) == (201, b"real")
    assert (await get(client, server)).status == 201
    assert server.connections == 1


async def test_head_has_no_body_and_204_and_304_neither(servers: Servers, client: Http1Client) -> None:
    server = await servers(
        answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # a HEAD answer: the length of a body not sent
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
    )
    response = await get(client, server, method="HEAD")
    assert (response.status, response.body) == (200, b"")
    response = await asyncio.wait_for(get(client, server), 1)
    assert (response.status, response.body) == (204, b"")
    response = await asyncio.wait_for(get(client, server), 1)
    assert (response.status, response.body) == (204, b"")
    assert server.connections == 2  # not reused after HEAD (llhttp expects a body), reused after 204


# --- connection reuse


async def test_keep_alive_reuses_one_connection(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply()))
    for _ in range(3):
        assert (await get(client, server)).status == 200
    assert server.connections == 1
    assert len(server.requests) == 3


async def test_connection_close_is_not_reused(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply(headers=(("Connection", "close"),)), keep=True))
    for _ in range(2):
        assert (await get(client, server)).status == 200
    assert server.connections == 2


async def test_http_1_0_answer_is_not_reused(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    for _ in range(2):
        assert (await get(client, server)).body == b"ok"
    assert server.connections == 2


async def test_bytes_after_the_answer_make_the_connection_unusable(
    servers: Servers, client: Http1Client
) -> None:
    server = await servers(answering(reply(b"one") + reply(b"smuggled"), reply(b"two")))
    assert (await get(client, server)).body == b"one"
    assert (await get(client, server)).body == b"two"  # not the unasked-for second answer
    assert server.connections == 2


async def test_bytes_arriving_while_idle_make_the_connection_unusable(
    servers: Servers, client: Http1Client
) -> None:
    async def answer_then_more(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> bool:
        writer.write(reply(b"%d" % index))
        await writer.drain()
        if index == 0:
            await asyncio.sleep(0.05)
            writer.write(reply(b"stray"))  # nobody asked: the client must not read it as the next answer
        return True

    server = await servers(answer_then_more)
    assert (await get(client, server)).body == b"0"
    await asyncio.sleep(0.15)
    assert (await get(client, server)).body == b"1"
    assert server.connections == 2


async def test_an_idle_connection_closed_by_the_server_is_never_used(
    servers: Servers, client: Http1Client
) -> None:
    async def answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> bool:
        writer.write(reply(b"%d" % index))
        await writer.drain()
        return False  # the server closes the keep-alive connection right after answering

    server = await servers(answer_then_close)
    assert (await get(client, server)).body == b"0"
    await asyncio.sleep(0.1)  # the FIN arrives while the connection is idle in the pool
    assert (await get(client, server)).body == b"1"
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_idle_connections_are_closed_after_the_idle_timeout(servers: Servers) -> None:
    http = Http1Client(10, idle_timeout=0.2)
    try:
        server = await servers(answering(reply()))
        await get(http, server)
        assert (server.open, http.open_connections) == (1, 1)
        await asyncio.sleep(0.5)
        assert (server.open, http.open_connections) == (0, 0)
        assert (await get(http, server)).status == 200
        assert server.connections == 2
    finally:
        await http.close()


# --- faults: never retried


async def test_a_reset_mid_answer_fails_and_is_not_retried(servers: Servers, client: Http1Client) -> None:
    async def half_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        if index == 0:
            writer.write(reply())
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.transport.abort()
            return False
        await writer.drain()
        return True

    server = await servers(half_then_reset)
    assert (await get(client, server)).status == 200  # warm: a reused connection is where clients retry
    with pytest.raises(ConnectionLost):
        await client.request(server.url, "POST", "/v1/redeem", (), b"{}", T)
    await asyncio.sleep(0.2)
    assert len(server.requests) == 2
    assert server.connections == 1


async def test_eof_before_any_answer_fails(servers: Servers, client: Http1Client) -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        return False

    server = await servers(close)
    with pytest.raises(ConnectionLost):
        await client.request(server.url, "POST", "/v1/redeem", (), b"{}", T)
    assert len(server.requests) == 1


async def test_a_garbage_answer_fails(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(b"\x00\x01garbage that is not http\r\n\r\n"))
    with pytest.raises(ProtocolError):
        await get(client, server)
    assert client.open_connections == 0


async def test_a_smuggling_shaped_answer_fails(servers: Servers, client: Http1Client) -> None:
    server = await servers(
        answering(reply(b"0\r\n\r\n", headers=(("Transfer-Encoding", "chunked"),)))  # and Content-Length
    )
    with pytest.raises(ProtocolError):
        await get(client, server)


async def test_a_transfer_coding_other_than_chunked_is_refused(servers: Servers, client: Http1Client) -> None:
    """The client sends no `TE`, so `chunked` is the one transfer coding an answer may use (RFC 9110 10.1.4).
    `gzip, chunked` was de-chunked and its still gzipped bytes relayed as the answer (past the secret-echo
    check and the failed-code count), and `gzip` alone was read to the close and relayed the same way."""
    data = b'{"valid": true}'
    coded = gzip.compress(data)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded)
    te = "Transfer-Encoding"
    server = await servers(
        answering(
            reply(chunked, headers=((te, "gzip, chunked"),), length=False),
            reply(chunked, headers=((te, "gzip"), (te, "chunked")), length=False),
            reply(coded, headers=((te, "gzip"), ("Connection", "close")), length=False),
            reply(chunked, headers=((te, "chunked, chunked"),), length=False),
            reply(chunked, headers=((te, "Chunked"),), length=False),
            keep=False,
        )
    )
    for _ in range(4):
        with pytest.raises(ProtocolError):
            await get(client, server)
    assert (await get(client, server)).body == coded  # chunked alone is framing, any case: the body as sent
    assert len(server.requests) == 5


async def test_a_status_outside_100_to_599_fails(servers: Servers, client: Http1Client) -> None:
    """llhttp reads any three digits: a 999 was relayed to the browser as a status (and, being no status
    below 500, kept by no Idempotency-Key), a 099 was taken for an interim answer and waited past."""
    server = await servers(
        answering(
            reply(status="999 Odd"),
            reply(status="600 Odd"),
            reply(status="099 Odd") + reply(),
            reply(status="000 Odd"),
            reply(status="599 Odd"),
            keep=False,
        )
    )
    for _ in range(4):
        with pytest.raises(ProtocolError):
            await get(client, server)
    assert (await get(client, server)).status == 599


async def test_an_upgrade_answer_fails(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"))
    with pytest.raises(ProtocolError):
        await get(client, server)


async def test_oversized_answers_fail(servers: Servers) -> None:
    http = Http1Client(10, max_body=1000)
    try:
        big = b"x" * 5000
        bomb = gzip.compress(b"\0" * 100_000)
        assert len(bomb) < 1000
        server = await servers(
            answering(
                reply(big),
                reply(
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big),
                    headers=(("Transfer-Encoding", "chunked"),),
                    length=False,
                ),
                reply(bomb, headers=(("Content-Encoding", "gzip"),)),
                b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * 100_000 + b"\r\n\r\n",
            )
        )
        for _ in range(4):
            with pytest.raises(ResponseTooLarge):
                await get(http, server)
        assert len(server.requests) == 4
        assert server.connections == 3  # the bomb arrived whole: only its decoding was refused
    finally:
        await http.close()


async def test_a_head_over_its_bound_is_refused_whatever_the_body_bound(servers: Servers) -> None:
    """The headers of one answer are bounded by `MAX_HEAD`, not by `max_body` plus it: 16 MiB of `a: b`
    lines were ~2.8 million (name, value) tuples, ~170 MB held by one answer, outside the shared budget."""
    fields = tuple(("a", "b") for _ in range(http1.MAX_HEAD // 6 + 1))  # "a: b\r\n" on the wire
    one_big = (("X-Big", "y" * (http1.MAX_HEAD - 1000)),)
    server = await servers(answering(reply(headers=fields), reply(headers=one_big), reply()))
    http = Http1Client(10)  # the default body bound: 16 MiB
    try:
        with pytest.raises(ResponseTooLarge):
            await get(http, server)
        assert (await get(http, server)).headers[0] == one_big[0]  # under the bound: read as before
        assert (await get(http, server)).status == 200
        assert server.connections == 2  # the refused answer's connection is never reused
    finally:
        await http.close()


async def test_a_head_still_arriving_past_its_bound_is_refused_at_once(
    servers: Servers, client: Http1Client
) -> None:
    """llhttp hands a field over only once it is whole, and buffers it until then: one endless value was
    held (up to `max_body` plus the head bound) until the read timeout, never reaching `on_header`."""

    async def endless_value(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: " + b"y" * (4 * http1.MAX_HEAD))  # and never its end
        await writer.drain()
        await asyncio.sleep(10)
        return False

    server = await servers(endless_value)
    with pytest.raises(ResponseTooLarge):  # as the head passes its bound: not a timeout spent buffering it
        await client.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 30))


async def test_an_endless_trailer_is_refused_past_the_head_bound(servers: Servers) -> None:
    """Trailer fields are not kept, but llhttp buffers each until it is whole, outside the shared budget:
    an endless one was read (and held, in several copies) up to `max_body` bytes before it failed."""
    written = 0

    async def endless_trailer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        nonlocal written
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Endless: ")
        piece = b"y" * 65536
        while not writer.is_closing():  # until the client gives up on it
            writer.write(piece)
            await writer.drain()
            written += len(piece)
        return False

    server = await servers(endless_trailer)
    http = Http1Client(10, max_body=64 * 1024 * 1024)
    try:
        with pytest.raises(ResponseTooLarge):
            await http.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 30))
    finally:
        await http.close()
    # refused past MAX_HEAD bytes of trailer: what was written beyond is only what the kernel buffered
    assert written < 32 * 1024 * 1024


async def test_a_declared_length_over_the_bound_is_refused_before_its_body(servers: Servers) -> None:
    async def declared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")  # and no body, ever
        await writer.drain()
        await asyncio.sleep(10)
        return False

    http = Http1Client(10, max_body=1000)
    try:
        server = await servers(declared)
        # refused as the headers arrive: not after a read timeout spent waiting for the gigabyte
        with pytest.raises(ResponseTooLarge):
            await http.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 30))
        assert http.buffered == 0
    finally:
        await http.close()


async def test_a_declared_length_on_head_and_304_is_not_a_body(servers: Servers, client: Http1Client) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"
    server = await servers(
        answering(head, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1073741824\r\n\r\n")
    )
    assert (await get(client, server, method="HEAD")).status == 200
    assert (await get(client, server)).status == 304


async def test_a_failed_answer_is_freed_without_the_cyclic_collector(servers: Servers) -> None:
    """The server makes full collections rare, so nothing of a failed answer may wait for one."""

    async def too_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        return False

    def connections() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, http1._Connection))

    http = Http1Client(10, max_body=1000)
    server = await servers(too_big)
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):
            with pytest.raises(ResponseTooLarge):
                await get(http, server)
        with pytest.raises(ConnectFailed):
            await http.request(f"http://127.0.0.1:{free_port()}", "GET", "/", (), b"", T)
        for _ in range(3):
            await asyncio.sleep(0)  # connection_lost
        assert http.open_connections == 0
        assert connections() == 0  # none left in a cycle (gc.get_objects lists uncollected garbage too)
        assert http.buffered == 0
    finally:
        gc.enable()
        await http.close()


async def test_the_bodies_of_all_answers_in_flight_are_bounded_together(servers: Servers) -> None:
    first_half = asyncio.Event()
    finish = asyncio.Event()

    def halves(hold: bool) -> Answer:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1800\r\n\r\n" + b"x" * 900)
            await writer.drain()
            if hold:
                first_half.set()
                await finish.wait()
            writer.write(b"y" * 900)
            await writer.drain()
            return True

        return answer

    http = Http1Client(10, max_body=2000, max_buffered=2500)
    try:
        one, two = await servers(halves(True)), await servers(halves(False))
        held = asyncio.create_task(get(http, one))
        await asyncio.wait_for(first_half.wait(), 1)
        for _ in range(500):  # the first half is in the client's buffers (a bound, not a timing)
            if http.buffered >= 900:
                break
            await asyncio.sleep(0.01)
        assert http.buffered == 900
        # 900 held + 1800 would pass 2500: the second answer is refused, though it alone is under max_body
        with pytest.raises(ResponseTooLarge):
            await get(http, two)
        assert http.buffered == 900
        finish.set()
        assert (await held).body == b"x" * 900 + b"y" * 900
        assert http.buffered == 0
        assert len((await get(http, two)).body) == 1800  # alone, it fits
    finally:
        await http.close()


async def test_a_trickling_upstream_times_out_within_the_read_timeout(
    servers: Servers, client: Http1Client
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if writer.is_closing():
                break
            writer.write(b"x")
        return False

    server = await servers(trickle)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await client.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 0.4))
    assert 0.35 < loop.time() - started < 0.8
    assert client.open_connections == 0  # the connection was dropped, not parked
    await asyncio.sleep(0.2)
    assert server.open == 0


async def test_a_slow_answer_times_out_and_a_prompt_one_does_not(
    servers: Servers, client: Http1Client
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        await asyncio.sleep(0.5 if index == 0 else 0.05)
        writer.write(reply())
        return True

    server = await servers(slow)
    with pytest.raises(UpstreamTimeout):
        await client.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 0.2))
    assert (await client.request(server.url, "GET", "/v1/x", (), b"", Timeouts(1, 0.2))).status == 200


async def test_connect_refused_fails(client: Http1Client) -> None:
    with pytest.raises(ConnectFailed):
        await client.request(f"http://127.0.0.1:{free_port()}", "GET", "/v1/x", (), b"", T)


async def test_a_host_name_dns_cannot_encode_fails_to_connect(client: Http1Client) -> None:
    """`a..b` (an empty label) or a label over 63 characters passes the base-URL check, and the resolver's
    IDNA step raised UnicodeError, not an OSError: out of the client, a 500 instead of a 502 sent=False."""
    for host in ("a..b", "x" * 64 + ".example"):
        with pytest.raises(ConnectFailed):
            await client.request(f"http://{host}", "GET", "/v1/x", (), b"", T)


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    servers: Servers, client: Http1Client
) -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        return True

    server = await servers(never)  # plain TCP: the ClientHello is never answered
    url = server.url.replace("http://", "https://")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await client.request(url, "GET", "/v1/x", (), b"", Timeouts(0.3, 5))
    assert loop.time() - started < 1


# --- limits and cancellation


async def test_cancelling_a_request_drops_its_connection_and_frees_its_slot(servers: Servers) -> None:
    hold = asyncio.Event()
    seen = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        if index == 0:
            seen.set()
            await hold.wait()
        writer.write(reply())
        await writer.drain()
        return True

    http = Http1Client(1)
    try:
        server = await servers(held)
        task = asyncio.create_task(get(http, server))
        await asyncio.wait_for(seen.wait(), 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert http.open_connections == 0
        hold.set()
        # the one slot is free again, and the next request gets a new connection, not the cancelled one
        response = await asyncio.wait_for(get(http, server), 1)
        assert response.status == 200
        assert server.connections == 2
    finally:
        await http.close()


def holding() -> tuple[Answer, asyncio.Event]:
    """An upstream that reads each request and answers only once the event is set."""
    hold = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        await hold.wait()
        writer.write(reply())
        await writer.drain()
        return True

    return held, hold


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # a bound for a busy machine, not a timing
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_a_full_host_fails_at_once_and_sends_nothing(servers: Servers) -> None:
    held, hold = holding()
    http = Http1Client(2)
    try:
        server = await servers(held)
        stuck = [asyncio.create_task(get(http, server)) for _ in range(2)]
        await wait_until(lambda: len(server.requests) == 2)
        assert http.in_flight(server.url) == 2
        # no wait for a slot: the third fails before connecting, whatever its timeouts
        with pytest.raises(PoolFull):
            await http.request(server.url, "POST", "/v1/redeem", (), b"{}", Timeouts(30, 30))
        assert not any(task.done() for task in stuck)
        assert len(server.requests) == 2 and server.connections == 2
        hold.set()
        assert [r.status for r in await asyncio.gather(*stuck)] == [200, 200]
        assert http.in_flight(server.url) == 0
        assert (await get(http, server)).status == 200  # the slots are back
        assert server.connections == 2  # on a kept connection
    finally:
        await http.close()


async def test_each_host_has_its_own_cap(servers: Servers) -> None:
    held, hold = holding()
    http = Http1Client(1)
    try:
        hung, healthy = await servers(held), await servers(answering(reply()))
        stuck = asyncio.create_task(get(http, hung))
        await wait_until(lambda: len(hung.requests) == 1)
        # the same host under another base path shares its cap; another host has a cap of its own
        with pytest.raises(PoolFull):
            await http.request(hung.url + "/prefix", "GET", "/v1/x", (), b"", T)
        for _ in range(3):
            assert (await get(http, healthy)).status == 200
        assert not stuck.done()
        hold.set()
        assert (await stuck).status == 200
    finally:
        await http.close()


async def test_a_failed_or_cancelled_request_gives_its_slot_back(servers: Servers) -> None:
    held, hold = holding()
    http = Http1Client(1)
    try:
        server = await servers(held)
        with pytest.raises(ConnectFailed):
            await http.request(f"http://127.0.0.1:{free_port()}", "GET", "/", (), b"", T)
        task = asyncio.create_task(get(http, server))
        await wait_until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.in_flight(server.url) == 0
        hold.set()
        assert (await get(http, server)).status == 200
    finally:
        await http.close()


async def test_the_cap_can_change_while_requests_are_in_flight(servers: Servers) -> None:
    held, hold = holding()
    http = Http1Client(1)
    try:
        server = await servers(held)
        first = asyncio.create_task(get(http, server))
        await wait_until(lambda: len(server.requests) == 1)
        http.max_in_flight = 2  # a reload raising the cap
        second = asyncio.create_task(get(http, server))
        await wait_until(lambda: len(server.requests) == 2)
        http.max_in_flight = 1  # and lowering it: the two in flight keep their slots, a third is refused
        with pytest.raises(PoolFull):
            await get(http, server)
        hold.set()
        assert [r.status for r in await asyncio.gather(first, second)] == [200, 200]
    finally:
        await http.close()


async def test_the_transport_answers_a_full_host_502_and_logs_it_once(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    holds = [asyncio.Event(), asyncio.Event()]

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
        await holds[index].wait()
        writer.write(reply())
        await writer.drain()
        return True

    pool = Http1Transport(max_in_flight=1)
    await pool.start()
    timeouts = Timeouts(1, 30)
    try:
        server = await servers(held)
        call = UpstreamCall("GET", "/v1/x", b"")
        with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
            for episode in range(2):
                stuck = asyncio.create_task(pool.send(server.url, call, CIMultiDict(), timeouts))

                def reached(n: int = episode) -> bool:
                    return len(server.requests) == n + 1

                await wait_until(reached)
                for _ in range(5):
                    error = await refusal(pool, server.url, call, CIMultiDict(), timeouts)
                    assert error.status == 502
                    assert error.key.value == "upstream_unavailable"
                holds[episode].set()
                assert (await stuck).status == 200
        full = [r for r in caplog.records if "its cap" in r.getMessage()]
        assert len(full) == 2, caplog.text  # one line per episode, not one per refusal
        assert len(server.requests) == 2
    finally:
        await pool.close()


# --- hostile requests: refused before a byte is written


SPLITTING_TARGETS = [
    "/v1/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /v1/admin",
    "/v1/x\r\nX-Injected: 1",
    "/v1/x\nX-Injected: 1",
    "/v1/a b",
    "/v1/a\tb",
    "/v1/\x00",
    "/v1/\x7f",
    "/v1/caf\xe9",
    "/v1/\u2028",
    "v1/x",
    "@evil.test/v1",
]
SPLITTING_HEADERS = [
    [("X-Client-Token", "tok\r\nX-Injected: 1")],
    [("X-Client-Token", "tok\nX-Injected: 1")],
    [("X-Client-Token", "tok\rX-Injected: 1")],
    [("X-Client-Token", "tok\x00")],
    [("X-Client-Token", "tok\x7f")],
    [("X-Injected: 1\r\nX-Client-Token", "tok")],
    [("X Client", "tok")],
    [("X-Client:", "tok")],
    [("", "tok")],
    [("User-Agent", "\udcff")],  # a lone surrogate: no honest encoding
]


@pytest.mark.parametrize("target", SPLITTING_TARGETS)
async def test_hostile_targets_are_refused_before_sending(
    servers: Servers, client: Http1Client, target: str
) -> None:
    server = await servers(answering(reply()))
    await get(client, server)  # a warm connection the attempt could have used
    sent = bytes(server.raw)
    with pytest.raises(UnsafeRequest):
        await client.request(server.url, "POST", target, (), b"{}", T)
    await asyncio.sleep(0.05)
    assert bytes(server.raw) == sent  # not one byte more reached the upstream
    assert (await get(client, server)).status == 200  # and the pooled connection is still fine
    assert server.connections == 1


@pytest.mark.parametrize("headers", SPLITTING_HEADERS)
async def test_hostile_headers_are_refused_before_sending(
    servers: Servers, client: Http1Client, headers: list[tuple[str, str]]
) -> None:
    server = await servers(answering(reply()))
    with pytest.raises(UnsafeRequest):
        await client.request(server.url, "GET", "/v1/x", headers, b"", T)
    await asyncio.sleep(0.05)
    assert server.raw == b""
    assert server.connections == 0


async def test_hostile_methods_and_base_urls_are_refused(servers: Servers, client: Http1Client) -> None:
    server = await servers(answering(reply()))
    for method in ("GET /v1/admin HTTP/1.1\r\n", "G T", ""):
        with pytest.raises(UnsafeRequest):
            await client.request(server.url, method, "/v1/x", (), b"", T)
    for base in (
        "ftp://127.0.0.1",
        "http://user:pw@127.0.0.1",
        "http://127.0.0.1/a?b",
        "http://",
        "http://h:99999",
        "http://127.0.0.1/a b",  # a prefix that would split the request line
        "http://127.0.0.1/a\r\nX: 1",
        "http://127.0.0.1/a#frag",
    ):
        with pytest.raises(UnsafeRequest):
            await client.request(base, "GET", "/v1/x", (), b"", T)
    assert server.raw == b""


async def refusal(
    transport: Http1Transport, url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
) -> GatewayError:
    """The gateway error the transport refuses a call with (it must refuse)."""
    with pytest.raises(Refused) as refused:
        await transport.send(url, call, headers, timeouts)
    return refused.value.error


async def test_the_transport_answers_a_refused_request_502_and_logs_no_path_or_header(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    server = await servers(answering(reply()))
    transport = Http1Transport()
    await transport.start()
    try:
        headers = CIMultiDict([("X-Client-Token", "secret-token\r\nX-Injected: 1")])
        with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
            error = await refusal(
                transport, server.url, UpstreamCall("GET", "/v1/x", b""), headers, Timeouts(1, 2)
            )
            error2 = await refusal(
                transport,
                server.url,
                UpstreamCall("GET", "/v1/x\r\nX-Evil-Path: 1", b""),
                CIMultiDict(),
                Timeouts(1, 2),
            )
        assert error.status == 502 and error2.status == 502
        assert error.key.value == "upstream_unavailable"
        assert "UnsafeRequest" in caplog.text
        assert "secret-token" not in caplog.text and "Evil-Path" not in caplog.text
        assert server.raw == b""
    finally:
        await transport.close()


# --- the transport (gateway.upstream.Http1Transport)


async def test_the_transport_maps_faults_to_gateway_errors(servers: Servers) -> None:
    server = await servers(answering(b"garbage\r\n\r\n"))
    transport = Http1Transport()
    await transport.start()
    assert transport.ready
    timeouts = Timeouts(1, 0.3)
    try:
        call = UpstreamCall("POST", "/v1/redeem", b"{}", "application/json")
        error = await refusal(transport, server.url, call, CIMultiDict(), timeouts)
        assert error.key.value == "upstream_unavailable"
        error = await refusal(transport, f"http://127.0.0.1:{free_port()}", call, CIMultiDict(), timeouts)
        assert error.key.value == "upstream_unavailable"

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> bool:
            return True

        quiet = await servers(silent)
        error = await refusal(transport, quiet.url, call, CIMultiDict(), timeouts)
        assert error.key.value == "upstream_timeout"
        assert len(quiet.requests) == 1
        assert b"Content-Type: application/json\r\n" in quiet.requests[0]
    finally:
        await transport.close()
    assert not transport.ready


async def test_close_closes_every_connection(servers: Servers) -> None:
    server = await servers(answering(reply()))
    http = Http1Client(10)
    await asyncio.gather(*(get(http, server) for _ in range(3)))
    assert server.open == 3
    await http.close()
    await asyncio.sleep(0.1)
    assert server.open == 0
    assert http.open_connections == 0


# --- addresses and TLS


async def test_an_ipv6_literal_base_url(servers: Servers, client: Http1Client) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await servers(answering(reply(b"six")), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    assert (await get(client, server)).body == b"six"
    port = server.url.rsplit(":", 1)[1]
    assert f"Host: [::1]:{port}\r\n".encode() in server.requests[0]


async def test_https_verifies_the_certificate_and_sends_sni(servers: Servers, tmp_path: Path) -> None:
    server_context, ca_file = _self_signed(tmp_path)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = await servers(answering(reply(b"secure")), ssl_context=server_context)
    url = server.url.replace("127.0.0.1", "localhost")

    default = Http1Client(10)  # the system's trust store: a self-signed certificate is refused
    try:
        with pytest.raises(ConnectFailed):
            await default.request(url, "GET", "/v1/x", (), b"", T)
    finally:
        await default.close()
    assert server.requests == []

    trusting = Http1Client(10, ssl_context=ssl.create_default_context(cafile=ca_file))
    try:
        for _ in range(2):
            assert (await trusting.request(url, "GET", "/v1/x", (), b"", T)).body == b"secure"
        assert server.connections == 1
        assert names[-1] == "localhost"
        port = url.rsplit(":", 1)[1]
        assert server.requests[0].startswith(f"GET /v1/x HTTP/1.1\r\nHost: localhost:{port}\r\n".encode())
    finally:
        await trusting.close()


# --- the same tests on uvloop, the loop the gateway runs on (its transports are not asyncio's classes)


def _loop_agnostic_tests() -> list[Callable[..., Awaitable[None]]]:
    return [
        test
        for name, test in sorted(globals().items())
        if name.startswith("test_")
        and inspect.iscoroutinefunction(test)
        and set(inspect.signature(test).parameters) <= {"servers", "client"}
    ]


@pytest.mark.parametrize("test", _loop_agnostic_tests(), ids=lambda test: test.__name__)
def test_on_uvloop(test: Callable[..., Awaitable[None]]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        started, http = Servers(), Http1Client(10)
        fixtures = {"servers": started, "client": http}
        try:
            await test(**{name: fixtures[name] for name in inspect.signature(test).parameters})
        finally:
            await http.close()
            await started.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
