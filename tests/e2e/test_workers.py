"""`serve --workers 2`: both workers serve, a dead one is replaced, signals reach every worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from gateway.lint import workers_warning
from gateway.policy import parse_policy
from gateway.workers import Supervisor
from tests.conftest import base_policy, free_port
from tests.support.constants import H
from tests.support.processes import GatewayProcess, GatewayProcessFactory
from tests.support.upstream_double import UpstreamDouble


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _access_workers(gw: GatewayProcess) -> set[int]:
    pids: set[int] = set()
    for line in gw.lines('"request_id"'):
        record = json.loads(line)
        if record.get("operation") == "validate":
            pids.add(int(record["worker"]))
    return pids


def spreading_session() -> aiohttp.ClientSession:
    """A new connection for every request: they spread over the workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


async def validate(session: aiohttp.ClientSession, gw: GatewayProcess) -> int:
    async with session.get(f"{gw.url}/client/v1/validate?code=A", headers=H) as resp:
        return resp.status


async def test_two_workers_serve_replace_reload_and_stop(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    gw = await gateway_process(base_policy(upstream.url), workers=2)
    assert f"127.0.0.1:{gw.port}" in gw.announced
    assert len(gw.lines("listening on", "stdout")) == 1  # one line for all workers
    assert any("memory://" in line and "2 workers" in line for line in gw.lines("warning"))
    workers = gw.worker_pids()
    assert len(workers) == 2
    assert gw.proc is not None and gw.proc.pid not in workers

    async with spreading_session() as session:
        assert set(await asyncio.gather(*(validate(session, gw) for _ in range(60)))) == {200}
        await gw.wait_for('"request_id"', count=60)
        assert _access_workers(gw) == workers  # both workers answered

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        await gw.wait_for(re.compile(r"worker \d+ listening"), count=3)
        replaced = gw.worker_pids() - workers
        assert len(replaced) == 1
        assert _alive(next(iter(replaced)))
        assert await validate(session, gw) == 200

    gw.send(signal.SIGHUP)
    await gw.wait_for("policy reloaded", count=2)
    reloaded = {json.loads(line)["worker"] for line in gw.lines("policy reloaded")}
    assert reloaded == (workers - {victim}) | replaced

    gw.send(signal.SIGTERM)
    assert await gw.exit_code() == 0
    assert not any(_alive(pid) for pid in gw.worker_pids())


async def test_workers_drain_and_exit_when_the_supervisor_dies(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    """A SIGKILLed parent forwards nothing: each worker notices it has been orphaned and drains itself."""
    gw = await gateway_process(base_policy(upstream.url), workers=2)
    workers = gw.worker_pids()
    assert gw.proc is not None
    gw.proc.kill()
    gw.proc.wait(10)
    await gw.wait_for("drained, exiting", count=2)  # their stderr is the test's: they still log
    drained = {json.loads(line)["worker"] for line in gw.lines("drained, exiting")}
    assert drained == workers


def test_memory_warning_only_for_several_workers_on_memory() -> None:
    tree = base_policy("http://127.0.0.1:9")
    policy = parse_policy(json.dumps(tree), env={})
    assert workers_warning(policy, 1) is None
    warning = workers_warning(policy, 4) or ""
    assert "limits are per process" in warning and "4 workers" in warning
    tree["rate_limit"]["storage"] = "redis://127.0.0.1:6379/0"
    assert workers_warning(parse_policy(json.dumps(tree), env={}), 4) is None


def test_workers_argument_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert "at least 1" in capsys.readouterr().err


async def test_one_metrics_scrape_covers_every_worker(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    tree = base_policy(upstream.url)
    admin_port = free_port()
    tree["admin"] = {"port": admin_port}
    gw = await gateway_process(tree, workers=2)
    admin = f"http://127.0.0.1:{admin_port}"
    async with spreading_session() as session:
        assert set(await asyncio.gather(*(validate(session, gw) for _ in range(80)))) == {200}
        await gw.wait_for('"request_id"', count=80)
        assert len(_access_workers(gw)) == 2  # both workers answered some of them

        async with session.get(f"{admin}/metrics") as resp:
            text = await resp.text()
        forwarded = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "gateway_requests_total" and sample.labels.get("operation") == "validate"
        )
        assert forwarded == 80  # not just the share of whichever worker would have answered

        async with session.get(f"{admin}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["checks"]["workers"] == "2 of 2 running"
        async with session.get(f"{gw.url}/metrics") as resp:
            assert resp.status == 404  # never on the public port


async def test_parent_readiness_follows_a_deny_projects_limit_store(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    from tests.support.processes import RedisServer

    redis = RedisServer()
    redis.start()
    try:
        tree = base_policy(upstream.url)
        tree["rate_limit"] = {"storage": redis.url, "on_storage_error": "deny", "per_ip": "100 per minute"}
        admin_port = free_port()
        tree["admin"] = {"port": admin_port}
        await gateway_process(tree, workers=2)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["checks"]["limit_store"] == "reachable"
            redis.kill()
            async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                assert resp.status == 503  # the workers would answer 503 rate_limit_unavailable: not ready
                body = await resp.json()
                assert body["checks"]["limit_store"] == "unreachable (on_storage_error: deny)"
                assert redis.url not in json.dumps(body)  # a Redis URL may carry a password
    finally:
        redis.kill()


class StartingWorker:
    """A worker process as the supervisor sees it: the lines it prints, the signals it is sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout = asyncio.StreamReader()
        self.signals: list[signal.Signals] = []
        self.signalled = asyncio.Event()

        self.code = 0

    def send_signal(self, sig: signal.Signals) -> None:
        self.signals.append(sig)
        self.signalled.set()

    async def wait(self) -> int:
        return self.code

    def says_it_listens(self) -> None:
        self.stdout.feed_data(b"voucherify-gateway listening on http://127.0.0.1:8080\n")


def watched(*workers: StartingWorker) -> tuple[Supervisor, list[asyncio.Task[None]]]:
    """A supervisor of two workers on a policy, watching `workers` as it watches those it spawns."""
    policy = parse_policy(json.dumps(base_policy("http://127.0.0.1:9")), env={})
    supervisor = Supervisor(policy, Path("policy.yaml"), "127.0.0.1", 8080, 2)
    watches = []
    for worker in workers:
        proc = cast(asyncio.subprocess.Process, worker)
        supervisor.procs[worker.pid] = proc
        watches.append(asyncio.create_task(supervisor._watch(proc, True, 0.0)))
    return supervisor, watches


async def test_a_sighup_reaches_a_starting_worker_once_it_listens_not_before() -> None:
    """SIGHUP's default action ends a process: forwarded to a worker still starting (its handler not set),
    it killed the worker, and at start-up the supervisor exited 1 ("exited before listening")."""
    ready, starting = StartingWorker(101), StartingWorker(102)
    supervisor, watches = watched(ready, starting)
    ready.says_it_listens()
    for _ in range(1000):  # loop turns, not time: until the supervisor read the line
        if supervisor.ready == 1:
            break
        await asyncio.sleep(0)
    assert supervisor.ready == 1

    supervisor._forward(signal.SIGHUP)
    assert ready.signals == [signal.SIGHUP]
    assert starting.signals == []  # it would have died of it
    starting.says_it_listens()
    await asyncio.wait_for(starting.signalled.wait(), 10)  # a bound for a stuck test, not a timing
    assert starting.signals == [signal.SIGHUP]  # it reloads once it can: it may have read the old file
    assert ready.signals == [signal.SIGHUP]

    supervisor.stopping = True
    for worker in (ready, starting):
        worker.stdout.feed_eof()
    await asyncio.gather(*watches)
    supervisor._forward(signal.SIGHUP)
    assert starting.signals == [signal.SIGHUP]  # a worker that is gone is not sent anything


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
async def test_parent_readiness_follows_a_reloaded_limit_store(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory, trigger: str
) -> None:
    """The parent's /readyz checked the limit stores of the policy it started with: after a reload that
    moved a project to an unreachable Redis with `on_storage_error: deny`, every worker answered 503
    rate_limit_unavailable while /readyz said 200 (and the other way round)."""
    from tests.support.processes import write_policy

    tree = base_policy(upstream.url)
    admin_port = free_port()
    tree["admin"] = {"port": admin_port}
    tree["watch"] = trigger == "watch"
    gw = await gateway_process(tree, workers=2)
    readyz = f"http://127.0.0.1:{admin_port}/readyz"
    async with aiohttp.ClientSession() as session:
        async with session.get(readyz) as resp:
            assert resp.status == 200

        tree["rate_limit"] = {"storage": f"redis://127.0.0.1:{free_port()}/0", "on_storage_error": "deny"}
        write_policy(gw.config, tree)
        if trigger == "sighup":
            gw.send(signal.SIGHUP)
        await gw.wait_for("policy reloaded", count=2)  # both workers
        await gw.wait_for("/readyz checks the limit stores of")  # and the parent
        async with session.get(f"{gw.url}/client/v1/validate?code=A", headers=H) as resp:
            assert resp.status == 503  # rate_limit_unavailable: the workers are on the new store
        async with session.get(readyz) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["checks"]["limit_store"] == "unreachable (on_storage_error: deny)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_worker_stopped_while_starting_is_a_clean_stop(sig: signal.Signals) -> None:
    """SIGTERM during start-up reached workers whose handlers were not set yet: its default action ended
    them (exit -15), and the supervisor exited 1, as if a worker had failed."""
    starting, failing = StartingWorker(101), StartingWorker(102)
    supervisor, watches = watched(starting, failing)
    supervisor._forward(sig)
    assert starting.signals == [sig]
    starting.code = -sig
    starting.stdout.feed_eof()
    await watches[0]
    assert not supervisor.failed

    failing.says_it_listens()  # a worker that listened handles the signal: dying of it is a failure
    failing.code = -sig
    failing.stdout.feed_eof()
    await watches[1]
    assert supervisor.failed


async def test_a_replacement_worker_starts_with_the_policy_in_force_when_the_file_was_rejected(
    upstream: UpstreamDouble, gateway_process: GatewayProcessFactory
) -> None:
    """POLICY.md: a rejected file is ignored, the running policy stays in force. A worker that died after
    that was replaced by one reading the rejected file: it exited 1 before listening, again every
    second, and the gateway ran one worker short (/readyz 503) until the file was fixed."""
    from tests.support.processes import write_policy

    tree = base_policy(upstream.url)
    admin_port = free_port()
    tree["admin"] = {"port": admin_port}
    gw = await gateway_process(tree, workers=2)
    workers = gw.worker_pids()
    bad = {**tree, "rate_limit": {"per_ip": "lots"}}
    write_policy(gw.config, bad)
    gw.send(signal.SIGHUP)
    await gw.wait_for("the running policy stays in force", count=2)

    os.kill(min(workers), signal.SIGKILL)
    await gw.wait_for(re.compile(r"worker \d+ listening"), count=3)  # the replacement listens
    assert gw.lines("starting with the policy in force")
    async with spreading_session() as session:
        assert set(await asyncio.gather(*(validate(session, gw) for _ in range(20)))) == {200}
        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
            assert resp.status == 200, await resp.text()

    write_policy(
        gw.config, {**tree, "projects": {"shop": {**tree["projects"]["shop"], "allowed_origins": []}}}
    )
    gw.send(signal.SIGHUP)  # the replacement still reloads from the file
    await gw.wait_for("policy reloaded", count=2)
    async with spreading_session() as session:
        assert set(await asyncio.gather(*(validate(session, gw) for _ in range(20)))) == {403}


def test_a_worker_whose_supervisor_died_while_it_started_stops(tmp_path: Path) -> None:
    """A worker read its parent's pid once its policy was loaded: a supervisor that died meanwhile had
    been replaced by init, which the worker then took for its parent. It never stopped, and kept the port
    beside the next supervisor's workers. The supervisor now gives its pid when it spawns a worker."""
    from tests.support.processes import run_cli, write_policy

    path = write_policy(tmp_path / "policy.yaml", base_policy("http://127.0.0.1:9"))
    gone = 2**22 + 1  # above pid_max's default: no process, so not this worker's parent
    result = run_cli("serve", "--config", str(path), "--port", "0", "--worker", "--parent", str(gone))
    assert result.returncode == 0, result.stderr
    assert "drained, exiting" in result.stderr


def test_without_a_writable_temporary_directory_the_supervisor_runs_without_the_kept_policy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only root file system (PROMETHEUS_MULTIPROC_DIR on a volume) must not keep `--workers` from
    starting: replacements then read the file, as they did before the kept copy."""
    import tempfile

    from gateway.workers import _private_dir

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert _private_dir() is None
    assert any("no temporary directory for the policy in force" in r.getMessage() for r in caplog.records)
