"""Query strings read the way `qs` reads them (the official SDK's and Voucherify's own parser). Pure.

`+` is a space, brackets may be sent raw (`item[0][price]`) or percent-encoded (`item%5B0%5D%5Bprice%5D`,
what `qs.stringify` produces), arrays are `item[0][price]`, and past five levels of brackets the rest of a key
stays one literal key. Server mode uses it to move a code into a path and to turn a legacy validation's query
into a JSON body (`legacy_validation_document`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

ITEM_FIELDS = frozenset(
    {"product_id", "sku_id", "quantity", "price", "amount", "source_id", "related_object"}
)
ITEM_NUMBERS = frozenset({"quantity", "price", "amount"})
CUSTOMER_FIELDS = frozenset({"source_id", "id", "name", "email", "phone", "description"})
SESSION_FIELDS = {
    "session_type": "type",
    "session_key": "key",
    "session_ttl": "ttl",
    "session_ttl_unit": "ttl_unit",
}

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_INDEX = re.compile(r"0|[1-9][0-9]{0,5}")
_QS_ARRAY_LIMIT = 20  # qs turns indices up to this into an array, larger ones into object keys
_QS_DEPTH = 5  # qs nests this many brackets; the rest of the key stays one literal key
# Names on Node's Object.prototype: qs (allowPrototypes off, its default) drops any key that names one.
_PROTOTYPE_NAMES = frozenset(
    {
        "__proto__",
        "__defineGetter__",
        "__defineSetter__",
        "__lookupGetter__",
        "__lookupSetter__",
        "constructor",
        "hasOwnProperty",
        "isPrototypeOf",
        "propertyIsEnumerable",
        "toLocaleString",
        "toString",
        "valueOf",
    }
)


@dataclass(frozen=True, slots=True)
class QueryPair:
    raw: str  # the `key=value` piece exactly as sent
    key: str  # decoded
    value: str  # decoded


class BadQuery(ValueError):
    """The query cannot be read as server mode needs it; the message is safe to show the caller."""


def parse_query(query: str) -> list[QueryPair]:
    """Split a raw query into pairs, decoding keys and values as `qs` does (`+` is a space, UTF-8)."""
    pairs: list[QueryPair] = []
    for raw in query.split("&"):
        if not raw:
            continue
        key, _, value = raw.partition("=")
        try:
            pairs.append(
                QueryPair(raw, unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict"))
            )
        except UnicodeDecodeError:
            raise BadQuery("The query string is not valid UTF-8 once percent-decoded.") from None
    return pairs


def take(pairs: list[QueryPair], key: str) -> tuple[str | None, str]:
    """The decoded value of `key` (None when absent) and the raw query without it."""
    found = [pair for pair in pairs if pair.key == key]
    if len(found) > 1:
        raise BadQuery(f"The query parameter {key!r} is given more than once.")
    rest = "&".join(pair.raw for pair in pairs if pair.key != key)
    return (found[0].value if found else None), rest


def code_segment(code: str | None) -> str:
    """A voucher code as one percent-encoded path segment, or BadQuery when no safe segment exists."""
    if code is None or code in ("", ".", "..") or "/" in code or "\\" in code or _has_control(code):
        raise BadQuery(
            "The voucher code is missing or not a valid code: it must not be empty, '.' or '..', "
            "nor contain '/', '\\' or control characters."
        )
    return quote(code, safe="")


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _number(value: str) -> int | str:
    return int(value) if _INTEGER.fullmatch(value) else value


def _split_key(key: str) -> tuple[str, list[str]] | None:
    """The root and bracket segments of a key, or None for a key `qs` would drop."""
    found = _KEY.fullmatch(key)
    if found is None:
        return None
    brackets = found[2]
    segments = list(_SEGMENT.finditer(brackets))
    path = [segment[1] for segment in segments[:_QS_DEPTH]]
    if len(segments) > _QS_DEPTH:  # as qs: `a[1]…[5][6][7]` is a → 1 … 5 → "[6][7]"
        path.append(brackets[segments[_QS_DEPTH].start() :])
    if found[1] in _PROTOTYPE_NAMES or not _PROTOTYPE_NAMES.isdisjoint(path):
        return None
    return found[1], path


def legacy_validation_document(pairs: list[QueryPair]) -> dict[str, Any]:
    """The server-side validation body for a legacy validate query (`code` is not part of it)."""
    seen: set[str] = set()
    order: dict[str, Any] = {}
    items: dict[int, dict[str, Any]] = {}
    order_metadata: dict[str, Any] = {}
    customer: dict[str, Any] = {}
    customer_metadata: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    session: dict[str, Any] = {}
    tracking_id: str | None = None

    for pair in pairs:
        split = _split_key(pair.key)
        if split is None:
            continue
        root, path = split
        if pair.key in seen and root != "code":
            raise BadQuery(f"The query parameter {pair.key!r} is given more than once.")
        seen.add(pair.key)
        value = pair.value
        if root == "amount" and not path:
            order["amount"] = _number(value)
        elif root == "tracking_id" and not path:
            tracking_id = value
        elif root in SESSION_FIELDS and not path:
            session[SESSION_FIELDS[root]] = _number(value) if root == "session_ttl" else value
        elif root == "item" and len(path) == 2 and _INDEX.fullmatch(path[0]) and path[1] in ITEM_FIELDS:
            field = path[1]
            items.setdefault(int(path[0]), {})[field] = _number(value) if field in ITEM_NUMBERS else value
        elif root == "order" and len(path) >= 2 and path[0] == "metadata":
            _put(order_metadata, path[1:], value, pair.key)
        elif root == "customer" and len(path) == 1 and path[0] in CUSTOMER_FIELDS:
            customer[path[0]] = value
        elif root == "customer" and len(path) >= 2 and path[0] == "metadata":
            _put(customer_metadata, path[1:], value, pair.key)
        elif root == "metadata" and path:
            _put(metadata, path, value, pair.key)

    if items:
        order["items"] = [items[index] for index in sorted(items)]
    if order_metadata:
        order["metadata"] = _arrays(order_metadata)
    if customer_metadata:
        customer["metadata"] = _arrays(customer_metadata)
    body: dict[str, Any] = {}
    if customer:
        body["customer"] = customer
    if order:
        body["order"] = order
    if metadata:
        body["metadata"] = _arrays(metadata)
    if session:
        body["session"] = session
    if tracking_id is not None:
        body["tracking_id"] = tracking_id
    return body


def _put(tree: dict[str, Any], path: list[str], value: str, key: str) -> None:
    """Set `value` at `path` inside nested objects; an empty segment (`[]`) is not supported and dropped."""
    if any(segment == "" for segment in path):
        return
    node = tree
    for segment in path[:-1]:
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            raise BadQuery(f"The query parameter {key!r} conflicts with another one.")
        node = child
    if path[-1] in node:
        raise BadQuery(f"The query parameter {key!r} conflicts with another one.")
    node[path[-1]] = value


def _arrays(tree: dict[str, Any]) -> Any:
    """Objects whose keys are all small indices become arrays in index order, as `qs` parses them."""
    converted = {key: _arrays(value) if isinstance(value, dict) else value for key, value in tree.items()}
    if converted and all(_INDEX.fullmatch(key) and int(key) <= _QS_ARRAY_LIMIT for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted
