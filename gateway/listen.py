"""The public port's connection layer: what happens before, between and around requests.

aiohttp's server, as it comes, leaves a connection open for 3,630 s whatever it sends (a slow request head
is only bound by that keep-alive default), has no cap on connections, reads and discards up to 10 s of a
body after a 413 before closing, answers what it cannot parse in text/plain that quotes the request back,
adds the next message's headers from a chunked request's trailers (its C parser, issue 17), and tells the
world its Python and aiohttp versions. `GatewayRunner` replaces `web.AppRunner` on the public port:

- a request head must arrive within `listen.header_timeout` of its first byte (a new connection: of its
  opening), else 408 `request_timeout` and the connection is closed; an idle keep-alive connection is
  closed after `listen.keepalive_timeout`;
- at most `listen.max_connections` connections are open per process: past it, the connection waiting
  longest (idle, in a head, or closing) is closed to make room; only when every one has a request in the
  handler is the new connection closed instead;
- every request with a `Transfer-Encoding` is answered with `Connection: close` and nothing after it on the
  connection is read: no trailer can reach another request, and HTTP/1.0 chunked framing is treated as
  faulty (RFC 9112 6.1);
- a close with request bytes left unread (413, 408, a refusal before the body) half-closes at once, so the
  client reads the answer and then EOF, discards what still comes for at most LINGER_SECONDS and
  LINGER_BYTES, then closes (closing with unread bytes resets the connection, which can destroy the answer
  before it is read: RFC 9112 9.6);
- before the app: an HTTP version other than 1.0/1.1 is 505, a Host that is not `host[:port]` (user info,
  spaces) or given twice is 400 (RFC 9112 3.2), `CONNECT` and `OPTIONS *` are 404;
- every answer is the gateway's: JSON errors with `X-Request-Id` and `Vary: Origin` for what aiohttp could
  not parse (never echoing it) and a last-resort 500; each accounted (access line, metrics); every answer
  has `X-Content-Type-Options: nosniff` and `Server: voucherify-gateway`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import resource
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import errors
from gateway.answer import SERVER, Answer
from gateway.app import STATE, GatewayState, error_answer, handle, new_request_id
from gateway.errors import GatewayError, describe_exception
from gateway.models import Outcome
from gateway.policy import Listen
from gateway.serving import CANCEL_GRACE

log = logging.getLogger("gateway")

LINGER_SECONDS = 2.0  # a closing connection's unread bytes are discarded for at most this long
LINGER_BYTES = 1 << 20  # and at most this many; then it is closed (a client still sending gets a reset)
UPSTREAM_FILES = 1000 + 256  # besides its clients, a process holds upstream connections and some files

# RFC 3986 host (IP-literal, IPv4address or reg-name) and an optional port; no user info, no spaces.
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?", re.ASCII
)

Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

_IDLE, _HEAD, _BUSY, _CLOSING = range(4)  # a connection's phase


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, listen: Listen) -> ConnectionLimits:
        return cls(listen.header_timeout, listen.keepalive_timeout, listen.max_connections)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` for the public port: its connections are `GatewayProtocol`s (module docstring)."""

    __slots__ = ("limits",)

    def __init__(self, app: web.Application, listen: Listen, **options: Any) -> None:
        """`options`: more of aiohttp's runner options (the test server's `handler_cancellation`); `serve`
        passes none. The drain (`listen.drain_timeout`) is `serving.Serving.close`'s, which waits for the
        requests in flight and then cancels them; aiohttp's own shutdown only gets CANCEL_GRACE, for
        leftovers, as on every runner `Serving` builds."""
        self.limits = ConnectionLimits.of(listen)
        options.setdefault("shutdown_timeout", CANCEL_GRACE)
        super().__init__(
            app,
            **options,
            access_log=None,  # the gateway writes its own access lines
            handle_signals=False,
            keepalive_timeout=listen.keepalive_timeout + listen.header_timeout,  # aiohttp's: a backstop
            lingering_time=0,  # GatewayProtocol closes half-way and discards, bounded, instead
        )

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app started and frozen; its handler and request factory
        raise_open_files_limit(self.limits.max_connections + UPSTREAM_FILES)
        state = self.app[STATE]
        return GatewayServer(
            guard(direct_dispatch(self.app, plain.request_handler), state),
            plain.request_factory,
            state,
            self.limits,
            loop=asyncio.get_running_loop(),
            **self._kwargs,
        )


