"""Hot reload: on SIGHUP, and with `watch: true` when the policy file changes.

The new file is read and validated off the event loop; a file `check` would reject is logged with check's
messages, counted, and ignored. A valid one is compiled and swapped in as one reference, so requests in
flight finish under the policy they started with, and the `LimiterPool` (rate-limit state) is kept.
`logging`, `upstream`, `client_ip`, `rate_limit`, `projects` and `watch` take effect; `listen`, `admin` and
`tracing` need a restart (a change to them is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.app import STATE
from gateway.observe.logs import configure_logging
from gateway.policy import PolicyError, PolicyFile, load_policy

log = logging.getLogger("gateway.reload")

Fingerprint = tuple[int, int, str] | None
POLL_SECONDS = 1.0
RESTART_SECTIONS = ("listen", "admin", "tracing")  # POLICY.md: these need a restart


def kept_at_restart(running: PolicyFile, loaded: PolicyFile) -> PolicyFile:
    """The policy a reload applies: the file's, with the running `listen`, `admin` and `tracing` sections,
    which take effect only at a restart (the body limit and body timeout of `listen` are read per request,
    so without this a reload would apply them at once while its log line says they wait for a restart)."""
    return loaded.model_copy(update={section: getattr(running, section) for section in RESTART_SECTIONS})


def fingerprint(path: Path) -> Fingerprint:
    """mtime, size and content hash of the file (None when it cannot be read). Blocking: run in a thread."""
    try:
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, digest


def settled(loaded: Fingerprint, previous: Fingerprint, current: Fingerprint) -> bool:
    """Whether a poll found a change to load: the file differs from the one last loaded and is as the poll
    before found it. A file written in place (an editor's save, `cat new > policy.yaml`) can be caught
    half written; loaded then, a valid prefix (a projects list cut short, a top-level `rate_limit` cut
    off, so its defaults) was applied until the next poll. Waiting for two polls that agree loads it whole,
    a second later."""
    return current != loaded and current == previous


class PolicyReloader:
    """Reloads one app's policy from one file; reloads never overlap."""

    def __init__(
        self,
        app: web.Application,
        path: Path,
        *,
        configure_logs: bool = True,
        counted: Callable[[bool], None] | None = None,
        loaded: Fingerprint = None,
    ) -> None:
        self.app = app
        # The file as the running policy was read from it (taken before reading it); None: as the watch
        # starts. Taken then, a change made while the gateway started was never loaded.
        self._loaded = loaded
        self.path = path
        self.configure_logs = configure_logs  # False when the embedding program owns logging (tests)
        self._counted = counted  # told of each reload: applied (True) or rejected (metrics count them)
        self._lock = asyncio.Lock()
        self._seen: Fingerprint = None  # the file as last loaded
        self._polled: Fingerprint = None  # as the last poll found it
        self._watch_task: asyncio.Task[None] | None = None

    async def reload(self) -> bool:
        async with self._lock:
            self._seen = await asyncio.to_thread(fingerprint, self.path)
            return await self._load_and_apply()

    async def _load_and_apply(self) -> bool:
        state = self.app[STATE]
        try:
            policy = await asyncio.to_thread(load_policy, self.path)
            old = state.policy.source
            state.set_policy(kept_at_restart(old, policy))
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            log.error("%s: %d problem(s); the running policy stays in force", self.path, len(exc.problems))
            self._count(False)
            return False
        except Exception as exc:  # compiling or opening a storage failed: keep the running policy
            log.error("reload rejected: %s: %s", self.path, type(exc).__name__)
            self._count(False)
            return False
        self._apply_side_settings(old, policy)
        self._count(True)
        log.info("policy reloaded from %s: %d project(s)", self.path, len(policy.projects))
        return True

    def _count(self, applied: bool) -> None:
        if self._counted is not None:
            self._counted(applied)

    def _apply_side_settings(self, old: PolicyFile, new: PolicyFile) -> None:
        if self.configure_logs and new.logging != old.logging:
            configure_logging(new.logging.level, new.logging.format)
        for section in RESTART_SECTIONS:
            if getattr(old, section) != getattr(new, section):
                log.warning("%s changed in %s: it takes effect at the next restart", section, self.path)

    # ----------------------------------------------------------------------------------------- watching

    def start_watching(self) -> None:
        """Poll the file every second while the running policy says `watch: true` (checked each tick, so
        a reload can switch watching on or off)."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def stop_watching(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        state = self.app[STATE]
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(fingerprint, self.path)
        self._seen = self._polled = self._loaded
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not state.policy.source.watch:
                continue
            async with self._lock:
                current = await asyncio.to_thread(fingerprint, self.path)
                previous, self._polled = self._polled, current
                if not settled(self._seen, previous, current):
                    continue
                self._seen = current
                log.info("%s changed: reloading", self.path)
                await self._load_and_apply()
