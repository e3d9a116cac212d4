"""Talking to Voucherify: which headers cross in each direction, and the one pooled client session.

Request headers are an allow-list: only what Voucherify needs from the browser is copied, then the
project's credentials and the request id are added. Credentials, cookies, forwarding and method-override
headers never cross. Response headers are an allow-list too, so nothing that describes the gateway's keys
or plan (`X-Rate-Limit-*`, cookies, upstream CORS) reaches the browser.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from gateway import errors
from gateway.errors import GatewayError
from gateway.translate import UpstreamCall

log = logging.getLogger("gateway.upstream")

COPIED_REQUEST_HEADERS = (
    "Content-Type",
    "Accept",
    "Accept-Language",
    "User-Agent",
    "X-Voucherify-Channel",
    "X-Voucherify-Double-Opt-In",
)
COPIED_RESPONSE_HEADERS = frozenset(
    {"content-type", "content-language", "cache-control", "etag", "last-modified", "expires", "retry-after"}
)


def _connection_listed(headers: MultiMapping[str]) -> set[str]:
    """Header names a sender marked hop-by-hop in its Connection header."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def request_headers(
    incoming: MultiMapping[str],
    credentials: Iterable[tuple[str, str]],
    origin: str | None,
    request_id: str,
    *,
    forward_origin: bool,
) -> CIMultiDict[str]:
    hop_by_hop = _connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name in COPIED_REQUEST_HEADERS:
        value = incoming.get(name)
        if value is not None and name.lower() not in hop_by_hop:
            out[name] = value
    if forward_origin and origin is not None:
        out["Origin"] = origin
    for name, value in credentials:
        out[name] = value
    out["X-Request-Id"] = request_id
    return out


def response_headers(upstream: MultiMapping[str]) -> list[tuple[str, str]]:
    hop_by_hop = _connection_listed(upstream)
    return [
        (name, value)
        for name, value in upstream.items()
        if name.lower() in COPIED_RESPONSE_HEADERS and name.lower() not in hop_by_hop
    ]


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float


class UpstreamPool:
    """One ClientSession for every upstream of the process: aiohttp pools connections per host inside it.

    Requests are never retried: a retried POST to /redeem is a double redemption.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, max_connections: int = 1000) -> None:
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=15)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            # only what request_headers chose: no made-up User-Agent, and no Content-Type for an empty body
            skip_auto_headers=("User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )
        # aiohttp silently resends GET and PUT once when a reused connection drops; a validate that locks a
        # session, or a second hit on Voucherify's per-IP budget, must not happen behind the caller's back.
        # There is no public switch (aio-libs/aiohttp#10790); aiohttp's own test client sets this attribute.
        self._session._retry_connection = False

    @property
    def ready(self) -> bool:
        return self._session is not None and not self._session.closed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        base_url: str,
        call: UpstreamCall,
        headers: CIMultiDict[str],
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> UpstreamResponse | GatewayError:
        assert self._session is not None, "UpstreamPool.start() was not awaited"
        url = URL(base_url + call.path, encoded=True)
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._session.request(
                call.method,
                url,
                headers=headers,
                data=call.body if call.body else None,
                allow_redirects=False,
                timeout=timeout or self.timeout,
            ) as response:
                body = await response.read()
                return UpstreamResponse(
                    response.status, response_headers(response.headers), body, loop.time() - started
                )
        except TimeoutError:
            return errors.upstream_timeout()
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream %s failed: %s", url.host, type(exc).__name__)
            return errors.upstream_unavailable()