class GatewayServer(web.Server):
    """aiohttp's `Server` making `GatewayProtocol`s, and keeping their count under `max_connections`."""

    def __init__(
        self,
        handler: Handler,
        request_factory: Any,
        state: GatewayState,
        limits: ConnectionLimits,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=request_factory, **kwargs)
        self.state = state
        self.limits = limits
        self.open = 0  # connections counted against max_connections
        self.evicted = 0  # closed to make room for a newer one
        self.refused = 0  # closed at once: every open connection had a request in the handler
        self._waiting: OrderedDict[GatewayProtocol, None] = OrderedDict()  # evictable, longest waiting first
        self._warned = -math.inf

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)

    def admit(self, protocol: GatewayProtocol) -> bool:
        """Count a new connection, closing the longest-waiting ones past the cap; False: no room."""
        self.open += 1
        while self.open > self.limits.max_connections:
            if not self._waiting:
                self.open -= 1
                self.refused += 1
                now = time.monotonic()
                if now - self._warned > 60:  # once a minute at most: a flood must not flood the log too
                    self._warned = now
                    log.warning(
                        "max_connections (%d) reached with every connection in a request: "
                        "new connections are closed",
                        self.limits.max_connections,
                    )
                return False
            victim, _ = self._waiting.popitem(last=False)
            self.open -= 1
            self.evicted += 1
            victim.evict()
        return True

    def waiting(self, protocol: GatewayProtocol, first: bool = False) -> None:
        self._waiting[protocol] = None
        self._waiting.move_to_end(protocol, last=not first)

    def working(self, protocol: GatewayProtocol) -> None:
        self._waiting.pop(protocol, None)

    def release(self, protocol: GatewayProtocol) -> None:
        self._waiting.pop(protocol, None)
        self.open -= 1


