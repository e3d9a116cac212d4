"""How a project talks to Voucherify: one mode object per project, with both halves of the translation.

`upstream_auth: client` is `ClientMode` (the client-side API with client keys, the Origin forwarded);
`upstream_auth: server` is `ServerMode` (each operation's twin on the server-side API with server keys).
The handler calls `mode.request(...)` before the upstream call and `mode.response(...)` after it; either may
raise `errors.Refused`. Both `response`s first pass Voucherify's answer through `echo.refuse_echoed_secrets`
(502 for an answer holding the project's secret key). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.models import Target, UpstreamCall, UpstreamResponse
from gateway.modes.client import ClientMode
from gateway.modes.server import ServerMode

__all__ = ["ClientMode", "Mode", "ServerMode", "mode_for"]


class Mode(Protocol):
    forwards_origin: bool  # whether the verified Origin goes upstream

    def request(self, target: Target, body: bytes, document: dict[str, Any] | None) -> UpstreamCall:
        """The Voucherify call for this request; `document` is the body already parsed (None if empty)."""
        ...

    def response(self, target: Target, answer: UpstreamResponse) -> UpstreamResponse:
        """The browser's view of Voucherify's answer."""
        ...


MODES: dict[str, Mode] = {"client": ClientMode(), "server": ServerMode()}


def mode_for(upstream_auth: str) -> Mode:
    return MODES[upstream_auth]
