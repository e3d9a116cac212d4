"""`serve --workers N`: N gateway processes on one port under a supervising parent.

Each worker is `python -m gateway serve ... --worker`: its own interpreter and event loop, listening with
`SO_REUSEPORT` so the kernel spreads connections over the workers. The parent:

- prints the single "listening" line once every worker has said it listens;
- forwards SIGTERM, SIGINT and SIGHUP to every worker (drain and reload are the workers' own); a worker
  that has not said it listens yet gets SIGHUP once it does (until then SIGHUP's default action would
  kill it);
- replaces a worker that dies while not stopping, with the policy in force: when the file was rejected
  since (the workers kept theirs), the replacement starts from a private copy of the last text that
  loaded, and still reloads from the file;
- reloads its own copy of the policy when the workers do (SIGHUP, and with `watch: true` a change to the
  file), so its `/readyz` checks the limit stores the workers use now, not those they started with;
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
from gateway.lint import workers_warning
from gateway.observe.logs import configure_logging, flush_logs
from gateway.observe.metrics import MULTIPROC_ENV, multiprocess_dir
from gateway.policy import PolicyError, PolicyFile, parse_policy, read_policy_text
from gateway.ratelimit import LimiterPool
from gateway.reload import POLL_SECONDS, Fingerprint, fingerprint, kept_at_restart, settled
from gateway.serving import Serving, http_url, run_loop

log = logging.getLogger("gateway.workers")

RESTART_BACKOFF = 1.0  # seconds before replacing a worker that died soon after it started


# ---------------------------------------------------------------------------------------------- worker


def run_worker(
    path: Path, host: str | None, port: int | None, kept: Path | None = None, parent: int | None = None
) -> int:
    """One worker: the gateway on a shared port (SO_REUSEPORT), no admin listener of its own, its log
    lines tagged with its PID, stopping by itself when the supervising parent is gone. `kept`: the text
    of the policy the other workers run, for when the file is rejected (reloads still read `path`).
    `parent`: the supervisor's pid, as it spawned this worker. Read here instead (`os.getppid()` once the
    policy is loaded), a supervisor that died meanwhile was already replaced by init: the worker took it
    for its parent, never stopped, and kept the port (SO_REUSEPORT) beside the next supervisor's."""
    from gateway.serve import load_for_serving, run

    seen = fingerprint(path)  # before reading it: a change from here on is one `watch` loads
    loaded = load_for_serving(path, sys.stderr)  # stdout is read by the parent
    if loaded is None and kept is not None:
        print(
            f"{path} is rejected: starting with the policy in force, kept from its last load", file=sys.stderr
        )
        loaded = load_for_serving(kept, sys.stderr)
    if loaded is None:
        return 1
    policy, handler = loaded
    handler.tags["worker"] = os.getpid()
    host = host or policy.listen.host
    port = policy.listen.port if port is None else port
    return run_loop(
        run(
            policy,
            path,
            host,
            port,
            log_handler=handler,
            reuse_port=True,
            with_admin=False,
            parent=os.getppid() if parent is None else parent,
            loaded=seen,
        )
    )


# ---------------------------------------------------------------------------------------------- parent


