"""The errors the gateway answers itself, in Voucherify's shape so its SDKs surface them."""

from __future__ import annotations

import functools
import json
from enum import StrEnum
from typing import NamedTuple


class ErrorKey(StrEnum):
    INVALID_PAYLOAD = "invalid_payload"
    SECRET_KEY_EXPOSED = "secret_key_exposed"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    DANGER_ZONE_DISABLED = "danger_zone_disabled"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TOO_MANY_REQUESTS = "too_many_requests"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    RATE_LIMIT_UNAVAILABLE = "rate_limit_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_QUOTA_EXHAUSTED = "upstream_quota_exhausted"
    REQUEST_TIMEOUT = "request_timeout"  # an addition to the contract's keys: a body sent too slowly
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_IN_FLIGHT = "idempotency_key_in_flight"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_UNAVAILABLE = "idempotency_unavailable"
    TOO_MANY_FAILED_CODES = "too_many_failed_codes"
    INTERNAL_ERROR = "internal_error"  # an addition: the last resort, instead of aiohttp's text/plain 500
    HTTP_VERSION_NOT_SUPPORTED = "http_version_not_supported"  # an addition: HTTP/1.0 and 1.1 only


_STATUS = {
    ErrorKey.INVALID_PAYLOAD: 400,
    ErrorKey.SECRET_KEY_EXPOSED: 400,
    ErrorKey.ORIGIN_NOT_ALLOWED: 403,
    ErrorKey.DANGER_ZONE_DISABLED: 403,
    ErrorKey.NOT_FOUND: 404,
    ErrorKey.METHOD_NOT_ALLOWED: 405,
    ErrorKey.PAYLOAD_TOO_LARGE: 413,
    ErrorKey.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKey.TOO_MANY_REQUESTS: 429,
    ErrorKey.UPSTREAM_UNAVAILABLE: 502,
    ErrorKey.RATE_LIMIT_UNAVAILABLE: 503,
    ErrorKey.UPSTREAM_TIMEOUT: 504,
    ErrorKey.UPSTREAM_QUOTA_EXHAUSTED: 503,
    ErrorKey.REQUEST_TIMEOUT: 408,
    ErrorKey.INVALID_IDEMPOTENCY_KEY: 400,
    ErrorKey.IDEMPOTENCY_KEY_REQUIRED: 400,
    ErrorKey.IDEMPOTENCY_KEY_IN_FLIGHT: 409,
    ErrorKey.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorKey.IDEMPOTENCY_UNAVAILABLE: 503,
    ErrorKey.TOO_MANY_FAILED_CODES: 429,
    ErrorKey.INTERNAL_ERROR: 500,
    ErrorKey.HTTP_VERSION_NOT_SUPPORTED: 505,
}

# Voucherify documents this sentence verbatim for its client-side 429; SDKs and integrators match on it.
TOO_MANY_REQUESTS_MESSAGE = "Too many requests hit the API too quickly."
TOO_MANY_FAILED_CODES_MESSAGE = "Too many unknown codes were tried from this address."


class GatewayError(NamedTuple):
    """A refusal decided by the gateway. Messages never carry a credential or a request body."""

    key: ErrorKey
    message: str
    details: str
    allow: tuple[str, ...] = ()  # for 405: the methods the path takes
    close_connection: bool = False  # for 413: the rest of the body is not read
    sent: bool = False  # for 502 and 504: the request was written to Voucherify, which may have acted on it

    @property
    def status(self) -> int:
        return _STATUS[self.key]

    def body(self, request_id: str) -> bytes:
        """The JSON body. Everything but the request id is the same for every request refused alike (a 429
        flood), so it is encoded once (`_frame`) and the id is set between the two halves."""
        before, after = _frame(self.status, self.key.value, self.message, self.details)
        return before + json.dumps(request_id).encode() + after


@functools.lru_cache(maxsize=1024)  # bounded: details may carry caller text (an origin)
def _frame(status: int, key: str, message: str, details: str) -> tuple[bytes, bytes]:
    marker = "\x00request-id\x00"
    encoded = json.dumps(
        {"code": status, "key": key, "message": message, "details": details, "request_id": marker}
    ).encode()
    before, after = encoded.split(json.dumps(marker).encode())
    return before, after


