"""A browser that goes away (issue 18.4): mid-body it is `client_closed`, with nothing sent upstream and no
ERROR line; once its whole body was sent, the request is still forwarded and its answer accounted (a
redemption is never half-done because the page was closed)."""

from __future__ import annotations

import asyncio
import socket
import struct

from tests.conftest import base_policy
from tests.support.constants import CLIENT_TOKEN, ORIGIN
from tests.support.processes import GatewayProcess, GatewayProcessFactory
from tests.support.rawhttp import request_bytes
from tests.support.upstream_double import Reply, UpstreamDouble

REDEEM = "/client/v1/redeem?code=A"
BODY = b'{"order":{"amount":100},"customer":{"source_id":"c-1"}}'


def _head(length: int) -> list[tuple[str, str]]:
    return [("Origin", ORIGIN), ("Content-Type", "application/json"), ("Content-Length", str(length))]


async def _gateway(gateway_process: GatewayProcessFactory, upstream: UpstreamDouble) -> GatewayProcess:
    tree = base_policy(upstream.url, danger_zone={"redeem": True})
    return await gateway_process(tree)


async def _send_and_go(gw: GatewayProcess, data: bytes, *, reset: bool) -> None:
    """Write `data` and go away: a FIN, or a TCP RST (SO_LINGER 0) as a killed tab may leave."""
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(data)
    await writer.drain()
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()
        await writer.wait_closed()


async def test_a_client_gone_mid_body_is_client_closed_with_nothing_sent_and_no_error(
    gateway_process, upstream
):
    gw = await _gateway(gateway_process, upstream)
    head = request_bytes("POST", REDEEM, _head(len(BODY)))
    for count, reset in enumerate((False, True), start=1):
        await _send_and_go(gw, head + BODY[:10], reset=reset)  # 10 of the body's bytes, then gone
        await gw.wait_for('"logger": "gateway.access"', count=count)
    await asyncio.sleep(0.3)  # aiohttp writes its "Error handling request" line at once, if it writes one
    assert not gw.lines('"level": "error"'), gw.output
    assert not gw.lines("Traceback"), gw.output
    lines = gw.access_lines()
    assert [(line["decision"], line["status"]) for line in lines] == [("client_closed", 499)] * 2, lines
    assert {line["operation"] for line in lines} == {"redeem"}
    assert upstream.received == []  # nothing reached Voucherify


async def test_a_client_gone_after_its_whole_body_is_still_forwarded_and_accounted(gateway_process, upstream):
    upstream.default = Reply(delay=0.5, body={"result": "SUCCESS", "id": "r-1"})  # the page is gone first
    gw = await _gateway(gateway_process, upstream)
    for count, reset in enumerate((False, True), start=1):
        await _send_and_go(gw, request_bytes("POST", REDEEM, _head(len(BODY)), BODY), reset=reset)
        await gw.wait_for('"logger": "gateway.access"', count=count)
    assert [r.body for r in upstream.received] == [BODY, BODY]  # each redemption reached Voucherify once
    assert {r.headers["X-Client-Token"] for r in upstream.received} == {CLIENT_TOKEN}
    lines = gw.access_lines()
    assert [(line["decision"], line["status"]) for line in lines] == [("forwarded", 200)] * 2, lines
    assert all(line["upstream_ms"] >= 400 for line in lines), lines  # its answer was waited for
    assert not gw.lines('"level": "error"'), gw.output


class _Request:
    """What `_read_body` reads of a request: its body stream, here a real aiohttp StreamReader."""

    def __init__(self, content: object) -> None:
        self.content = content


async def test_the_body_reader_keeps_a_whole_body_whose_client_went_away_right_after_it():
    """The race an outside test cannot aim at: the last chunk, the end of the body and the connection's
    loss arrive in one turn of the loop while the handler waits for data. aiohttp then feeds the data,
    ends the stream and sets ConnectionResetError on it (`BaseRequest._cancel`), in that order: the body
    is whole and is forwarded; the same loss one chunk earlier is the client gone mid-body."""
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.streams import StreamReader

    from gateway.app import _read_body

    loop = asyncio.get_running_loop()
    for whole in (True, False):
        ours, theirs = socket.socketpair()  # the stream's protocol on a real, connected socket
        transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
        content = StreamReader(protocol, 2**16, loop=loop)
        content.feed_data(BODY[:10])
        reading = asyncio.create_task(_read_body(_Request(content), 1000))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # it took the first chunk and waits for more
        if whole:
            content.feed_data(BODY[10:])
            content.feed_eof()
        content.set_exception(ConnectionResetError("Connection lost"))
        try:
            if whole:
                assert await reading == BODY
            else:
                try:
                    await reading
                except ConnectionResetError:
                    continue
                raise AssertionError("a body cut short was taken as whole")
        finally:
            transport.close()
            theirs.close()
