"""The policy file: typed models for every key of POLICY.md, `${VAR}` interpolation and loading.

`load_policy` returns a validated `PolicyFile` or raises `PolicyError` listing every problem with the path
of its key. Secrets are held as `SecretStr`, so no repr, log line or error message shows them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.base_url import split_base_url
from gateway.catalog import OPERATIONS
from gateway.models import RateItem, Strategy
from gateway.origins import OriginEntryError, OriginPolicy

REGIONS = {
    "eu": "https://api.voucherify.io",
    "us1": "https://us1.api.voucherify.io",
    "as1": "https://as1.api.voucherify.io",
}
STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "redis+sentinel://", "redis+cluster://")
# Ten years, for every duration and window: a bound so that a typo (or `.inf`) cannot overflow a store's
# expiry arithmetic (an Idempotency-Key's marker lives for the upstream and body timeouts together).
MAX_SECONDS = 10 * 365 * 86400


class PolicyError(Exception):
    """The policy file cannot be used; `problems` lists every reason, each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _windows(value: str, items: tuple[RateItem, ...]) -> None:
    """A window of 0 seconds counts nothing (no limit at all, or a 500 with sliding-window-counter); one
    past MAX_SECONDS overflows Redis's expiry (every request a store error)."""
    for item in items:
        if not 1 <= item.expiry <= MAX_SECONDS:
            raise ValueError(f"{value!r} has a window of {item.expiry} seconds; windows are 1 s to 10 years")


def _rate_limit_string(value: str) -> str:
    try:
        items = RateItem.parse_many(value)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a rate limit such as '5 per 5 seconds' or '100/minute;10/second'"
        ) from exc
    _windows(value, items)
    return value


RateLimitString = Annotated[str, AfterValidator(_rate_limit_string)]


def _single_limit(value: str) -> str:
    """`failed_codes` and `upstream_quota`: one limit (`10 per hour`), never a list, at least 1."""
    try:
        items = RateItem.parse_many(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a rate limit such as '10 per hour'") from exc
    if len(items) != 1:
        raise ValueError(
            f"{value!r} is a list of limits; this key takes a single limit such as '10 per hour'"
        )
    if items[0].amount < 1:
        raise ValueError(f"{value!r} allows nothing; write null to turn this key off")
    _windows(value, items)
    return value


SingleLimitString = Annotated[str, AfterValidator(_single_limit)]


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):  # pydantic would read `true` as 1.0: all of the quota
        raise ValueError("must be a number from 0 to 1, not true or false")
    return value


ReserveShare = Annotated[float, Field(ge=0, le=1), BeforeValidator(_not_a_bool)]


def _text(value: object) -> object:
    """Only a string reaches a validator whose message quotes its input (an enum's, an IP network's): a
    nested list there was rendered whole, a YAML alias bomb included."""
    if not isinstance(value, str):
        raise ValueError("Input should be a valid string")
    return value


