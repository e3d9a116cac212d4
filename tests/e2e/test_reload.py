"""Hot reload of a real serve subprocess under load: SIGHUP, and `watch: true` without any signal."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, base_policy, free_port
from tests.support.constants import JSON_H
from tests.support.ops import OpsGatewayFactory, labels, samples
from tests.support.processes import GatewayProcess, GatewayProcessFactory, run_cli, write_policy
from tests.support.upstream_double import UpstreamDouble

KEPT = "https://shop.example.com"
DROPPED = "https://old.example.net"
LOOPS = 2


def policy_tree(upstream_url: str, admin_port: int, origins: list[str], watch: bool) -> dict[str, Any]:
    tree = base_policy(upstream_url, allowed_origins=origins)
    tree["rate_limit"] = {"per_ip": "1000000 per minute", "strategy": "fixed-window"}
    tree["admin"] = {"port": admin_port}
    tree["watch"] = watch
    return tree


async def client_loop(url: str, stop: asyncio.Event, seen: list[tuple[str, int, str]]) -> None:
    """Sends without pause until told to stop; any transport error fails the test."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for origin in (KEPT, DROPPED):
                async with session.get(
                    f"{url}/client/v1/validate?code=A", headers={"Origin": origin}
                ) as resp:
                    body = await resp.json()
                    seen.append((origin, resp.status, body.get("key", "ok")))


async def more_requests(seen: list[tuple[str, int, str]], count: int = 20) -> None:
    target = len(seen) + count
    for _ in range(3000):  # a bound for a stuck gateway, not a timing
        if len(seen) >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the client loops stalled at {len(seen)} requests")