class Refused(Exception):
    """A step of the request pipeline refuses the request: the one way of saying so after `decide()`.

    Each step returns its value or raises this; the handler catches it once and answers `error`, with
    `headers` (RateLimit fields, Retry-After) added to the gateway's own.
    """

    def __init__(self, error: GatewayError, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(error.key.value)
        self.error = error
        self.headers = headers


def not_found(
    details: str = "This path is not a client-side operation exposed by the gateway.",
) -> GatewayError:
    return GatewayError(ErrorKey.NOT_FOUND, "Resource not found", details)


def method_not_allowed(method: str, allow: tuple[str, ...]) -> GatewayError:
    wanted = " or ".join(allow)
    return GatewayError(
        ErrorKey.METHOD_NOT_ALLOWED,
        "HTTP Method Not Allowed",
        f"{_printable(method)} is not supported by this endpoint. Did you mean {wanted}?",
        allow=allow,
    )


def secret_key_exposed(header: str) -> GatewayError:
    return GatewayError(
        ErrorKey.SECRET_KEY_EXPOSED,
        "A server-side secret was sent by a client",
        f"The request carried {header}, a secret that must never be in a browser or app. "
        "The request was refused and not forwarded. Rotate that key in the Voucherify dashboard now "
        "and remove it from the client code.",
    )


def origin_not_allowed(origin: str | None) -> GatewayError:
    if origin is None:
        details = (
            "The request has no Origin header and this project does not allow requests without one "
            "(set allow_missing_origin for native apps)."
        )
    else:
        details = f"The origin {_printable(origin)!r} is not in this project's allowed_origins."
    return GatewayError(ErrorKey.ORIGIN_NOT_ALLOWED, "Origin not allowed", details)


def origin_not_allowed_cross_site() -> GatewayError:
    return GatewayError(
        ErrorKey.ORIGIN_NOT_ALLOWED,
        "Origin not allowed",
        "A browser sent this request from another site without an Origin header (Sec-Fetch-Site says so); "
        "allow_missing_origin admits only apps that send neither.",
    )


def danger_zone_disabled(operation: str, option: str) -> GatewayError:
    return GatewayError(
        ErrorKey.DANGER_ZONE_DISABLED,
        "Operation disabled for client-side use",
        f"The operation {operation} needs the danger-zone option {option}, which is off for this project. "
        f"Switch on danger_zone.{option} in the gateway policy if browsers may do this.",
    )


def invalid_payload(details: str) -> GatewayError:
    return GatewayError(ErrorKey.INVALID_PAYLOAD, "Invalid payload", details)


def unsupported_media_type() -> GatewayError:
    return GatewayError(
        ErrorKey.UNSUPPORTED_MEDIA_TYPE,
        "Unsupported media type",
        "A request body must be sent with Content-Type: application/json.",
    )


def payload_too_large(limit: int) -> GatewayError:
    return GatewayError(
        ErrorKey.PAYLOAD_TOO_LARGE,
        "Payload too large",
        f"The request body is over the gateway's limit of {limit} bytes.",
        close_connection=True,
    )


def request_timeout(seconds: float) -> GatewayError:
    return GatewayError(
        ErrorKey.REQUEST_TIMEOUT,
        "Request timeout",
        f"The request body did not arrive within {seconds:g} seconds.",
        close_connection=True,
    )


def too_many_requests(retry_after: int) -> GatewayError:
    return GatewayError(
        ErrorKey.TOO_MANY_REQUESTS,
        TOO_MANY_REQUESTS_MESSAGE,
        f"The per-IP limit is used up; retry after {retry_after} seconds.",
    )


def too_many_failed_codes(retry_after: int) -> GatewayError:
    return GatewayError(
        ErrorKey.TOO_MANY_FAILED_CODES,
        TOO_MANY_FAILED_CODES_MESSAGE,
        f"The failed-code budget of this address does not cover the codes in this request; "
        f"retry after {retry_after} seconds.",
    )


def rate_limit_unavailable() -> GatewayError:
    return GatewayError(
        ErrorKey.RATE_LIMIT_UNAVAILABLE,
        "Rate limit store unavailable",
        "The gateway cannot reach its rate-limit store and is configured to refuse requests meanwhile. "
        "Retry shortly.",
    )


def upstream_unavailable(
    details: str = "Voucherify could not be reached. Retry shortly.", *, sent: bool = False
) -> GatewayError:
    return GatewayError(ErrorKey.UPSTREAM_UNAVAILABLE, "Upstream unavailable", details, sent=sent)


def upstream_rejected() -> GatewayError:
    """Voucherify refused the gateway's own call (server mode): the browser learns nothing about keys."""
    return upstream_unavailable(
        "Voucherify did not accept the gateway's call. This is logged for the gateway operator.", sent=True
    )


def upstream_timeout(*, sent: bool = True) -> GatewayError:
    return GatewayError(
        ErrorKey.UPSTREAM_TIMEOUT,
        "Upstream timeout",
        "Voucherify did not answer in time. A redemption may or may not have happened: "
        "check before retrying.",
        sent=sent,
    )


def internal_error() -> GatewayError:
    return GatewayError(
        ErrorKey.INTERNAL_ERROR,
        "Internal error",
        "The gateway failed to answer this request. It is logged for the gateway operator with this "
        "request_id; retry shortly.",
        close_connection=True,
    )


def http_version_not_supported() -> GatewayError:
    return GatewayError(
        ErrorKey.HTTP_VERSION_NOT_SUPPORTED,
        "HTTP version not supported",
        "The gateway speaks HTTP/1.1 (and HTTP/1.0) on this port.",
        close_connection=True,
    )


def describe_exception(exc: BaseException) -> str:
    """An exception for an operator's log line: its type and where it was raised, never its message (a
    message can quote a header value, and so a credential)."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame is not None else ""
    return f"{type(exc).__name__}{where}"


# Idempotency-Key (gateway/guards/idempotency.py). No message echoes the key: it is the caller's secret
# handle on a kept answer.


def invalid_idempotency_key() -> GatewayError:
    return GatewayError(
        ErrorKey.INVALID_IDEMPOTENCY_KEY,
        "Invalid Idempotency-Key",
        "Send one Idempotency-Key header whose value is 1 to 255 printable ASCII characters other than "
        '" and \\, bare or as a quoted string ("..."). A new UUID for each new request is a good key.',
    )


def idempotency_key_required(operation: str) -> GatewayError:
    return GatewayError(
        ErrorKey.IDEMPOTENCY_KEY_REQUIRED,
        "Idempotency-Key required",
        f"This project requires an Idempotency-Key header on {operation} requests, so that a retried "
        "request is answered once. Send a new UUID for each new request and the same one when retrying it.",
    )


def idempotency_key_in_flight() -> GatewayError:
    return GatewayError(
        ErrorKey.IDEMPOTENCY_KEY_IN_FLIGHT,
        "Request with this Idempotency-Key in progress",
        "A request with the same Idempotency-Key is still being answered. Retry with the same key once it "
        "has finished to get its answer; nothing was sent to Voucherify for this one.",
    )


def idempotency_key_reused() -> GatewayError:
    return GatewayError(
        ErrorKey.IDEMPOTENCY_KEY_REUSED,
        "Idempotency-Key reused for a different request",
        "This Idempotency-Key was used before for a request with another operation, path, query or body. "
        "Use a new key for a new request; nothing was sent to Voucherify.",
    )


def idempotency_unavailable() -> GatewayError:
    return GatewayError(
        ErrorKey.IDEMPOTENCY_UNAVAILABLE,
        "Idempotency store unavailable",
        "The gateway cannot reach the store that keeps Idempotency-Key records, so it cannot promise to "
        "answer this request once. Nothing was sent to Voucherify. Retry shortly with the same key.",
    )


def upstream_quota_exhausted(retry_after: int, *, voucherify_busy: bool = False) -> GatewayError:
    """503: the project's `upstream_quota` is spent, or Voucherify answered 429 and the gateway holds off.

    The pipeline sends `Retry-After: <retry_after>` with it."""
    reason = (
        "Voucherify asked the gateway to slow down for this project"
        if voucherify_busy
        else "This project's calls to Voucherify are used up for now"
    )
    return GatewayError(
        ErrorKey.UPSTREAM_QUOTA_EXHAUSTED,
        "Upstream quota exhausted",
        f"{reason}; nothing was sent. Retry after {retry_after} seconds.",
    )


def _printable(text: str, limit: int = 200) -> str:
    """Shorten and neutralise caller-provided text before it goes into a message."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return clean + ("…" if len(text) > limit else "")
