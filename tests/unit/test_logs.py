"""Access logs: one line per request (JSON, or text by logfmt's rules), never a credential or a body;
accounting in batches, to every sink."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence

import aiohttp
import pytest

from gateway.app import GatewayState
from gateway.client_ip import ClientIpPolicy
from gateway.models import Outcome
from gateway.observe.access import AccessLog, access_log
from gateway.observe.accounting import Accounting, Sink
from gateway.observe.logs import BufferedStreamHandler, JsonFormatter, TextFormatter
from tests.conftest import CLIENT_APP_ID, CLIENT_TOKEN, ORIGIN, base_policy, make_policy
from tests.support.ops import assert_no_secrets
from tests.support.processes import GatewayProcessFactory
from tests.support.upstream_double import UpstreamDouble

BROWSER_SECRETS = {
    "X-App-Token": "srv-secret-app-token-5d2c",
    "X-Client-Token": "browser-client-token-8b7a",
    "Authorization": "Bearer bearer-secret-41f0",
    "X-Management-Token": "mgmt-secret-93aa",
    "Cookie": "session=cookie-secret-77e1",
}
BODY_SECRET = "body-secret-value-c0de"


async def test_one_json_line_per_request_and_no_credential(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble
) -> None:
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


def _record_now(outcome: Outcome, handler: BufferedStreamHandler | None = None) -> None:
    accounting = Accounting([AccessLog(handler)])
    accounting.started()
    accounting.record(outcome)
    accounting.flush()


def test_text_format_and_level() -> None:
    outcome = Outcome("gw-1", "GET", "shop", "validate", "forwarded", 200, 1.5, 1.0, None, origin=ORIGIN)
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


def test_direct_access_lines_match_the_logging_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_logging's handler takes access lines without a LogRecord; they must read the same."""
    outcome = Outcome("gw-2", "POST", "shop", "redeem", "forwarded", 200, 2.25, 1.5, None, origin='"<evil>\n')
    monkeypatch.setattr(access_log, "level", logging.INFO)
    for fmt in (JsonFormatter(), TextFormatter()):
        via_logging, handler = _capture(fmt, logging.INFO)
        access_log.addHandler(handler)
        try:
            _record_now(outcome)
        finally:
            access_log.removeHandler(handler)
        direct_stream = io.StringIO()
        direct = BufferedStreamHandler(direct_stream)
        direct.setFormatter(fmt)
        _record_now(outcome, direct)  # straight to the handler: nothing reaches access_log's handlers
        direct.flush()

        lines = [direct_stream.getvalue().strip(), via_logging.getvalue().strip()]
        assert all("\n" not in line for line in lines)  # the origin's newline stays escaped
        if isinstance(fmt, TextFormatter):
            assert [line.split(" ", 1)[1] for line in lines] == [lines[1].split(" ", 1)[1]] * 2
        else:
            assert [json.loads(line) | {"time": ""} for line in lines] == [
                json.loads(lines[1]) | {"time": ""}
            ] * 2
        assert "gw-2" in direct_stream.getvalue()


