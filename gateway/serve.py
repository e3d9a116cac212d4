"""Running the gateway: listen, print where, reload on SIGHUP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gateway.admin import gateway_readiness, start_admin
from gateway.app import STATE, create_app
from gateway.listen import GatewayRunner
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting, Sink
from gateway.observe.logs import BufferedStreamHandler, configure_logging, flush_logs
from gateway.observe.metrics import Metrics
from gateway.policy import PolicyError, PolicyFile, load_policy
from gateway.reload import Fingerprint, PolicyReloader, fingerprint
from gateway.serving import Serving, http_url, port_of, run_loop, settle_heap

if TYPE_CHECKING:  # imported at run time only when tracing is on
    from gateway.observe.tracing import Tracing

log = logging.getLogger("gateway")


async def run(
    policy: PolicyFile,
    path: Path | None,
    host: str,
    port: int,
    *,
    log_handler: BufferedStreamHandler | None = None,
    reuse_port: bool = False,
    with_admin: bool = True,
    parent: int | None = None,
    loaded: Fingerprint = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain. Under `--workers`, the parent runs the admin listener
    (`with_admin=False`) and each worker stops by itself when `parent` is no longer its parent."""
    metrics = Metrics()
    tracing = start_tracing(policy)  # None when off: then nothing of OpenTelemetry is imported
    sinks: list[Sink] = [AccessLog(log_handler), metrics]
    if tracing is not None:
        sinks.append(tracing)  # each process (each worker) exports its own spans
    accounting = Accounting(sinks)
    app = create_app(policy, accounting, tracer=tracing.starter if tracing is not None else None)
    state = app[STATE]
    reloader = None
    if path is not None:  # `loaded`: the file as `policy` was read from it, for `watch`
        reloader = PolicyReloader(app, path, counted=metrics.reloaded, loaded=loaded)
    drain = policy.listen.drain_timeout
    async with Serving(
        flush=(accounting.flush, flush_logs), hangup=_on_hup(reloader), parent=parent, process_exits=True
    ) as serving:
        public = GatewayRunner(app, policy.listen)  # deadlines, the connection cap, the gateway's own answers
        runner = await serving.listen(
            public, host=host, port=port, reuse_port=reuse_port, backlog=1024, shutdown_timeout=drain
        )
        admin = None
        if with_admin:
            admin = await start_admin(policy.admin, metrics.registry, gateway_readiness(state), accounting)
        if reloader is not None:
            reloader.start_watching()
        settle_heap()
        serving.announce(f"voucherify-gateway listening on {http_url(host, port_of(runner))}")
        await serving.wait()
        state.draining = True  # /readyz answers 503 from now on; the admin listener stops last
        await serving.stop_listening(runner)  # runner cleanup would too; first, so the next line is true
        log.info("draining: no new connections, in-flight requests get %ss", drain)
        if reloader is not None:
            await reloader.stop_watching()
        await serving.close(runner)  # closes idle keep-alive connections, waits for handlers up to drain
        if admin is not None:
            await admin.stop()
        log.info("drained, exiting")
    if tracing is not None:  # after the last outcomes were accounted for; bounded, and off the loop
        await asyncio.to_thread(tracing.shutdown)
    return 0


def start_tracing(policy: PolicyFile) -> Tracing | None:
    """The process's tracing when `tracing.otlp_endpoint` is set (`load_for_serving` checked the extra)."""
    if policy.tracing.otlp_endpoint is None:
        return None
    from gateway.observe.tracing import Tracing

    tracing = Tracing(policy.tracing)
    log.info(
        "tracing: spans to %s, service %s, sample ratio %g",
        tracing.collector,
        policy.tracing.service_name,
        policy.tracing.sample_ratio,
    )
    return tracing


def _on_hup(reloader: PolicyReloader | None) -> Callable[[], None] | None:
    """SIGHUP's handler: a reload in the background (reloads never overlap: `PolicyReloader`)."""
    if reloader is None:
        return None
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = asyncio.get_running_loop().create_task(reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    return on_hup


def load_for_serving(
    path: Path, report: TextIO = sys.stdout
) -> tuple[PolicyFile, BufferedStreamHandler] | None:
    """The policy to start with and the log handler configured from it; None after printing every
    problem."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=report)
        return None
    if policy.tracing.otlp_endpoint is not None:  # as `check` says: no silent start without traces
        from gateway.observe.trace_context import tracing_unavailable

        missing = tracing_unavailable()
        if missing is not None:
            print(f"error: {missing}", file=report)
            return None
    return policy, configure_logging(policy.logging.level, policy.logging.format)


def serve(path: Path, host: str | None, port: int | None) -> int:
    seen = fingerprint(path)  # before reading it: a change from here on is one `watch` loads
    loaded = load_for_serving(path)
    if loaded is None:
        return 1
    policy, handler = loaded
    return run_loop(
        run(
            policy,
            path,
            host or policy.listen.host,
            policy.listen.port if port is None else port,
            log_handler=handler,
            loaded=seen,
        )
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
