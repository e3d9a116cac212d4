"""gateway.serving: the one way every listener is served (signals, flush, listening line, cleanup), light
enough for the sandbox; and settle_heap, which keeps the collector off the start-up heap."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Sequence

import aiohttp
import pytest
from aiohttp import web

from gateway.models import Outcome
from gateway.observe.accounting import Accounting
from gateway.serving import Serving, http_url, port_of, settle_heap
from tests.conftest import ROOT

HEAVY = ("redis", "prometheus_client", "httptools", "limits")


def test_serving_and_the_sandbox_load_no_redis_prometheus_httptools_or_limits() -> None:
    program = (
        "import sys, gateway.serving, gateway.sandbox.__main__\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", program, *HEAVY], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "", f"serving the sandbox loaded {found.stdout.strip()}"


def test_http_url_brackets_an_ipv6_host() -> None:
    assert http_url("127.0.0.1", 80) == "http://127.0.0.1:80"
    assert http_url("::1", 8080) == "http://[::1]:8080"


class Sink:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.accounted = asyncio.Event()

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        self.seen += [outcome.request_id for outcome in batch]
        if batch:
            self.accounted.set()


def _hello_app(cleaned: list[str], name: str) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def on_cleanup(app: web.Application) -> None:
        cleaned.append(name)

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_cleanup.append(on_cleanup)
    return app


async def test_a_signal_stops_it_and_every_runner_is_cleaned_up_last_started_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cleaned: list[str] = []
    stopping: list[signal.Signals] = []
    async with Serving(stopping=stopping.append) as serving:
        first = await serving.listen(_hello_app(cleaned, "upstream"))
        second = await serving.listen(_hello_app(cleaned, "front"))
        async with aiohttp.ClientSession() as session:
            for runner, name in ((first, "upstream"), (second, "front")):
                async with session.get(http_url("127.0.0.1", port_of(runner))) as resp:
                    assert await resp.text() == name
        serving.announce("test listening on somewhere")
        assert capsys.readouterr().out == "test listening on somewhere\n"
        os.kill(os.getpid(), signal.SIGTERM)  # trapped: this process does not die
        await asyncio.wait_for(serving.wait(), 30)
    assert stopping == [signal.SIGTERM]  # a supervisor forwards it from here
    assert cleaned == ["front", "upstream"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are gone with it


async def test_a_process_that_exits_with_it_ignores_a_second_stop_signal() -> None:
    """A Ctrl-C sends SIGINT to every process of the group and the supervisor forwards it again; systemd
    sends SIGTERM to every process of the unit and the supervisor forwards it again. The second one came
    after a quick drain had given the signals back their default actions: a worker died of SIGTERM (exit
    -15) or raised KeyboardInterrupt in its teardown, and the supervisor exited 1."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        async with Serving(process_exits=True) as serving:
            os.kill(os.getpid(), signal.SIGINT)  # the first one stops it
            await asyncio.wait_for(serving.wait(), 30)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # the second one: this process would have died of it
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


async def test_a_sighup_while_starting_is_remembered_and_handled_once_serving() -> None:
    """SIGHUP's default action ends a process: one sent while the gateway started (a deploy's reload
    right after its start) killed it. `serve` traps it from its start and reloads once it can."""
    from gateway.serving import trap_early_hangups

    before = signal.getsignal(signal.SIGHUP)
    try:
        trap_early_hangups()
        os.kill(os.getpid(), signal.SIGHUP)  # still starting: this process would have died of it
        hangups: list[str] = []
        async with Serving(hangup=lambda: hangups.append("reload")) as serving:
            for _ in range(1000):  # loop turns, not time
                if hangups:
                    break
                await asyncio.sleep(0)
            serving.stop()
        assert hangups == ["reload"]  # once, and only once
        async with Serving(hangup=lambda: hangups.append("again")) as serving:
            await asyncio.sleep(0)
            serving.stop()
        assert hangups == ["reload"]
    finally:
        signal.signal(signal.SIGHUP, before)


async def test_sighup_calls_hangup_and_does_not_stop() -> None:
    hangups = asyncio.Event()
    async with Serving(hangup=hangups.set) as serving:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(hangups.wait(), 30)
        assert not serving.stopped
        serving.stop()
        await serving.wait()


async def test_queued_outcomes_are_flushed_while_serving_and_at_exit() -> None:
    sink = Sink()
    accounting = Accounting([sink])
    async with Serving(flush=(accounting.flush,)):
        accounting.record(Outcome("gw-periodic", "GET"))
        await asyncio.wait_for(sink.accounted.wait(), 30)  # the flusher's turn, every FLUSH_EVERY seconds
        assert sink.seen == ["gw-periodic"]
        accounting.record(Outcome("gw-last", "GET"))  # queued as the process stops
    assert sink.seen == ["gw-periodic", "gw-last"]


async def test_a_worker_stops_when_its_parent_is_gone() -> None:
    async with Serving(parent=os.getppid() + 1_000_000) as serving:  # not this process's parent: orphaned
        await asyncio.wait_for(serving.wait(), 30)
    assert serving.stopped


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_settle_heap_freezes_start_up_objects_and_still_collects_cycles() -> None:
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 1000  # what existed at start-up is out of every collection
        first = Node()
        dead = weakref.ref(first)
        del first
        for _ in range(
            30_000
        ):  # new cycles, as requests may leave: the young generation fills and is collected
            Node()
        assert dead() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_close_waits_for_a_busy_handler_and_cancels_one_past_the_timeout() -> None:
    """`close` lets a request in flight finish within shutdown_timeout; one still running after it (a
    handler waiting on something that never comes, as on a hung upstream) is cancelled, and its `finally`
    runs before `close` returns. Pins aiohttp's `RequestHandler._task_handler`, which the cancel goes
    through (aiohttp's own shutdown cancels only body reads)."""
    from gateway import serving as serving_module

    events: list[str] = []
    hung, started = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.2)
        events.append("slow answered")
        return web.Response(text="slow")

    async def forever(request: web.Request) -> web.Response:
        hung.set()
        try:
            await asyncio.Event().wait()
        finally:
            events.append("forever cancelled")
        raise AssertionError("not reached")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/forever", forever)
    async with Serving() as serving:
        runner = await serving.listen(app, shutdown_timeout=1.0)
        url = http_url("127.0.0.1", port_of(runner))
        async with aiohttp.ClientSession() as session:
            stuck = asyncio.create_task(session.get(url + "/forever").__aenter__())
            await asyncio.wait_for(hung.wait(), 30)
            server = runner.server
            assert server is not None
            assert all(isinstance(c._task_handler, asyncio.Task) for c in server.connections)  # the pin
            quick = asyncio.create_task(session.get(url + "/slow").__aenter__())
            await asyncio.wait_for(started.wait(), 30)  # both requests are being handled
            await serving.close(runner)
            assert events == ["slow answered", "forever cancelled"]
            assert (await quick).status == 200
            try:
                await stuck
            except aiohttp.ClientError:
                pass
            else:
                raise AssertionError("the cancelled request got an answer")
    assert serving_module.CANCEL_GRACE < 1.0  # the margin the README states
