"""Client mode: the operation forwarded as it came, under /client/v1, with the project's client keys."""

from __future__ import annotations

from typing import Any

from gateway.models import Target, UpstreamCall, UpstreamResponse
from gateway.modes.echo import refuse_echoed_secrets
from gateway.modes.server import with_query


class ClientMode:
    """Voucherify's client-side API: it checks the Origin itself too, so the verified Origin is forwarded."""

    forwards_origin = True

    def request(self, target: Target, body: bytes, document: dict[str, Any] | None) -> UpstreamCall:
        return UpstreamCall(
            target.route.method, with_query("/client/v1" + target.operation_path, target.query), body
        )

    def response(self, target: Target, answer: UpstreamResponse) -> UpstreamResponse:
        refuse_echoed_secrets(target, answer)  # 502 for an answer holding the project's secret
        return answer