def test_a_handler_someone_else_set_up_gets_lines_through_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter on the handler (an embedding program's) is honoured: the line takes the long way."""
    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(lambda record: "gw-hidden" not in str(getattr(record, "fields", {})))
    access_log.addHandler(handler)
    try:
        _record_now(Outcome("gw-hidden", "GET"), handler)
        _record_now(Outcome("gw-shown", "GET"), handler)
        handler.flush()
    finally:
        access_log.removeHandler(handler)
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["gw-shown"]


def test_outcomes_are_accounted_in_batches_and_none_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream, handler = _capture(JsonFormatter(), logging.INFO)
    access_log.addHandler(handler)
    try:
        accounting = Accounting([AccessLog()])
        for i in range(Accounting.BATCH - 1):
            accounting.record(Outcome(f"gw-{i}", "GET"))
        assert stream.getvalue() == ""  # queued: accounting is off the request path
        accounting.record(Outcome("gw-last", "GET"))  # a full batch is accounted at once
        assert stream.getvalue().count("\n") == Accounting.BATCH
        accounting.record(Outcome("gw-straggler", "GET"))
        accounting.flush()  # what serving's flusher runs every FLUSH_EVERY seconds and at exit
        lines = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    finally:
        access_log.removeHandler(handler)
    assert lines == [*(f"gw-{i}" for i in range(Accounting.BATCH - 1)), "gw-last", "gw-straggler"]


def test_a_line_written_late_carries_the_time_its_request_was_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_log, "level", logging.INFO)
    answered = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
    direct_stream, via_logging = io.StringIO(), io.StringIO()
    direct = BufferedStreamHandler(direct_stream)
    through = logging.StreamHandler(via_logging)
    for handler in (direct, through):
        handler.setFormatter(JsonFormatter())
    access_log.addHandler(through)
    try:
        for sink in (AccessLog(direct), AccessLog()):
            accounting = Accounting([sink])
            accounting.record(Outcome("gw-late", "GET", finished=answered))
            accounting.flush()  # batches are written up to FLUSH_EVERY later
        direct.flush()
    finally:
        access_log.removeHandler(through)
    for stream in (direct_stream, via_logging):
        assert json.loads(stream.getvalue())["time"] == "2023-11-14T22:13:20.250Z"


class Recording:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight: list[int] = []

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        self.batches.append([outcome.request_id for outcome in batch])
        self.in_flight.append(in_flight)


def test_a_failing_sink_is_logged_and_neither_fails_the_request_nor_starves_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
            raise RuntimeError("metrics backend gone")

    after = Recording()
    accounting = Accounting([Broken(), after])
    with caplog.at_level(logging.ERROR, logger="gateway"):
        for i in range(Accounting.BATCH):  # the request that fills the batch accounts for it
            accounting.record(Outcome(f"gw-{i}", "GET"))
    assert [r.getMessage() for r in caplog.records] == [
        f"accounting for {Accounting.BATCH} requests failed in Broken"
    ]
    assert after.batches == [[f"gw-{i}" for i in range(Accounting.BATCH)]]  # the next sink had its batch
    accounting.flush()
    assert after.batches[-1] == []  # the next batch starts empty


def test_sinks_hear_of_requests_in_flight_at_every_flush() -> None:
    sink = Recording()
    accounting = Accounting([sink])
    for _ in range(3):
        accounting.started()
    accounting.flush()  # nothing answered yet: the sinks still hear 3 are in flight (the metrics gauge)
    accounting.record(Outcome("gw-a", "GET"))
    accounting.flush()
    assert sink.batches == [[], ["gw-a"]]
    assert sink.in_flight == [3, 2]


