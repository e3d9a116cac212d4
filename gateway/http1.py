"""A small pooled HTTP/1.1 client for the gateway's one job: one request, one buffered answer, to Voucherify.

Why it exists: profiling a bare aiohttp proxy put `aiohttp.ClientSession.request` at ~40-45% of its CPU per
request (request building, yarl, multidict, tracing hooks, the streamed response machinery). Every answer
the gateway relays is a small JSON document read in full, so this client does only that: asyncio Protocols,
MagicStack's `httptools` (llhttp, the parser uvicorn uses) for responses, and one future per request.

What it does:
  - `http://` and `https://` base URLs (TLS verified with `ssl.create_default_context()` and SNI), IPv6
    literal hosts, an optional path prefix in the base URL; each base URL is parsed once and cached.
  - one pool per (scheme, host, port), idle connections reused last-in first-out and closed after
    `idle_timeout` seconds (one sweep timer for the client, re-armed only while something is idle);
    at most `max_in_flight` requests in flight to each (scheme, host, port), a cap of its own for every
    upstream host (Envoy's per-cluster circuit breaker): one more while it is full fails at once with
    `PoolFull`, nothing sent, instead of waiting for a slot, so a hung upstream holds only its own slots.
  - bodies by Content-Length, chunked or until the connection closes; 1xx interim answers skipped; no body
    for HEAD, 204 and 304; gzip and deflate decoded (Accept-Encoding: gzip, deflate is always sent). No TE
    is sent, so a transfer coding other than one `chunked` is refused, never relayed still coded.
  - a bounded answer: a head (or a trailer section) over `MAX_HEAD` bytes, or more than `max_body` bytes
    of body (on the wire or decoded) are an error, not memory growth; a declared Content-Length over
    `max_body` is refused as the headers arrive, before any of the body is kept.
    The bodies of all answers in flight together are bounded too (`max_buffered`): the answer that would
    pass it fails the same way. A failed answer's buffers are released at once, not by the cyclic garbage
    collector (which the server makes rare): a connection drops its chunks, its waiter and its failure on
    every error path, and its parser (which holds the connection) once the connection is lost.
  - timeouts: `connect` bounds DNS, TCP and the TLS handshake; `read` bounds the whole answer, from the
    request written to its last byte (not the gap between two reads), so an upstream trickling a byte at a
    time cannot hold a request longer than `read` seconds.
  - a connection is reused only when the answer was complete, llhttp says keep-alive, there was no
    `Connection: close`, and no byte arrived that nobody asked for. A connection the server closed while idle
    is marked dead by its protocol and never handed out.
  - a request target with a byte <= 0x20, 0x7f or non-ASCII, a method or header name that is not a token, or a
    header value with a control character (CR, LF, NUL... HTAB is allowed) is refused before any byte is
    written: `UnsafeRequest`. Host, Content-Length, Transfer-Encoding, Connection and Accept-Encoding are the
    client's own and are not taken from the caller.

What it deliberately does not do: retries (a retried POST /redeem is a double redemption: a reset is an
error, always), redirects, proxies, cookies, HTTP/2, Expect: 100-continue, streaming, pipelining, trailers
(trailer fields are dropped, never added to the headers).

Errors are `UpstreamError` subclasses carrying only the host: never a header value, a path or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools

from gateway.base_url import BaseUrlError, split_base_url
from gateway.models import Timeouts

MAX_BODY = 16 * 1024 * 1024
MAX_HEAD = 64 * 1024  # status line and headers of one answer
MAX_BUFFERED = 64 * 1024 * 1024  # the bodies of every answer in flight together
IDLE_TIMEOUT = 15.0

_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB: CR, LF and NUL among them
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# header names seen before: True to send, False to leave out (the client's own); bounded
_NAMES: dict[str, bool] = {}
_NAMES_MAX = 512


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]  # as received, latin-1 decoded; Content-Encoding dropped once decoded
    body: bytes
    content_encoding: str = ""  # every coding received (all its lines), lower case; "" once decoded


class UpstreamError(Exception):
    """A request that got no usable answer. Carries the host only: nothing from the request."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


