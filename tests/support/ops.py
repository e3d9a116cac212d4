"""Support for the operations tests in-process: the gateway with its admin app and metrics, on real ports.

`ops_gateway` starts an `OpsGateway`; `samples` and `labels` read a /metrics page; `assert_no_secrets` is the
reusable credential scan over captured log lines. Real `serve` subprocesses are in tests/support/processes.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin import create_admin_app, gateway_readiness
from gateway.app import STATE, GatewayState, create_app
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting
from gateway.observe.metrics import Metrics
from tests.conftest import GatewayTestServer, make_policy


def assert_no_secrets(lines: Iterable[str], secrets: Iterable[str]) -> None:
    """No secret value, nor its lower-cased form, appears in any line."""
    secrets = [s for s in secrets if s]
    for line in lines:
        for secret in secrets:
            assert secret not in line and secret.lower() not in line.lower(), (
                f"a credential leaked into a log line: {line[:80]}..."
            )


# ------------------------------------------------------------------------------- in-process, with metrics


class OpsGateway:
    """The gateway app accounting to its access log and metrics, and its admin app, each on a real port."""

    def __init__(
        self,
        public: TestClient[web.Request, web.Application],
        admin: TestClient[web.Request, web.Application],
    ):
        self.public = public
        self.admin = admin

    @property
    def state(self) -> GatewayState:
        server = self.public.server
        assert isinstance(server, TestServer)
        return server.app[STATE]

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


OpsGatewayFactory = Callable[[dict[str, Any]], Awaitable[OpsGateway]]


@pytest.fixture
async def ops_gateway() -> AsyncIterator[OpsGatewayFactory]:
    """`await ops_gateway(tree)`: an `OpsGateway` on real ports, closed at teardown."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(tree: dict[str, Any]) -> OpsGateway:
        policy = make_policy(tree)
        metrics = Metrics()
        accounting = Accounting([AccessLog(), metrics])
        app = create_app(policy, accounting)
        admin_app = create_admin_app(metrics.registry, gateway_readiness(app[STATE]), accounting)
        public = TestClient(GatewayTestServer(app, policy.listen))  # the public port's own runner
        admin = TestClient(TestServer(admin_app, host="127.0.0.1"))
        for client in (public, admin):
            await client.start_server()
            clients.append(client)
        return OpsGateway(public, admin)

    yield start
    for client in reversed(clients):
        await client.close()
