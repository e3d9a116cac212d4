"""What each request leaves behind: one access-log line (and, through `Observer`, metrics).

Log lines carry ids, names, statuses and timings, never a credential, a header value other than Origin,
or a body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from gateway.client_ip import IPAddress, truncated

access_log = logging.getLogger("gateway.access")


@dataclass(slots=True)
class Outcome:
    request_id: str
    method: str
    project: str | None = None
    operation: str | None = None
    decision: str = "forwarded"  # "forwarded" or the error key
    status: int = 0
    duration_ms: float = 0.0
    upstream_ms: float | None = None
    client_ip: IPAddress | None = None
    origin: str | None = None
    limit_store_error: bool = False  # the rate-limit store failed for this request


class Observer:
    """Receives every finished request. The base records the access log; metrics extend it."""

    def __init__(self, truncate_ips: bool = False) -> None:
        self.truncate_ips = truncate_ips

    def started(self) -> None:
        """A request arrived; `record` follows for it, whatever happens."""

    def reloaded(self, applied: bool) -> None:
        """A policy reload was applied, or rejected (the running policy stayed)."""

    def record(self, outcome: Outcome) -> None:
        if access_log.isEnabledFor(logging.INFO):
            ip = outcome.client_ip
            fields = {
                "request_id": outcome.request_id,
                "method": outcome.method,
                "project": outcome.project,
                "operation": outcome.operation,
                "decision": outcome.decision,
                "status": outcome.status,
                "duration_ms": round(outcome.duration_ms, 3),
                "upstream_ms": None if outcome.upstream_ms is None else round(outcome.upstream_ms, 3),
                "client_ip": (truncated(ip) if self.truncate_ips else str(ip)) if ip is not None else None,
                "origin": outcome.origin[:200] if outcome.origin else None,
            }
            access_log.info("request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        else:
            body = record.getMessage()
        return f"{stamp} {record.levelname.lower():7} {record.name}: {body}"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: one write per FLUSH_EVERY seconds or BATCH lines, not one per request.

    A write and flush per access line cost about as much as the rest of the gateway's own work per request.
    Warnings and errors are written at once; `serve` flushes the rest every FLUSH_EVERY seconds and at exit,
    so a line is never more than that late, and none is lost on a clean stop.
    """

    FLUSH_EVERY = 0.2
    BATCH = 256

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._last = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record))
        except Exception:  # a formatting error must not take the request down
            self.handleError(record)
            return
        if (
            record.levelno >= logging.WARNING
            or len(self._pending) >= self.BATCH
            or time.monotonic() - self._last >= self.FLUSH_EVERY
        ):
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                lines, self._pending = self._pending, []
                self.stream.write("\n".join(lines) + "\n")
            self._last = time.monotonic()
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


async def flush_logs_periodically() -> None:
    """Run for the life of a server: buffered lines are never more than FLUSH_EVERY late."""
    while True:
        await asyncio.sleep(BufferedStreamHandler.FLUSH_EVERY)
        flush_logs()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Log to stderr in batches; on a reload, keep the handler with its filters and pending lines."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, BufferedStreamHandler)), None)
    if handler is None:
        handler = BufferedStreamHandler(sys.stderr)
        root.handlers[:] = [handler]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
