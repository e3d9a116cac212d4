"""`Expect: 100-continue`, answered only for a request the gateway will read the body of.

aiohttp's default sends `100 Continue` as soon as the head is parsed, before the gateway has looked at it:
a client then sends a body the gateway is about to refuse (an origin it does not allow, a declared length
over the limit). This one runs the header checks first (`decide`, pure and cheap) and says nothing for a
request they refuse; the handler then answers the refusal without reading the body. An expectation other
than 100-continue is ignored (RFC 9110 10.1.1 allows a 417, or processing the request as if it were absent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11

from gateway.compiled import CompiledPolicy
from gateway.decide import Admit, decide

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def continue_if_admitted(
    policy: Callable[[], CompiledPolicy],
) -> Callable[[web.Request], Awaitable[None]]:
    """An `expect_handler` for aiohttp's router; `policy` gives the policy in force."""

    async def expect(request: web.Request) -> None:
        if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            return
        if isinstance(decide(policy(), request.method, request.raw_path, request.headers), Admit):
            await request.writer.write(CONTINUE)
            request.writer.output_size = 0  # as aiohttp's: the answer proper has not started

    return expect