class GatewayProtocol(RequestHandler):
    """One connection: aiohttp's `RequestHandler` with head and idle deadlines, the cap, closes that
    half-close first, and the gateway's own answers for what aiohttp would answer itself."""

    __slots__ = ("_bytes_seen", "_counted", "_deadline", "_discarded", "_gw", "_phase", "_timer")

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gw = manager
        self._phase = _IDLE
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._discarded = 0
        self._bytes_seen = False  # of the request being waited for

    # --- connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._gw.admit(self):
            self.force_close()
            return
        self._counted = True
        self._wait(_IDLE, self._gw.limits.header_timeout)  # a new connection: a head within header_timeout

    def connection_lost(self, exc: BaseException | None) -> None:
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _CLOSING:  # answered and half-closed: what still comes is discarded, bounded
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES and self.transport is not None:
                self.transport.abort()
            return
        super().data_received(data)
        if phase == _BUSY:
            return
        if self._messages:  # a whole head (or what aiohttp could not parse): the handler's now
            self._phase, self._deadline = _BUSY, math.inf
            self._gw.working(self)
        elif data and phase == _IDLE:
            self._phase, self._bytes_seen = _HEAD, True
            self._set_deadline(self._gw.limits.header_timeout)

    def evict(self) -> None:
        """Closed to make room for a newer connection (called by the server, which uncounted it)."""
        self._counted = False
        if self.transport is not None:
            self.transport.abort()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._gw.release(self)

    # --- deadlines: one timer per connection, moved rather than re-created

    def _wait(self, phase: int, timeout: float) -> None:
        self._phase, self._bytes_seen = phase, False
        self._set_deadline(timeout)
        self._gw.waiting(self, first=phase == _CLOSING)

    def _set_deadline(self, timeout: float) -> None:
        self._deadline = deadline = self._loop.time() + timeout
        timer = self._timer
        if timer is not None and timer.when() > deadline:  # sooner than it is set for: set it again
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._deadline == math.inf or self.transport is None:
            return
        if self._loop.time() < self._deadline:  # moved later since it was set
            self._timer = self._loop.call_at(self._deadline, self._on_deadline)
            return
        self._deadline = math.inf
        if self._phase == _CLOSING:
            self.transport.close()
        elif self._phase == _HEAD or (self._phase == _IDLE and self._bytes_seen):
            self._head_timed_out()
        elif self._phase == _IDLE:
            self.force_close()  # idle: nothing was asked, nothing to answer

    def _head_timed_out(self) -> None:
        transport = self.transport
        assert transport is not None
        seconds = self._gw.limits.header_timeout
        error = errors.GatewayError(
            errors.ErrorKey.REQUEST_TIMEOUT,
            "Request timeout",
            f"The request head did not arrive within {seconds:g} seconds.",
            close_connection=True,
        )
        request_id = new_request_id()
        peer = transport.get_extra_info("peername")
        account(self._gw.state, request_id, "-", peer[0] if isinstance(peer, tuple) else None, None, error)
        body = error.body(request_id)
        head = (
            f"HTTP/1.1 {error.status} Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nVary: Origin\r\n"
            f"X-Request-Id: {request_id}\r\nX-Content-Type-Options: nosniff\r\nServer: {SERVER}\r\n\r\n"
        )
        transport.write(head.encode() + body)
        self._close_gently()

    # --- answers

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.StreamResponse) and not resp.prepared:
            if not isinstance(resp, Answer):  # one aiohttp made itself; every answer of the gateway has them
                resp.headers["Server"] = SERVER
                resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            if "Transfer-Encoding" in request.headers:  # trailers, HTTP/1.0 framing: nothing after it
                resp.force_close()
        result = await super().finish_response(request, resp, start_time)
        answered, reset = result
        if reset or self.transport is None:
            return result
        if not answered.keep_alive:
            if not request.content.is_eof() or self._messages:  # bytes of the client's still unread
                self._close_gently()
        elif not self._messages:
            self._wait(_IDLE, self._gw.limits.keepalive_timeout)
        return result

    def _close_gently(self) -> None:
        """Half-close now: the client reads the answer, then EOF. Discard what it still sends for at most
        LINGER_SECONDS / LINGER_BYTES, then close (aiohttp's loop ends and leaves the closing to this)."""
        transport = self.transport
        if transport is None:
            return
        self._force_close = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if transport.can_write_eof():
            transport.write_eof()
        self._wait(_CLOSING, LINGER_SECONDS)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers itself (a request it cannot parse, an exception past every handler), in
        the gateway's shape, accounted; its text (which quotes the request) is neither sent nor logged."""
        if request.writer.output_size > 0:  # as aiohttp: an answer is under way, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        if status == 400:
            error = errors.invalid_payload("The request is not valid HTTP/1.1.")._replace(
                close_connection=True
            )
        else:
            log.error("request failed past every handler: %s", describe_exception(exc) if exc else status)
            error = errors.internal_error()
        request_id = new_request_id()
        account(self._gw.state, request_id, "-", request.remote, None, error)
        return error_answer(error, request_id)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def account(
    state: GatewayState,
    request_id: str,
    method: str,
    peer: str | None,
    request: BaseRequest | None,
    error: GatewayError,
) -> None:
    """An answer made outside the app's handler, in the access log and the metrics like any other."""
    policy = state.policy
    outcome = Outcome(request_id, method, truncate_ip=policy.truncate_ips)
    forwarded = request.headers.getall("X-Forwarded-For", []) if request is not None else []
    outcome.client = policy.client_ip.client(peer, forwarded)
    outcome.origin = request.headers.get("Origin") if request is not None else None
    outcome.decision, outcome.status = error.key.value, error.status
    if state.tracer is not None:  # tracing on: its trace id in the access line, its SERVER span
        outcome.trace = state.tracer.begin(request.headers if request is not None else _NO_HEADERS)
    outcome.finished = time.time()
    state.accounting.started()
    state.accounting.record(outcome)