# The enum, with the JSON Schema the Literal it replaced had (an inline enum of strings, no $defs entry)
StrategyName = Annotated[
    Strategy,
    BeforeValidator(_text),
    WithJsonSchema({"enum": [s.value for s in Strategy], "type": "string"}),
]
OnStorageError = Literal["allow", "deny"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# An empty host binds every interface (asyncio's create_server): `admin.host: ${ADMIN_HOST:-}` with the
# variable unset put /metrics and /readyz on the public network. `0.0.0.0` says so when it is meant.
_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"


def _host(value: str) -> str:
    """An address or a name to bind, as `create_server` takes it: `localhost:9090`, `[::1]` or
    `http://0.0.0.0` passed `check`, then start-up died resolving it (socket.gaierror, a traceback)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?", value):
            raise ValueError(
                "must be an IP address or a host name, without a port, brackets or a scheme "
                "(0.0.0.0 or :: for every interface)"
            ) from None
    return value


Host = Annotated[str, Field(min_length=1), AfterValidator(_host)]


class Listen(_Model):
    host: Host = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(262144, ge=1)
    drain_timeout: float = Field(30, ge=0, le=MAX_SECONDS)
    # an addition: seconds a client gets to send its whole body
    body_timeout: float = Field(10, gt=0, le=MAX_SECONDS)
    # additions (gateway/listen.py), defaults as nginx's: client_header_timeout, keepalive_timeout; seconds
    # from a request's first byte to the end of its head, and seconds an idle keep-alive connection is kept
    header_timeout: float = Field(60, gt=0, le=MAX_SECONDS)
    keepalive_timeout: float = Field(75, gt=0, le=MAX_SECONDS)
    max_connections: int = Field(1024, ge=1)  # open connections per process; the idlest give way first


class Upstream(_Model):
    connect_timeout: float = Field(2, gt=0, le=MAX_SECONDS)
    read_timeout: float = Field(10, gt=0, le=MAX_SECONDS)
    # an addition: requests in flight to one upstream host (scheme, host, port); more answer 502 at once
    max_in_flight_per_host: int = Field(1000, ge=1)


class Admin(_Model):
    host: Host = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)


class Logging(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    client_ip: Literal["full", "truncated"] = "full"


def _otlp_endpoint(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s#]*)?", value):
        raise ValueError("must be an http(s) URL such as http://otel-collector:4318/v1/traces")
    return value


class Tracing(_Model):
    """OpenTelemetry traces, exported over OTLP/HTTP by each process; read once at start-up."""

    otlp_endpoint: Annotated[str, AfterValidator(_otlp_endpoint)] | None = None  # None: tracing is off
    service_name: str = Field("voucherify-gateway", min_length=1, max_length=200)
    sample_ratio: float = Field(1.0, ge=0, le=1)  # new traces only: an incoming traceparent decides


class ClientIp(_Model):
    trusted_proxies: tuple[Annotated[IPvAnyNetwork, BeforeValidator(_text)], ...] = ()
    ipv6_prefix: int = Field(64, ge=1, le=128)


def _storage_uri(value: str) -> str:
    """The URI's scheme, and what `limits` needs to open a Redis one: every host with its port (it refuses
    `redis://localhost`), a port that exists, and a Sentinel service name. Checked here, `serve` no longer
    starts from a policy `check` called valid only to die with a traceback that quotes the URI, password
    included. No message here quotes it either."""
    if not value.startswith(STORAGE_SCHEMES):
        raise ValueError(f"must start with one of {', '.join(STORAGE_SCHEMES)}")
    if value.startswith("memory://"):
        return value
    example = "a host and its port, such as redis://localhost:6379"
    try:
        parsed = urllib.parse.urlsplit(value)
        hosts = parsed.netloc[parsed.netloc.find("@") + 1 :]  # as `limits` reads it: after the first @
        located = (
            [urllib.parse.urlsplit(f"fake://{host.strip()}") for host in hosts.split(",")] if hosts else []
        )
        ported = all(where.hostname is not None and where.port is not None for where in located)
    except ValueError:  # a port past 65535, an unclosed [
        raise ValueError(f"is not a Redis URL with {example} (a port from 0 to 65535)") from None
    if not ported:
        raise ValueError(f"every host of a Redis URL needs its port: {example}")
    if not hosts and value.startswith(("redis+sentinel://", "redis+cluster://")):
        raise ValueError(f"a Sentinel or Cluster URL names at least one host: {example}")
    if value.startswith("redis+sentinel://") and not parsed.path.strip("/"):
        raise ValueError("a Sentinel URL names its service: redis+sentinel://host:26379/mymaster")
    return value


StorageUri = Annotated[str, AfterValidator(_storage_uri)]


def _operation_name(value: str) -> str:
    if value not in OPERATIONS:
        raise ValueError(f"unknown operation {value}; operations are {', '.join(OPERATIONS)}")
    return value


# Keys and values are validated one by one, so every bad key and every bad limit is reported.
OperationLimits = dict[Annotated[str, AfterValidator(_operation_name)], RateLimitString]


class RateLimit(_Model):
    storage: StorageUri = "memory://"
    strategy: StrategyName = Field(Strategy.MOVING_WINDOW, title="Strategy")
    per_ip: RateLimitString = "5 per 5 seconds"
    operations: OperationLimits = Field(default_factory=dict)
    on_storage_error: OnStorageError = "allow"
    storage_timeout: float = Field(0.5, gt=0, le=MAX_SECONDS)
    failed_codes: SingleLimitString | None = None  # unknown codes one client may try per window; None: off
    upstream_quota: SingleLimitString | None = None  # calls one project may make to Voucherify; None: off
    redeem_reserve: ReserveShare = 0  # share of upstream_quota only redemptions may use


# Keys a project can switch off with an explicit null (a key left out is inherited).
NULLABLE_RATE_LIMIT_KEYS = ("failed_codes", "upstream_quota")


class ProjectRateLimit(_Model):
    """A project's overrides: keys left out (None) are inherited from the top-level `rate_limit`."""

    storage: StorageUri | None = None
    strategy: StrategyName | None = Field(None, title="Strategy")
    per_ip: RateLimitString | None = None
    operations: OperationLimits | None = None
    on_storage_error: OnStorageError | None = None
    storage_timeout: float | None = Field(None, gt=0, le=MAX_SECONDS)
    failed_codes: SingleLimitString | None = None  # an explicit null turns it off for this project
    upstream_quota: SingleLimitString | None = None  # an explicit null turns it off for this project
    redeem_reserve: ReserveShare | None = None

    def over(self, base: RateLimit) -> RateLimit:
        update = self.model_dump(exclude_none=True)
        for key in NULLABLE_RATE_LIMIT_KEYS:  # written as null: off here, whatever the top level says
            if key in self.model_fields_set:
                update[key] = getattr(self, key)
        return base.model_copy(update=update)