def test_metrics_are_a_sink_beside_the_access_log_not_an_extension_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Accounting only to metrics writes no access line; the same batch reaches both when both are given."""
    from gateway.observe.metrics import Metrics
    from tests.support.ops import samples

    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream, handler = _capture(JsonFormatter(), logging.INFO)
    access_log.addHandler(handler)
    try:
        alone, beside = Metrics(), Metrics()
        groups: list[list[Sink]] = [[alone], [AccessLog(), beside]]
        for sinks in groups:
            accounting = Accounting(sinks)
            accounting.started()
            accounting.record(Outcome("gw-m", "GET", "shop", "validate", status=200))
            accounting.flush()
            if len(sinks) == 1:
                assert stream.getvalue() == ""
    finally:
        access_log.removeHandler(handler)
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["gw-m"]
    for metrics in (alone, beside):
        from prometheus_client import generate_latest

        got = samples(generate_latest(metrics.registry).decode(), "gateway_requests_total")
        assert list(got.values()) == [1.0]


def test_a_huge_origin_is_cut_in_the_log_and_truncation_follows_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
        state.accounting.record(answered)  # queued, not yet written
        tree["logging"] = {"client_ip": "truncated"}
        state.set_policy(make_policy(tree))  # what a reload does: the next requests' lines are truncated
        state.accounting.record(outcome("gw-after"))
        state.accounting.flush()
    finally:
        access_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [len(line["origin"]) for line in lines] == [200, 200]  # a log line cannot be made huge
    # a line keeps the form its own request's policy asked for, even when written after a reload
    assert [line["client_ip"] for line in lines] == ["203.0.113.77", "203.0.113.0/24"]


# ------------------------------------------------------------------------------------- text-line forgery


def logfmt_pairs(text: str) -> list[tuple[str, str]]:
    """Every key=value pair of a logfmt text, as go-logfmt's decoder reads it, strictly: a key is a run of
    characters above space other than `=` and `"`; a value is bare (such a run) or double-quoted with Go's
    escapes. Anything else fails, so a line that only looks right does not pass."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] <= " ":
            i += 1
            continue
        start = i
        while i < n and text[i] > " " and text[i] not in '="':
            i += 1
        key = text[start:i]
        assert key and i < n and text[i] == "=", f"not a key=value at {start}: {text[start:]!r}"
        i += 1
        if i < n and text[i] == '"':
            i += 1
            value: list[str] = []
            while True:
                assert i < n, f"unterminated quoted value of {key}"
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    code = text[i + 1]
                    if code in "uU":
                        width = 4 if code == "u" else 8
                        value.append(chr(int(text[i + 2 : i + 2 + width], 16)))
                        i += 2 + width
                        continue
                    value.append({"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}[code])
                    i += 2
                    continue
                assert ch.isprintable(), f"a raw {ch!r} in the value of {key}"
                value.append(ch)
                i += 1
            pairs.append((key, "".join(value)))
        else:
            start = i
            while i < n and text[i] > " ":
                assert text[i] not in '="', f"a bare value of {key} holds {text[i]!r}"
                i += 1
            pairs.append((key, text[start:i]))
        assert i >= n or text[i] == " ", f"no space after the value of {key}"
    return pairs


FORGERIES = [
    "https://evil.com decision=forwarded status=200 client_ip=9.9.9.9",  # the issue's
    'https://evil.com" decision=forwarded status="200',  # closing the quote early
    'https://evil.com\\" decision=forwarded status=200 x=\\',  # an escape that eats the real quote
    "https://evil.com\n12:00:00 info    gateway.access: request_id=gw-x decision=forwarded",  # a new line
    "https://evil.com\r\x85\u2028 decision=forwarded",  # line breaks other readers split on
    "https://evil.com\x1b[2K\rdecision=forwarded",  # a terminal erasing what came before
    'https://evil.com\t=\t"=" decision=forwarded',
    "",
    "=",
    'x" "',
]


def text_line(outcome: Outcome) -> str:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    previous = access_log.level
    access_log.setLevel(logging.INFO)
    try:
        _record_now(outcome, handler)
    finally:
        access_log.setLevel(previous)
    handler.flush()
    return stream.getvalue()


def test_a_json_line_is_what_json_dumps_writes_for_its_fields() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    fields: dict[str, object] = {
        "origin": 'https://\u00e9vil.example/"\n\u2028',  # quotes, a newline, non-ASCII: escaped
        "status": 200,
        "duration_ms": 1.234,
        "upstream_ms": None,
        "nan": float("nan"),
        "surrogate": "\ud800",
        "nested": {"a": [1, 2.5, True]},
        "other": Opaque(),  # anything else as str()
    }
    line = JsonFormatter().format_fields(1_700_000_000.25, "info", "gateway.access", fields)
    expected = {"time": "2023-11-14T22:13:20.250Z", "level": "info", "logger": "gateway.access", **fields}
    assert line == json.dumps(expected, default=str)
    assert "\n" not in line and line.isascii()


def test_a_forged_origin_stays_one_value_of_a_text_line() -> None:
    """logging.format: text writes values by logfmt's rules: whatever an Origin holds, a parser reads the
    line's real decision, status and client, and the Origin back exactly as it came."""
    client = ClientIpPolicy().client("127.0.0.1", [])
    for origin in FORGERIES:
        outcome = Outcome("gw-f", "GET", "shop", "validate", "origin_not_allowed", 403, client=client)
        outcome.origin = origin
        written = text_line(outcome)
        assert written.endswith("\n") and written.count("\n") == 1, written  # one line, its own
        assert len(written.splitlines()) == 1, written  # also for readers splitting on \x85 or \u2028
        assert written.isprintable() or written[:-1].isprintable(), written  # no terminal control
        line = written[:-1]
        prefix = "info    gateway.access: "
        assert prefix in line, line
        pairs = logfmt_pairs(line.split(prefix, 1)[1])
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), line  # no second decision, status or client_ip
        fields = dict(pairs)
        assert fields["decision"] == "origin_not_allowed" and fields["status"] == "403", line
        assert fields["client_ip"] == "127.0.0.1", line
        assert fields.get("origin") == (origin or None), line  # "" is not logged, like None


def test_text_values_are_bare_only_when_nothing_needs_quoting() -> None:
    outcome = Outcome("gw-b", "GET", "shop", "validate", status=200, duration_ms=1.5, origin=ORIGIN)
    line = text_line(outcome)
    assert "request_id=gw-b method=GET project=shop operation=validate decision=forwarded status=200 " in line
    assert f"duration_ms=1.5 origin={ORIGIN}\n" in line  # a plain URL needs no quotes
    assert 'origin="https://caf\u00e9.example"' in text_line(
        Outcome("gw-c", "GET", origin="https://caf\u00e9.example")
    )


def test_a_message_line_cannot_be_split_in_text_format() -> None:
    record = logging.LogRecord(
        "gateway", logging.ERROR, __file__, 0, "upstream said %s", ("a\nb\x85c",), None
    )
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1 and line.endswith("upstream said a\\nb\\u0085c")


class GoneStream(io.StringIO):
    """stderr whose reader went away (a closed pipe), until `back` is set."""

    back = False

    def write(self, text: str) -> int:
        if not self.back:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_broken_stderr_never_raises_into_a_log_call_or_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream = GoneStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.test-gone")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "propagate", False)
    try:
        logger.warning("written at once")  # a warning flushes: BrokenPipeError was raised to the caller
        accounting = Accounting([AccessLog(handler)])
        for i in range(Accounting.BATCH):  # the request that fills the batch writes it
            accounting.record(Outcome(f"gw-{i}", "GET"))
        handler.flush()  # serving's flusher, and the exit's
        stream.back = True
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["after"]


async def test_a_forged_origin_in_a_served_text_log(
    gateway_process: GatewayProcessFactory, upstream: UpstreamDouble
) -> None:
    """The issue's attack against a real serve with `logging.format: text`: refused, and logged as refused."""
    tree = base_policy(upstream.url)
    tree["logging"] = {"format": "text"}
    gw = await gateway_process(tree)
    forged = "https://evil.com decision=forwarded status=200 client_ip=9.9.9.9"
    url = f"{gw.url}/client/v1/validate?code=A"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Origin": forged}) as resp:
        assert resp.status == 403
        request_id = resp.headers["X-Request-Id"]
    line = await gw.wait_for(f"request_id={request_id} ")
    pairs = logfmt_pairs(line.split("gateway.access: ", 1)[1])
    assert [key for key, _ in pairs].count("decision") == 1
    fields = dict(pairs)
    assert (fields["decision"], fields["status"], fields["client_ip"]) == (
        "origin_not_allowed",
        "403",
        "127.0.0.1",
    )
    assert fields["origin"] == forged
    assert upstream.received == []
