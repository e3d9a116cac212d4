"""Parse the ``qs``-style nested query strings the Voucherify JS SDK sends (``item[0][price]=…``)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from gateway.sandbox.errors import Json

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def split_key(key: str) -> list[str]:
    """``a[b][0]`` → ``["a", "b", "0"]``; a key that is not bracketed stays whole."""
    match = _KEY.match(key)
    if match is None:
        return [key]
    return [match.group(1), *_SEGMENT.findall(match.group(2))]


def parse_nested_query(raw: str) -> Json:
    """Nested dicts from a raw query; ``[]`` appends, and all-index dicts become lists."""
    root: Json = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        parts = split_key(key)
        node: Json = root
        for depth, part in enumerate(parts):
            name = str(len(node)) if part == "" else part
            if depth == len(parts) - 1:
                node[name] = value
                break
            child = node.get(name)
            if not isinstance(child, dict):
                child = {}
                node[name] = child
            node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def validation_body(query: Json) -> Json:
    """The JSON body of ``POST /v1/vouchers/{code}/validate`` equivalent to a legacy GET validate query."""
    order: Json = {}
    if "amount" in query:
        order["amount"] = query["amount"]
    items = query.get("item")
    if isinstance(items, list):
        order["items"] = [item for item in items if isinstance(item, dict)]
    order_query = query.get("order")
    if isinstance(order_query, dict) and isinstance(order_query.get("metadata"), dict):
        order["metadata"] = order_query["metadata"]
    body: Json = {"order": order}
    for name in ("customer", "metadata"):
        if isinstance(query.get(name), dict):
            body[name] = query[name]
    if isinstance(query.get("tracking_id"), str):
        body["tracking_id"] = query["tracking_id"]
    session = {
        field: query[f"session_{field}"]
        for field in ("type", "key", "ttl", "ttl_unit")
        if isinstance(query.get(f"session_{field}"), str)
    }
    if session:
        body["session"] = session
    return body