def framing_refusal(request: BaseRequest) -> GatewayError | None:
    """What is wrong with a request before any route is looked at (RFC 9112 2.3, 3.2, 3.2.3)."""
    if request.version not in (HttpVersion10, HttpVersion11):
        return errors.http_version_not_supported()
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1 or (hosts and not _HOST.fullmatch(hosts[0])):
        error = errors.invalid_payload(
            "The Host header must be one host[:port], without user info or spaces."
        )
        return error._replace(close_connection=True)
    if request.method == "CONNECT":  # no tunnels; the parser switched the connection to one: close it
        return errors.not_found()._replace(close_connection=True)
    if request.raw_path == "*":  # OPTIONS * (asterisk-form): not a path of any operation
        return errors.not_found()
    return None


def direct_dispatch(app: web.Application, app_handler: Handler) -> Handler:
    """The app's handler, with its router skipped for what only the gateway's catch-all route serves.

    aiohttp's `Application._handle` resolves every request through the router (a regex per route), wraps
    it in match info and checks for middlewares: about a fifth of the policy's whole cost per request. The
    gateway's own route takes every path the app's other routes (the widget, the demo page) do not name, so
    a request for any other path, without `Expect` (the router's expect handler answers 100 Continue),
    goes straight to `app.handle`, under the match info the router would have given it. Anything else, and
    an app whose routes are not plain paths before the catch-all, takes the router's way.
    """
    catch_all = None
    others: set[str] = set()
    for found in app.router.resources():
        routes = list(found)
        if routes and all(route.handler is handle for route in routes):
            catch_all = routes[0]
        elif isinstance(found, web.PlainResource) and catch_all is None:
            others.add(found.canonical)
        else:
            return app_handler  # a route the shortcut does not know how to keep
    if catch_all is None:
        return app_handler
    match_info = UrlMappingMatchInfo({}, catch_all)
    match_info.add_app(app)
    match_info.freeze()

    async def dispatch(request: BaseRequest) -> web.StreamResponse:
        if request.path in others or hdrs.EXPECT in request.headers:
            return await app_handler(request)
        app_request = cast(web.Request, request)  # made by the app's request factory: a Request
        app_request._match_info = match_info
        return await handle(app_request)

    return dispatch


def guard(handler: Handler, state: GatewayState) -> Handler:
    """The app's handler behind the framing checks, and a last resort: no exception reaches aiohttp."""

    async def guarded(request: BaseRequest) -> web.StreamResponse:
        refusal = framing_refusal(request)
        if refusal is not None:
            return _refuse(state, request, refusal)
        try:
            return await handler(request)
        except web.HTTPException as exc:  # raised by aiohttp's router for the app's other routes
            if exc.status < 400:
                raise
            error = errors.not_found() if exc.status == 404 else errors.invalid_payload(exc.reason)
            return _refuse(state, request, error if exc.status < 500 else errors.internal_error())
        except Exception as exc:
            log.error("request failed: %s", describe_exception(exc))
            return _refuse(state, request, errors.internal_error())

    return guarded


def _refuse(state: GatewayState, request: BaseRequest, error: GatewayError) -> Answer:
    request_id = new_request_id()
    account(state, request_id, request.method, request.remote, request, error)
    return error_answer(error, request_id)


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit), as servers do at start: the
    common soft default of 1024 would make accept() fail before max_connections is reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open-files limit %d is below max_connections plus upstream connections (%d): raise it "
            "(ulimit -n, LimitNOFILE=) or lower listen.max_connections",
            target,
            wanted,
        )
