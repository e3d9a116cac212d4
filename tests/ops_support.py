"""Real `voucherify-gateway serve` subprocesses for tests, with every line they print captured.

`GatewayProcess` runs `python -m gateway serve`, collects stdout and stderr (the logs) line by line in a
thread, and is killed in the fixture's teardown whatever the test did. `assert_no_secrets` is the reusable
credential scan over captured lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin import create_admin_app, gateway_readiness
from gateway.app import STATE, GatewayState, create_app
from gateway.metrics import MetricsObserver
from tests.conftest import make_policy
from tests.log_scan import register_lines, remember_credentials

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # upper bound for things that normally take milliseconds; never a pass/fail timing


class GatewayProcess:
    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        register_lines(self.lines)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def json_lines(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def access_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line.get("logger") == "gateway.access"]

    async def wait_for(self, text: str, count: int = 1) -> None:
        """Until `text` has appeared in `count` lines (fails if the process exits or WAIT passes)."""
        deadline = time.monotonic() + WAIT
        while sum(text in line for line in list(self.lines)) < count:
            if self.proc.poll() is not None:
                await asyncio.sleep(0.1)  # let the reader thread drain what is left
                if sum(text in line for line in list(self.lines)) >= count:
                    return
                raise AssertionError(
                    f"gateway exited ({self.proc.returncode}) before {text!r}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {WAIT}s:\n{self.output}")
            await asyncio.sleep(0.02)

    async def started(self) -> GatewayProcess:
        await self.wait_for(f"listening on http://127.0.0.1:{self.port}")
        return self

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        return await asyncio.to_thread(self.proc.wait, WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


def write_policy(path: Path, tree: dict[str, Any]) -> Path:
    """Write atomically (a watcher never sees half a file)."""
    remember_credentials(tree)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def assert_no_secrets(lines: Iterable[str], secrets: Iterable[str]) -> None:
    """No secret value, nor its lower-cased form, appears in any line."""
    secrets = [s for s in secrets if s]
    for line in lines:
        for secret in secrets:
            assert secret not in line and secret.lower() not in line.lower(), (
                f"a credential leaked into a log line: {line[:80]}..."
            )


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Any]:
    """`await gateway_process(tree, port, env=None)`: a started serve subprocess, killed at teardown."""
    started: list[GatewayProcess] = []

    async def start(tree: dict[str, Any], port: int, env: dict[str, str] | None = None) -> GatewayProcess:
        config = write_policy(tmp_path / f"policy-{len(started)}.yaml", tree)
        process = GatewayProcess(config, port, env)
        started.append(process)
        return await process.started()

    yield start
    for process in started:
        process.kill()


# ------------------------------------------------------------------------------- in-process, with metrics


class OpsGateway:
    """The gateway app with a `MetricsObserver`, and its admin app, each on a real port."""

    def __init__(
        self,
        public: TestClient[web.Request, web.Application],
        admin: TestClient[web.Request, web.Application],
    ):
        self.public = public
        self.admin = admin

    @property
    def state(self) -> GatewayState:
        return self.public.server.app[STATE]  # type: ignore[union-attr]

    async def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample called `name` on /metrics, keyed by its sorted labels."""
        return samples(await (await self.admin.get("/metrics")).text(), name)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


@pytest.fixture
async def ops_gateway() -> AsyncIterator[Any]:
    """`await ops_gateway(tree)`: an `OpsGateway` on real ports, closed at teardown."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(tree: dict[str, Any]) -> OpsGateway:
        policy = make_policy(tree)
        observer = MetricsObserver(truncate_ips=policy.logging.client_ip == "truncated")
        app = create_app(policy, observer)
        admin_app = create_admin_app(observer.registry, gateway_readiness(app[STATE]))
        public = TestClient(TestServer(app, host="127.0.0.1"))
        admin = TestClient(TestServer(admin_app, host="127.0.0.1"))
        for client in (public, admin):
            await client.start_server()
            clients.append(client)
        return OpsGateway(public, admin)

    yield start
    for client in reversed(clients):
        await client.close()
