"""`voucherify-gateway check` and upstream modes: the credentials each mode needs, the client-mode warning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.lint import policy_warnings
from gateway.policy import PolicyError, parse_policy
from tests.support.processes import run_cli

SERVER_CREDS = {"application_id": "srv-app-id-0a1b", "secret_key": "srv-secret-2c3d"}
CLIENT_CREDS = {"client_application_id": "cli-app-id-4e5f", "client_secret_key": "cli-secret-6a7b"}
SECRETS = [*SERVER_CREDS.values(), *CLIENT_CREDS.values()]


def project(**fields: Any) -> dict[str, Any]:
    return {"allowed_origins": ["https://shop.example.com"], **fields}


def check(tmp_path: Path, projects: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the real command line in a subprocess on a policy file."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"projects": projects}))
    without_shop = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    done = run_cli("check", "--config", str(path), env=env, base=without_shop)
    return done.returncode, done.stdout + done.stderr


def test_server_mode_with_server_keys_is_valid_and_not_warned(tmp_path: Path) -> None:
    code, out = check(
        tmp_path, {"shop": project(region="eu", upstream_auth="server", credentials=SERVER_CREDS)}
    )
    assert code == 0, out
    assert "valid, 1 project(s)" in out
    assert "warning" not in out


@pytest.mark.parametrize(
    ("mode", "credentials", "missing"),
    [
        ("server", CLIENT_CREDS, ["credentials.application_id", "credentials.secret_key"]),
        ("server", {"application_id": "srv-app-id-0a1b"}, ["credentials.secret_key"]),
        ("server", {"secret_key": "srv-secret-2c3d", **CLIENT_CREDS}, ["credentials.application_id"]),
        ("client", SERVER_CREDS, ["credentials.client_application_id", "credentials.client_secret_key"]),
        ("client", {"client_application_id": "cli-app-id-4e5f"}, ["credentials.client_secret_key"]),
    ],
)
def test_check_refuses_a_mode_without_its_credentials(
    tmp_path: Path, mode: str, credentials: dict[str, str], missing: list[str]
) -> None:
    code, out = check(tmp_path, {"shop": project(upstream_auth=mode, credentials=credentials)})
    assert code == 1
    [error] = [line for line in out.splitlines() if line.startswith("error:")]
    assert error.startswith("error: projects.shop.credentials:")
    assert f"upstream_auth: {mode}" in error
    for name in missing:
        assert name in error
    assert not any(secret in out for secret in SECRETS)


def test_check_treats_an_empty_environment_value_as_missing(tmp_path: Path) -> None:
    creds = {"application_id": "${SHOP_APP_ID}", "secret_key": "${SHOP_SECRET_KEY:-}"}
    code, out = check(
        tmp_path,
        {"shop": project(upstream_auth="server", credentials=creds)},
        {"SHOP_APP_ID": "id-from-env-99"},
    )
    assert code == 1
    assert "credentials.secret_key" in out and "credentials.application_id" not in out
    assert "id-from-env-99" not in out


def test_check_lists_every_project_missing_keys(tmp_path: Path) -> None:
    projects = {
        "good": project(upstream_auth="server", credentials=SERVER_CREDS, region="https://gw-test.invalid"),
        "bad-server": project(upstream_auth="server", credentials=CLIENT_CREDS),
        "bad-client": project(credentials={}),
    }
    code, out = check(tmp_path, projects)
    assert code == 1
    errors = sorted(line for line in out.splitlines() if line.startswith("error:"))
    assert len(errors) == 2
    assert (
        errors[0].startswith("error: projects.bad-client.credentials:")
        and "upstream_auth: client" in errors[0]
    )
    assert (
        errors[1].startswith("error: projects.bad-server.credentials:")
        and "upstream_auth: server" in errors[1]
    )


@pytest.mark.parametrize("region", ["eu", "us1", "as1"])
def test_check_warns_about_client_mode_on_a_production_region(tmp_path: Path, region: str) -> None:
    code, out = check(tmp_path, {"shop": project(region=region, credentials=CLIENT_CREDS)})
    assert code == 0, out
    [warning] = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: projects.shop: upstream_auth: client")
    assert region in warning and "5 requests per 5 seconds" in warning and "upstream_auth: server" in warning
    assert not any(secret in out for secret in SECRETS)


def tree(**shop: Any) -> Any:
    return parse_policy(yaml.safe_dump({"projects": {"shop": project(**shop)}}), env={})


def test_warning_only_for_client_mode_on_voucherify_regions() -> None:
    assert len(policy_warnings(tree(credentials=CLIENT_CREDS))) == 1  # region defaults to eu
    assert policy_warnings(tree(region="http://127.0.0.1:8081", credentials=CLIENT_CREDS)) == []
    assert policy_warnings(tree(region="https://acme.voucherify.example", credentials=CLIENT_CREDS)) == []
    assert policy_warnings(tree(region="eu", upstream_auth="server", credentials=SERVER_CREDS)) == []


def test_policy_error_names_the_mode_and_not_the_secrets() -> None:
    with pytest.raises(PolicyError) as raised:
        tree(upstream_auth="server", credentials={"application_id": "srv-app-id-0a1b"})
    assert raised.value.problems == [
        "projects.shop.credentials: upstream_auth: server needs credentials.secret_key"
    ]
