"""The benchmark cannot rot: smoke mode runs every contender through (a) and (b), then (c), (d), (e), the growth
rows (g) and --workers 1 and 2 (w), and prints every table and target line, (a)'s count of instructions
under callgrind among them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench import growth
from bench.runner import CACHED, CONTENDERS, GUARDED, PRICED, READERS
from tests.conftest import ROOT


def test_bench_smoke_prints_a_row_per_contender_with_throughput() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    sections = out.split("(b) upstream answers after")
    assert len(sections) == 2, out
    for section in sections:
        for name in CONTENDERS:
            row = re.search(rf"^\| {re.escape(name)} \| (\d+) \|", section, re.MULTILINE)
            assert row is not None, f"no row for {name}:\n{out}"
            assert int(row.group(1)) > 0, f"{name} had no throughput:\n{out}"
    keyed = out.split("(c) POST", 1)[-1].split("(d) GET", 1)[0]
    assert "(a) upstream" not in sections[1] and out.count("(b) upstream") == 1, out
    for name in GUARDED:  # (c): first use and replay of an Idempotency-Key, each with throughput
        for key in ("first use", "replay"):
            row = re.search(rf"^\| {re.escape(name)} \| {key} \| (\d+) \|", keyed, re.MULTILINE)
            assert row is not None and int(row.group(1)) > 0, f"no (c) {key} row for {name}:\n{out}"
    reads = out.split("(d) GET", 1)[-1].split("(e) the guards", 1)[0]
    for name in READERS:  # (d): a cache hit or a forward, with throughput
        read = "cache hit" if name in CACHED else "forwarded"
        row = re.search(rf"^\| {re.escape(name)} \| {read} \| (\d+) \|", reads, re.MULTILINE)
        assert row is not None and int(row.group(1)) > 0, f"no (d) row for {name}:\n{out}"
    priced = out.split("(e) the guards", 1)[-1].split("(g) how the cost", 1)[0]
    for name in PRICED:  # (e): each guard left out in turn, on memory and Redis, with throughput
        row = re.search(rf"^\| {re.escape(name)} \| [^|]+ \| (\d+) \|", priced, re.MULTILINE)
        assert row is not None and int(row.group(1)) > 0, f"no (e) row for {name}:\n{out}"
    redis_calls = re.search(r"^\| gateway-redis \| none \|(?: [^|]+ \|){6} ([\d.]+) \|", priced, re.MULTILINE)
    assert redis_calls is not None and float(redis_calls.group(1)) >= 1, f"no Redis calls counted:\n{out}"
    grown = out.split("(g) how the cost", 1)[-1].split("(w) gateway --workers", 1)[0]
    for grown_row in growth.rows(small=True):  # (g): every case of every row, with throughput
        for case in grown_row.cases:
            label = re.escape(f"{case.label} {grown_row.unit}".rstrip())
            row = re.search(rf"^\| {re.escape(grown_row.name)} \| {label} \| (\d+) \|", grown, re.MULTILINE)
            assert row is not None and int(row.group(1)) > 0, (
                f"no (g) row for {grown_row.name} {case.label}:\n{out}"
            )
    scaled = out.split("(w) gateway --workers", 1)[-1]
    for workers in (1, 2):  # (w): throughput and the CPU of the gateway's processes and of wrk
        row = re.search(
            rf"^\| {workers} \| (\d+) \|(?: [^|]+ \|){{3}} ([\d.]+) \| ([\d.]+) \|", scaled, re.MULTILINE
        )
        assert row is not None and int(row.group(1)) > 0, f"no (w) row for {workers} workers:\n{out}"
        assert float(row.group(2)) > 0 and float(row.group(3)) > 0, f"no CPU for {workers} workers:\n{out}"
    targets = out.split("\ntargets", 1)[-1]
    for line in ("gateway ≥ 0.7 x bare-http1 req/s", "gateway-redis ≥ 0.85 x gateway", "(d) gateway cache hit",
                 "(e) failed_codes on Redis", "(e) upstream_quota on memory", "(g) request body: µs",
                 "(g) projects, requests spread over all: the ratio round by round",
                 "aiohttp's server layer (bare-http1 - bare-httptools)"):  # fmt: skip
        assert line in targets, f"no target line {line!r}:\n{out}"
    served = re.search(
        r"bare-http1 in user-space instructions per request .*\(([\d,]+) / ([\d,]+)\)", targets
    )
    assert served is not None, f"no instructions line:\n{out}"
    lean, gateway = (int(count.replace(",", "")) for count in served.groups())
    # the same server and client, plus every guard: the gateway's count is the relay's and more; a count of
    # the wrong process (valgrind's launcher, the stub) would not be, and one of the start-up and warm-up
    # too (counters not zeroed: about 10^9 instructions over 10 requests) would be far above
    assert 150_000 < lean < gateway < 5_000_000, served.group(0)