class UpstreamTimeout(UpstreamError):
    """No connection within `connect` seconds, or no complete answer within `read` seconds."""


class ConnectTimeout(UpstreamTimeout):
    """No connection within `connect` seconds: nothing was written."""


class ConnectFailed(UpstreamError):
    """DNS, TCP or TLS (certificate included) failed."""


class ConnectionLost(UpstreamError):
    """Reset or closed before the answer was complete."""


class ProtocolError(UpstreamError):
    """The answer is not HTTP/1.1 this client accepts (garbage, an upgrade, a broken encoding)."""


class ResponseTooLarge(UpstreamError):
    """The answer is over `max_body` bytes, on the wire or decoded."""


class PoolFull(UpstreamError):
    """The host already has `max_in_flight` requests in flight: nothing was sent."""


class UnsafeRequest(UpstreamError):
    """The request would not be one well-formed HTTP request (splitting, smuggling): nothing was sent."""


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the reason is in `_Connection.failure`."""


class _Budget:
    """Body bytes held by every answer in flight, against one limit shared by the client's connections."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its llhttp parser. At most one request on it at a time."""

    __slots__ = (
        "alive",
        "body_size",
        "budget",
        "chunk_open",
        "chunks",
        "close_delimited",
        "complete",
        "encoding",
        "failure",
        "head_request",
        "head_size",
        "headers",
        "headers_done",
        "host",
        "idle_since",
        "loop",
        "max_body",
        "parser",
        "received",
        "registry",
        "reusable",
        "status",
        "timer",
        "trailer_size",
        "transport",
        "waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        max_body: int,
        registry: set[_Connection],
        budget: _Budget,
    ) -> None:
        self.loop = loop
        self.host = host
        self.max_body = max_body
        self.budget = budget  # body_size of the answer being read is counted in it until _release
        self.registry = registry  # the client's open connections: in it from connection_made to _lost
        self.transport: asyncio.Transport | None = None
        # self.parser is made in connection_made: it holds this protocol (its callbacks), and uvloop makes
        # the protocol before connecting, so a refused connection, never made nor lost, would keep a cycle
        self.alive = True  # False once closed, lost or not trusted: never handed out again
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.failure: UpstreamError | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_size = 0  # bytes of the answer's header fields so far, against MAX_HEAD
        self.chunks: list[bytes] = []
        self.status = 0
        self.body_size = 0
        self.received = 0
        self.encoding = ""
        self.head_request = False
        self.headers_done = False
        self.close_delimited = False
        self.complete = False
        self.reusable = False
        self.chunk_open = False  # a chunk header was read and none of its data yet (the last one: trailers)
        self.trailer_size = 0  # bytes received in the trailer section, against MAX_HEAD

    # --- the request side

    def send(
        self, head: bytes, body: bytes, head_request: bool, read_timeout: float
    ) -> asyncio.Future[Response]:
        transport = self.transport
        assert transport is not None and self.alive
        self.waiter = waiter = self.loop.create_future()
        self.head_request = head_request
        self.headers_done = self.complete = self.reusable = self.chunk_open = False
        self.received = self.trailer_size = 0
        self.failure = None
        self.timer = self.loop.call_later(read_timeout, self._timed_out)
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        return waiter

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(UpstreamTimeout(self.host))

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, error: UpstreamError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()

    def _release(self) -> None:
        """Give back the answer's buffers and budget now. The waiter and failure go too: the error's
        traceback holds the request's frame, which holds this connection, a cycle only the collector frees."""
        self.budget.used -= self.body_size
        self.body_size = 0
        self.chunks = []
        self.failure = None

    def abort(self) -> None:
        """Never used again: whatever was being read is dropped."""
        self.alive = False
        self._stop_timer()
        self._release()
        self.headers = []
        self.waiter = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.parser = httptools.HttpResponseParser(self)
        self.registry.add(self)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or self.complete or waiter.done():
            # bytes nobody asked for (while idle, or after a complete answer): the connection's framing is
            # not what this client thinks it is, so it is never reused
            self.abort()
            return
        self.received += len(data)
        if self.received > self.max_body + MAX_HEAD:
            self._fail(ResponseTooLarge(self.host))
            return
        chunk_open, body_size = self.chunk_open, self.body_size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError(self.host))
        except httptools.HttpParserError:
            if self.complete:  # the answer was whole; what followed it was not
                self.reusable = False
            else:
                self._fail(self.failure or ProtocolError(self.host))
        else:
            if not self.headers_done and self.received > MAX_HEAD:
                # every byte so far is head (interim answers included): llhttp buffers a field until it is
                # whole, so one endless value would be held until the read timeout, never reaching on_header
                self._fail(ResponseTooLarge(self.host))
            elif chunk_open and self.chunk_open and self.body_size == body_size and not self.complete:
                # a whole packet after a chunk header without a byte of its data: the last chunk's trailer
                # section, which llhttp also buffers field by field
                self.trailer_size += len(data)
                if self.trailer_size > MAX_HEAD:
                    self._fail(ResponseTooLarge(self.host))

    def eof_received(self) -> bool:
        self.alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done() and not self.complete:
            if self.headers_done and self.close_delimited:
                self.reusable = False
                self._finish()
            else:
                self._fail(ConnectionLost(self.host))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.registry.discard(self)
        self._stop_timer()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost(self.host))
        self._release()
        self.waiter = None
        self.transport = None
        with contextlib.suppress(AttributeError):  # lost without being made
            del self.parser  # it holds this protocol (its callbacks): the cycle ends with the connection

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request
            self.reusable = False
        self._release()
        self.headers = []
        self.head_size = 0
        self.encoding = ""

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:  # a trailer field (after a chunked body): never merged into the headers
            return
        # each answer's head is bounded on its own: thousands of tiny fields cost far more than their bytes
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self.head_size > MAX_HEAD:
            self.failure = ResponseTooLarge(self.host)
            raise _Stop
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # llhttp reads any three digits; HTTP has these (RFC 9110 15)
            self.failure = ProtocolError(self.host)
            raise _Stop
        if status < 200:
            return  # 1xx: llhttp completes it without a body and goes on to the real answer
        self.headers_done = True
        length_known = status in (204, 304)
        codings: list[str] = []
        transfer: list[str] = []  # every Transfer-Encoding line's codings, empty ones included
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                length_known = True
                if not self.head_request and status not in (204, 304) and _over(value, self.max_body):
                    self.failure = ResponseTooLarge(self.host)
                    raise _Stop  # refused before a byte of the body is kept
            elif lower == "transfer-encoding":
                transfer += (token.strip(" \t") for token in value.lower().split(","))
            elif lower == "content-encoding":
                # every line of it: two lines are one list (RFC 9110 5.3), so `gzip` twice is two codings,
                # refused, never one decoded and the other's bytes relayed as if they were the answer
                tokens = (token.strip(" \t") for token in value.lower().split(","))
                codings += (token for token in tokens if token not in ("", "identity"))
        if transfer:
            # no TE is sent, so chunked, once, is the only transfer coding an answer may have (RFC 9110
            # 10.1.4): any other would be relayed still coded, past everything that reads the body
            if [token for token in transfer if token] != ["chunked"]:
                self.failure = ProtocolError(self.host)
                raise _Stop
            length_known = True
        self.encoding = ", ".join(codings)
        self.close_delimited = not length_known
        if self.head_request:
            # llhttp cannot be told the request was HEAD, so it would wait for a body: the answer ends here
            # and the connection, whose parser is now out of step, is not reused
            self.on_message_complete()

    def on_chunk_header(self) -> None:
        self.chunk_open = True

    def on_body(self, body: bytes) -> None:
        self.chunk_open = False
        size = len(body)
        budget = self.budget
        self.body_size += size
        budget.used += size
        if self.body_size > self.max_body or budget.used > budget.limit:
            self.failure = ResponseTooLarge(self.host)
            raise _Stop
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.complete or self.status < 200:
            return
        self.reusable = not self.head_request and self.parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        self.complete = True
        self._stop_timer()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            chunks = self.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            waiter.set_result(Response(self.status, self.headers, body, self.encoding))
        self._release()  # the body is the caller's now


