"""Running the gateway: listen, print where, reload on SIGHUP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.app import STATE, create_app
from gateway.observe import configure_logging
from gateway.policy import PolicyError, PolicyFile, load_policy

log = logging.getLogger("gateway")


def bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; it is the only way to learn port 0's pick
    sockets = getattr(server, "sockets", None)  # asyncio's Server and uvloop's (not a subclass) both have it
    assert sockets, "the site is not listening"
    return int(sockets[0].getsockname()[1])


async def reload_policy(app: web.Application, path: Path) -> bool:
    """Load and swap in the policy file; a file `check` would reject leaves the running policy in force."""
    try:
        policy = await asyncio.to_thread(load_policy, path)
    except PolicyError as exc:
        for problem in exc.problems:
            log.error("reload rejected: %s", problem)
        return False
    app[STATE].set_policy(policy)
    log.info("policy reloaded from %s", path)
    return True


async def run(
    policy: PolicyFile,
    path: Path | None,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    announce: Callable[[str], None] = print,
) -> int:
    app = create_app(policy)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=policy.listen.drain_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    shown = f"[{host}]" if ":" in host else host
    announce(f"voucherify-gateway listening on http://{shown}:{bound_port(site)}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if path is not None:

        def on_hup() -> None:
            task = loop.create_task(reload_policy(app, path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    app[STATE].draining = True
    log.info("draining: no new connections, in-flight requests get %ss", policy.listen.drain_timeout)
    await runner.cleanup()
    return 0


def serve(path: Path, host: str | None, port: int | None) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        return 1
    configure_logging(policy.logging.level, policy.logging.format)
    return _run_loop(
        run(policy, path, host or policy.listen.host, policy.listen.port if port is None else port)
    )


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship for
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
