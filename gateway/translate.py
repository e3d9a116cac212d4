"""What the upstream is asked: the browser's operation turned into a Voucherify call for the project's mode.

Client mode forwards the operation as it is under /client/v1. Server mode (the project's server-side keys,
Voucherify's /v1 API) maps each operation to its server-side twin; see `server_call`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import server_mode
from gateway.decide import Target
from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    method: str
    path: str  # raw path and query, appended to the project's base URL as it is
    body: bytes
    content_type: str | None = None  # replaces the caller's Content-Type when the body was rebuilt


def client_call(target: Target, body: bytes) -> UpstreamCall:
    path = "/client/v1" + target.operation_path
    if target.query:
        path += "?" + target.query
    return UpstreamCall(target.route.method, path, body)


def server_call(target: Target, body: bytes) -> UpstreamCall | GatewayError:
    translated = server_mode.translate(
        target.operation, target.route.method, target.operation_path, target.query, body
    )
    if isinstance(translated, GatewayError):
        return translated
    return UpstreamCall(translated.method, translated.path, translated.body, translated.content_type)


def upstream_call(target: Target, body: bytes) -> UpstreamCall | GatewayError:
    if target.project.server_mode:
        return server_call(target, body)
    return client_call(target, body)
