from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pluggy
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import create_app
from gateway.listen import GatewayRunner
from gateway.policy import Listen, PolicyFile, parse_policy
from gateway.serve import free_port
from tests.support.constants import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN
from tests.support.log_scan import capture_every_log_line, pytest_sessionfinish, remember_credentials
from tests.support.upstream_double import UpstreamDouble

# gateway_process and redis, redis_storage (real subprocesses), ops_gateway (in-process, with its admin app)
pytest_plugins = ["tests.support.processes", "tests.support.ops"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: cwd of every subprocess the suite starts


def base_policy(upstream_url: str, **project: Any) -> dict[str, Any]:
    """A policy tree with one project `shop` (the default) pointing at `upstream_url`."""
    shop: dict[str, Any] = {
        "region": upstream_url,
        "credentials": {"client_application_id": CLIENT_APP_ID, "client_secret_key": CLIENT_TOKEN},
        "allowed_origins": [ORIGIN, "https://*.example.org"],
    }
    shop.update(project)
    return {
        "default_project": "shop",
        "projects": {"shop": shop},
        "rate_limit": {"per_ip": "1000 per minute"},
    }


# the suite-wide credential scan (log_scan.py), and the gateway's own free_port for the tests
__all__ = [
    "CLIENT_APP_ID",
    "CLIENT_TOKEN",
    "ORIGIN",
    "capture_every_log_line",
    "free_port",
    "pytest_sessionfinish",
]


def make_policy(tree: dict[str, Any]) -> PolicyFile:
    remember_credentials(tree)
    return parse_policy(yaml.safe_dump(tree), env={})


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamDouble]:
    double = UpstreamDouble()
    await double.start()
    yield double
    await double.close()


class GatewayClient(TestClient[web.Request, web.Application]):
    """The test client of a started gateway: its port is known."""

    @property
    def port(self) -> int:
        port = super().port
        assert port is not None, "the test server is not started"
        return port


GatewayFactory = Callable[..., Awaitable[GatewayClient]]


class GatewayTestServer(TestServer):
    """aiohttp's TestServer on the public port's own runner (`listen.GatewayRunner`), as `serve` runs it:
    every test through the `gateway` fixture exercises the hardened connection layer."""

    def __init__(self, app: web.Application, listen: Listen) -> None:
        super().__init__(app, host="127.0.0.1")
        self.listen = listen

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        # TestServer's own options pass through: handler_cancellation=True (a handler whose client left is
        # cancelled), which tests of cancelled handlers rely on; serve leaves it at aiohttp's default (off)
        return GatewayRunner(self.app, self.listen, **kwargs)


@pytest.fixture
async def gateway(upstream: UpstreamDouble) -> AsyncIterator[GatewayFactory]:
    """`await gateway(tree=None, **project_overrides)`: a gateway on a real port in front of the double."""
    clients: list[GatewayClient] = []

    async def start(tree: dict[str, Any] | None = None, **project: Any) -> GatewayClient:
        policy = make_policy(tree if tree is not None else base_policy(upstream.url, **project))
        client = GatewayClient(GatewayTestServer(create_app(policy), policy.listen))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """Under CI=true a skip is a failure: CI installs every tool and service, so nothing may be left out."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (install what it needs instead): {report.longrepr}"


def raw_url(client: TestClient[web.Request, web.Application], path_and_query: str) -> URL:
    """A URL sent exactly as written (the test client would otherwise re-encode brackets and dots)."""
    return URL(f"http://127.0.0.1:{client.port}{path_and_query}", encoded=True)


GATEWAY_ERROR_FIELDS = {"code", "key", "message", "details", "request_id"}


def assert_gateway_error(status: int, body: Any, headers: Mapping[str, str], code: int, key: str) -> None:
    """One of the gateway's own errors, in Voucherify's shape, its request_id the X-Request-Id header."""
    assert status == code, body
    assert isinstance(body, dict) and set(body) == GATEWAY_ERROR_FIELDS, body
    assert body["code"] == code and body["key"] == key, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], str) and body["details"]
    assert body["request_id"] == headers["X-Request-Id"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Vary"] == "Origin"