def check_messages(path: Path) -> list[str]:
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 1
    return [line.removeprefix("error: ") for line in result.stdout.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
async def test_reload_under_load(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble, tmp_path: Path, trigger: str
) -> None:
    admin_port = free_port()
    watch = trigger == "watch"
    gw: GatewayProcess = await gateway_process(policy_tree(upstream.url, admin_port, [KEPT, DROPPED], watch))

    def reload() -> None:
        if not watch:
            gw.send(signal.SIGHUP)

    stop = asyncio.Event()
    seen: list[list[tuple[str, int, str]]] = [[] for _ in range(LOOPS)]
    loops = [asyncio.create_task(client_loop(gw.url, stop, s)) for s in seen]
    try:
        await more_requests(seen[0])
        # 1. a valid change: DROPPED is no longer allowed
        write_policy(gw.config, policy_tree(upstream.url, admin_port, [KEPT], watch))
        reload()
        await gw.wait_for("policy reloaded")
        await more_requests(seen[0])
        # 2. an invalid file: rejected with check's messages, the running policy stays
        bad = policy_tree(upstream.url, admin_port, [KEPT, DROPPED], watch)
        bad["projects"]["shop"]["bogus"] = 1
        bad["rate_limit"]["per_ip"] = "lots"
        write_policy(gw.config, bad)
        reload()
        await gw.wait_for("the running policy stays in force")
        await more_requests(seen[0])
    finally:
        stop.set()
        results = await asyncio.gather(*loops, return_exceptions=True)
    assert all(r is None for r in results), results

    for s in seen:
        assert {(o, st, k) for o, st, k in s if o == KEPT} == {(KEPT, 200, "ok")}
        dropped = [(st, k) for o, st, k in s if o == DROPPED]
        assert set(dropped) <= {(200, "ok"), (403, "origin_not_allowed")}  # nothing fails for another reason
        first_refusal = dropped.index((403, "origin_not_allowed"))
        assert first_refusal > 0
        assert all(
            d == (403, "origin_not_allowed") for d in dropped[first_refusal:]
        )  # the bad file changed nothing

    problems = check_messages(gw.config)
    assert len(problems) == 2
    for problem in problems:
        await gw.wait_for(f"reload rejected: {problem}")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    assert samples(text, "gateway_policy_reloads_total") == {
        labels(result="applied"): 1,
        labels(result="rejected"): 1,
    }


async def test_rate_limit_state_and_in_flight_requests_survive_a_reload(
    ops_gateway: OpsGatewayFactory, upstream: UpstreamDouble, tmp_path: Path
) -> None:
    from gateway.reload import PolicyReloader
    from tests.support.upstream_double import Reply

    tree = base_policy(upstream.url, allowed_origins=[KEPT, DROPPED])
    tree["rate_limit"] = {"per_ip": "3 per minute"}
    gw = await ops_gateway(tree)
    path = write_policy(tmp_path / "policy.yaml", tree)
    assert isinstance(gw.public.server, TestServer)
    reloader = PolicyReloader(gw.public.server.app, path, configure_logs=False)
    url = "/client/v1/validate"

    assert (await gw.public.get(url, headers={"Origin": KEPT})).status == 200
    upstream.reply(Reply(delay=1))
    in_flight = asyncio.create_task(gw.public.get(url, headers={"Origin": DROPPED}))
    for _ in range(3000):
        if len(upstream.received) == 2:
            break
        await asyncio.sleep(0.01)
    tree["projects"]["shop"]["allowed_origins"] = [KEPT]
    write_policy(path, tree)
    assert await reloader.reload()
    assert (await in_flight).status == 200  # started under the old policy, finished under it
    assert (await gw.public.get(url, headers={"Origin": DROPPED})).status == 403
    assert (await gw.public.get(url, headers={"Origin": KEPT})).status == 200  # third hit of 3
    resp = await gw.public.get(url, headers={"Origin": KEPT})
    assert resp.status == 429  # the count made before the reload still holds


async def test_a_reload_that_changes_listen_keeps_the_running_body_limit_until_a_restart(
    gateway: GatewayFactory, upstream: UpstreamDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """POLICY.md: "Changes to `listen` and `admin` need a restart." A reload that lowers
    `listen.max_body_bytes` says so in its log line, and the running limit stays in force until then."""
    from gateway.app import STATE
    from gateway.reload import PolicyReloader

    tree = base_policy(upstream.url)
    tree["listen"] = {"max_body_bytes": 1000, "body_timeout": 10}
    client = await gateway(tree)
    body = b'{"event": "' + b"x" * 500 + b'"}'
    resp = await client.post("/client/v1/events", data=body, headers=JSON_H)
    assert resp.status == 200

    tree["listen"] = {"max_body_bytes": 100, "body_timeout": 1}
    path = write_policy(tmp_path / "policy.yaml", tree)
    assert isinstance(client.server, TestServer)
    app = client.server.app
    reloader = PolicyReloader(app, path, configure_logs=False)
    assert await reloader.reload()
    assert any(
        "listen changed" in r.getMessage() and "next restart" in r.getMessage() for r in caplog.records
    )
    resp = await client.post("/client/v1/events", data=body, headers=JSON_H)
    assert resp.status == 200, await resp.text()  # not 413: the running listen section is the one in force
    policy = app[STATE].policy
    assert (policy.max_body_bytes, policy.body_timeout) == (1000, 10)
    assert len(upstream.received) == 2


async def test_watch_never_applies_a_file_caught_half_written(
    upstream: UpstreamDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written in place can be caught by a poll half written. A valid prefix (here: the projects
    list cut after its first project) was loaded and applied until the next poll; now a change is loaded
    once two polls in a row agree on it. The polls are scripted: each call of `fingerprint` is one poll."""
    import gateway.reload as reload_module
    from gateway.app import STATE, create_app
    from gateway.policy import PolicyFile
    from gateway.reload import PolicyReloader
    from tests.conftest import make_policy

    tree = base_policy(upstream.url)
    tree["watch"] = True
    whole = {**tree, "projects": {**tree["projects"], "outlet": tree["projects"]["shop"]}}
    path = write_policy(tmp_path / "policy.yaml", tree)
    app = create_app(make_policy(tree))
    state = app[STATE]
    applied: list[list[str]] = []
    loaded = asyncio.Event()
    set_policy = state.set_policy

    def recording(policy: PolicyFile) -> None:
        applied.append(sorted(policy.projects))
        set_policy(policy)
        loaded.set()

    monkeypatch.setattr(state, "set_policy", recording)
    polls: list[int] = []
    real_fingerprint = reload_module.fingerprint

    def scripted(at: Path) -> reload_module.Fingerprint:
        polls.append(1)
        if len(polls) == 2:  # this poll finds it half written: cut after shop, before outlet
            write_policy(path, tree | {"projects": {"shop": tree["projects"]["shop"]}})
        elif len(polls) == 3:  # the next one finds it whole
            write_policy(path, whole)
        return real_fingerprint(at)

    monkeypatch.setattr(reload_module, "fingerprint", scripted)
    monkeypatch.setattr(reload_module, "POLL_SECONDS", 0)
    reloader = PolicyReloader(app, path, configure_logs=False)
    reloader.start_watching()
    try:
        await asyncio.wait_for(loaded.wait(), 30)  # a bound for a stuck test, not a timing
    finally:
        await reloader.stop_watching()
    assert applied == [["outlet", "shop"]]  # the whole file, and nothing before it


async def test_watch_loads_a_change_made_while_the_gateway_started(
    upstream: UpstreamDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch took the file's fingerprint when it started, after the listener: a change written
    between the start-up's read and that moment was taken as the running policy and never loaded."""
    import gateway.reload as reload_module
    from gateway.app import STATE, create_app
    from gateway.reload import PolicyReloader, fingerprint
    from tests.conftest import make_policy

    tree = base_policy(upstream.url, allowed_origins=[KEPT, DROPPED])
    tree["watch"] = True
    path = write_policy(tmp_path / "policy.yaml", tree)
    seen = fingerprint(path)  # as `serve` takes it, before it reads the file
    app = create_app(make_policy(tree))
    tree["projects"]["shop"]["allowed_origins"] = [KEPT]
    write_policy(path, tree)  # while the gateway starts
    monkeypatch.setattr(reload_module, "POLL_SECONDS", 0)
    reloader = PolicyReloader(app, path, configure_logs=False, loaded=seen)
    reloader.start_watching()
    try:
        for _ in range(3000):  # a bound for a stuck test: polls, not time
            if app[STATE].policy.source.projects["shop"].allowed_origins == (KEPT,):
                break
            await asyncio.sleep(0.01)
    finally:
        await reloader.stop_watching()
    assert app[STATE].policy.source.projects["shop"].allowed_origins == (KEPT,)
