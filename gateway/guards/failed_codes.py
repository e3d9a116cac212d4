"""The failed-code budget (`rate_limit.failed_codes`), free of I/O: which requests it counts, how many codes
a request names, how many of them Voucherify's answer says do not exist, and its RateLimit field members.

The pipeline step around it (gateway/app.py) holds the named count in the client's ledger before the
request is forwarded (`Store.reserve`), and once the answer is in keeps only the unknown ones
(`Store.settle`); these functions decide the numbers. Only what POLICY.md says is counted:

- counted routes: GET `/validate` (legacy `validate`, not `/promotions/validation`), POST `/validations`,
  POST `/redeem`, POST `/redemptions`;
- named: 1 for `/validate` and `/redeem`; for the stackable two the length of the body's `redeemables`
  list, 0 without one (see `named_codes` for odd bodies);
- unknown: an upstream 404 counts 1; a 2xx whose top-level `error.code` is 404 counts 1; each element of
  a 2xx's `redeemables` whose `result.error.code` is 404 counts 1; never more than the request named, and
  an answer that cannot be read counts only what its status says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.catalog import Route
from gateway.models import RateItem

NAME = "failed_codes"  # the RateLimit member's name, the metrics' and the ledger key's prefix

# (operation, route template) -> how the request names its codes
_SINGLE, _LIST = "single", "list"
_COUNTED: dict[tuple[str, str], str] = {
    ("validate", "/validate"): _SINGLE,
    ("redeem", "/redeem"): _SINGLE,
    ("validate_stackable", "/validations"): _LIST,
    ("redeem_stackable", "/redemptions"): _LIST,
}
# Where a 2xx stackable answer lists its redeemables' results. POLICY.md names `redeemables`; Voucherify's
# newer API versions also list the ones that failed in `inapplicable_redeemables` (some versions only
# there). Each list is counted on its own and the largest count is taken, so a code listed in both is
# counted once and an answer that lists its failures only in the second one is not free.
_RESULT_LISTS = ("redeemables", "inapplicable_redeemables")


@dataclass(frozen=True, slots=True)
class FailedCodeBudget:
    """A project's `failed_codes` limit, compiled once per policy load."""

    project: str
    limit: int  # unknown codes per window
    window: int  # seconds
    policy_member: str = field(init=False)  # `"failed_codes";q=10;w=3600`, built once

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_member", f'"{NAME}";q={self.limit};w={self.window}')

    @classmethod
    def parse(cls, project: str, limit: str) -> FailedCodeBudget:
        """From a policy string the policy has already validated as one limit (`10 per hour`)."""
        (item,) = RateItem.parse_many(limit)
        return cls(project, item.amount, item.expiry)

    def key(self, client_key: str) -> str:
        """The ledger key of a client (its per-IP bucket key) in this project. It does not name the limit,
        so a reload that changes the budget keeps the client's count, and a request in flight settles the
        key it reserved in whatever the policy became."""
        return f"{NAME}/{self.project}/{client_key}"


def counts(route: Route) -> bool:
    """Whether the failed-code budget applies to requests on this route."""
    return (route.operation.name, route.template) in _COUNTED


def named_codes(route: Route, document: object) -> int:
    """How many codes a request names: what it may cost at most, and what is held while it is in flight.

    `document` is the body as the strict JSON parser read it (None without a body). The parser refuses a
    key written twice, so a body cannot show one `redeemables` here and another to Voucherify.
    A `redeemables` that is present but no list (`{}`, `"A"`) names 1: Voucherify refuses such a body, but
    an answer that reads it as one code must not be free. Absent or null, it names 0.
    """
    kind = _COUNTED.get((route.operation.name, route.template))
    if kind is None:
        return 0
    if kind == _SINGLE:
        return 1
    if not isinstance(document, dict):
        return 0
    redeemables = document.get("redeemables")
    if redeemables is None:
        return 0
    if isinstance(redeemables, list):
        return len(redeemables)
    return 1


