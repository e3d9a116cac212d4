"""Talking to Voucherify: which headers cross in each direction, and the one pooled client (`http1.py`).

Request headers are an allow-list: only what Voucherify needs from the browser is copied, then the
project's credentials and the request id are added. Credentials, cookies, forwarding and method-override
headers never cross. Response headers are an allow-list too, so nothing that describes the gateway's keys
or plan (`X-Rate-Limit-*`, cookies, upstream CORS) reaches the browser.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from multidict import CIMultiDict, MultiMapping

from gateway import errors
from gateway.errors import GatewayError
from gateway.http1 import Http1Client, PoolFull, UpstreamError, UpstreamTimeout
from gateway.models import Timeouts, UpstreamCall, UpstreamResponse

__all__ = ["Timeouts", "UpstreamPool", "UpstreamResponse", "request_headers", "response_headers"]

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


def response_headers(upstream: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers (name, value pairs as received) that may reach the browser."""
    hop_by_hop = {
        token.strip().lower()
        for name, value in upstream
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    out = []
    for name, value in upstream:
        lower = name.lower()
        if lower in COPIED_RESPONSE_HEADERS and lower not in hop_by_hop:
            out.append((name, value))
    return out


class UpstreamPool:
    """The one HTTP client of the process (`http1.Http1Client`): a pool per upstream host inside it.

    Requests are never retried: a retried POST to /redeem is a double redemption. Each upstream host has
    its own cap of requests in flight (`max_in_flight`); one over it is a 502 at once, logged once per
    episode (until a request to that host ends otherwise), not once per request.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, max_in_flight: int = 1000) -> None:
        self.timeout = Timeouts(connect_timeout, read_timeout)
        self._max_in_flight = max_in_flight
        self._client: Http1Client | None = None
        self._full: set[str] = set()  # hosts whose cap refused a request since their last other outcome

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:  # a reload: requests already in flight keep their slots
        self._max_in_flight = value
        if self._client is not None:
            self._client.max_in_flight = value

    async def start(self) -> None:
        self._client = Http1Client(self._max_in_flight)

    @property
    def ready(self) -> bool:
        return self._client is not None and not self._client.closed

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def send(
        self,
        base_url: str,
        call: UpstreamCall,
        headers: CIMultiDict[str],
        timeout: Timeouts | None = None,
    ) -> UpstreamResponse | GatewayError:
        client = self._client
        assert client is not None, "UpstreamPool.start() was not awaited"
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        started = client.loop.time()
        try:
            answer = await client.request(
                base_url, call.method, call.path, headers.items(), call.body, timeout or self.timeout
            )
        except UpstreamTimeout:
            self._full.discard(base_url)
            return errors.upstream_timeout()
        except PoolFull as exc:
            if base_url not in self._full:
                self._full.add(base_url)
                log.warning(
                    "upstream %s has %d requests in flight, its cap: more answer 502 at once",
                    exc.host,
                    self._max_in_flight,
                )
            return errors.upstream_unavailable()
        except UpstreamError as exc:  # the type and host only: headers carry credentials, paths are hostile
            self._full.discard(base_url)
            log.warning("upstream %s failed: %s", exc.host, type(exc).__name__)
            return errors.upstream_unavailable()
        if self._full:
            self._full.discard(base_url)
        return UpstreamResponse(
            answer.status, response_headers(answer.headers), answer.body, client.loop.time() - started
        )
