"""The request pipeline's decisions, free of I/O: request facts in, a decision out.

`decide` runs every check that needs only the request line and headers, in the contract's order
(404, 405, secret_key_exposed, origin_not_allowed, danger_zone_disabled, 413/415/400); `check_body` runs
the ones that need the body. The handler in `app.py` does the I/O around them: reading the body, the
rate limit and the upstream call.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass

from multidict import MultiMapping

from gateway import errors
from gateway.catalog import CATALOG, Route
from gateway.compiled import CompiledPolicy, ProjectRuntime
from gateway.errors import GatewayError
from gateway.guards import idempotency
from gateway.models import Target
from gateway.origins import OriginMatch

SERVER_SECRETS = ("X-App-Token", "X-Management-Token")
EXPOSED_HEADERS = f"X-Request-Id, RateLimit, RateLimit-Policy, Retry-After, {idempotency.REPLAYED_HEADER}"
ALLOWED_REQUEST_HEADERS = (
    "Content-Type, Accept, Accept-Language, X-Client-Application-Id, X-Client-Token, "
    f"X-Voucherify-Channel, X-Voucherify-Double-Opt-In, {idempotency.HEADER}"
)
PREFLIGHT_MAX_AGE = "600"

_SLASHES = re.compile(r"/{2,}")
# A query string forwarded byte for byte must be one the upstream reads as we do: printable ASCII,
# no space or fragment, well-formed percent-escapes.
_QUERY = re.compile(r"(?:[!$&-;=?-Z\[\]_a-z{|}~^`]|%[0-9A-Fa-f]{2})*")


@dataclass(frozen=True, slots=True)
class Refuse:
    error: GatewayError
    project: ProjectRuntime | None = None
    operation: str | None = None
    cors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Preflight:
    project: ProjectRuntime
    operation: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Admit:
    """Passed every check on the request line and headers; the body and the rate limit come next."""

    target: Target
    cors: tuple[tuple[str, str], ...]
    origin: str | None  # the verified Origin, forwarded upstream in client mode

    def refuse(self, error: GatewayError) -> Refuse:
        """A refusal after admission: the CORS headers still let an allowed page read it."""
        return Refuse(error, self.target.project, self.target.operation, self.cors)


Decision = Refuse | Preflight | Admit


_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def split_target(raw: str) -> tuple[str, str]:
    """Path and query of a request target. The absolute form (`http://host/client/v1/...`, RFC 9112 3.2.2,
    which a server must accept) counts by its path and query alone: the authority in it names no project."""
    if not raw.startswith("/"):
        authority = _ABSOLUTE_FORM.match(raw)
        if authority is not None:
            raw = raw[authority.end() :] or "/"
    path, _, query = raw.partition("?")
    return path, query


def _resolve(policy: CompiledPolicy, path: str) -> tuple[ProjectRuntime, tuple[str, ...]] | None:
    """The project and the operation's raw segments of a path, or None."""
    if not path.startswith("/"):
        return None
    segments = tuple(_SLASHES.sub("/", path)[1:].split("/"))
    if segments[:2] == ("client", "v1"):
        if policy.default_project is None:
            return None
        return policy.default_project, segments[2:]
    if segments[1:3] == ("client", "v1"):
        project = policy.projects.get(segments[0])
        return (project, segments[3:]) if project is not None else None
    return None


def _origin_check(
    project: ProjectRuntime, headers: MultiMapping[str]
) -> tuple[GatewayError | None, tuple[tuple[str, str], ...], str | None]:
    """Whether the Origin is allowed, the CORS headers to answer with, and the origin to forward."""
    values = headers.getall("Origin", [])
    if not values:
        if project.config.allow_missing_origin:
            return None, (), None
        return errors.origin_not_allowed(None), (), None
    origin = values[0]
    verdict = project.origins.match(origin) if len(values) == 1 else OriginMatch.NONE
    if verdict is OriginMatch.EXACT:
        cors = (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
        )
        return None, cors, origin
    if verdict is OriginMatch.ANY:
        return (
            None,
            (("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", EXPOSED_HEADERS)),
            origin,
        )
    return errors.origin_not_allowed(origin), (), None


