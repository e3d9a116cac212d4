"""`Answer` writes what aiohttp's `web.Response` (with the connection layer's Server and nosniff) would have
written, for every framing case: status, method, HTTP version, keep-alive or close, body or none. Both
are written through aiohttp's real `StreamWriter` into a transport that records the bytes."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from gateway.answer import SERVER, Answer


class Recording:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, chunks: Any) -> None:
        self.data += b"".join(chunks)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class Protocol:
    _paused = False
    ssl_context = None
    peername = None
    sockname = None

    def __init__(self) -> None:
        self.transport = Recording()


async def written(
    response: web.StreamResponse, method: str, version: HttpVersion, closing: bool
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status line, the fields (Date's value left out, sorted) and the body `response` writes."""
    protocol = Protocol()
    writer = StreamWriter(protocol, asyncio.get_running_loop())  # type: ignore[arg-type]
    request = make_mocked_request(
        method,
        "/client/v1/validate",
        version=version,
        closing=closing,
        writer=writer,
        protocol=protocol,
        transport=protocol.transport,
    )
    # make_mocked_request closes every HTTP/1.0 request; a real one with `Connection: keep-alive` is not
    request._message = request._message._replace(should_close=closing)
    await response.prepare(request)
    await response.write_eof()
    head, _, body = protocol.transport.data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    fields = [(name.lower(), value) for name, _, value in (line.partition(": ") for line in lines)]
    assert sum(name == "date" for name, _ in fields) == 1
    return status, sorted((n, "-" if n == "date" else v) for n, v in fields), body


def aiohttp_response(status: int, fields: list[tuple[str, str]], body: bytes, close: bool) -> web.Response:
    response = web.Response(status=status, body=body)
    for name, value in fields:
        response.headers.add(name, value)
    response.headers["Server"] = SERVER  # what the connection layer adds to every other response
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if close:
        response.force_close()
    return response


FIELDS = [
    [],
    [("Content-Type", "application/json"), ("Vary", "Origin"), ("X-Request-Id", "gw-1")],
    [("RateLimit", "limit=5, remaining=4, reset=60"), ("Access-Control-Allow-Origin", "https://a.example")],
    [("content-type", "text/plain"), ("Cache-Control", "no-store"), ("Vary", "Origin")],
]


@pytest.mark.parametrize(
    ("status", "method", "version", "closing", "close"),
    list(
        itertools.product(
            (200, 204, 304, 404, 429, 500, 502),
            ("GET", "HEAD", "POST", "OPTIONS"),
            (HttpVersion10, HttpVersion11),
            (False, True),
            (False, True),
        )
    ),
)
async def test_an_answer_writes_what_aiohttp_writes(
    status: int, method: str, version: HttpVersion, closing: bool, close: bool
) -> None:
    for fields, body, default in itertools.product(
        FIELDS, (b"", b'{"valid":true}'), (None, "application/json")
    ):
        answer = Answer(status, fields, body, default)
        if close:
            answer.force_close()
        typed = any(name.lower() == "content-type" for name, _ in fields)
        given = fields if default is None or typed else [*fields, ("Content-Type", default)]
        theirs = await written(aiohttp_response(status, given, body, close), method, version, closing)
        mine = await written(answer, method, version, closing)
        assert mine == theirs, (fields, body, default)
        assert answer.keep_alive == (not close and not closing)


@pytest.mark.parametrize("bad", ["\r\nSet-Cookie: a=b", "\n", "\r", "\0", "\x7f", "a\x01b"])
async def test_a_field_that_would_split_the_answer_is_refused_as_aiohttp_refuses_it(bad: str) -> None:
    for fields in ([("X-Request-Id", f"gw-1{bad}")], [(f"X-Evil{bad}", "1")]):
        with pytest.raises(ValueError):
            await written(aiohttp_response(200, fields, b"{}", False), "GET", HttpVersion11, False)
        with pytest.raises(ValueError):
            await written(Answer(200, fields, b"{}"), "GET", HttpVersion11, False)


@pytest.mark.parametrize("bad", ["\r\nSet-Cookie: a=b", "\n", "\0"])
async def test_a_content_type_that_would_split_the_answer_is_refused(bad: str) -> None:
    """A replayed answer's content type comes from a stored record: it is checked as the fields are."""
    with pytest.raises(ValueError):
        await written(Answer(200, [], b"{}", f"application/json{bad}"), "GET", HttpVersion11, False)


async def test_a_tab_in_a_value_is_allowed() -> None:
    fields = [("X-Note", "a\tb")]
    theirs = await written(aiohttp_response(200, fields, b"{}", False), "GET", HttpVersion11, False)
    assert await written(Answer(200, fields, b"{}"), "GET", HttpVersion11, False) == theirs


async def test_headers_is_a_read_only_copy_of_the_fields() -> None:
    answer = Answer(200, [("Vary", "Origin"), ("X-Request-Id", "gw-1")], b"{}", "application/json")
    assert answer.headers["x-request-id"] == "gw-1" and answer.body == b"{}"
    assert answer.headers["Content-Type"] == "application/json"
    with pytest.raises(TypeError):
        answer.headers["Vary"] = "*"  # type: ignore[index]
