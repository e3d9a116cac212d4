"""The benchmark cannot rot: smoke mode runs every contender through both scenarios and prints the table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.runner import CONTENDERS
from tests.conftest import ROOT


def test_bench_smoke_prints_a_row_per_contender_with_throughput() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=150,
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
    assert "targets" in out
