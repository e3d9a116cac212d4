"""Serving a process until it is told to stop: the part `serve`, the worker supervisor, `demo` and the
sandbox share.

    async with Serving(flush=(accounting.flush, flush_logs)) as serving:
        runner = await serving.listen(app, host=host, port=port)
        serving.announce(f"... listening on {http_url(host, port_of(runner))}")
        await serving.wait()
        ...  # the caller's own drain, if it has one
    # runners not closed yet are cleaned up (last started first), the flusher stopped, logs flushed

Signals are trapped on entry, so the listening line, printed by `announce`, is only ever printed once a
supervisor's SIGTERM would be handled. Light on purpose: no Redis, Prometheus or HTTP-client imports
(the sandbox uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.observe.logs import FLUSH_EVERY

__all__ = ["Serving", "http_url", "port_of", "run_loop", "settle_heap", "trap_early_hangups"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ORPHAN_POLL = 1.0  # seconds between checks that the supervising parent is still there
DRAIN_POLL = 0.02  # seconds between checks that a draining listener's connections are gone
CANCEL_GRACE = 0.25  # seconds a handler cancelled at the end of a drain gets to record its outcome


_EARLY_HANGUPS: list[int] = []  # SIGHUPs that came before a `Serving` with a hangup trapped the signal


def trap_early_hangups() -> None:
    """From here until a `Serving` traps SIGHUP, remember it rather than die of it: SIGHUP's default action
    ends the process, so a reload sent while the gateway started (`systemctl reload` right after `start`,
    a deploy script's HUP) killed it. The `Serving` handles a remembered one once its handler is in place:
    the file may have changed after it was read."""
    signal.signal(signal.SIGHUP, lambda signum, frame: _EARLY_HANGUPS.append(signum))


def http_url(host: str, port: int) -> str:
    """Where a listener is, as a URL (an IPv6 host in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def port_of(runner: web.BaseRunner) -> int:
    """The port a started runner listens on (the one picked, when it was asked for port 0)."""
    return int(runner.addresses[0][1])


class Serving:
    """One process's serving life: signals, the periodic flush, the listening line, the wait, cleanup.

    - SIGTERM and SIGINT call `stopping(sig)` (a supervisor forwards them) and end `wait()`;
    - SIGHUP calls `hangup()` when one is given (a reload), else it is left alone;
    - `flush` runs every FLUSH_EVERY seconds and once more at exit, after every runner is cleaned up;
    - `parent`: stop (as on SIGTERM) when that process is no longer this one's parent (a worker);
    - `process_exits`: the process ends with this `async with` (serve, a worker, the supervisor), so
      the signals it trapped are ignored from its end on, instead of going back to their default actions.
      Each arrives twice on a Ctrl-C (the terminal's, to every process of the group, then the
      supervisor's forward) and under systemd (SIGTERM to every process of the unit): after a quick
      drain the second killed a worker (exit -15) or raised KeyboardInterrupt in its teardown (a
      traceback), and the supervisor exited 1.
    """

    def __init__(
        self,
        *,
        flush: Sequence[Callable[[], None]] = (),
        hangup: Callable[[], None] | None = None,
        stopping: Callable[[signal.Signals], None] | None = None,
        parent: int | None = None,
        process_exits: bool = False,
    ) -> None:
        self._flush = tuple(flush)
        self._process_exits = process_exits
        self._hangup = hangup
        self._stopping = stopping
        self._parent = parent
        self._stop = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._drain: dict[web.AppRunner, float] = {}  # each runner's shutdown_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._trapped: list[signal.Signals] = []

    async def __aenter__(self) -> Serving:
        loop = asyncio.get_running_loop()
        handlers: list[tuple[signal.Signals, Callable[..., None], tuple[Any, ...]]]
        handlers = [(sig, self._on_stop_signal, (sig,)) for sig in STOP_SIGNALS]
        if self._hangup is not None:
            handlers.append((signal.SIGHUP, self._hangup, ()))
        for sig, handler, args in handlers:
            with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
                loop.add_signal_handler(sig, handler, *args)
                self._trapped.append(sig)
        if self._hangup is not None and _EARLY_HANGUPS:
            _EARLY_HANGUPS.clear()
            loop.call_soon(self._hangup)
        if self._flush:
            self._tasks.append(loop.create_task(self._flush_periodically()))
        if self._parent is not None:
            self._tasks.append(loop.create_task(self._watch_parent(self._parent)))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            while self._runners:
                await self.close(self._runners[-1])
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            loop = asyncio.get_running_loop()
            for sig in self._trapped:
                loop.remove_signal_handler(sig)
                if self._process_exits:  # already stopping, the process on its way out: a SIGHUP
                    signal.signal(sig, signal.SIG_IGN)  # has nothing to reload, a stop nothing to stop
            self._flush_now()

    # ----------------------------------------------------------------------------------------- listening

    async def listen(
        self,
        app: web.Application | web.AppRunner,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        backlog: int = 128,
        shutdown_timeout: float = 60.0,
    ) -> web.AppRunner:
        """`app` listening on host:port (or on `sock`, already bound); cleaned up at exit unless `close`d.

        `app` is an application, served by aiohttp's own `AppRunner`; or a runner the caller built and has
        not set up (the public port's `listen.GatewayRunner`), whose own shutdown_timeout should be
        CANCEL_GRACE as this one's. `shutdown_timeout`: how long `close` waits for requests in flight."""
        # aiohttp's own shutdown waits twice its timeout (once for the handlers, once more after a cancel
        # that only reaches a handler reading its body): `close` waits itself, aiohttp only for leftovers
        if isinstance(app, web.AppRunner):
            runner = app
        else:
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CANCEL_GRACE)
        await runner.setup()
        self._runners.append(runner)
        self._drain[runner] = shutdown_timeout
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock, backlog=backlog)
        else:
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=backlog)
        await site.start()
        return runner

    async def stop_listening(self, runner: web.AppRunner) -> None:
        """Close `runner`'s listening sockets (no new connections); its connections stay."""
        for site in list(runner.sites):
            await site.stop()

    async def close(self, runner: web.AppRunner) -> None:
        """Clean `runner` up now: no new connections, idle keep-alive connections closed, requests in
        flight given its shutdown_timeout, then the handlers still running cancelled (each gets
        CANCEL_GRACE to record its outcome) and the app's cleanup run. Returns within shutdown_timeout
        plus about 3 x CANCEL_GRACE, plus what the app's cleanup takes."""
        if runner not in self._runners:
            return
        self._runners.remove(runner)
        timeout = self._drain.pop(runner)
        await self.stop_listening(runner)
        server = runner.server
        if server is not None:
            await asyncio.sleep(0)  # as aiohttp: requests accepted before the stop start to be handled
            server.pre_shutdown()  # idle connections close now, busy ones once they answered
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            # aiohttp signals no connection's end: polled, during a drain only
            while server.connections and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(min(DRAIN_POLL, max(0.0, deadline - loop.time())))
            await _cancel_handlers(server)
        await runner.cleanup()

    # ----------------------------------------------------------------------------------------- life

    def announce(self, *lines: str) -> None:
        """Print the listening line(s), once what was logged before them is written."""
        self._flush_now()
        for line in lines:
            print(line, flush=True)  # stdout is a pipe under supervisors and tests: unflushed, it never shows

    async def wait(self) -> None:
        """Until SIGTERM, SIGINT, `stop()`, or the parent's death."""
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping is not None:
            self._stopping(sig)
        self._stop.set()

    def _flush_now(self) -> None:
        for flush in self._flush:
            flush()

    async def _flush_periodically(self) -> None:
        """Buffered lines and queued outcomes are never more than FLUSH_EVERY late."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._flush_now()

    async def _watch_parent(self, parent: int) -> None:
        """Stop (drain) when the supervising parent is gone, so no worker outlives it."""
        while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
            await asyncio.sleep(ORPHAN_POLL)
        self.stop()


async def _cancel_handlers(server: web.Server) -> None:
    """Cancel the handlers of the connections still open after a drain's timeout, and give them
    CANCEL_GRACE to finish (their `finally` blocks: the outcome recorded, an idempotency key released).

    aiohttp's own shutdown cancels only a handler's body reads (`BaseRequest._cancel`), which does not
    reach a handler waiting on the upstream, and then cancels the connection's task without waiting for
    it. The connection's task (`RequestHandler._task_handler`, pinned by tests/unit/test_serving.py) runs
    the handler's task and awaits it, so cancelling it cancels the handler too."""
    tasks: list[asyncio.Task[None]] = []
    for connection in server.connections:
        task = getattr(connection, "_task_handler", None)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
            tasks.append(task)
        else:
            connection.force_close()
    if tasks:
        await asyncio.wait(tasks, timeout=CANCEL_GRACE)


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


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop (asyncio's own loop where uvloop is missing) and return its exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship for
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
