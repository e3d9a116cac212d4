"""Real processes for the scale-out tests: a `redis-server` and `voucherify-gateway serve` subprocesses.

Both are started on free ports and always killed in teardown, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port, in_ci
from tests.log_scan import register_lines, remember_credentials

ROOT = Path(__file__).resolve().parent.parent


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        if in_ci():
            pytest.fail("redis-server is missing (CI installs it: apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    return found


class RedisServer:
    """A throw-away redis-server without persistence; `kill`, `start` again on the same port, `freeze`."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class GatewayProcess:
    """`python -m gateway serve` in a subprocess; stdout and stderr lines are collected as they come."""

    def __init__(
        self, policy: dict[str, Any], directory: Path, workers: int = 1, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.config = directory / f"policy-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump(policy))
        remember_credentials(policy)
        self.workers = workers
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        register_lines(self.stdout)
        register_lines(self.stderr)
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    def start(self, timeout: float = 60) -> str:
        args = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(self.config),
            "--port",
            str(self.port),
        ]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        for stream, into in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()
        line = self.wait_for(self.stdout, "listening on", timeout)
        return line

    def wait_for(self, lines: list[str], pattern: str, timeout: float = 30, count: int = 1) -> str:
        """The `count`-th line matching `pattern`; fails if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [line for line in lines if re.search(pattern, line)]
            if len(found) >= count:
                return found[count - 1]
            assert self.proc is not None
            if self.proc.poll() is not None and len(found) < count:
                time.sleep(0.2)
                raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.stderr[-20:]}")
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s: {lines[-20:]}")

    def lines(self, pattern: str, stream: str = "stderr") -> list[str]:
        with self._lock:
            return [line for line in getattr(self, stream) if re.search(pattern, line)]

    def worker_pids(self) -> set[int]:
        return {
            int(m.group(1))
            for line in self.lines(r"worker \d+ listening")
            if (m := re.search(r"worker (\d+)", line))
        }

    def stop(self) -> None:
        """Teardown: SIGKILL the parent and any worker it left (workers also stop when orphaned)."""
        if self.proc is None:
            return
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
