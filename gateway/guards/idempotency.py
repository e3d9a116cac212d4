"""Idempotency-Key for the operations that create something, free of I/O (POLICY.md, "Idempotency-Key").

draft-ietf-httpapi-idempotency-key-header: a shopper's double click, an app's retry after a dropped
connection or a checkout backend's second try carry the same key, and get the first request's answer
instead of a second redemption. This module decides everything that needs no store; the pipeline step
(gateway/app.py) does the store calls around it:

    claim = begin(settings, target, header_values, body)   # None: not guarded; a GatewayError: 400
    existing = await store.claim(claim.storage_key, claim.marker, claim.marker_ttl)
    if existing is not None:
        answer = judge(claim, existing)                     # a Replay, or 409 / 422 (/ 503 unreadable)
    ... forward ...
    record = keep_answer(claim, status, content_type, body) or keep_error(claim, error, request_id)
    record is None: await store.delete_if(key, claim.marker)  # the key can be used again
    else:           await store.replace(key, claim.marker, record, claim.ttl)

Records are bytes, one per key, and carry the request's fingerprint, so that another request with the same
key is told apart (422) both while the first is in flight and once its answer is kept:

    in flight:  b"I" + fingerprint (32) + nonce (16)
    kept:       b"K" + fingerprint (32) + status (2, big-endian) + flags (1) + Content-Type length (2)
                + Content-Type (latin-1) + body

The nonce makes each in-flight marker unique, so `replace` and `delete_if` (compare-and-set on the marker)
only ever touch the claim of the request that made it, never a later claim of the same key. A kept body is
bounded by `max_kept_body` (the policy's `listen.max_body_bytes`): a longer answer is kept as its status
alone (flag BODY_DROPPED), and its replays are a 502 that says so, never a second call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from gateway import errors
from gateway.errors import ErrorKey, GatewayError
from gateway.headers import IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED

if TYPE_CHECKING:  # types only: models imports nothing of the gateway's at run time
    from gateway.models import Target

# The five operations that create something in Voucherify: a redemption, a published code, a customer.
OPERATIONS = frozenset({"redeem", "redeem_stackable", "redeem_promotion_tier", "publish", "create_customer"})
HEADER = IDEMPOTENCY_KEY  # allowed in preflights, never forwarded upstream (gateway/headers.py)
REPLAYED_HEADER = IDEMPOTENT_REPLAYED  # exposed to scripts
REPLAYED = (REPLAYED_HEADER, "true")
REPLAYED_DECISION = "replayed"  # a replay's access-line and metric decision (neither forwarded nor an error)
MAX_KEY_LENGTH = 255
JSON = "application/json"
# Added to a marker's lifetime beyond connect + read + body timeouts: the store calls the request makes
# while it holds the key (up to three, each bounded by storage_timeout) and two seconds for the rest.
MARGIN_SECONDS = 2.0
MARGIN_STORE_CALLS = 3
MAX_CONTENT_TYPE = 1024  # bytes of a kept Content-Type; a longer one is not kept (the replay has none)

# Printable ASCII (space to tilde) but `"` and `\`: what the key may hold, bare or inside an sf-string.
_KEY_CHARS = r"[\x20\x21\x23-\x5b\x5d-\x7e]{1," + str(MAX_KEY_LENGTH) + "}"
_BARE = re.compile(_KEY_CHARS)
_QUOTED = re.compile(f'"({_KEY_CHARS})"')

FINGERPRINT_SIZE = 32
NONCE_SIZE = 16
IN_FLIGHT = b"I"
KEPT = b"K"
BODY_DROPPED = 0x01
_KEPT_HEAD = struct.Struct(">HBH")  # status, flags, Content-Type length
_KEPT_START = 1 + FINGERPRINT_SIZE
_KEPT_BODY = _KEPT_START + _KEPT_HEAD.size


class Result(StrEnum):
    """What the Idempotency-Key did for a request: the access line's `idempotency` and a metric label."""

    KEPT = "kept"  # first use: its answer is kept for `ttl`
    RELEASED = "released"  # first use: nothing kept (other 5xx, a refusal, cancelled): the key is free
    LOST = "lost"  # first use: its marker was gone when the answer came (held past its lifetime)
    REPLAYED = "replayed"  # the kept answer again, Voucherify not called
    IN_FLIGHT = "in_flight"  # 409: the first is still being answered
    REUSED = "reused"  # 422: the key belongs to another request
    INVALID = "invalid"  # 400 invalid_idempotency_key
    REQUIRED = "required"  # 400 idempotency_key_required
    UNAVAILABLE = "unavailable"  # 503 idempotency_unavailable