MAX_IDEMPOTENCY_TTL = MAX_SECONDS


class Idempotency(_Model):
    """Idempotency-Key for redemptions, publications and customer creation (gateway/guards/idempotency.py)."""

    ttl: float = Field(86400, ge=0, le=MAX_IDEMPOTENCY_TTL)  # seconds a key and its answer are kept; 0 = off
    required: bool = False  # those operations without the header answer 400 idempotency_key_required


class ProjectIdempotency(_Model):
    """A project's overrides: keys left out (None) are inherited from the top-level `idempotency`."""

    ttl: float | None = Field(None, ge=0, le=MAX_IDEMPOTENCY_TTL)
    required: bool | None = None

    def over(self, base: Idempotency) -> Idempotency:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Cache(_Model):
    """Cached reads (`gateway/guards/cache.py`): seconds 200 answers of the list operations are reused."""

    ttl: float = Field(0, ge=0, le=MAX_SECONDS)


class ProjectCache(_Model):
    ttl: float | None = Field(None, ge=0, le=MAX_SECONDS)  # left out (None): inherited

    def over(self, base: Cache) -> Cache:
        return base.model_copy(update=self.model_dump(exclude_none=True))


def _api_version(value: str) -> str:
    """`vYYYY-MM-DD`, a real calendar date in ASCII digits: it becomes an upstream header value."""
    problem = f"{value!r} is not an API version such as v2018-08-01 (vYYYY-MM-DD)"
    if not re.fullmatch(r"v[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError(problem)
    try:
        datetime.date.fromisoformat(value[1:])
    except ValueError:
        raise ValueError(problem) from None
    return value


def _credential(value: SecretStr) -> SecretStr:
    """A header value as Voucherify's keys are: printable ASCII, no space. A secret read from a file often
    ends in a newline; the upstream client then refused every call (a header that could split the request):
    502 for every request of a policy `check` called valid. The message never quotes the value."""
    if not re.fullmatch(r"[\x21-\x7e]*", value.get_secret_value()):
        raise ValueError(
            "holds a space, a line break, a control or a non-ASCII character, which cannot go in the header "
            "it is sent in (a newline at the end of a secret file?)"
        )
    return value


Credential = Annotated[SecretStr, AfterValidator(_credential)]


class Credentials(_Model):
    client_application_id: Credential | None = None
    client_secret_key: Credential | None = None
    application_id: Credential | None = None
    secret_key: Credential | None = None


class DangerZone(_Model):
    redeem: bool = False
    publish: bool = False
    list_vouchers: bool = False
    create_customers: bool = False
    create_loyalty_referral_events: bool = False


def _region(value: str) -> str:
    if value in REGIONS:
        return value
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError("must be eu, us1, as1 or an http(s) URL")
    split_base_url(value)  # what the upstream client would refuse at every call (ValueError)
    return value.rstrip("/")


def _origin_entry(value: str) -> str:
    try:
        OriginPolicy((value,))
    except OriginEntryError as exc:
        raise ValueError(str(exc)) from exc
    return value


OriginEntry = Annotated[str, AfterValidator(_origin_entry)]  # checked one by one: every bad entry is listed


class Project(_Model):
    region: Annotated[str, AfterValidator(_region)] = "eu"
    upstream_auth: Literal["client", "server"] = "client"
    # validated even when left out, and beside the other fields, so check lists it with every other problem
    credentials: Credentials = Field(default_factory=Credentials, validate_default=True)
    allowed_origins: tuple[OriginEntry, ...] = ()
    allow_missing_origin: bool = False
    danger_zone: DangerZone = DangerZone()
    rate_limit: ProjectRateLimit | None = None
    idempotency: ProjectIdempotency | None = None
    cache: ProjectCache | None = None
    api_version: Annotated[str, AfterValidator(_api_version)] | None = None  # X-Voucherify-API-Version

    @field_validator("credentials")
    @classmethod
    def _credentials_for_mode(cls, credentials: Credentials, info: ValidationInfo) -> Credentials:
        mode = info.data.get("upstream_auth")  # absent when upstream_auth is itself invalid: reported there
        needed: tuple[str, ...] = ()
        if mode == "client":
            needed = ("client_application_id", "client_secret_key")
        elif mode == "server":
            needed = ("application_id", "secret_key")
        missing = [name for name in needed if not _secret(getattr(credentials, name))]
        if missing:
            raise ValueError(f"upstream_auth: {mode} needs credentials.{' and credentials.'.join(missing)}")
        return credentials

    @property
    def base_url(self) -> str:
        return REGIONS.get(self.region, self.region)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


ProjectName = Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]


