"""Property-based tests of the `qs` reading (gateway/modes/qs.py) against a small reference model.

The model is a legacy validation's intent (an amount, items, a customer, metadata, a session, a tracking
id), generated as data. The test writes it as a query string the way `qs.stringify` and hand-written
links do (brackets raw or percent-encoded, spaces as `+` or `%20`, pairs in any order, unknown keys and
prototype names thrown in), and the model says which JSON body server mode must build from it: integers
where the contract says numbers (`amount`, `item[i][quantity|price|amount]`, `session_ttl`), everything
else as sent, items and small-index metadata as arrays in index order, unknown keys dropped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.modes.qs import BadQuery, code_segment, legacy_validation_document, parse_query, take

EXAMPLES = settings(max_examples=200, deadline=None)

PROTOTYPE = ["__proto__", "constructor", "toString", "hasOwnProperty", "valueOf"]
NAME = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6).filter(
    lambda n: n not in PROTOTYPE and n not in ("code",)
)
VALUE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
INT = st.integers(-(10**18) + 1, 10**18 - 1)
NOT_INT = st.sampled_from(["12.5", "007", "1e3", " 5", "5 ", "+5", "", "abc", "0x10", "10000000000000000000"])


def number_text() -> st.SearchStrategy[tuple[str, Any]]:
    """(what is sent, what the body holds): canonical integers become numbers, the rest stays text."""
    return st.one_of(INT.map(lambda n: (str(n), n)), NOT_INT.map(lambda t: (t, t)))


@st.composite
def intents(draw: st.DrawFn) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(the query's decoded key/value pairs, the body the model expects)."""
    pairs: list[tuple[str, str]] = []
    body: dict[str, Any] = {}
    order: dict[str, Any] = {}
    if draw(st.booleans()):
        sent, held = draw(number_text())
        pairs.append(("amount", sent))
        order["amount"] = held
    indices = draw(st.lists(st.integers(0, 999_999), max_size=3, unique=True))
    items = {}
    for index in indices:
        item: dict[str, Any] = {}
        for field in draw(
            st.lists(
                st.sampled_from(["quantity", "price", "amount", "product_id", "sku_id"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        ):
            if field in ("quantity", "price", "amount"):
                sent, held = draw(number_text())
            else:
                sent = held = draw(VALUE)
            pairs.append((f"item[{index}][{field}]", sent))
            item[field] = held
        items[index] = item
    if items:
        order["items"] = [items[i] for i in sorted(items)]
    if order:
        body["order"] = order
    customer: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(["source_id", "name", "email"]), max_size=2, unique=True)):
        customer[field] = draw(VALUE)
        pairs.append((f"customer[{field}]", customer[field]))
    if customer:
        body["customer"] = customer
    metadata: dict[str, Any] = {}
    for name in draw(st.lists(NAME, max_size=3, unique=True)):
        if draw(st.booleans()):
            metadata[name] = draw(VALUE)
            pairs.append((f"metadata[{name}]", metadata[name]))
        else:  # an array: indices up to 20, possibly sparse, read in index order
            picked = draw(st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True))
            values = {i: draw(VALUE) for i in picked}
            pairs += [(f"metadata[{name}][{i}]", v) for i, v in values.items()]
            metadata[name] = [values[i] for i in sorted(values)]
    if metadata:
        body["metadata"] = metadata
    if draw(st.booleans()):
        sent, held = draw(number_text())
        pairs.append(("session_ttl", sent))
        body["session"] = {"ttl": held}
    if draw(st.booleans()):
        body["tracking_id"] = draw(VALUE)
        pairs.append(("tracking_id", body["tracking_id"]))
    # what the translation does not know, or qs drops: never in the body
    pairs += [(draw(st.sampled_from(["unknown", "item[0][color]", "order[id]", "customer[phone_x]"])), "x")]
    pairs += [(f"metadata[{draw(st.sampled_from(PROTOTYPE))}]", "polluted")] if draw(st.booleans()) else []
    pairs += [(draw(st.sampled_from(PROTOTYPE)), "polluted")] if draw(st.booleans()) else []
    return pairs, body


def encode(key: str, value: str, raw_brackets: bool, plus: bool) -> str:
    """One pair as qs.stringify writes it (brackets %5B/%5D) or as a hand-written link (raw brackets)."""
    safe = "[]" if raw_brackets else ""
    text_key, text_value = quote(key, safe=safe), quote(value, safe="")
    if plus:
        text_key, text_value = text_key.replace("%20", "+"), text_value.replace("%20", "+")
    return f"{text_key}={text_value}"


@EXAMPLES
@given(intents(), st.randoms(use_true_random=False), st.booleans(), st.booleans())
def test_a_legacy_validation_query_becomes_the_body_the_model_expects(
    intent: tuple[list[tuple[str, str]], dict[str, Any]], rnd: Any, raw_brackets: bool, plus: bool
) -> None:
    pairs, expected = intent
    rnd.shuffle(pairs)
    query = "&".join(encode(k, v, raw_brackets, plus) for k, v in pairs)
    if rnd.random() < 0.3:
        query = "&" + query.replace("&", "&&", 1) + "&"  # empty pieces are nothing
    read = parse_query(query)
    assert [(p.key, p.value) for p in read] == pairs  # decoded as qs decodes: `+` a space, UTF-8
    assert "&".join(p.raw for p in read) == query.strip("&").replace("&&", "&")  # raw pieces as sent
    assert legacy_validation_document(read) == expected, query


@EXAMPLES
@given(intents(), st.data())
def test_a_key_given_twice_is_refused(
    intent: tuple[list[tuple[str, str]], dict[str, Any]], data: Any
) -> None:
    pairs, _ = intent
    known = [(k, v) for k, v in pairs if not k.startswith(("unknown", "item[0][color]", "order[id]"))]
    known = [(k, v) for k, v in known if not any(p in k for p in PROTOTYPE) and k != "customer[phone_x]"]
    if not known:
        return
    twice = data.draw(st.sampled_from(known))
    query = "&".join(encode(k, v, True, False) for k, v in [*pairs, twice])
    with pytest.raises(BadQuery):
        legacy_validation_document(parse_query(query))


@EXAMPLES
@given(VALUE, st.lists(st.tuples(NAME, VALUE), max_size=3))
def test_take_finds_a_code_once_and_keeps_the_rest_byte_for_byte(
    code: str, others: list[tuple[str, str]]
) -> None:
    rest = [encode(k, v, False, True) for k, v in others]
    query = "&".join([*rest[:1], encode("code", code, False, True), *rest[1:]])
    value, remaining = take(parse_query(query), "code")
    assert value == code
    assert remaining == "&".join(rest)
    with pytest.raises(BadQuery):
        take(parse_query(f"{query}&code=again"), "code")


@EXAMPLES
@given(st.one_of(VALUE, st.sampled_from(["", ".", "..", "a/b", "a\\b", "x\x00", "\x7f", "%2f", "\u0085"])))
def test_a_code_is_one_safe_path_segment_or_refused(code: str) -> None:
    """Refused: empty, `.`, `..`, a `/` or `\\`, a control character (Unicode Cc). Otherwise one segment
    that decodes back to the code and that no server reads as more than one segment or as a dot segment."""
    unsafe = (
        code in ("", ".", "..")
        or "/" in code
        or "\\" in code
        or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in code)
    )
    if unsafe:
        with pytest.raises(BadQuery):
            code_segment(code)
        return
    segment = code_segment(code)
    assert unquote(segment) == code
    assert "/" not in segment and "\\" not in segment and "?" not in segment and "#" not in segment
    assert unquote(segment) not in (".", "..")
