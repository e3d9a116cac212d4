"""Access logs of real serve subprocesses: one JSON line per request, never a credential or a body."""

from __future__ import annotations

import io
import json
import logging

import aiohttp

from gateway import observe
from gateway.app import GatewayState
from gateway.client_ip import ClientIpPolicy
from gateway.models import Outcome
from gateway.observe import JsonFormatter, Observer, TextFormatter, access_log
from tests.conftest import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN, base_policy, make_policy
from tests.support.ops import assert_no_secrets

BROWSER_SECRETS = {
    "X-App-Token": "srv-secret-app-token-5d2c",
    "X-Client-Token": "browser-client-token-8b7a",
    "Authorization": "Bearer bearer-secret-41f0",
    "X-Management-Token": "mgmt-secret-93aa",
    "Cookie": "session=cookie-secret-77e1",
}
BODY_SECRET = "body-secret-value-c0de"


async def test_one_json_line_per_request_and_no_credential(gateway_process, upstream):
    tree = base_policy(upstream.url)
    tree["projects"]["shop"]["credentials"] = {
        "client_application_id": "${SHOP_APP_ID}",
        "client_secret_key": "${SHOP_SECRET}",
    }
    tree["projects"]["shop"]["danger_zone"] = {"redeem": True}
    tree["logging"] = {"level": "debug", "format": "json", "client_ip": "truncated"}
    gw = await gateway_process(tree, env={"SHOP_APP_ID": CLIENT_APP_ID, "SHOP_SECRET": CLIENT_TOKEN})

    sent: list[str] = []
    async with aiohttp.ClientSession() as session:
        for name, value in BROWSER_SECRETS.items():  # each credential header, alone, on an allowed request
            async with session.get(
                f"{gw.url}/client/v1/validate?code=A", headers={"Origin": ORIGIN, name: value}
            ) as resp:
                sent.append(resp.headers["X-Request-Id"])
        async with session.post(
            f"{gw.url}/client/v1/redeem", json={"voucher": BODY_SECRET}, headers={"Origin": ORIGIN}
        ) as resp:
            assert resp.status == 200
            sent.append(resp.headers["X-Request-Id"])
        async with session.get(
            f"{gw.url}/client/v1/validate", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
            sent.append(resp.headers["X-Request-Id"])
        async with session.get(f"{gw.url}/nowhere?token={CLIENT_TOKEN}") as resp:
            assert resp.status == 404
            sent.append(resp.headers["X-Request-Id"])
    await gw.wait_for('"logger": "gateway.access"', count=len(sent))

    lines = gw.access_lines()
    assert [line["request_id"] for line in lines] == sent
    first = lines[1]
    for key in (
        "time",
        "request_id",
        "project",
        "operation",
        "decision",
        "status",
        "duration_ms",
        "upstream_ms",
    ):
        assert key in first, key
    assert first["project"] == "shop" and first["operation"] == "validate"
    assert {line["client_ip"] for line in lines} == {"127.0.0.0/24"}  # logging.client_ip: truncated
    assert lines[0]["decision"] == "secret_key_exposed" and lines[0]["status"] == 400
    assert lines[5]["decision"] == "forwarded" and lines[5]["operation"] == "redeem"
    assert lines[6]["origin"] == "https://evil.example" and lines[6]["decision"] == "origin_not_allowed"
    assert lines[7]["project"] is None and lines[7]["status"] == 404

    secrets = [*BROWSER_SECRETS.values(), "cookie-secret-77e1", "bearer-secret-41f0", BODY_SECRET]
    assert_no_secrets([*gw.stdout, *gw.stderr], [*secrets, CLIENT_APP_ID, CLIENT_TOKEN])


def _capture(fmt: logging.Formatter, level: int) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler.setLevel(level)
    return stream, handler


def test_text_format_and_level():
    outcome = Outcome("gw-1", "GET", "shop", "validate", "forwarded", 200, 1.5, 1.0, None, ORIGIN)
    previous = access_log.level
    access_log.setLevel(logging.DEBUG)
    try:
        for fmt, expected in (
            (TextFormatter(), "request_id=gw-1 "),
            (JsonFormatter(), '"request_id": "gw-1"'),
        ):
            stream, handler = _capture(fmt, logging.INFO)
            access_log.addHandler(handler)
            try:
                _record_now(outcome)
            finally:
                access_log.removeHandler(handler)
            assert expected in stream.getvalue()
        access_log.setLevel(logging.WARNING)  # logging.level: warning silences access lines
        stream, handler = _capture(JsonFormatter(), logging.DEBUG)
        access_log.addHandler(handler)
        try:
            _record_now(outcome)
        finally:
            access_log.removeHandler(handler)
        assert stream.getvalue() == ""
    finally:
        access_log.setLevel(previous)


def test_direct_access_lines_match_the_logging_path(monkeypatch):
    """configure_logging's handler takes access lines without a LogRecord; they must read the same."""
    outcome = Outcome("gw-2", "POST", "shop", "redeem", "forwarded", 200, 2.25, 1.5, None, '"<evil>\n')
    monkeypatch.setattr(access_log, "level", logging.INFO)
    for fmt in (JsonFormatter(), TextFormatter()):
        via_logging, handler = _capture(fmt, logging.INFO)
        access_log.addHandler(handler)
        try:
            _record_now(outcome)
        finally:
            access_log.removeHandler(handler)
        direct_stream = io.StringIO()
        direct = observe.BufferedStreamHandler(direct_stream)
        direct.setFormatter(fmt)
        monkeypatch.setattr(observe, "_direct", direct)
        _record_now(outcome)
        direct.flush()
        monkeypatch.setattr(observe, "_direct", None)

        lines = [direct_stream.getvalue().strip(), via_logging.getvalue().strip()]
        assert all("\n" not in line for line in lines)  # the origin's newline stays escaped
        if isinstance(fmt, TextFormatter):
            assert [line.split(" ", 1)[1] for line in lines] == [lines[1].split(" ", 1)[1]] * 2
        else:
            assert [json.loads(line) | {"time": ""} for line in lines] == [
                json.loads(lines[1]) | {"time": ""}
            ] * 2
        assert "gw-2" in direct_stream.getvalue()


def _record_now(outcome: Outcome) -> None:
    observer = Observer()
    observer.record(outcome)
    observer.flush()


def test_outcomes_are_accounted_in_batches_and_none_is_lost(monkeypatch):
    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream, handler = _capture(JsonFormatter(), logging.INFO)
    access_log.addHandler(handler)
    try:
        observer = Observer()
        for i in range(Observer.BATCH - 1):
            observer.record(Outcome(f"gw-{i}", "GET"))
        assert stream.getvalue() == ""  # queued: accounting is off the request path
        observer.record(Outcome("gw-last", "GET"))  # a full batch is accounted at once
        assert stream.getvalue().count("\n") == Observer.BATCH
        observer.record(Outcome("gw-straggler", "GET"))
        observe.flush_logs()  # what serve runs every FLUSH_EVERY seconds and at exit
        lines = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    finally:
        access_log.removeHandler(handler)
    assert lines == [*(f"gw-{i}" for i in range(Observer.BATCH - 1)), "gw-last", "gw-straggler"]


def test_a_line_written_late_carries_the_time_its_request_was_answered(monkeypatch):
    monkeypatch.setattr(access_log, "level", logging.INFO)
    answered = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
    for direct in (False, True):
        stream = io.StringIO()
        if direct:
            handler = observe.BufferedStreamHandler(stream)
            handler.setFormatter(JsonFormatter())
            monkeypatch.setattr(observe, "_direct", handler)
        else:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(JsonFormatter())
            access_log.addHandler(handler)
        try:
            observer = Observer()
            observer.record(Outcome("gw-late", "GET", finished=answered))
            observer.flush()  # batches are written up to FLUSH_EVERY later
            handler.flush()
        finally:
            access_log.removeHandler(handler)
            monkeypatch.setattr(observe, "_direct", None)
        assert json.loads(stream.getvalue())["time"] == "2023-11-14T22:13:20.250Z", direct


def test_a_failing_batch_is_logged_and_never_fails_the_request(caplog):
    class Broken(Observer):
        def account(self, batch: list[Outcome]) -> None:
            raise RuntimeError("metrics backend gone")

    observer = Broken()
    with caplog.at_level(logging.ERROR, logger="gateway"):
        for i in range(Observer.BATCH):  # the request that fills the batch accounts for it
            observer.record(Outcome(f"gw-{i}", "GET"))
    assert [r.getMessage() for r in caplog.records] == [f"accounting for {Observer.BATCH} requests failed"]
    assert observer._pending == []  # the next batch starts empty


def test_a_huge_origin_is_cut_in_the_log_and_truncation_follows_the_policy(monkeypatch):
    monkeypatch.setattr(access_log, "level", logging.INFO)
    tree = base_policy("http://upstream.test")
    state = GatewayState(make_policy(tree))
    client = ClientIpPolicy().client("203.0.113.77", [])
    origin = "https://a." + "x" * 5000

    def outcome(request_id: str) -> Outcome:  # as the handler builds it, under the policy now in force
        return Outcome(request_id, "GET", client=client, origin=origin, truncate_ip=state.policy.truncate_ips)

    stream, handler = _capture(JsonFormatter(), logging.INFO)
    access_log.addHandler(handler)
    try:
        answered = outcome("gw-before")
        state.observer.record(answered)  # queued, not yet written
        tree["logging"] = {"client_ip": "truncated"}
        state.set_policy(make_policy(tree))  # what a reload does: the next requests' lines are truncated
        state.observer.record(outcome("gw-after"))
        state.observer.flush()
    finally:
        access_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [len(line["origin"]) for line in lines] == [200, 200]  # a log line cannot be made huge
    # a line keeps the form its own request's policy asked for, even when written after a reload
    assert [line["client_ip"] for line in lines] == ["203.0.113.77", "203.0.113.0/24"]
