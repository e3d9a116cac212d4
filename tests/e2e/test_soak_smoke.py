"""The soak command cannot rot: a few seconds of it print samples with RSS and descriptors, and slopes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_soak_smoke_prints_samples_and_slopes_with_every_answer_as_expected() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.1", "--interval", "2", "--rate", "100"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    rows = re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| .* \| ([\d.]+) \| (\d+) \|$", out, re.M
    )
    assert len(rows) >= 2, out
    for _, _, ok, refused, unexpected, _, rss, fds in rows:
        assert int(ok) > 0 and int(refused) > 0 and int(unexpected) == 0, out
        assert float(rss) > 10 and int(fds) > 3, out  # read from the gateway's /proc entry
    assert re.search(
        r"slope after the first sample: RSS [+-][\d.]+ MB/min .* descriptors [+-][\d.]+/min", out
    )
    assert "unexpected: none" in out and "error lines in the gateway's log: 0" in out, out