def unknown_codes(status: int, body: bytes, named: int) -> int:
    """How many of the codes a request named the answer says do not exist (0..named).

    `status` and `body` are the answer the browser gets (in server mode, after translation). A body that is
    not JSON, or JSON of another shape, counts nothing beyond what its status says.
    """
    if named <= 0:
        return 0
    if status == 404:
        return 1
    if not 200 <= status < 300:
        return 0
    # (a backslash is one byte, found by memchr, and most answers have none: "\\u" is looked for after it)
    if b'"error"' not in body and not (b"\\" in body and b"\\u" in body) and _surely_utf8(body):
        # Every unknown code is under an `error` key, and UTF-8 JSON can spell a key's letters otherwise
        # only with a `\u` escape: without either, nothing in the answer can count, and parsing it would
        # cost more than the rest of the budget's work (a 1.5 KB validation answer: about 15 µs).
        return 0
    try:
        document = json.loads(body)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return 0
    except RecursionError:
        # Nested deeper than this parser goes, though a browser's reads it: an answer that echoes a
        # request's deep `metadata` a few levels further in (the request itself was read) would hide its
        # unknown codes. Each `404` in it may be one; a hostile body only costs its sender.
        return min(body.count(b"404"), named)
    if not isinstance(document, dict):
        return 0
    found = 1 if _is_404(_dig(document, "error", "code")) else 0
    for name in _RESULT_LISTS:
        results = document.get(name)
        if isinstance(results, list):
            found = max(found, sum(1 for r in results if _is_404(_dig(r, "result", "error", "code"))))
    return min(found, named)


def _surely_utf8(body: bytes) -> bool:
    """Whether `json.loads` surely reads `body` as UTF-8 (`json.detect_encoding` says utf-8 or utf-8-sig):
    no UTF-16 or UTF-32 byte order mark, no NUL in the first four bytes. Where the two differ (a NUL that
    detect_encoding still reads as UTF-8: the third byte, a body of three), this says no: the answer is
    then parsed, never skipped where json would read it in another encoding."""
    return b"\0" not in body[:4] and not body.startswith((b"\xff\xfe", b"\xfe\xff"))


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _is_404(code: object) -> bool:
    """Voucherify's 404 as a JSON number (`404`, `404.0`) or, defensively, the string `"404"`."""
    if isinstance(code, bool):
        return False
    if isinstance(code, int | float):
        return code == 404
    return isinstance(code, str) and code.strip() == "404"


# ------------------------------------------------------------------------------------------ RateLimit fields


def seconds(value: float) -> int:
    """Whole seconds, rounded up, for `t` and `Retry-After` (never negative)."""
    return max(0, math.ceil(value))


def state_member(remaining: int, reset: float) -> str:
    """The budget's `RateLimit` member: `"failed_codes";r=3;t=1200`."""
    return f'"{NAME}";r={max(0, remaining)};t={seconds(reset)}'


def remaining_after(budget: FailedCodeBudget, remaining: int, held: int, kept: int) -> int:
    """`r` once an answer is settled: what the reservation left, plus what was held and given back."""
    return max(0, min(budget.limit, remaining + max(0, held - kept)))


def refusal_retry_after(retry_after: float, reset: float) -> int:
    """`Retry-After` of a `too_many_failed_codes` refusal: when the codes fit again, never before `t`."""
    return max(1, seconds(retry_after), seconds(reset))


def with_budget_fields(
    headers: Iterable[tuple[str, str]],
    budget: FailedCodeBudget,
    state: str,
    retry_after: int = 0,
) -> list[tuple[str, str]]:
    """`headers` (the per-IP RateLimit fields, or none when the store failed open) with the budget added
    as a second list member of `RateLimit-Policy` and `RateLimit`, and `Retry-After` raised to
    `retry_after` when that is later."""
    out: list[tuple[str, str]] = []
    policy_seen = state_seen = retry_seen = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == "ratelimit-policy" and not policy_seen:
            value, policy_seen = f"{value}, {budget.policy_member}", True
        elif lowered == "ratelimit" and not state_seen:
            value, state_seen = f"{value}, {state}", True
        elif lowered == "retry-after" and retry_after:
            retry_seen = True
            earlier = int(value) if value.isascii() and value.isdigit() else 0
            value = str(max(retry_after, earlier))
        out.append((name, value))
    if not policy_seen:
        out.append(("RateLimit-Policy", budget.policy_member))
    if not state_seen:
        out.append(("RateLimit", state))
    if retry_after and not retry_seen:
        out.append(("Retry-After", str(retry_after)))
    return out
