"""W3C trace context, sans-IO: traceparent parsing, tracestate, sampling as OpenTelemetry samples, the
tracing section of the policy, `check` without the extra, and what tracing off imports."""

from __future__ import annotations

import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from gateway import cli
from gateway.observe import trace_context
from gateway.observe.trace_context import TraceStarter, parse_traceparent, ratio_bound
from gateway.observe.tracing import collector_name
from gateway.policy import PolicyError, parse_policy
from tests.conftest import ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (f"00-{TRACE}-{SPAN}-01", (int(TRACE, 16), int(SPAN, 16), True)),
        (f"00-{TRACE}-{SPAN}-00", (int(TRACE, 16), int(SPAN, 16), False)),
        (f"00-{TRACE}-{SPAN}-03", (int(TRACE, 16), int(SPAN, 16), True)),  # unknown flags: sampled bit read
        (f"01-{TRACE}-{SPAN}-01-future", (int(TRACE, 16), int(SPAN, 16), True)),  # a later version's fields
        (f"01-{TRACE}-{SPAN}-01", (int(TRACE, 16), int(SPAN, 16), True)),
        (f"00-{TRACE}-{SPAN}-01-more", None),
        (f"ff-{TRACE}-{SPAN}-01", None),
        (f"00-{TRACE.upper()}-{SPAN}-01", None),
        (f"00-{'0' * 32}-{SPAN}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE}-{SPAN}-0g", None),
        (f"00-{TRACE}-{SPAN}", None),
        (f"0-{TRACE}-{SPAN}-01", None),
        (f"01-{TRACE}-{SPAN}-01x", None),
        ("", None),
        (f"00-{TRACE}-{SPAN}-01\n", None),
    ],
)
def test_traceparent_is_read_exactly_as_w3c_writes_it(
    value: str, parsed: tuple[int, int, bool] | None
) -> None:
    assert parse_traceparent(value) == parsed


def test_a_new_trace_is_sampled_as_opentelemetry_samples_it() -> None:
    for ratio in (0.0, 0.01, 0.25, 0.5, 1.0):
        sampler = TraceIdRatioBased(ratio)
        assert ratio_bound(ratio) == sampler.bound
        starter = TraceStarter(ratio)
        for _ in range(300):
            trace = starter.begin(CIMultiDict())
            decision = sampler.should_sample(None, trace.trace_id, "x").decision
            assert trace.sampled == (decision is Decision.RECORD_AND_SAMPLE)
            assert trace.parent_span_id == 0 and trace.tracestate is None


def test_the_callers_decision_wins_whatever_the_ratio() -> None:
    headers = CIMultiDict({"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "a=1"})
    trace = TraceStarter(0.0).begin(headers)
    assert trace.sampled and trace.trace_id_hex == TRACE and trace.parent_span_id == int(SPAN, 16)
    assert trace.tracestate == "a=1"
    headers["traceparent"] = f"00-{TRACE}-{SPAN}-00"
    assert not TraceStarter(1.0).begin(headers).sampled


def test_tracestate_headers_are_combined_and_bounded() -> None:
    def state(*values: str) -> str | None:
        headers = CIMultiDict([("traceparent", f"00-{TRACE}-{SPAN}-01")])
        for value in values:
            headers.add("tracestate", value)
        return TraceStarter(1.0).begin(headers).tracestate

    assert state("a=1", "b=2") == "a=1,b=2"
    assert state() is None
    assert state("   ") is None
    assert state("a=" + "x" * 510) == "a=" + "x" * 510
    assert state("a=" + "x" * 511) is None
    assert state("a=\u00e9") is None


def test_the_upstream_traceparent_names_the_client_span() -> None:
    trace = TraceStarter(1.0).begin(CIMultiDict({"traceparent": f"00-{TRACE}-{SPAN}-00"}))
    call = trace.start_call("api.voucherify.io", 443, "POST")
    assert trace.traceparent(call.span_id) == f"00-{TRACE}-{call.span_id:016x}-00"
    assert call.span_id not in (0, trace.span_id)
    assert trace.calls == [call]


def test_collector_name_drops_user_info_and_query() -> None:
    assert (
        collector_name("https://u:p@otel.example:4318/v1/traces?k=s") == "https://otel.example:4318/v1/traces"
    )
    assert collector_name("http://[::1]:4318/v1/traces") == "http://[::1]:4318/v1/traces"
    assert collector_name("http://collector/v1/traces") == "http://collector/v1/traces"


# ----------------------------------------------------------------------------------------------- policy

BASE = """
projects:
  shop:
    region: http://127.0.0.1:9
    credentials: {client_application_id: a, client_secret_key: b}
"""


def test_the_tracing_section_defaults_to_off() -> None:
    tracing = parse_policy(BASE, env={}).tracing
    assert tracing.otlp_endpoint is None
    assert tracing.service_name == "voucherify-gateway"
    assert tracing.sample_ratio == 1.0


def test_the_tracing_section_is_validated() -> None:
    policy = parse_policy(
        BASE + "tracing: {otlp_endpoint: 'http://c:4318/v1/traces', service_name: gw, sample_ratio: 0.01}",
        env={},
    )
    assert policy.tracing.otlp_endpoint == "http://c:4318/v1/traces" and policy.tracing.sample_ratio == 0.01
    with pytest.raises(PolicyError) as bad:
        parse_policy(
            BASE + "tracing: {otlp_endpoint: 'c:4318', sample_ratio: 1.5, service_name: '', extra: 1}", env={}
        )
    problems = "\n".join(bad.value.problems)
    for key in ("tracing.otlp_endpoint", "tracing.sample_ratio", "tracing.service_name", "tracing.extra"):
        assert key in problems, problems


def test_check_says_when_the_tracing_extra_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE + "tracing: {otlp_endpoint: 'http://c:4318/v1/traces'}\n", encoding="utf-8")
    assert cli.main(["check", "--config", str(path)]) == 0  # the test extra installs it
    real = metadata.distribution

    def without_sdk(name: str) -> metadata.Distribution:
        if name == "opentelemetry-sdk":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", without_sdk)
    capsys.readouterr()
    assert cli.main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "opentelemetry-sdk is not installed" in out and "voucherify-gateway[tracing]" in out
    assert "tracing.otlp_endpoint" in out
    off = tmp_path / "off.yaml"
    off.write_text(BASE, encoding="utf-8")
    assert cli.main(["check", "--config", str(off)]) == 0  # off: the extra is not needed


# ---------------------------------------------------------------------------------- what off imports


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    found = subprocess.run(
        [sys.executable, "-m", "tests.support.tracing_off"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "", f"tracing off loaded {found.stdout.strip()}"


def test_the_check_for_the_extra_imports_nothing_of_it() -> None:
    program = (
        "import sys; from gateway.observe.trace_context import tracing_unavailable; "
        "assert tracing_unavailable() is None; "
        "print([n for n in sys.modules if n.startswith('opentelemetry')])"
    )
    found = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_random_ids_are_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 0, 0])
    monkeypatch.setattr(trace_context, "_getrandbits", lambda bits: next(draws))
    trace = TraceStarter(1.0).begin(CIMultiDict())
    assert trace.trace_id == 1 and trace.trace_id_hex == f"{1:032x}"  # a zero id is replaced
    assert trace.span_id == 1
    assert trace.start_call("h", 443, "GET").span_id == 1
    random.seed()
