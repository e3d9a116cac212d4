"""The gateway's own answers: a status, (name, value) fields and a body, written as one buffer.

`web.Response` keeps its fields in a CIMultiDict, fills in Content-Length, Date, Server and Connection in
`prepare` (a dozen lookups and writes into that dict), serializes them in `write_headers`, and joins them
to the body in `write_eof`: in a saturation run this path cost more CPU than anything the policy does but
the upstream call. Every answer the gateway's pipeline and its connection layer make is an `Answer`: its
fields stay the list they were made as, and the head is written in one pass with aiohttp's own framing
rules (which statuses and methods carry no body or no Content-Length, Connection for keep-alive or close,
Date, the Content-Type of a body that has none); `tests/unit/test_answer.py` compares its bytes with
aiohttp's for every case. Every answer has `Server: voucherify-gateway` and `X-Content-Type-Options:
nosniff`. A field with a control character in it (CR, LF, NUL ...) is refused with ValueError, as aiohttp's
serializer refuses it: no field can split the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time, should_remove_content_length
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["SERVER", "Answer"]

SERVER = "voucherify-gateway"
_FIXED = f"Server: {SERVER}\r\nX-Content-Type-Options: nosniff\r\n"
# What aiohttp's serializer refuses in a field (any control character but tab), CR and LF counted apart
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Answer(web.StreamResponse):
    """An answer whose fields are final when it is made (read them with `fields`; `headers` is a read-only
    copy). The framing fields (Content-Length, Date, Connection, Server) are the answer's own: `fields`
    must not hold them, and holds no X-Content-Type-Options."""

    def __init__(
        self,
        status: int,
        fields: Sequence[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        """`content_type`: the Content-Type written when `fields` hold none (without it, a body that is
        sent gets application/octet-stream, as aiohttp gives it)."""
        super().__init__(status=status)
        self.fields = fields
        self._payload = body
        self._default_type = content_type

    @property
    def body(self) -> bytes:
        return self._payload

    @property
    def headers(self) -> CIMultiDictProxy[str]:  # type: ignore[override]
        """A copy, for reading: the answer is written from `fields` (and `content_type`)."""
        headers = CIMultiDict(self.fields)
        if self._default_type is not None and "Content-Type" not in headers:
            headers["Content-Type"] = self._default_type
        return CIMultiDictProxy(headers)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._payload_writer is None:
            self._req = request
            self._payload_writer = request._payload_writer
            if self._keep_alive is None:
                self._keep_alive = request.keep_alive
        return self._payload_writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        request, writer = self._req, self._payload_writer
        assert request is not None and writer is not None and not data
        method = request.method
        empty = must_be_empty_body(method, self._status)
        head = self.head(request.version, method, bool(self._keep_alive), empty)
        await writer.write_eof(head if empty else head + self._payload)
        self._eof_sent = True
        self._req, self._payload_writer = None, None
        self._body_length = writer.output_size

    def head(self, version: tuple[int, int], method: str, keep_alive: bool, empty: bool) -> bytes:
        """The status line and every field, as aiohttp's `Response.prepare` would have written them."""
        status, body, fields = self._status, self._payload, self.fields
        block = "\r\n".join(map(": ".join, fields))  # the separators are the only CR and LF it may hold
        if fields and (
            block.count("\r") != len(fields) - 1
            or block.count("\n") != len(fields) - 1
            or _CONTROL.search(block) is not None
        ):
            raise ValueError("a field of the answer holds a control character")  # it would split the answer
        lines = [
            f"HTTP/{version[0]}.{version[1]} {status} {self._reason}\r\n",
            block,
            "\r\n" if fields else "",
        ]
        sized = body or (status != 304 and method != "HEAD")  # aiohttp's Response._start
        if sized and not should_remove_content_length(method, status):
            lines.append(f"Content-Length: {len(body)}\r\n")
        for name, _ in fields:
            if name.lower() == "content-type":
                break
        else:
            if self._default_type is not None:
                if _ANY_CONTROL.search(self._default_type) is not None:
                    raise ValueError("the answer's content type holds a control character")
                lines.append(f"Content-Type: {self._default_type}\r\n")
            elif body and not empty:
                lines.append("Content-Type: application/octet-stream\r\n")
        lines.append(f"Date: {rfc822_formatted_time()}\r\n{_FIXED}")
        if keep_alive:
            if version == HttpVersion10:
                lines.append("Connection: keep-alive\r\n")
        elif version == HttpVersion11:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()
