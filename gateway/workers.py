"""`serve --workers N`: N gateway processes on one port under a supervising parent.

Each worker is `python -m gateway serve ... --worker`: its own interpreter and event loop, listening with
`SO_REUSEPORT` so the kernel spreads connections over the workers. The parent:

- prints the single "listening" line once every worker has said it listens;
- forwards SIGTERM, SIGINT and SIGHUP to every worker (drain and reload are the workers' own);
- replaces a worker that dies while not stopping;
- exits 0 once every worker stopped after SIGTERM/SIGINT (1 when one of them failed).

Workers tag every log line with their PID (`"worker": <pid>`), and stop by themselves if the parent dies.
For metrics, the parent points `PROMETHEUS_MULTIPROC_DIR` at a fresh temporary directory (unless the
operator set one) before starting workers, and removes it at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead

from gateway.admin import start_admin
from gateway.metrics import MULTIPROC_ENV, multiprocess_dir
from gateway.observe import BufferedStreamHandler, flush_logs, flush_logs_periodically
from gateway.policy import PolicyFile
from gateway.ratelimit import LimiterPool
from gateway.serve import http_url

log = logging.getLogger("gateway.workers")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RESTART_BACKOFF = 1.0  # seconds before replacing a worker that died soon after it started


def memory_warning(policy: PolicyFile, workers: int) -> str | None:
    """With several workers, an in-memory store counts per process: say so at start-up."""
    if workers <= 1:
        return None
    in_memory = [n for n in policy.projects if policy.rate_limit_for(n).storage.startswith("memory://")]
    if not in_memory:
        return None
    return (
        f"rate_limit.storage is memory:// for {', '.join(in_memory)} with {workers} workers: limits are per "
        f"process, so clients get up to {workers} times each limit; use a Redis URL to share them"
    )


# ---------------------------------------------------------------------------------------------- worker


async def _orphan_watch(parent: int) -> None:
    """Stop (drain) when the supervising parent is gone, so no worker outlives it."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


async def _worker_main(policy: PolicyFile, path: Path, host: str, port: int) -> int:
    from gateway.serve import run

    watch = asyncio.create_task(_orphan_watch(os.getppid()))
    try:
        return await run(policy, path, host, port, reuse_port=True, with_admin=False)
    finally:
        watch.cancel()


def run_worker(path: Path, host: str | None, port: int | None) -> int:
    from gateway.serve import _run_loop, load_for_serving

    policy = load_for_serving(path, sys.stderr)  # stdout is read by the parent
    if policy is None:
        return 1
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BufferedStreamHandler):  # what load_for_serving configured
            handler.tags["worker"] = os.getpid()
    return _run_loop(
        _worker_main(policy, path, host or policy.listen.host, policy.listen.port if port is None else port)
    )


# ---------------------------------------------------------------------------------------------- parent


class Supervisor:
    def __init__(self, policy: PolicyFile, path: Path, host: str, port: int, count: int) -> None:
        self.policy = policy
        self.path, self.host, self.port, self.count = path, host, port, count
        # The parent's /readyz checks the projects' limit stores as a worker's does (LimiterPool.readiness).
        self.stores = LimiterPool()
        self.rate_limits = [policy.rate_limit_for(name) for name in policy.projects]
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.failed = False
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.startup_failed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _spawn(self, initial: bool) -> None:
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(self.path)]
        args += ["--host", self.host, "--port", str(self.port), "--worker"]
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL, stdout=pipe)
        self.procs[proc.pid] = proc
        task = asyncio.create_task(self._watch(proc, initial, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, proc: asyncio.subprocess.Process, initial: bool, started: float) -> None:
        assert proc.stdout is not None
        listening = False
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not listening and "listening on" in line:
                listening = True
                log.info("worker %d listening", proc.pid)
                if initial:
                    self.ready += 1
                    if self.ready == self.count:
                        self.all_ready.set()
            else:
                print(line, flush=True)
        code = await proc.wait()
        self.procs.pop(proc.pid, None)
        if multiprocess_dir() is not None:
            mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]  # its live gauges stop counting
        if self.stopping:
            if code != 0:
                self.failed = True
            return
        if not listening and not self.all_ready.is_set():
            log.error("worker %d exited with %s before listening", proc.pid, code)
            self.startup_failed.set()
            return
        log.warning("worker %d exited with %s; starting a replacement", proc.pid, code)
        if time.monotonic() - started < 5:
            await asyncio.sleep(RESTART_BACKOFF)
        if not self.stopping:
            await self._spawn(initial=False)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        alive = len(self.procs)
        checks = {"workers": f"{alive} of {self.count} running"}
        if self.stopping:
            checks["draining"] = "yes: not taking new requests"
        stores = await self.stores.readiness(self.rate_limits)
        checks["limit_store"] = stores.check
        return not self.stopping and alive == self.count and stores.ok, checks

    def _forward(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        flusher = loop.create_task(flush_logs_periodically())

        def on_signal(sig: signal.Signals) -> None:
            self._forward(sig)
            if sig != signal.SIGHUP:
                stopped.set()

        for sig in FORWARDED:
            loop.add_signal_handler(sig, on_signal, sig)
        for _ in range(self.count):
            await self._spawn(initial=True)
        ready = asyncio.create_task(self.all_ready.wait())
        failed = asyncio.create_task(self.startup_failed.wait())
        halted = asyncio.create_task(stopped.wait())
        await asyncio.wait({ready, failed, halted}, return_when=asyncio.FIRST_COMPLETED)
        for task in (ready, failed, halted):
            task.cancel()
        if self.all_ready.is_set() and not self.startup_failed.is_set() and not self.stopping:
            where = http_url(self.host, self.port)
            admin = await start_admin(  # one for all workers: /metrics sums their values
                self.policy.admin, CollectorRegistry(), self.readiness, f" for {self.count} workers"
            )
            flush_logs()  # what was logged before the line is readable when the line is
            print(f"voucherify-gateway listening on {where} ({self.count} workers)", flush=True)
            await stopped.wait()
            while self._tasks:  # the workers drain; /readyz answers 503 meanwhile
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if admin is not None:
                await admin.stop()
        else:
            self.failed = self.startup_failed.is_set()
            self._forward(signal.SIGTERM)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.stores.close()
        flusher.cancel()
        flush_logs()
        return 1 if self.failed else 0


def supervise(path: Path, host: str | None, port: int | None, count: int) -> int:
    from gateway.serve import _run_loop, free_port, load_for_serving

    policy = load_for_serving(path)
    if policy is None:
        return 1
    warning = memory_warning(policy, count)
    if warning is not None:
        log.warning(warning)
    host = host or policy.listen.host
    port = policy.listen.port if port is None else port
    if port == 0:  # every worker must bind the same port: pick it here
        port = free_port(host)
    own_metrics_dir = None
    if multiprocess_dir() is None:  # unset or empty, as the workers and the scrape read it
        own_metrics_dir = tempfile.mkdtemp(prefix="voucherify-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = own_metrics_dir
    try:
        return _run_loop(Supervisor(policy, path, host, port, count).run())
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
