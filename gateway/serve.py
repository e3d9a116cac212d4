"""Running the gateway: listen, print where, reload on SIGHUP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from gateway.admin import gateway_readiness, start_admin
from gateway.app import STATE, create_app
from gateway.metrics import MetricsObserver
from gateway.observe import configure_logging, flush_logs, flush_logs_periodically
from gateway.policy import PolicyError, PolicyFile, load_policy
from gateway.reload import PolicyReloader

log = logging.getLogger("gateway")


def http_url(host: str, port: int) -> str:
    """Where a listener is, as a URL (an IPv6 host in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run(
    policy: PolicyFile,
    path: Path | None,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    with_admin: bool = True,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain. Under `--workers`, the parent runs the admin listener."""
    observer = MetricsObserver()
    app = create_app(policy, observer)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=policy.listen.drain_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    readiness = gateway_readiness(app[STATE])
    admin = await start_admin(policy.admin, observer.registry, readiness) if with_admin else None

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    reloader = PolicyReloader(app, path) if path is not None else None
    if reloader is not None:

        def on_hup() -> None:
            task = loop.create_task(reloader.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        reloader.start_watching()
    settle_heap()
    # Announced only once signals are handled: a supervisor may send SIGTERM as soon as it reads the line.
    flush_logs()  # what was logged before the line is readable when the line is
    # stdout is a pipe under supervisors and tests: unflushed, the line never shows
    print(f"voucherify-gateway listening on {http_url(host, runner.addresses[0][1])}", flush=True)
    flusher = loop.create_task(flush_logs_periodically())
    await stop.wait()
    app[STATE].draining = True  # /readyz answers 503 from now on; the admin listener stops last
    for listening in list(runner.sites):  # runner.cleanup() would too; first, so the log line is true
        await listening.stop()
    log.info("draining: no new connections, in-flight requests get %ss", policy.listen.drain_timeout)
    if reloader is not None:
        await reloader.stop_watching()
    await runner.cleanup()  # closes idle keep-alive connections, waits for handlers up to drain_timeout
    if admin is not None:
        await admin.stop()
    log.info("drained, exiting")
    flusher.cancel()
    flush_logs()
    return 0


def settle_heap() -> None:
    """Once started: keep the cyclic garbage collector off the start-up heap and out of the request path.

    The policy models, metric families, imported modules and their caches (~90,000 objects) live for the
    whole process, yet every full collection walked them all: under load the collector took 13 % of the
    CPU (measured with gc.callbacks during a saturation run), 0.5 s of 6.4 s in full collections alone.
    `gc.freeze()` moves what exists now out of every future collection. A request's objects are freed by
    reference counting as it ends, so with ~64 requests in flight the young generation's net growth
    crossed the default threshold (700) every few requests; at 10,000 it is crossed only by real growth,
    and cyclic garbage is still collected (a few collections a minute instead of hundreds a second).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def load_for_serving(path: Path, report: TextIO = sys.stdout) -> PolicyFile | None:
    """The policy to start with, logging configured from it; None after printing every problem."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=report)
        return None
    configure_logging(policy.logging.level, policy.logging.format)
    return policy


def serve(path: Path, host: str | None, port: int | None) -> int:
    policy = load_for_serving(path)
    if policy is None:
        return 1
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
