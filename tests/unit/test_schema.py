"""The committed JSON Schema of the policy file matches the models, and editors are pointed at it."""

from __future__ import annotations

import json

from gateway.policy import PolicyFile
from tests.conftest import ROOT
from tests.support.processes import run_cli

SCHEMA = ROOT / "config" / "policy.schema.json"


def test_committed_schema_matches_the_models() -> None:
    committed = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert committed == PolicyFile.model_json_schema(), (
        "config/policy.schema.json is stale: run `voucherify-gateway schema > config/policy.schema.json`"
    )


def test_schema_command_prints_the_committed_file() -> None:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA.read_text(encoding="utf-8")


def test_policy_files_reference_the_schema() -> None:
    for name in ("policy.yaml", "policy.example.yaml"):
        first = (ROOT / "config" / name).read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=policy.schema.json", name
