"""The request pipeline's decisions, free of I/O: request facts in, a decision out.

`decide` runs every check that needs only the request line and headers, in the contract's order
(404, 405, secret_key_exposed, origin_not_allowed, danger_zone_disabled, 413/415/400) and returns one of
`Refuse | Preflight | Admit`; `check_body` runs the ones that need the body and returns the parsed document
(or raises `errors.Refused`, the pipeline's one way of refusing after `decide`). The handler in `app.py` does
the I/O around them: reading the body, the rate limit and the upstream call.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from multidict import MultiMapping

from gateway import errors, strictjson
from gateway.catalog import CATALOG, Route
from gateway.compiled import CompiledPolicy, ProjectRuntime
from gateway.errors import GatewayError, Refused
from gateway.headers import COPIED_REQUEST_HEADERS, EXPOSED_HEADERS, PREFLIGHT_ALLOWED_HEADERS
from gateway.models import Target
from gateway.origins import OriginMatch

SERVER_SECRETS = ("X-App-Token", "X-Management-Token")
PREFLIGHT_MAX_AGE = "600"

_SLASHES = re.compile(r"/{2,}")
# A query string forwarded byte for byte must be one the upstream reads as we do: printable ASCII,
# no space or fragment, well-formed percent-escapes.
_QUERY = re.compile(r"(?:[!$&-;=?-Z\[\]_a-z{|}~^`]|%[0-9A-Fa-f]{2})*")


class Refuse(NamedTuple):
    error: GatewayError
    project: ProjectRuntime | None = None
    operation: str | None = None
    cors: tuple[tuple[str, str], ...] = ()


class Preflight(NamedTuple):
    project: ProjectRuntime
    operation: str
    headers: tuple[tuple[str, str], ...]


class Admit(NamedTuple):
    """Passed every check on the request line and headers; the body and the rate limit come next."""

    target: Target
    cors: tuple[tuple[str, str], ...]
    origin: str | None  # the verified Origin, forwarded upstream in client mode

    def refuse(self, error: GatewayError) -> Refuse:
        """A refusal after admission: the CORS headers still let an allowed page read it."""
        return Refuse(error, self.target.project, self.target.operation, self.cors)


Decision = Refuse | Preflight | Admit


_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # aiohttp decodes bytes that are not UTF-8 as these

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
    if "//" in path:  # in C: the regex only for a path that has a run of slashes to fold
        path = _SLASHES.sub("/", path)
    segments = tuple(path[1:].split("/"))
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
            # Native apps send neither Origin nor Sec-Fetch-*; a browser's no-cors request from another
            # site (an <img>, a form, fetch with mode: "no-cors") sends no Origin but says where it came from.
            site = headers.get("Sec-Fetch-Site")
            if site is not None and site.lower() not in ("same-origin", "none"):
                return errors.origin_not_allowed_cross_site(), (), None
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
            ("Access-Control-Allow-Headers", PREFLIGHT_ALLOWED_HEADERS),
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
    if body_refusal is None and query and not _QUERY.fullmatch(query):  # "" is valid
        body_refusal = errors.invalid_payload("The query string is not validly encoded.")
    if body_refusal is None:
        body_refusal = _forwarded_header_values(headers)
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


def _forwarded_header_values(headers: MultiMapping[str]) -> GatewayError | None:
    """A header that would be copied upstream with bytes that are not UTF-8 (a Latin-1 `\xe9` arrives as a
    lone surrogate) or with a control character other than HTAB: the browser's error, not Voucherify's."""
    for name in COPIED_REQUEST_HEADERS:  # headers.py's table: what is copied is what is judged
        for value in headers.getall(name, ()):
            if value.isprintable():  # the usual case, in C
                continue
            if _BAD_VALUE.search(value) or _SURROGATE.search(value):
                return errors.invalid_payload(f"The {name} header holds bytes that are not UTF-8 text.")
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


def check_body(admit: Admit, body: bytes) -> dict[str, Any] | None:
    """The checks that need the body: a strict JSON object, and the body-dependent danger-zone options.

    Returns the parsed document (None for an empty body or a route that takes none), so no later step parses
    the body again; raises `Refused` (400 invalid_payload, 403 danger_zone_disabled).
    """
    route = admit.target.route
    if not body or not route.takes_body:
        return None
    try:
        document = strictjson.loads(body)
    except strictjson.StrictJsonError as exc:
        raise Refused(errors.invalid_payload(str(exc))) from None
    if not isinstance(document, dict):
        raise Refused(errors.invalid_payload("The request body must be a JSON object."))
    option = route.operation.body_danger
    if (
        option is not None
        and option not in admit.target.project.danger
        and any(document.get(key) is not None for key in route.operation.body_danger_keys)
    ):
        raise Refused(errors.danger_zone_disabled(admit.target.operation, option.value))
    return document
