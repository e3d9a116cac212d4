"""What the upstream is asked: the browser's operation turned into a Voucherify call for the project's mode.

Client mode forwards the operation as it is under /client/v1. Server mode (the project's server-side keys,
Voucherify's /v1 API) maps each operation to its server-side twin; see `server_mode.translate`.
"""

from __future__ import annotations

from gateway import server_mode
from gateway.errors import GatewayError
from gateway.models import Target, UpstreamCall
from gateway.server_mode import with_query

__all__ = ["UpstreamCall", "upstream_call"]


def upstream_call(target: Target, body: bytes) -> UpstreamCall | GatewayError:
    if target.project.server_mode:  # the operation's server-side twin, or a 400 for a query it cannot read
        return server_mode.translate(
            target.operation, target.route.method, target.operation_path, target.query, body
        )
    path = with_query("/client/v1" + target.operation_path, target.query)  # client mode: as it came
    return UpstreamCall(target.route.method, path, body)