class Supervisor:
    def __init__(
        self, policy: PolicyFile, path: Path, host: str, port: int, count: int, kept: Path | None = None
    ) -> None:
        self.policy = policy
        self.kept = kept  # a private copy of the last text that loaded, for a replacement worker
        self.path, self.host, self.port, self.count = path, host, port, count
        # The parent's /readyz checks the projects' limit stores as a worker's does (LimiterPool.readiness).
        self.stores = LimiterPool()
        self.rate_limits = [policy.rate_limit_for(name) for name in policy.projects]
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.listening: set[int] = set()  # workers that said they listen: their signal handlers are set
        self._reload_pending: set[int] = set()  # told to reload before they listened: told once they do
        self.stopping = False
        self.failed = False
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.startup_failed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()  # reloads of the parent's copy never overlap
        self._seen: Fingerprint = None  # the file as last loaded (watch)

    def hangup(self) -> None:
        """SIGHUP: every worker reloads, and so does the parent's copy of the policy."""
        self._forward(signal.SIGHUP)
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        async with self._reload_lock:
            self._seen = await asyncio.to_thread(fingerprint, self.path)
            await self._load()

    async def _load(self, initial: bool = False) -> None:
        """The file's policy, as a worker's reload applies it, for the parent's /readyz (and its logs),
        and its text kept for replacements. A file the workers reject is ignored here too; they log its
        problems."""
        seen = await asyncio.to_thread(fingerprint, self.path)  # before reading it, for `watch`
        try:
            text = await asyncio.to_thread(read_policy_text, self.path)
            loaded = await asyncio.to_thread(parse_policy, text, None, str(self.path))
        except PolicyError:
            return
        if self.kept is not None:
            await asyncio.to_thread(_write_private, self.kept, text)
        if initial:  # the workers are about to read it: a change since `supervise` read it is theirs too
            self._seen = seen
        if loaded.logging != self.policy.logging:
            configure_logging(loaded.logging.level, loaded.logging.format)
        self.policy = kept_at_restart(self.policy, loaded)  # admin needs a restart, as for a worker
        self.rate_limits = [self.policy.rate_limit_for(name) for name in self.policy.projects]
        if not initial:
            log.info("supervisor: /readyz checks the limit stores of %s as loaded again", self.path)

    async def _watch_file(self) -> None:
        """With `watch: true`, the workers reload when the file changes: so does the parent."""
        polled = self._seen  # as the policy was read (`_load(initial=True)`)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self.policy.watch:
                continue
            async with self._reload_lock:
                current = await asyncio.to_thread(fingerprint, self.path)
                previous, polled = polled, current
                if settled(self._seen, previous, current):  # as the workers: never a file half written
                    self._seen = current
                    await self._load()

    async def _spawn(self, initial: bool) -> None:
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(self.path)]
        args += ["--host", self.host, "--port", str(self.port), "--worker", "--parent", str(os.getpid())]
        if not initial and self.kept is not None and self.kept.exists():
            args += ["--kept", str(self.kept)]
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
                self.listening.add(proc.pid)
                if proc.pid in self._reload_pending:  # a SIGHUP came while it started: it may have read
                    self._reload_pending.discard(proc.pid)  # the file before it changed
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGHUP)
                if initial:
                    self.ready += 1
                    if self.ready == self.count:
                        self.all_ready.set()
            else:
                print(line, flush=True)
        code = await proc.wait()
        self.procs.pop(proc.pid, None)
        self.listening.discard(proc.pid)
        self._reload_pending.discard(proc.pid)
        if multiprocess_dir() is not None:
            mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]  # its live gauges stop counting
        if self.stopping:
            # Stopped while still starting, before it set its handlers: the signal's default action ended
            # it, with nothing to drain. That is a clean stop (SIGTERM during start-up exited 1).
            stopped_starting = not listening and code in (-signal.SIGTERM, -signal.SIGINT)
            if code != 0 and not stopped_starting:
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
        for pid, proc in list(self.procs.items()):
            if sig == signal.SIGHUP and pid not in self.listening:
                # Its handler is not set yet, and SIGHUP's default action ends a process: at start-up the
                # supervisor exited 1 ("exited before listening"). It reloads once it listens.
                self._reload_pending.add(pid)
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def run(self) -> int:
        async with Serving(
            flush=(flush_logs,), hangup=self.hangup, stopping=self._forward, process_exits=True
        ) as serving:
            async with self._reload_lock:
                await self._load(initial=True)  # the text to keep (the policy is the one loaded already)
            watching = asyncio.create_task(self._watch_file())
            for _ in range(self.count):
                await self._spawn(initial=True)
            ready = asyncio.create_task(self.all_ready.wait())
            failed = asyncio.create_task(self.startup_failed.wait())
            halted = asyncio.create_task(serving.wait())
            await asyncio.wait({ready, failed, halted}, return_when=asyncio.FIRST_COMPLETED)
            for task in (ready, failed, halted):
                task.cancel()
            if self.all_ready.is_set() and not self.startup_failed.is_set() and not self.stopping:
                admin = await start_admin(  # one for all workers: /metrics sums their values
                    self.policy.admin,
                    CollectorRegistry(),
                    self.readiness,
                    serving=f" for {self.count} workers",
                )
                where = http_url(self.host, self.port)
                serving.announce(f"voucherify-gateway listening on {where} ({self.count} workers)")
                await serving.wait()
                while self._tasks:  # the workers drain; /readyz answers 503 meanwhile
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                if admin is not None:
                    await admin.stop()
            else:
                self.failed = self.startup_failed.is_set()
                self._forward(signal.SIGTERM)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            for task in (watching, *self._reloads):
                task.cancel()
            await asyncio.gather(watching, *self._reloads, return_exceptions=True)
            await self.stores.close()
        return 1 if self.failed else 0


def _write_private(path: Path, text: str) -> None:
    """`text` in `path`, readable by this user only, replaced whole (a worker never reads half of it)."""
    part = path.with_suffix(".part")
    with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
        file.write(text)
    part.replace(path)


def _private_dir() -> str | None:
    """A directory for the kept policy (0700: the text may hold secrets); None where no temporary
    directory is writable (a read-only root file system): replacements then read the file, as before."""
    try:
        return tempfile.mkdtemp(prefix="voucherify-gateway-policy-")
    except OSError as exc:
        log.warning(
            "no temporary directory for the policy in force (%s): a replacement worker reads the file", exc
        )
        return None


def supervise(path: Path, host: str | None, port: int | None, count: int) -> int:
    from gateway.serve import free_port, load_for_serving

    loaded = load_for_serving(path)
    if loaded is None:
        return 1
    policy = loaded[0]
    warning = workers_warning(policy, count)
    if warning is not None:
        log.warning(warning)
    host = host or policy.listen.host
    port = policy.listen.port if port is None else port
    if port == 0:  # every worker must bind the same port: pick it here
        port = free_port(host)
    kept_dir = _private_dir()
    own_metrics_dir = None
    if multiprocess_dir() is None:  # unset or empty, as the workers and the scrape read it
        own_metrics_dir = tempfile.mkdtemp(prefix="voucherify-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = own_metrics_dir
    try:
        kept = None if kept_dir is None else Path(kept_dir) / "policy.yaml"
        return run_loop(Supervisor(policy, path, host, port, count, kept).run())
    finally:
        if kept_dir is not None:
            shutil.rmtree(kept_dir, ignore_errors=True)
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
