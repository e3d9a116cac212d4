"""The policy compiled into the tables the request path reads: built once per load, never per request."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.catalog import OPERATIONS, DangerOption
from gateway.client_ip import ClientIpPolicy
from gateway.guards import idempotency
from gateway.guards.failed_codes import FailedCodeBudget
from gateway.guards.quota import QuotaPlan
from gateway.models import Bucket, Timeouts
from gateway.modes import Mode, mode_for
from gateway.origins import OriginPolicy
from gateway.policy import PolicyFile, Project, RateLimit


@dataclass(frozen=True, slots=True)
class ProjectRuntime:
    name: str
    config: Project
    origins: OriginPolicy
    danger: frozenset[DangerOption]
    base_url: str
    rate_limit: RateLimit
    buckets: dict[str, Bucket]  # operation name -> the bucket it is counted in
    credential_headers: tuple[tuple[str, str], ...]  # injected upstream; never logged
    mode: Mode  # client or server keys: both halves of the upstream translation
    idempotency: idempotency.Settings
    cache_ttl: float = 0.0  # seconds list answers are reused (`cache.ttl`); 0: off
    api_version: str | None = None  # sent upstream as X-Voucherify-API-Version on every call
    quota: QuotaPlan | None = None  # rate_limit.upstream_quota and redeem_reserve; None: off
    failed_codes: FailedCodeBudget | None = None  # rate_limit.failed_codes; None: off for this project


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    source: PolicyFile
    projects: dict[str, ProjectRuntime]
    default_project: ProjectRuntime | None
    client_ip: ClientIpPolicy
    max_body_bytes: int
    body_timeout: float
    upstream_timeouts: Timeouts
    truncate_ips: bool  # logging.client_ip: truncated


def _credential_headers(project: Project) -> tuple[tuple[str, str], ...]:
    creds = project.credentials
    if project.upstream_auth == "server":
        pairs = (("X-App-Id", creds.application_id), ("X-App-Token", creds.secret_key))
    else:
        pairs = (
            ("X-Client-Application-Id", creds.client_application_id),
            ("X-Client-Token", creds.client_secret_key),
        )
    return tuple((name, value.get_secret_value()) for name, value in pairs if value is not None)


def _buckets(name: str, limits: RateLimit) -> dict[str, Bucket]:
    shared = Bucket.parse("per_ip", limits.per_ip, f"{name}/per_ip")
    own = {op: Bucket.parse(op, limit, f"{name}/{op}") for op, limit in limits.operations.items()}
    return {op: own.get(op, shared) for op in OPERATIONS}


def _idempotency(name: str, policy: PolicyFile, limits: RateLimit) -> idempotency.Settings:
    settings = policy.idempotency_for(name)
    return idempotency.compile_settings(
        name,
        ttl=settings.ttl,
        required=settings.required,
        connect_timeout=policy.upstream.connect_timeout,
        read_timeout=policy.upstream.read_timeout,
        body_timeout=policy.listen.body_timeout,
        storage_timeout=limits.storage_timeout,
        max_kept_body=policy.listen.max_body_bytes,
    )


def compile_policy(policy: PolicyFile) -> CompiledPolicy:
    projects: dict[str, ProjectRuntime] = {}
    for name, project in policy.projects.items():
        limits = policy.rate_limit_for(name)
        danger = project.danger_zone.model_dump()
        projects[name] = ProjectRuntime(
            name=name,
            config=project,
            origins=OriginPolicy(project.allowed_origins),
            danger=frozenset(DangerOption(option) for option, on in danger.items() if on),
            base_url=project.base_url,
            rate_limit=limits,
            buckets=_buckets(name, limits),
            credential_headers=_credential_headers(project),
            mode=mode_for(project.upstream_auth),
            idempotency=_idempotency(name, policy, limits),
            cache_ttl=policy.cache_for(name).ttl,
            api_version=project.api_version,
            quota=QuotaPlan.build(name, limits.upstream_quota, limits.redeem_reserve),
            failed_codes=FailedCodeBudget.parse(name, limits.failed_codes) if limits.failed_codes else None,
        )
    return CompiledPolicy(
        source=policy,
        projects=projects,
        default_project=projects[policy.default_project] if policy.default_project else None,
        client_ip=ClientIpPolicy(tuple(policy.client_ip.trusted_proxies), policy.client_ip.ipv6_prefix),
        max_body_bytes=policy.listen.max_body_bytes,
        body_timeout=policy.listen.body_timeout,
        upstream_timeouts=Timeouts(policy.upstream.connect_timeout, policy.upstream.read_timeout),
        truncate_ips=policy.logging.client_ip == "truncated",
    )