class _Origin:
    """The connections to one (scheme, host, port)."""

    __slots__ = ("host", "host_header", "idle", "in_flight", "port", "server_hostname", "ssl")

    def __init__(self, scheme: str, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.ssl = context if scheme == "https" else None
        self.server_hostname = host if self.ssl is not None else None
        default = 443 if scheme == "https" else 80
        authority = f"[{host}]" if ":" in host else host
        if port != default:
            authority += f":{port}"
        # pre-built once: every request on this origin starts its headers with these two lines
        self.host_header = f"Host: {authority}\r\nAccept-Encoding: gzip, deflate\r\n"
        self.idle: list[_Connection] = []  # oldest first; reuse takes the newest
        self.in_flight = 0  # requests between their cap check and their answer (or failure)


@dataclass(frozen=True, slots=True)
class _Base:
    origin: _Origin
    prefix: str  # the base URL's path, without its trailing slash


def _over(length: str, limit: int) -> bool:
    """A Content-Length value (llhttp has checked it is digits) over `limit`; unreadable ones are llhttp's."""
    value = length.strip()
    return value.isdigit() and value.isascii() and (len(value) > 20 or int(value) > limit)


def _name_sent(name: str, host: str) -> bool:
    known = _NAMES.get(name)
    if known is not None:
        return known
    if not _TOKEN.fullmatch(name):
        raise UnsafeRequest(host)
    sent = name.lower() not in _OWN_HEADERS
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = sent
    return sent


def decode_body(body: bytes, encoding: str, limit: int, host: str) -> bytes:
    """Undo gzip or deflate, the two encodings this client asks for, producing at most `limit` bytes."""
    if not body or encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some servers send it raw
        zlib_wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
    else:
        raise ProtocolError(host)  # never asked for: the browser could not read it either
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise ProtocolError(host) from None
    if len(out) > limit:
        raise ResponseTooLarge(host)
    if not decompressor.eof or decompressor.unused_data:
        raise ProtocolError(host)  # truncated, or something after the stream (several gzip members: refused)
    return out


class Http1Client:
    """Pools of keep-alive HTTP/1.1 connections, one per (scheme, host, port). Never retries a request."""

    def __init__(
        self,
        max_in_flight: int = 1000,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_body: int = MAX_BODY,
        max_buffered: int = MAX_BUFFERED,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        self._budget = _Budget(max_buffered)
        self.closed = False
        self._ssl = ssl_context
        self.max_in_flight = max_in_flight  # per (scheme, host, port); may be changed (a reload) at any time
        self._bases: dict[str, _Base] = {}
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._connections: set[_Connection] = set()  # every open one, idle or busy, for close()
        self._sweep: asyncio.TimerHandle | None = None

    def in_flight(self, base_url: str) -> int:
        """Requests in flight to `base_url`'s (scheme, host, port)."""
        return self._base(base_url).origin.in_flight

    @property
    def buffered(self) -> int:
        """Body bytes held right now by the answers being read."""
        return self._budget.used

    @property
    def open_connections(self) -> int:
        return sum(1 for conn in self._connections if conn.alive)

    def _base(self, base_url: str) -> _Base:
        base = self._bases.get(base_url)
        if base is not None:
            return base
        try:
            scheme, host, port, prefix = split_base_url(base_url)
        except BaseUrlError as exc:  # a policy refuses it at load (`check`): a URL from elsewhere
            raise UnsafeRequest(exc.host or "(invalid base URL)") from None
        key = (scheme, host, port)
        origin = self._origins.get(key)
        if origin is None:
            if scheme == "https" and self._ssl is None:
                self._ssl = ssl.create_default_context()
            origin = self._origins[key] = _Origin(scheme, host, port, self._ssl)
        base = self._bases[base_url] = _Base(origin, prefix)
        return base

    def _head(
        self,
        origin: _Origin,
        prefix: str,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        size: int,
    ) -> bytes:
        host = origin.host
        if method not in _KNOWN_METHODS and not _TOKEN.fullmatch(method):
            raise UnsafeRequest(host)
        # isascii/isprintable: the same rules as the regexes, in C, for the usual (clean) case
        if not target.startswith("/") or not (target.isascii() and target.isprintable()) or " " in target:
            raise UnsafeRequest(host)
        parts = [method, " ", prefix, target, " HTTP/1.1\r\n", origin.host_header]
        append = parts.append
        values: list[str] = []
        for name, value in headers:
            if not _name_sent(name, host):
                continue
            values.append(value)
            append(name)
            append(": ")
            append(value)
            append("\r\n")
        joined = "".join(values)
        if not joined.isprintable() and _BAD_VALUE.search(joined):  # one check for every value
            raise UnsafeRequest(host)
        if size or method in _BODY_METHODS:
            append(f"Content-Length: {size}\r\n")
        append("\r\n")
        try:
            return "".join(parts).encode()
        except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 in the first place
            raise UnsafeRequest(host) from None

    async def request(
        self,
        base_url: str,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeouts: Timeouts,
    ) -> Response:
        """Send one request to `base_url` + `target` and read its whole answer. Raises an `UpstreamError`."""
        if self.closed:
            raise ConnectionLost("(client closed)")
        base = self._base(base_url)
        origin = base.origin
        head = self._head(origin, base.prefix, method, target, headers, len(body))
        if origin.in_flight >= self.max_in_flight:
            raise PoolFull(origin.host)
        origin.in_flight += 1
        conn: _Connection | None = None
        try:
            conn = self._idle(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.connect)
            response = await conn.send(head, body, method == "HEAD", timeouts.read)
        except BaseException:
            if conn is not None:
                conn.abort()  # cancelled, failed or timed out mid-answer: never back in the pool
            raise
        finally:
            origin.in_flight -= 1
        if conn.reusable and conn.alive and not self.closed:
            conn.waiter = None
            conn.idle_since = self.loop.time()
            origin.idle.append(conn)
            if self._sweep is None:
                self._sweep = self.loop.call_later(self.idle_timeout, self._sweep_idle)
        else:
            conn.close()
        if response.content_encoding:
            response.body = decode_body(response.body, response.content_encoding, self.max_body, origin.host)
            response.headers = [(n, v) for n, v in response.headers if n.lower() != "content-encoding"]
            response.content_encoding = ""
        return response

    def _idle(self, origin: _Origin) -> _Connection | None:
        idle = origin.idle
        if not idle:
            return None
        oldest_kept = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.alive and conn.idle_since > oldest_kept:
                return conn
            conn.close()  # dead, or idle too long (and then so is every older one below it)
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        loop = self.loop
        host, max_body, connections, budget = origin.host, self.max_body, self._connections, self._budget
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, host, max_body, connections, budget),
                    host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.server_hostname,
                )
        except TimeoutError:
            raise ConnectTimeout(host) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS and certificate errors
            raise ConnectFailed(host) from exc
        except UnicodeError as exc:  # a name DNS cannot hold (an empty label, one over 63 characters)
            raise ConnectFailed(host) from exc
        return conn

    def _sweep_idle(self) -> None:
        """Close what has been idle for `idle_timeout`; come back when the next one will have been."""
        self._sweep = None
        now = self.loop.time()
        oldest_kept = now - self.idle_timeout
        next_due: float | None = None
        for origin in self._origins.values():
            idle = origin.idle
            expired = 0
            while expired < len(idle) and (
                not idle[expired].alive or idle[expired].idle_since <= oldest_kept
            ):
                idle[expired].close()
                expired += 1
            if expired:
                del idle[:expired]
            if idle:
                due = idle[0].idle_since + self.idle_timeout
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None:
            self._sweep = self.loop.call_at(next_due, self._sweep_idle)

    async def close(self) -> None:
        """Close every connection, idle or busy (a request in flight gets ConnectionLost)."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for origin in self._origins.values():
            origin.idle.clear()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
