"""The command line: `check` and `schema` in process and as a subprocess, `serve` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from tests.conftest import ROOT, free_port
from tests.support.processes import run_cli
from tests.support.upstream_double import UpstreamDouble

VALID = """
default_project: shop
projects:
  shop:
    region: ${SHOP_REGION:-http://127.0.0.1:9}
    credentials:
      client_application_id: ${SHOP_APP_ID:-app-id}
      client_secret_key: ${SHOP_SECRET}
    allowed_origins: [https://shop.example.com]
"""

BROKEN = """
listen:
  port: seventy
  colour: blue
rate_limit:
  per_ip: lots
  operations: {teleport: 1/second}
projects:
  shop:
    region: mars
    upstream_auth: server
    credentials:
      secret_key: ${SHOP_SECRET_KEY}
    allowed_origins: [shop.example.com, "https://ok.example.com/"]
    rate_limit: {per_ip: "0 per fortnight"}
    extra: 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(path)])
    return code, capsys.readouterr().out.splitlines()


def test_check_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SECRET", "s3cr3t")
    monkeypatch.delenv("SHOP_APP_ID", raising=False)
    code, lines = check(write(tmp_path, VALID), capsys)
    assert code == 0
    assert lines[-1].endswith("valid, 1 project(s)")
    assert not any("s3cr3t" in line for line in lines)


def test_check_lists_every_problem_with_its_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOP_SECRET_KEY", raising=False)
    code, lines = check(write(tmp_path, BROKEN), capsys)
    assert code == 1
    errors = [line for line in lines if line.startswith("error: ")]
    text = "\n".join(errors)
    for expected in [
        "listen.port",
        "listen.colour: unknown key",
        "rate_limit.per_ip: 'lots' is not a rate limit",
        "rate_limit.operations.teleport: unknown operation",
        "projects.shop.region",
        "projects.shop.credentials.secret_key: environment variable SHOP_SECRET_KEY is not set",
        "projects.shop.credentials: upstream_auth: server needs credentials.application_id and "
        "credentials.secret_key",
        "projects.shop.allowed_origins.0: 'shop.example.com' has no scheme",
        "projects.shop.allowed_origins.1: 'https://ok.example.com/' is not an origin",
        "projects.shop.rate_limit.per_ip",
        "projects.shop.extra: unknown key",
    ]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert lines[-1].endswith(f"{len(errors)} problem(s)")


def test_check_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path / "nope.yaml", capsys)
    assert code == 1
    assert "nope.yaml" in lines[0]


def test_check_warns_about_star_origins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SECRET", "x")
    code, lines = check(write(tmp_path, VALID.replace("[https://shop.example.com]", '["*"]')), capsys)
    assert code == 0
    assert any(line.startswith("warning: projects.shop.allowed_origins") for line in lines)


def test_the_config_defaults_to_the_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SECRET", "x")
    monkeypatch.setenv("VOUCHERIFY_GATEWAY_CONFIG", str(write(tmp_path, VALID)))
    assert main(["check"]) == 0
    assert str(tmp_path) in capsys.readouterr().out


def test_schema_is_json_schema_of_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "projects" in schema["properties"]
    assert schema["required"] == ["projects"]


def test_check_as_a_subprocess(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    ok = run_cli("check", "--config", str(path), env={"SHOP_SECRET": "x"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = run_cli("check", "--config", str(write(tmp_path, BROKEN)))
    assert broken.returncode == 1
    assert "projects.shop.extra: unknown key" in broken.stdout


# --- serve


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def start_serve(config: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    environment = {**os.environ, **env}
    environment.pop("PYTHONUNBUFFERED", None)  # as under a supervisor: the line must be flushed by serve
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def first_line(process: subprocess.Popen[str], timeout: float = 20) -> str:
    assert process.stdout is not None and process.stderr is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout)
    if not line:
        process.wait(timeout=10)
        pytest.fail(f"serve printed nothing and exited {process.returncode}: {process.stderr.read()}")
    return line


async def test_serve_announces_answers_and_exits_0_on_sigterm(
    tmp_path: Path, upstream: UpstreamDouble, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    config = write(tmp_path, VALID + "listen: {port: 1}\n")
    process = start_serve(
        config,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={"SHOP_SECRET": "x", "SHOP_REGION": upstream.url},
    )
    processes.append(process)
    line = await first_line(process)
    assert f"127.0.0.1:{port}" in line
    # ready when announced: the first request is answered, no retry loop needed
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/client/v1/validate?code=A",
            headers={"Origin": "https://shop.example.com"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Request-Id"]
    assert [seen.raw_path for seen in upstream.received] == ["/client/v1/validate?code=A"]
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0
    assert process.stdout is not None and process.stderr is not None
    rest = process.stdout.read()
    assert rest.strip() == "", "serve prints one line only"
    # the access log went to stderr, one JSON line per request, without the gateway's credentials
    log = process.stderr.read()
    request_lines = [json.loads(line) for line in log.splitlines() if '"request_id"' in line]
    assert [entry["decision"] for entry in request_lines] == ["forwarded"]
    assert request_lines[0]["request_id"] == resp.headers["X-Request-Id"]
    assert "app-id" not in log


async def test_serve_uses_listen_from_the_file_and_sigint(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    config = write(tmp_path, VALID + f"listen: {{host: 127.0.0.1, port: {port}}}\n")
    process = start_serve(config, env={"SHOP_SECRET": "x"})
    processes.append(process)
    line = await first_line(process)
    assert re.search(rf"127\.0\.0\.1:{port}\b", line), line
    process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(process.wait, 20) == 0


def test_serve_refuses_a_bad_policy(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(write(tmp_path, BROKEN)))
    assert result.returncode == 1
    assert "projects.shop.extra: unknown key" in result.stdout


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("port", ["70000", "-5", "65536"])
def test_a_port_out_of_range_is_refused_on_the_command_line(
    command: str, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --port 70000` listened on 4464 (uvloop took the port modulo 65536); `--port -5` was a
    traceback. `listen.port` in the file was already 0 to 65535."""
    from gateway.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--port", port])
    assert exited.value.code == 2
    assert "must be a port from 0 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("host", ["localhost:8080", "[::1]", "http://0.0.0.0"])
def test_a_host_that_cannot_be_bound_is_refused_on_the_command_line(
    command: str, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --host localhost:8080` loaded the policy, then died resolving the host (a traceback)."""
    from gateway.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--host", host])
    assert exited.value.code == 2
    assert "must be an IP address or a host name" in capsys.readouterr().err
