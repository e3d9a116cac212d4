"""Policies that are valid but probably not what an operator wants, each worded once here.

`check` prints them, a gateway logs them at warning whenever it loads a policy (start-up and reload), and
the worker supervisor adds the one that depends on how many processes share the limits.
"""

from __future__ import annotations

from gateway.policy import REGIONS, PolicyFile

__all__ = ["policy_warnings", "workers_warning"]


def policy_warnings(policy: PolicyFile) -> list[str]:
    """What `check` warns about, and the gateway logs on each load."""
    notes: list[str] = []
    for name, project in policy.projects.items():
        if "*" in project.allowed_origins:
            notes.append(
                f"projects.{name}.allowed_origins: '*' lets any website call this project through the gateway"
            )
        if project.upstream_auth == "client" and project.region in REGIONS:
            notes.append(
                f"projects.{name}: upstream_auth: client with the production region {project.region} sends "
                "every shopper through the gateway's one IP address, and Voucherify allows client-side calls "
                "5 requests per 5 seconds per IP: all shoppers share that budget. Use upstream_auth: server "
                "with the project's server-side keys (credentials.application_id, credentials.secret_key) "
                "for production traffic"
            )
    return notes


def workers_warning(policy: PolicyFile, workers: int) -> str | None:
    """With several workers, an in-memory store counts per process: said at start-up."""
    if workers <= 1:
        return None
    in_memory = [n for n in policy.projects if policy.rate_limit_for(n).storage.startswith("memory://")]
    if not in_memory:
        return None
    return (
        f"rate_limit.storage is memory:// for {', '.join(in_memory)} with {workers} workers: limits are per "
        f"process, so clients get up to {workers} times each limit; use a Redis URL to share them"
    )
