"""What the public port's connection layer relies on in aiohttp, pinned: an upgrade that changes it fails here
and sends whoever upgrades to gateway/listen.py (its docstring says what each part is for)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import _http_parser, http_parser  # the C one by name: AIOHTTP_NO_EXTENSIONS=1 hides it
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler

from gateway.listen import _HOST, GatewayProtocol

# The attack: a chunked request with a trailer field, then an innocent request, in one write.
ATTACK = (
    b"POST /client/v1/validations HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\nOrigin: https://shop.example.com\r\n\r\n"
    b"POST /client/v1/qualifications HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
)

PARSERS = {
    "c": _http_parser.HttpRequestParser,  # type: ignore[attr-defined]  # a C extension, no stubs
    "py": http_parser.HttpRequestParserPy,
}  # whatever the env says


def parse(kind: str, data: bytes) -> list[Any]:
    parser_class = PARSERS[kind]
    loop = asyncio.new_event_loop()
    try:
        protocol = BaseProtocol(loop)  # flow control only
        parser = parser_class(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
        messages, _, _ = parser.feed_data(data)
        return [message for message, _ in messages]
    finally:
        loop.close()


def test_aiohttps_c_parser_still_adds_the_last_trailer_to_the_next_request() -> None:
    """aiohttp 3.14.5's C parser: the reason every request with Transfer-Encoding closes its connection.
    If this fails, aiohttp changed: check that no trailer can reach a request, then update this pin."""
    first, second = parse("c", ATTACK)
    assert "Origin" not in first.headers
    assert second.headers.getall("Origin") == ["https://shop.example.com"]


def test_aiohttps_python_parser_drops_trailers() -> None:
    """AIOHTTP_NO_EXTENSIONS=1: the pure-Python parser reads trailers and drops them."""
    first, second = parse("py", ATTACK)
    assert "Origin" not in first.headers and "Origin" not in second.headers


@pytest.mark.parametrize("kind", ["c", "py"])
def test_both_parsers_decode_non_utf8_header_bytes_as_surrogates(kind: str) -> None:
    """decide.py finds a Latin-1 byte in a forwarded header as a lone surrogate."""
    (message,) = parse(kind, b"GET / HTTP/1.1\r\nHost: gw\r\nX-Voucherify-Channel: Caf\xe9\r\n\r\n")
    assert message.headers["X-Voucherify-Channel"] == "Caf\udce9"


def test_the_protocol_hooks_it_overrides_are_still_aiohttps() -> None:
    """GatewayProtocol overrides these RequestHandler methods and reads these attributes."""
    for name in ("connection_made", "connection_lost", "data_received", "finish_response", "handle_error"):
        assert name in RequestHandler.__dict__, name
        assert name in GatewayProtocol.__dict__, name
    for slot in ("_messages", "_force_close", "_keepalive_handle", "_loop"):
        assert any(slot in getattr(c, "__slots__", ()) for c in RequestHandler.__mro__), slot


@pytest.mark.parametrize(
    "host",
    [
        "gw",
        "gw:80",
        "gw:",
        "127.0.0.1",
        "[::1]",
        "[::1]:8080",
        "a-b.c_d~e",
        "xn--bcher-kva.example",
        "%41b",
        "",
    ],
)
def test_hosts_that_are_host_port(host: str) -> None:
    assert _HOST.fullmatch(host)


@pytest.mark.parametrize(
    "host",
    [
        "user:pw@evil.example",
        "u@gw",
        "evil example",
        "gw/x",
        "gw?x",
        "gw#x",
        "gw:8o",
        "%4",
        "bü.example",
        "[::1",
    ],
)
def test_hosts_that_are_not(host: str) -> None:
    assert not _HOST.fullmatch(host)