@dataclass(frozen=True, slots=True)
class Settings:
    """A project's idempotency settings, compiled once per policy load (ProjectRuntime.idempotency)."""

    namespace: str  # the project's name: a key belongs to its project
    ttl: float  # seconds a kept answer lives; 0 = off
    required: bool
    marker_ttl: float  # seconds an in-flight marker lives if its request never settles it
    max_kept_body: int  # bytes of an answer body a record keeps

    @property
    def enabled(self) -> bool:
        return self.ttl > 0


def compile_settings(
    namespace: str,
    *,
    ttl: float,
    required: bool,
    connect_timeout: float,
    read_timeout: float,
    body_timeout: float,
    storage_timeout: float,
    max_kept_body: int,
) -> Settings:
    marker_ttl = (
        connect_timeout + read_timeout + body_timeout + MARGIN_SECONDS + MARGIN_STORE_CALLS * storage_timeout
    )
    return Settings(namespace, ttl, required and ttl > 0, marker_ttl, max_kept_body)


@dataclass(frozen=True, slots=True)
class Claim:
    """A keyed request's hold on its key: what it stores while in flight, and under which storage key."""

    storage_key: str
    fingerprint: bytes
    marker: bytes  # IN_FLIGHT + fingerprint + nonce: unique to this request
    marker_ttl: float
    ttl: float  # of the kept answer
    max_kept_body: int


@dataclass(frozen=True, slots=True)
class Replay:
    """A kept answer, to be sent again with `Idempotent-Replayed: true` and the replaying request's CORS,
    request id and RateLimit fields. An answer whose body was too large to keep replays as `error`."""

    status: int
    content_type: str | None
    body: bytes
    error: GatewayError | None = None

    def answer(self, request_id: str) -> tuple[int, str | None, bytes]:
        """Status, Content-Type and body to send."""
        if self.error is not None:
            return self.error.status, JSON, self.error.body(request_id)
        return self.status, self.content_type, self.body


def parse_key(value: str) -> str | None:
    """The key in one header value (an sf-string or a bare token), or None when it is not a valid key.

    `"k-1"` and `k-1` are the same key. Leading and trailing spaces and tabs are the field's own (OWS)."""
    value = value.strip(" \t")
    if value.startswith('"'):
        quoted = _QUOTED.fullmatch(value)
        return quoted[1] if quoted is not None else None
    return value if _BARE.fullmatch(value) else None


def storage_key(namespace: str, key: str) -> str:
    """The record's key in the store: per project, the key hashed (bounded, and no `{}` of its own: the
    store hash-tags the whole key, so that records spread over a Redis Cluster's slots)."""
    digest = hashlib.sha256(key.encode("ascii")).hexdigest()
    return f"idempotency/{namespace}/{digest}"


