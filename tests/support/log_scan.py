"""A credential scan over every log line the whole test suite produces.

In-process gateways log through the root logger, captured here with the gateway's own JSON formatter; the
serve subprocesses of the suite register their captured output lines, and the tests' OTLP receiver
(otlp_receiver.py) registers every span exported to it, as text. Every credential a test hands a
gateway (through a policy tree) is remembered, and at the end of the session no log line may hold one,
nor any value that looks like the suite's test secrets. A leak fails the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from gateway.observe.logs import JsonFormatter

# Fragments every test secret of the suite carries; header values sent by "browsers" included.
SECRET_MARKERS = ("secret-token", "sk_live_", "body-secret", "secret-key", "client-secret")

SECRETS: set[str] = set()
LINES: list[str] = []
SOURCES: list[list[str]] = []  # lists that subprocess readers keep appending to


def remember_credentials(tree: Mapping[str, Any]) -> None:
    """Record every credential value of a policy tree before it is handed to a gateway."""
    for project in (tree.get("projects") or {}).values():
        for value in ((project or {}).get("credentials") or {}).values():
            if isinstance(value, str) and len(value) >= 6 and "${" not in value:
                SECRETS.add(value)


def register_lines(lines: list[str]) -> None:
    SOURCES.append(lines)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        LINES.append(self.format(record))


def leaks() -> list[str]:
    found = []
    for line in [*LINES, *(line for source in SOURCES for line in list(source))]:
        lowered = line.lower()
        if any(secret.lower() in lowered for secret in SECRETS) or any(m in lowered for m in SECRET_MARKERS):
            found.append(line[:200])
    return found


@pytest.fixture(scope="session", autouse=True)
def capture_every_log_line() -> Iterator[None]:
    handler = _Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # access lines included
    yield
    root.removeHandler(handler)
    root.setLevel(previous)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    scanned = len(LINES) + sum(len(source) for source in SOURCES)
    if reporter is not None:
        reporter.write_line(
            f"credential scan: {scanned} log lines, {len(SECRETS)} credentials, {len(found)} leaks"
        )
    if found:
        if reporter is not None:
            for line in found[:20]:
                reporter.write_line(f"LEAK: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
