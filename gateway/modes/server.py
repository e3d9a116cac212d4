"""Server mode: a browser's client-side operation sent as its twin on Voucherify's server-side API (/v1).

The browser-facing surface does not change; only the upstream call does. Each operation's twin shape is in
its row of the catalog (`Operation.twin`):

- `SAME`: the method, body and query (byte for byte) move from /client/v1 to /v1;
- `CODE_IN_PATH` (`redeem`): `code` moves from the query into the path (`/v1/vouchers/{code}/redemption`),
  percent-encoded so no value can change the resource; the other query parameters are kept as sent;
- `PUBLICATION` (`publish`): POST `/v1/publications` with `"campaign": {"name": N}` added to the body, the
  other query parameters (`join_once`) kept;
- `QUERY_TO_BODY` (legacy `validate`, a GET with a `qs`-style query as the SDK sends it): a POST whose JSON
  body is built from the query (`qs.legacy_validation_document`); keys the translation does not know are
  dropped.

Answers: a 401/403 means Voucherify refused the gateway's own keys (502 for the browser, an operator log line
naming what to check, never a value); an operation marked `narrowed` (`list_vouchers`) has its answer cut down
to the client-side listing's fields. Pure apart from that log line.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from gateway import errors, strictjson
from gateway.catalog import Operation, Twin
from gateway.errors import Refused
from gateway.models import Target, UpstreamCall, UpstreamResponse
from gateway.modes.echo import refuse_echoed_secrets
from gateway.modes.qs import BadQuery, code_segment, legacy_validation_document, parse_query, take

log = logging.getLogger("gateway")

JSON = "application/json"
# Voucherify answers these when it does not accept the gateway's own server-side keys.
KEY_REJECTED_STATUSES = frozenset({401, 403})
_ERROR_KEY = re.compile(r"[a-z0-9_]{1,64}")


class ServerMode:
    """The project's server-side keys, Voucherify's /v1 API; no Origin goes upstream."""

    forwards_origin = False

    def request(self, target: Target, body: bytes, document: dict[str, Any] | None) -> UpstreamCall:
        return twin_call(
            target.route.operation, target.route.method, target.operation_path, target.query, body, document
        )

    def response(self, target: Target, answer: UpstreamResponse) -> UpstreamResponse:
        refuse_echoed_secrets(target, answer)  # first: 502 for an answer holding the project's secret
        operation = target.route.operation
        if answer.status in KEY_REJECTED_STATUSES:
            log.error(
                "%s", keys_rejected_log(target.project.name, operation.name, answer.status, answer.body)
            )
            raise Refused(errors.upstream_rejected())
        if not operation.narrowed or not 200 <= answer.status < 300:
            return answer
        headers, body = narrowed_listing(answer.headers, answer.body)
        return answer._replace(headers=headers, body=body)


def with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def twin_call(
    operation: Operation,
    method: str,
    operation_path: str,
    query: str,
    body: bytes,
    document: dict[str, Any] | None,
) -> UpstreamCall:
    """The server-side call for a client-side operation; Refused (400) for a query it cannot read.

    `operation_path` is raw, relative to /client/v1; `document` is the body already parsed (None when empty).
    """
    try:
        if operation.twin is Twin.SAME:
            return UpstreamCall(method, with_query("/v1" + operation_path, query), body)
        if operation.twin is Twin.CODE_IN_PATH:
            code, rest = take(parse_query(query), "code")
            return UpstreamCall(
                "POST", with_query(f"/v1/vouchers/{code_segment(code)}/redemption", rest), body
            )
        if operation.twin is Twin.PUBLICATION:
            campaign, rest = take(parse_query(query), "campaign")
            if campaign is None:
                return UpstreamCall("POST", with_query("/v1/publications", rest), body)
            published = dict(document or {})
            published["campaign"] = {"name": campaign}
            return UpstreamCall(
                "POST", with_query("/v1/publications", rest), strictjson.dumps(published), JSON
            )
        pairs = parse_query(query)  # Twin.QUERY_TO_BODY
        if operation_path == "/validate":
            code, _ = take(pairs, "code")
            path = f"/v1/vouchers/{code_segment(code)}/validate"
        else:
            path = "/v1/promotions/validation"
        return UpstreamCall("POST", path, strictjson.dumps(legacy_validation_document(pairs)), JSON)
    except (BadQuery, strictjson.StrictJsonError) as exc:  # a body nested too deeply to write again
        raise Refused(errors.invalid_payload(str(exc))) from None


def keys_rejected_log(project: str, operation: str, status: int, body: bytes) -> str:
    """The operator's log line for a 401/403 on the gateway's keys: names, status and error key, no secret."""
    key = "unknown"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if (
        isinstance(document, dict)
        and isinstance(document.get("key"), str)
        and _ERROR_KEY.fullmatch(document["key"])
    ):
        key = document["key"]
    return (
        f"Voucherify refused the server-side keys of project {project} "
        f"(HTTP {status}, key {key}) on {operation}; "
        f"check projects.{project}.credentials.application_id and secret_key and the keys' permissions. "
        "The browser was answered 502 upstream_unavailable."
    )


# Voucherify's client-side voucher listing shows only these fields of each voucher (the SDK's
# ClientSideVoucherListing); /v1/vouchers returns whole vouchers: holders, redemptions, publications, rules.
LISTED_VOUCHER_FIELDS = ("object", "code", "active", "metadata", "assets", "expiration_date", "start_date")
LIST_FIELDS = ("object", "total", "data_ref", "vouchers")


def narrowed_listing(headers: list[tuple[str, str]], body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """A successful /v1/vouchers answer cut down to what the client-side listing shows.

    An answer that is not the list it should be is not passed on (502), so nothing unfiltered leaks.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("vouchers", []), list):
        raise Refused(
            errors.upstream_unavailable(
                "Voucherify answered something that is not a voucher list.", sent=True
            )
        )
    listing = {key: document[key] for key in LIST_FIELDS if key in document}
    if "vouchers" in listing:
        listing["vouchers"] = [
            {key: voucher[key] for key in LISTED_VOUCHER_FIELDS if key in voucher}
            for voucher in listing["vouchers"]
            if isinstance(voucher, dict)
        ]
    kept = [(name, value) for name, value in headers if name.lower() not in ("etag", "content-type")]
    try:
        return [("Content-Type", JSON), *kept], strictjson.dumps(listing)
    except strictjson.StrictJsonError:  # nested deeper than the writer goes: read, but not written again
        raise Refused(
            errors.upstream_unavailable("Voucherify answered a voucher list nested too deeply.", sent=True)
        ) from None