def fingerprint(operation: str, operation_path: str, query: str, body: bytes) -> bytes:
    """SHA-256 over the operation, its raw matched path (after /client/v1, slashes merged), raw query and
    body bytes, each length-prefixed so that no two different requests share one."""
    digest = hashlib.sha256()
    for part in (
        operation.encode(),
        operation_path.encode("utf-8", "surrogateescape"),
        query.encode("utf-8", "surrogateescape"),
        body,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def claims(settings: Settings, target: Target, values: Sequence[str]) -> bool:
    """Whether `begin` has anything to say about the request (a claim, or a 400): one of the five
    operations with idempotency on, and a header, or none while one is required."""
    return target.operation in OPERATIONS and settings.enabled and (bool(values) or settings.required)


def begin(
    settings: Settings,
    target: Target,
    values: Sequence[str],
    body: bytes,
    nonce: bytes | None = None,
) -> Claim | GatewayError | None:
    """The request's claim on its key; None when it has no key to claim (not one of the five operations,
    idempotency off, or no header while not required); a 400 when the header is bad or missing."""
    operation = target.operation
    if not claims(settings, target, values):
        return None  # the header is ignored (and, like every header not on the allow-list, not forwarded)
    if not values:
        return errors.idempotency_key_required(operation)
    key = parse_key(values[0]) if len(values) == 1 else None
    if key is None:
        return errors.invalid_idempotency_key()
    digest = fingerprint(operation, target.operation_path, target.query, body)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    return Claim(
        storage_key(settings.namespace, key),
        digest,
        IN_FLIGHT + digest + nonce,
        settings.marker_ttl,
        settings.ttl,
        settings.max_kept_body,
    )


def judge(claim: Claim, existing: bytes) -> Replay | GatewayError:
    """What an existing record means for this request: its kept answer again, 409 while the first is in
    flight, 422 for another request's key, 503 for a record this gateway cannot read."""
    kind = existing[:1]
    if len(existing) < _KEPT_START or kind not in (IN_FLIGHT, KEPT):
        return errors.idempotency_unavailable()
    if not hmac.compare_digest(existing[1:_KEPT_START], claim.fingerprint):
        return errors.idempotency_key_reused()
    if kind == IN_FLIGHT:
        return errors.idempotency_key_in_flight()
    return _replay(existing)


def result_of(answer: Replay | GatewayError) -> Result:
    """The metric label of `judge`'s verdict."""
    if isinstance(answer, Replay):
        return Result.REPLAYED
    return _RESULTS.get(answer.key, Result.UNAVAILABLE)


_RESULTS = {
    ErrorKey.IDEMPOTENCY_KEY_IN_FLIGHT: Result.IN_FLIGHT,
    ErrorKey.IDEMPOTENCY_KEY_REUSED: Result.REUSED,
    ErrorKey.INVALID_IDEMPOTENCY_KEY: Result.INVALID,
    ErrorKey.IDEMPOTENCY_KEY_REQUIRED: Result.REQUIRED,
}


def keeps_status(status: int) -> bool:
    """Whether Voucherify's own answer with this status is kept: below 500, but not its 429 (a retry later
    may succeed, and nothing happened)."""
    return status < 500 and status != 429


def keep_answer(claim: Claim, status: int, content_type: str | None, body: bytes) -> bytes | None:
    """The record of Voucherify's own answer (as the browser got it), or None when it is not kept."""
    if not keeps_status(status):
        return None
    return _kept(claim, status, content_type, body)


def keep_error(claim: Claim, error: GatewayError, request_id: str) -> bytes | None:
    """The record of the gateway's own answer: only an unknown outcome is kept, a 504 upstream_timeout or a
    502 upstream_unavailable once the request was sent (`error.sent`: Voucherify may have redeemed). Nothing
    is kept after a 502 where nothing was sent, another 5xx, or any of the gateway's refusals."""
    if error.key is ErrorKey.UPSTREAM_TIMEOUT or (error.key is ErrorKey.UPSTREAM_UNAVAILABLE and error.sent):
        return _kept(claim, error.status, JSON, error.body(request_id))
    return None


def _kept(claim: Claim, status: int, content_type: str | None, body: bytes) -> bytes:
    flags = 0
    if len(body) > claim.max_kept_body:
        flags, body = BODY_DROPPED, b""
    type_bytes = b"" if content_type is None else content_type.encode("latin-1", "replace")
    if len(type_bytes) > MAX_CONTENT_TYPE:
        type_bytes = b""
    head = _KEPT_HEAD.pack(status, flags, len(type_bytes))
    return b"".join((KEPT, claim.fingerprint, head, type_bytes, body))


def _replay(record: bytes) -> Replay | GatewayError:
    if len(record) < _KEPT_BODY:
        return errors.idempotency_unavailable()
    status, flags, type_length = _KEPT_HEAD.unpack_from(record, _KEPT_START)
    body_start = _KEPT_BODY + type_length
    if not 100 <= status <= 599 or len(record) < body_start or flags & ~BODY_DROPPED:
        return errors.idempotency_unavailable()
    content_type = record[_KEPT_BODY:body_start].decode("latin-1") or None
    if status >= 500 and not flags & BODY_DROPPED:  # Voucherify's own 5xx are never kept: the gateway's
        return _own_error(record[body_start:])
    if flags & BODY_DROPPED:
        dropped = errors.upstream_unavailable(
            f"The first request with this Idempotency-Key was answered with status {status}, but its answer "
            "was larger than the gateway keeps. It may have redeemed: check before retrying with a new key."
        )
        return Replay(status, content_type, b"", dropped)
    return Replay(status, content_type, record[body_start:])


_KEPT_ERRORS = frozenset({ErrorKey.UPSTREAM_TIMEOUT.value, ErrorKey.UPSTREAM_UNAVAILABLE.value})


def _own_error(body: bytes) -> Replay | GatewayError:
    """A kept unknown outcome (`keep_error`) as the gateway's error again, so that its replay carries the
    replaying request's id in the body as in `X-Request-Id` (POLICY.md: the two are the same id)."""
    try:
        document = json.loads(body)
    except ValueError:
        return errors.idempotency_unavailable()
    if not isinstance(document, dict) or document.get("key") not in _KEPT_ERRORS:
        return errors.idempotency_unavailable()
    message, details = document.get("message"), document.get("details")
    if not isinstance(message, str) or not isinstance(details, str):
        return errors.idempotency_unavailable()
    error = GatewayError(ErrorKey(document["key"]), message, details, sent=True)
    return Replay(error.status, JSON, b"", error)
