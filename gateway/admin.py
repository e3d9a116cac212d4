"""The admin listener: `/metrics`, `/healthz`, `/readyz`, on its own port, never on the public one.

`create_admin_app(registry, readiness, accounting)` builds it from a metrics registry, a readiness check and
the accounting to flush before a scrape, so a supervisor of several workers can run it in the parent
(multiprocess metrics, its own readiness, nothing of its own to flush) or in one process
(`gateway_readiness(state)`, the app's accounting), with the same code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.app import GatewayState
from gateway.observe.accounting import Accounting
from gateway.observe.metrics import scrape_registry
from gateway.policy import Admin

log = logging.getLogger("gateway.admin")

Checks = dict[str, str]
Readiness = Callable[[], Awaitable[tuple[bool, Checks]]]


async def always_ready() -> tuple[bool, Checks]:
    return True, {}


def gateway_readiness(state: GatewayState) -> Readiness:
    """Ready when a policy is loaded, the upstream session is open, the gateway is not draining, and every
    limit store that projects with `on_storage_error: deny` use answers. Storage URIs are never shown:
    a Redis URL may carry a password."""

    async def ready() -> tuple[bool, Checks]:
        checks: Checks = {}
        policy = state.policy
        ok = True
        if state.draining:
            checks["draining"] = "yes: not taking new requests"
            ok = False
        checks["policy"] = f"loaded, {len(policy.projects)} project(s)"
        if state.transport.ready:
            checks["upstream_session"] = "open"
        else:
            checks["upstream_session"] = "closed"
            ok = False
        stores = await state.limiters.readiness(p.rate_limit for p in policy.projects.values())
        checks["limit_store"] = stores.check
        ok = ok and stores.ok
        return ok, checks

    return ready


def create_admin_app(
    registry: CollectorRegistry, readiness: Readiness = always_ready, accounting: Accounting | None = None
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        if accounting is not None:
            accounting.flush()  # this process's queued outcomes, counted before they are read
        # In multiprocess mode this reads every worker's files: off the event loop.
        body = await asyncio.to_thread(generate_latest, scrape_registry(registry))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ok, checks = await readiness()
        return _json(200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": checks})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _json(status: int, payload: object) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )


class AdminServer:
    """The admin app on its own host and port. Stopped last, so `/readyz` answers 503 during a drain."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)

    async def start(self) -> int:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_admin(
    config: Admin,
    registry: CollectorRegistry,
    readiness: Readiness,
    accounting: Accounting | None = None,
    *,
    serving: str = "",
) -> AdminServer | None:
    """The admin listener the policy asks for, started; None when `admin.port` is not set."""
    if config.port is None:
        return None
    admin = AdminServer(create_admin_app(registry, readiness, accounting), config.host, config.port)
    port = await admin.start()
    log.info("admin listener (/metrics, /healthz, /readyz)%s on %s:%s", serving, config.host, port)
    return admin