class PolicyFile(_Model):
    listen: Listen = Listen()
    upstream: Upstream = Upstream()
    admin: Admin = Admin()
    logging: Logging = Logging()
    watch: bool = False
    client_ip: ClientIp = ClientIp()
    rate_limit: RateLimit = RateLimit()
    idempotency: Idempotency = Idempotency()
    cache: Cache = Cache()
    tracing: Tracing = Tracing()
    default_project: str | None = None
    projects: dict[ProjectName, Project]

    @field_validator("projects")
    @classmethod
    def _some_project(cls, value: dict[str, Project]) -> dict[str, Project]:
        if not value:
            raise ValueError("at least one project is needed")
        return value

    @field_validator("admin")
    @classmethod
    def _admin_apart(cls, admin: Admin, info: ValidationInfo) -> Admin:
        """Never on the public port: on the same address (or a wildcard one) the second bind failed at
        start-up with a traceback, after `check` called the file valid."""
        listen = info.data.get("listen")  # absent when listen is itself invalid: reported there
        wildcard = ("0.0.0.0", "::")  # compared with, not bound
        if (
            isinstance(listen, Listen)
            and admin.port
            and admin.port == listen.port
            and (admin.host == listen.host or admin.host in wildcard or listen.host in wildcard)
        ):
            raise ValueError(f"port {admin.port} is listen.port: the admin listener needs a port of its own")
        return admin

    @model_validator(mode="after")
    def _default_exists(self) -> PolicyFile:
        if self.default_project is not None and self.default_project not in self.projects:
            raise ValueError(f"default_project {self.default_project!r} is not one of the projects")
        return self

    def rate_limit_for(self, project: str) -> RateLimit:
        overrides = self.projects[project].rate_limit
        return overrides.over(self.rate_limit) if overrides else self.rate_limit

    def idempotency_for(self, project: str) -> Idempotency:
        overrides = self.projects[project].idempotency
        return overrides.over(self.idempotency) if overrides else self.idempotency

    def cache_for(self, project: str) -> Cache:
        overrides = self.projects[project].cache
        return overrides.over(self.cache) if overrides else self.cache


