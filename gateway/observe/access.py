"""The access log: one line per request, logger `gateway.access`, at info level.

Lines carry ids, names, statuses and timings, never a credential, a header value other than Origin (cut
to 200 characters), or a body. Each line is dated when its request was answered, and its client address
takes the form that request's own policy asked for (`Outcome.truncate_ip`), however late it is written.
With tracing on, each line also carries `trace_id` (32 lowercase hex digits), sampled or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from gateway.models import Outcome
from gateway.observe.logs import BufferedStreamHandler

__all__ = ["AccessLog", "access_log"]

access_log = logging.getLogger("gateway.access")
ORIGIN_CHARS = 200  # an Origin is attacker-sized: a log line cannot be made huge


class AccessLog:
    """The access-log sink. Given the handler `configure_logging` set up, it writes lines to it directly
    (no LogRecord, no handler chain); without one (tests, embedding), lines go through `logging`."""

    def __init__(self, handler: BufferedStreamHandler | None = None) -> None:
        self.handler = handler

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        if not batch or not access_log.isEnabledFor(logging.INFO):
            return
        handler = self.handler
        for outcome in batch:
            client = outcome.client
            fields: dict[str, object] = {
                "request_id": outcome.request_id,
                "method": outcome.method,
                "project": outcome.project,
                "operation": outcome.operation,
                "decision": outcome.decision,
                "status": outcome.status,
                "duration_ms": round(outcome.duration_ms, 3),
                "upstream_ms": None if outcome.upstream_ms is None else round(outcome.upstream_ms, 3),
                "client_ip": client and (client.truncated if outcome.truncate_ip else client.text),
                "origin": outcome.origin[:ORIGIN_CHARS] if outcome.origin else None,
            }
            if outcome.idempotency is not None:  # kept, released, replayed, in_flight, reused...
                fields["idempotency"] = outcome.idempotency
            if outcome.trace is not None:  # tracing on: the request's trace id, sampled or not
                fields["trace_id"] = outcome.trace.trace_id_hex
            finished = outcome.finished or time.time()
            if handler is None or not handler.write_access(access_log.name, fields, finished):
                _log_access(fields, finished)


def _log_access(fields: dict[str, object], finished: float) -> None:
    """An access line through `logging`, dated when its request was answered, not when it is written."""
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, "request", (), None)
    record.created, record.msecs = finished, (finished - int(finished)) * 1000
    record.fields = fields
    access_log.handle(record)
