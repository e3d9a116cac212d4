"""The fuzzer's kept crash cases (tests/regressions/) replayed, and the fuzzer itself kept honest: a short
run with a planted crash keeps it as a case file that the replay reads back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.fuzz import REGRESSIONS, Case, replay
from tests.conftest import ROOT


async def test_every_kept_regression_case_no_longer_crashes() -> None:
    assert REGRESSIONS.is_dir()
    for path in REGRESSIONS.glob("*.json"):  # each file is a case the replay can read
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["target"] in ("inprocess", "gateway"), path
        Case.from_json(data)
    failing = await replay(REGRESSIONS)
    assert failing == [], failing


def _fuzz(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.fuzz", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_short_fuzz_run_keeps_a_planted_crash_and_the_replay_reads_it(tmp_path: Path) -> None:
    done = _fuzz("--seconds", "3", "--seed", "7", "--out", str(tmp_path), "--plant")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]  # it found (the planted) crashes
    kept = sorted(tmp_path.glob("inprocess-*.json"))
    assert kept, done.stdout
    cases = [json.loads(path.read_text(encoding="utf-8")) for path in kept]
    assert all(case["method"] == "PUT" and "planted crash" in case["error"] for case in cases)
    runs = re.search(r"runs \{'inprocess': (\d+), 'gateway': (\d+)\}", done.stdout)
    assert runs is not None and int(runs[1]) > 0 and int(runs[2]) > 0, done.stdout  # both targets ran
    assert not list(tmp_path.glob("gateway-*.json")), done.stdout  # and none crashed it
    # the same files, replayed without the plant: the gateway's code does not crash on them
    again = _fuzz("--replay", str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"replayed {len(kept)} case(s), 0 still crash" in again.stdout
