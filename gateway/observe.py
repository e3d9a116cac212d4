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
import weakref
from typing import TextIO

from gateway.models import Outcome

__all__ = ["Observer", "Outcome"]

access_log = logging.getLogger("gateway.access")
_JSON = json.JSONEncoder(default=str)  # built once: json.dumps(default=...) builds one per call


class Observer:
    """Receives every finished request. The base writes the access log; metrics extend it.

    `record` only queues the outcome: the queue is accounted for (log lines formatted, metrics counted)
    in batches, when it holds BATCH outcomes, every FLUSH_EVERY seconds (`flush_observers`, called with the
    log flush) and before a metrics scrape. In a saturation run, accounting inside each request cost about
    twice as much CPU as the same work done in a batch, where its code and data stay in the CPU's caches.
    """

    BATCH = 256

    def __init__(self) -> None:
        self._pending: list[Outcome] = []
        _observers.add(self)

    def started(self) -> None:
        """A request arrived; `record` follows for it, whatever happens."""

    def reloaded(self, applied: bool) -> None:
        """A policy reload was applied, or rejected (the running policy stayed)."""

    def record(self, outcome: Outcome) -> None:
        """A request finished: its outcome is accounted for in the next batch."""
        pending = self._pending
        pending.append(outcome)
        if len(pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Account for every queued outcome now."""
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                self.account(batch)
            except Exception:  # never the request's problem: it may be the one that filled the batch
                logging.getLogger("gateway").exception("accounting for %d requests failed", len(batch))

    def account(self, batch: list[Outcome]) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        handler = _direct  # what configure_logging set up: lines skip the LogRecord and its handlers
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
                "origin": outcome.origin[:200] if outcome.origin else None,
            }
            if outcome.idempotency is not None:  # kept, released, replayed, in_flight, reused...
                fields["idempotency"] = outcome.idempotency
            finished = outcome.finished or time.time()
            if handler is not None:
                handler.write_access(fields, finished)
            else:
                _log_access(fields, finished)


def _log_access(fields: dict[str, object], finished: float) -> None:
    """An access line through `logging`, dated when its request was answered, not when it is written."""
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, "request", (), None)
    record.created, record.msecs = finished, (finished - int(finished)) * 1000
    record.fields = fields
    access_log.handle(record)


_observers: weakref.WeakSet[Observer] = weakref.WeakSet()


def flush_observers() -> None:
    """Account for the queued outcomes of every observer of this process."""
    for observer in list(_observers):
        observer.flush()


class FieldsFormatter(logging.Formatter):
    """Formats a record, or an access line straight from its fields (no LogRecord: see `write_access`)."""

    def format_fields(self, created: float, level: str, name: str, fields: dict[str, object]) -> str:
        raise NotImplementedError


class JsonFormatter(FieldsFormatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line = dict(fields) if isinstance(fields, dict) else {"message": record.getMessage()}
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return self.format_fields(record.created, record.levelname.lower(), record.name, line)

    def format_fields(self, created: float, level: str, name: str, fields: dict[str, object]) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = int((created - second) * 1000)
        line: dict[str, object] = {"time": f"{self._stamp}.{millis:03d}Z", "level": level, "logger": name}
        line.update(fields)
        return _JSON.encode(line)


class TextFormatter(FieldsFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return self.format_fields(record.created, record.levelname.lower(), record.name, fields)
        return self._line(record.created, record.levelname.lower(), record.name, record.getMessage())

    def format_fields(self, created: float, level: str, name: str, fields: dict[str, object]) -> str:
        body = " ".join(f"{key}={_printable(value)}" for key, value in fields.items() if value is not None)
        return self._line(created, level, name, body)

    @staticmethod
    def _line(created: float, level: str, name: str, body: str) -> str:
        return f"{time.strftime('%H:%M:%S', time.localtime(created))} {level:7} {name}: {body}"


def _printable(value: object) -> object:
    """A value for a text line: a string with control characters (a forged line) is quoted and escaped."""
    return repr(value) if isinstance(value, str) and not value.isprintable() else value


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
        self.tags: dict[str, object] = {}  # added to every line (a worker's pid)
        self._pending: list[str] = []
        self._last = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        if self.tags:
            fields = getattr(record, "fields", None)
            if not isinstance(fields, dict):
                fields = {"message": record.getMessage()}
                record.args = None
            record.fields = {**fields, **self.tags}
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

    def write_access(self, fields: dict[str, object], finished: float) -> None:
        """An access line, formatted straight from its fields (info level, logger gateway.access)."""
        formatter = self.formatter
        if self.filters or not isinstance(formatter, FieldsFormatter):  # someone else's set-up: the long way
            _log_access(fields, finished)
            return
        if self.tags:
            fields = {**fields, **self.tags}
        self._pending.append(formatter.format_fields(finished, "info", access_log.name, fields))
        if len(self._pending) >= self.BATCH:
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


# The handler configure_logging installed, which access lines are written to directly; None when the
# gateway runs inside someone else's logging set-up (tests, embedding), where lines go through `logging`.
_direct: BufferedStreamHandler | None = None


def flush_logs() -> None:
    flush_observers()  # their access lines first
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
    global _direct
    _direct = handler
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
