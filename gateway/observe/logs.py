"""Process logging: stderr in batches, JSON or text lines, and `configure_logging` that sets it up.

`BufferedStreamHandler` also takes access lines straight from their fields (`write_access`, used by the
access-log sink in `gateway/observe/access.py`), so a request's line costs no `LogRecord`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from _json import encode_basestring_ascii, make_encoder
from typing import TextIO

__all__ = [
    "FLUSH_EVERY",
    "BufferedStreamHandler",
    "FieldsFormatter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "flush_logs",
]

FLUSH_EVERY = 0.2  # seconds: buffered lines (and queued outcomes, `serving.Serving`) are never later
# json's C encoder, built once: `JSONEncoder.encode` builds one on every call (~0.6 µs a line). Its
# settings are `json.dumps`' defaults (ASCII only, ", " and ": ", NaN allowed), anything else as str().
_ENCODER = make_encoder({}, str, encode_basestring_ascii, None, ": ", ", ", False, False, True)


def _json(document: dict[str, object]) -> str:
    return "".join(_ENCODER(document, 0))


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
        return _json(line)


class TextFormatter(FieldsFormatter):
    """`HH:MM:SS level logger: key=value ...`, each value written by logfmt's rules (`logfmt_value`).

    A message (a record without fields) follows the logger's name as it is, its control characters
    escaped, so that no record can write a second line.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return self.format_fields(record.created, record.levelname.lower(), record.name, fields)
        message = record.getMessage()
        if not message.isprintable():
            message = _escaped(message)
        return self._line(record.created, record.levelname.lower(), record.name, message)

    def format_fields(self, created: float, level: str, name: str, fields: dict[str, object]) -> str:
        body = " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items() if value is not None)
        return self._line(created, level, name, body)

    @staticmethod
    def _line(created: float, level: str, name: str, body: str) -> str:
        return f"{time.strftime('%H:%M:%S', time.localtime(created))} {level:7} {name}: {body}"


# Written bare: printable ASCII but space, `"` and `=`, as logfmt (go-logfmt's encoder) leaves a value
# bare only without those. Anything else is quoted, so a value can never end early and start a pair.
_BARE = re.compile(r"[!#-<>-~]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def logfmt_value(value: object) -> str:
    """A value for a text line, by logfmt's rules: bare when it can be, else in double quotes with `\\`,
    `"` and every non-printable character escaped (as Go's strconv.Quote does; logfmt parsers unquote it
    so). A forged Origin such as `x decision=forwarded status=200` stays one value of `origin`."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    return f'"{_escaped(text)}"'


def _escaped(text: str) -> str:
    return "".join(_ESCAPES.get(ch) or (ch if ch.isprintable() else _code(ch)) for ch in text)


def _code(ch: str) -> str:
    point = ord(ch)
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: one write per FLUSH_EVERY seconds or BATCH lines, not one per request.

    A write and flush per access line cost about as much as the rest of the gateway's own work per request.
    Warnings and errors are written at once; `serving.Serving` flushes the rest every FLUSH_EVERY seconds
    and at exit, so a line is never more than that late, and none is lost on a clean stop.
    """

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
            or time.monotonic() - self._last >= FLUSH_EVERY
        ):
            self.flush()

    def write_access(self, name: str, fields: dict[str, object], finished: float) -> bool:
        """An access line of logger `name` at info level, formatted straight from its fields; False (and
        nothing written) when this handler has filters or a formatter that is not the gateway's: someone
        else set it up, and the line must take the long way through `logging`."""
        formatter = self.formatter
        if self.filters or not isinstance(formatter, FieldsFormatter):
            return False
        if self.tags:
            fields = {**fields, **self.tags}
        self._pending.append(formatter.format_fields(finished, "info", name, fields))
        if len(self._pending) >= self.BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self._last = time.monotonic()
            if self._pending:
                lines, self._pending = self._pending, []
                self.stream.write("\n".join(lines) + "\n")
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        except (OSError, ValueError):  # stderr gone (a closed pipe, a closed file): these lines are
            pass  # lost, and a log call never raises into the request, the flusher or the exit
        finally:
            self.release()


def flush_logs() -> None:
    """Write every buffered line of the root logger's handlers now."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str = "info", fmt: str = "json") -> BufferedStreamHandler:
    """Log to stderr in batches; on a reload, keep the handler with its filters and pending lines.

    Returns the handler, for the access-log sink to write to directly (`observe.access.AccessLog`)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, BufferedStreamHandler)), None)
    if handler is None:
        handler = BufferedStreamHandler(sys.stderr)
        root.handlers[:] = [handler]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
