"""The benchmark cannot rot: smoke mode runs every contender through (a) and (b), and (c) and (d), and prints tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.runner import CONTENDERS, GUARDED, READERS
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
    for name in GUARDED:  # (c): first use and replay of an Idempotency-Key, each with throughput
        for key in ("first use", "replay"):
            row = re.search(rf"^\| {re.escape(name)} \| {key} \| (\d+) \|", keyed, re.MULTILINE)
            assert row is not None and int(row.group(1)) > 0, f"no (c) {key} row for {name}:\n{out}"
    reads = out.split("(d) GET", 1)[-1]
    for name in READERS:  # (d): a cache hit (guards) or a forward, with throughput
        row = re.search(rf"^\| {re.escape(name)} \| (cache hit|forwarded) \| (\d+) \|", reads, re.MULTILINE)
        assert row is not None and int(row.group(2)) > 0, f"no (d) row for {name}:\n{out}"
    assert "targets" in out
