"""The upstream transport: the narrow interface through which every call reaches Voucherify.

`Transport` is what the handler depends on (start, close, ready, send); `Http1Transport` is the real one, on
the gateway's own HTTP/1.1 client (`http1.py`). Tests and embedders pass another to `create_app(transport=…)`,
as httpx takes `transport=`, so upstream faults can be tested without a socket.

With tracing on, `send` is where each call becomes a CLIENT span of the request's trace
(`observe.trace_context.CURRENT`) and carries the gateway's own `traceparent` (that span's id) and the
caller's `tracestate` as received: the one place both are added, in either mode.

`send` answers Voucherify's answer (headers already through the response allow-list, `headers.py`) or raises
`errors.Refused` with 502 `upstream_unavailable` or 504 `upstream_timeout`. Requests are never retried: a
retried POST to /redeem is a double redemption.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol
from urllib.parse import urlsplit

from multidict import CIMultiDict

from gateway import errors
from gateway.errors import Refused
from gateway.headers import response_headers
from gateway.http1 import (
    ConnectFailed,
    ConnectTimeout,
    Http1Client,
    PoolFull,
    UnsafeRequest,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.models import Timeouts, UpstreamCall, UpstreamResponse
from gateway.observe.trace_context import CURRENT, new_span_id

THROTTLE_HEADERS = frozenset({"retry-after", "x-rate-limit-retry"})  # read from a 429, for the hold-off
log = logging.getLogger("gateway.upstream")


class Transport(Protocol):
    @property
    def ready(self) -> bool:
        """Whether calls can be sent (for readiness)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(
        self, base_url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
    ) -> UpstreamResponse:
        """Voucherify's answer to `call`, or Refused (502/504)."""
        ...


class Http1Transport:
    """The one HTTP client of the process (`http1.Http1Client`), with a keep-alive pool per upstream host.

    Timeouts come with each call, from the policy the request runs under, so a reload changes them at once.
    Each upstream host has its own cap of requests in flight (`upstream.max_in_flight_per_host`); one over
    it is a 502 at once, logged once per episode (until a request to that host ends otherwise), not once per
    request.
    """

    def __init__(self, max_in_flight: int = 1000) -> None:
        self._max_in_flight = max_in_flight
        self._client: Http1Client | None = None
        self._full: set[str] = set()  # hosts whose cap refused a request since their last other outcome
        self._addresses: dict[str, tuple[str, int]] = {}  # base URL -> (host, port), for CLIENT spans

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
        self, base_url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
    ) -> UpstreamResponse:
        trace = CURRENT.get()
        if trace is None:  # tracing off, or a call outside a request
            return await self._send(base_url, call, headers, timeouts)
        if trace.tracestate is not None:
            headers["tracestate"] = trace.tracestate
        if not trace.sampled:  # no span is recorded: the call only carries the trace on
            headers["traceparent"] = trace.traceparent(new_span_id())
            return await self._send(base_url, call, headers, timeouts)
        host, port = self._address(base_url)
        span = trace.start_call(host, port, call.method)
        headers["traceparent"] = trace.traceparent(span.span_id)
        try:
            answer = await self._send(base_url, call, headers, timeouts)
        except Refused as refused:
            span.error = refused.error.key.value
            raise
        except BaseException:
            span.error = "cancelled"
            raise
        finally:
            span.end_ns = time.time_ns()
        span.status = answer.status
        return answer

    def _address(self, base_url: str) -> tuple[str, int]:
        """server.address and server.port of a base URL: its host (never its user info), its port."""
        found = self._addresses.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            default = 443 if parts.scheme == "https" else 80
            found = self._addresses[base_url] = (parts.hostname or "", parts.port or default)
        return found

    async def _send(
        self, base_url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
    ) -> UpstreamResponse:
        client = self._client
        assert client is not None, "Http1Transport.start() was not awaited"
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        started = client.loop.time()
        try:
            answer = await client.request(
                base_url, call.method, call.path, headers.items(), call.body, timeouts
            )
        except UpstreamTimeout as exc:
            self._full.discard(base_url)
            # still an unknown outcome to the browser (an Idempotency-Key keeps it), but a connection that
            # was never made sent nothing, and costs no upstream quota
            raise Refused(errors.upstream_timeout(sent=not isinstance(exc, ConnectTimeout))) from None
        except PoolFull as exc:
            if base_url not in self._full:
                self._full.add(base_url)
                log.warning(
                    "upstream %s has %d requests in flight, its cap: more answer 502 at once",
                    exc.host,
                    self._max_in_flight,
                )
            raise Refused(errors.upstream_unavailable()) from None
        except UpstreamError as exc:  # the type and host only: headers carry credentials, paths are hostile
            self._full.discard(base_url)
            log.warning("upstream %s failed: %s", exc.host, type(exc).__name__)
            # a refused connection or request wrote nothing; after that, Voucherify may have acted on it
            sent = not isinstance(exc, (ConnectFailed, UnsafeRequest))
            raise Refused(errors.upstream_unavailable(sent=sent)) from None
        if self._full:
            self._full.discard(base_url)
        throttle = (
            ()
            if answer.status != 429
            else tuple((name, value) for name, value in answer.headers if name.lower() in THROTTLE_HEADERS)
        )
        return UpstreamResponse(
            answer.status,
            response_headers(answer.headers),
            answer.body,
            client.loop.time() - started,
            throttle,
        )