# ---------------------------------------------------------------------------------------------- loading

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    tree: Any, env: Mapping[str, str], problems: list[str], path: str = "", read: dict[str, str] | None = None
) -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string value; a missing NAME is a problem. `read`
    collects each value taken from `env` (-> `${NAME}`), so that no problem quotes one.

    A mapping or list the YAML shares through an alias (`*name`) is walked once and its result shared
    again, as the loader shares it. Copied at each alias, nine levels of ten aliases (a "billion laughs" of
    600 bytes) took ten minutes and gigabytes, ten times more per level, in `check`, at start-up and in a
    reload's thread (holding the reload lock). One that contains itself (`a: &a [*a]`) is a problem, not
    a RecursionError."""
    done: dict[int, Any] = {}  # id of a container of `tree` (alive throughout) -> its result
    open_: set[int] = set()  # the containers being walked: one met again inside itself is a cycle

    def walk(node: Any, where: str) -> Any:
        if not isinstance(node, dict | list):
            return _substitute(node, env, problems, where, read)
        if id(node) in done:
            return done[id(node)]
        if id(node) in open_:
            problems.append(f"{where or '<root>'}: a YAML alias refers to a node that contains it")
            return None
        open_.add(id(node))
        if isinstance(node, dict):
            result: Any = {key: walk(value, _join(where, key)) for key, value in node.items()}
        else:
            result = [walk(value, _join(where, index)) for index, value in enumerate(node)]
        open_.discard(id(node))
        done[id(node)] = result
        return result

    return walk(tree, path)


def _substitute(
    tree: Any, env: Mapping[str, str], problems: list[str], path: str, read: dict[str, str] | None
) -> Any:
    if isinstance(tree, str) and "${" in tree:

        def replace(found: re.Match[str]) -> str:
            name, default = found[1], found[2]
            if name in env:
                if read is not None:
                    read[env[name]] = f"${{{name}}}"
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        # What is left of `${` once the references are taken out is one that is not a reference: kept as
        # text, `${SHOP_KEY` (no brace), `${shop-key}` or `${A:-${B}}` (its default is `${B`, then `}`)
        # became a credential or a URL that check called valid. Said without quoting the text.
        if "${" in _REFERENCE.sub("", tree) or any("${" in (m[2] or "") for m in _REFERENCE.finditer(tree)):
            problems.append(
                f"{path or '<root>'}: a '${{' that is not a reference such as ${{NAME}} or "
                "${NAME:-default} (NAME: letters, digits and _, not starting with a digit; no reference "
                "inside a default)"
            )
        return _REFERENCE.sub(replace, tree)
    return tree


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping (YAML would silently keep the last)."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:  # `<<: *base`: no constructor of its own (it made every merge an
            key: Any = "<<"  # error); the mapping's own keys replace merged ones, as YAML says
        else:
            key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # a list or a mapping as a key (`? [a, b]`): PyYAML's own error, not a crash
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_policy(text: str, env: Mapping[str, str] | None = None, source: str = "policy") -> PolicyFile:
    """Validate policy text; raise PolicyError with every problem found."""
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        problems: list[str] = []
        read: dict[str, str] = {}  # what each reference was replaced with
        if isinstance(tree, dict):
            tree = interpolate(tree, os.environ if env is None else env, problems, read=read)
    except yaml.YAMLError as exc:
        raise PolicyError([f"{source}: not valid YAML: {_yaml_error(exc)}"]) from None
    except RecursionError:  # PyYAML's composer recurses once per level: ~600 nested `[` were a traceback
        raise PolicyError([f"{source}: not valid YAML: nested too deeply"]) from None
    if not isinstance(tree, dict):
        raise PolicyError([f"{source}: the policy must be a mapping of keys (listen, projects, ...)"])
    try:
        policy = PolicyFile.model_validate(tree)
    except ValidationError as exc:
        found = (_describe(error) for error in exc.errors(include_url=False, include_input=False))
        problems.extend(_unquoted(problem, read) for problem in found)
        policy = None
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


UNQUOTED_FROM = 8  # characters: a value from the environment this long is never quoted in a problem


def _unquoted(problem: str, read: Mapping[str, str]) -> str:
    """A problem with every value read from the environment named by its reference instead: a validator's
    message quotes what it refuses (`api_version`, a rate limit), and a secret put there by mistake
    (`api_version: ${SHOP_SECRET_KEY}`) was printed by check and logged by a rejected reload. Credentials'
    own validators never quote them. Values shorter than a key (a port, a flag) are left: replaced inside
    every number and word of the message, they would garble it."""
    for value, reference in sorted(read.items(), key=lambda item: -len(item[0])):
        if len(value) < UNQUOTED_FROM:
            continue
        for form in {value, repr(value)[1:-1]}:
            problem = problem.replace(form, reference)
    return problem


def _yaml_error(exc: yaml.YAMLError) -> str:
    """PyYAML's reason and where, without the snippets its message adds: they quote the file's lines, so a
    credential written in the file (a quote left open, a file read while being written) reached check's
    output and a reload's log line."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)  # a ReaderError: a character's code and position, never the text around it
    parts = [
        f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else text
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        if text
    ]
    return ": ".join(parts) or "unreadable"


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> PolicyFile:
    return parse_policy(read_policy_text(path), env, source=str(path))


def read_policy_text(path: str | Path) -> str:
    """The policy file's text; PolicyError when it cannot be read as UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read the policy file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:  # a Latin-1 comment: was a traceback from check and serve
        raise PolicyError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(
        str(part) for part in error["loc"] if not str(part).startswith("function-") and part != "[key]"
    )
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{location or '<root>'}: {message}"