def decide(policy: CompiledPolicy, method: str, raw_target: str, headers: MultiMapping[str]) -> Decision:
    path, query = split_target(raw_target)
    resolved = _resolve(policy, path)
    if resolved is None:
        return Refuse(errors.not_found())
    project, segments = resolved
    # The origin is judged once; refusals before the origin check still carry CORS for an allowed origin,
    # so the page that sent them can read why.
    origin_refusal, cors, origin = _origin_check(project, headers)
    found = CATALOG.match(segments)
    if found is None:
        return Refuse(errors.not_found(), project, None, cors)

    if method == "OPTIONS":
        route = next(iter(found.routes.values()))
        if origin_refusal is not None:
            return Refuse(origin_refusal, project, route.operation.name)
        allow = ", ".join(sorted(found.routes))
        preflight = (
            *cors,
            ("Access-Control-Allow-Methods", allow),
            ("Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        )
        return Preflight(project, route.operation.name, preflight)

    if method not in found.routes:
        first = next(iter(found.routes.values()))
        return Refuse(
            errors.method_not_allowed(method, tuple(sorted(found.routes))),
            project,
            first.operation.name,
            cors,
        )
    route = found.routes[method]
    operation = route.operation.name

    for secret in SERVER_SECRETS:
        if secret in headers:
            return Refuse(errors.secret_key_exposed(secret), project, operation, cors)

    if origin_refusal is not None:
        return Refuse(origin_refusal, project, operation)

    danger = route.operation.danger
    if danger is not None and danger not in project.danger:
        return Refuse(errors.danger_zone_disabled(operation, danger.value), project, operation, cors)

    body_refusal = _body_headers(route, headers, policy.max_body_bytes)
    if body_refusal is None and not _QUERY.fullmatch(query):
        body_refusal = errors.invalid_payload("The query string is not validly encoded.")
    if body_refusal is not None:
        return Refuse(body_refusal, project, operation, cors)

    operation_path = "/" + "/".join(segments)
    return Admit(Target(project, route, found.params, operation_path, query), cors, origin)


def _body_headers(route: Route, headers: MultiMapping[str], limit: int) -> GatewayError | None:
    """Content-Length and Content-Type checks that need no body: 413, then 415, then 400."""
    lengths = headers.getall("Content-Length", [])
    chunked = "Transfer-Encoding" in headers
    content_length = 0
    if lengths:  # ASCII digits only: str.isdigit also takes "²", which int() refuses
        if len(set(lengths)) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            return errors.invalid_payload("The Content-Length header is not a single number.")
        content_length = int(lengths[0])
        if content_length > limit:
            return errors.payload_too_large(limit)
    if not chunked and not content_length:
        return None
    if not route.takes_body:
        return errors.invalid_payload(f"{route.method} {route.template} takes no request body.")
    if not _is_json_media_type(headers.get("Content-Type", "")):
        return errors.unsupported_media_type()
    return None


def _is_json_media_type(value: str) -> bool:
    """`application/json`, with any parameters but a charset other than UTF-8: the body is judged as UTF-8,
    and an upstream parser honouring `charset=utf-7` would read `+AGw-oyalty` as `loyalty`."""
    media_type, *parameters = value.split(";")
    if media_type.strip().lower() != "application/json":
        return False
    for parameter in parameters:
        name, _, charset = parameter.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def check_body(admit: Admit, body: bytes) -> Refuse | None:
    """The checks that need the body: a JSON object, and the body-dependent danger-zone options."""
    route = admit.target.route
    if not body or not route.takes_body:
        return None
    try:
        document = _STRICT_JSON.decode(body.decode("utf-8"))
    except _DuplicateKey:
        return admit.refuse(errors.invalid_payload("The request body has the same key twice in one object."))
    except _ProtoKey:
        return admit.refuse(errors.invalid_payload('The request body has a "__proto__" key.'))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return admit.refuse(errors.invalid_payload("The request body is not valid UTF-8 JSON."))
    if not isinstance(document, dict):
        return admit.refuse(errors.invalid_payload("The request body must be a JSON object."))
    option = route.operation.body_danger
    if (
        option is not None
        and option not in admit.target.project.danger
        and any(document.get(key) is not None for key in route.operation.body_danger_keys)
    ):
        return admit.refuse(errors.danger_zone_disabled(admit.target.operation, option.value))
    return None


class _DuplicateKey(ValueError):
    pass


class _ProtoKey(ValueError):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are unique. Parsers disagree on which of two equal keys wins, so a body
    naming `loyalty` twice could pass the danger-zone check with one value and reach Voucherify with the
    other. Nor is `__proto__` a key: copied on Voucherify's side (Object.assign, `obj[key] = value`), it
    becomes the object's prototype, and a `loyalty` inside it would be read as the body's own."""
    document: dict[str, object] = {}
    for key, value in pairs:
        if key == "__proto__":
            raise _ProtoKey
        if key in document:
            raise _DuplicateKey
        document[key] = value
    return document


def _no_constant(name: str) -> object:
    """NaN and Infinity are not JSON, though Python's parser takes them."""
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A number past a double (`1e400`) is Infinity to Voucherify's parser: as good as the constant."""
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number beyond a double")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError("a number beyond a double")
    return value


# Built once: json.loads with hooks builds a new decoder for every call.
_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int
)
