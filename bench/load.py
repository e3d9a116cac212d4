"""The load generator: wrk with a Lua script (POST body, Origin, a machine-readable summary in `done`)."""

from __future__ import annotations

import re
import resource
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from bench.configs import VALIDATION, Load, wrk_script
from bench.procs import pinned

_RESULT = re.compile(r"BENCH_RESULT ((?:\w+=\d+ ?)+)")


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_counts: tuple[tuple[str, int], ...]  # wrk's counters of _ERROR_KINDS, in that order
    load_cpu_s: float = 0.0  # wrk's own CPU time (user + system) over the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Socket errors (connect, read, write, timeout) plus non-2xx answers."""
        return sum(count for _, count in self.error_counts)

    @property
    def error_kinds(self) -> str:
        """Which errors, e.g. "connect 3, status 12": the counters that are not 0."""
        return ", ".join(f"{kind} {count}" for kind, count in self.error_counts if count)


_ERROR_KINDS = ("connect", "read", "write", "status", "timeout")  # status: a non-2xx answer


def parse(output: str) -> LoadResult:
    found = _RESULT.search(output)
    if found is None:
        raise RuntimeError(f"wrk printed no BENCH_RESULT line:\n{output[-2000:]}")
    f = {key: int(value) for key, value in (pair.split("=") for pair in found.group(1).split())}
    return LoadResult(
        requests=f["requests"],
        seconds=f["duration_us"] / 1e6,
        p50_ms=f["p50_us"] / 1000,
        p90_ms=f["p90_us"] / 1000,
        p99_ms=f["p99_us"] / 1000,
        max_ms=f["max_us"] / 1000,
        error_counts=tuple((kind, f[kind]) for kind in _ERROR_KINDS),
    )


def run_wrk(
    workdir: Path,
    port: int,
    *,
    connections: int,
    seconds: float,
    rate: float = 0.0,
    cpu: int | None = None,
    timeout_s: int = 10,
    load: Load = VALIDATION,
) -> LoadResult:
    """Closed loop at saturation, or with `rate` > 0 each connection paced to rate/connections per second.

    wrk has no open-loop mode (wrk2 is not in Debian): pacing is a fixed Lua `delay()` between a
    connection's requests, so the achieved rate is a little under `rate` and is reported as measured.
    `load`: the requests sent (configs.wrk_script).
    """
    pace_ms = connections * 1000.0 / rate if rate > 0 else 0.0
    script = workdir / f"wrk-{load.kind}-{'paced' if rate else 'sat'}.lua"
    script.write_text(wrk_script(pace_ms, load))
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
        "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        pinned(cmd, cpu), capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the one child reaped in between
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return replace(parse(done.stdout), load_cpu_s=used)
