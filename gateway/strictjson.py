"""The one JSON parser for request bodies: strict, because parsers that disagree are a bypass.

A body that Python reads one way and Voucherify (Node) another can pass the gateway's checks as one thing and
act upstream as another, so everything on which parsers differ is refused (`invalid_payload`):

- a key written twice in one object: parsers disagree on which duplicate wins, so `{"loyalty": {…},
  "loyalty": null}` could pass the danger-zone check and reach Voucherify as a loyalty event, and a
  `redeemables` list given twice could be counted short by the failed-code budget;
- `__proto__` at any depth: copied on the Node side (`Object.assign`, `obj[key] = value`) it becomes the
  object's prototype, and a `loyalty` inside it would be read as the body's own;
- `NaN`, `Infinity` and numbers beyond a double (`1e400` is Infinity to Voucherify's parser);
- anything that is not UTF-8.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


class StrictJsonError(ValueError):
    """Why a body is not strict JSON; the message is safe to show the caller."""


class _DuplicateKey(ValueError):
    pass


class _ProtoKey(ValueError):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)  # in C: the hook runs once per object of every body
    if "__proto__" in document:
        raise _ProtoKey
    if len(document) != len(pairs):
        raise _DuplicateKey
    return document


def _no_constant(name: str) -> object:
    """NaN and Infinity are not JSON, though Python's parser takes them."""
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number beyond a double")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError("a number beyond a double")
    return value


# Built once: json.loads with hooks builds a new decoder for every call. Integers are parsed by the C
# scanner: a hook per integer cost more than the rest of the parse (a 200 KB cart: 2.8 ms, 1.3 of it in
# the hook). One beyond a double needs 309 digits in a row, so only a body with such a run (in a string,
# say) is parsed with the integers checked one by one.
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite_float)
_CHECKED = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int
)
_LONG = len(str(int(sys.float_info.max)))  # 309: the fewest digits of an integer beyond a double
_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)  # every digit a 0, nothing else one
_RUN = b"0" * _LONG


def loads(body: bytes) -> Any:
    """The document a body holds, or StrictJsonError saying why it is refused."""
    try:
        text = body.decode("utf-8")
        if len(body) >= _LONG and _RUN in body.translate(_DIGITS):
            return _CHECKED.decode(text)
        return _DECODER.decode(text)
    except _DuplicateKey:
        raise StrictJsonError("The request body has the same key twice in one object.") from None
    except _ProtoKey:
        raise StrictJsonError('The request body has a "__proto__" key.') from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StrictJsonError("The request body is not valid UTF-8 JSON.") from None


def dumps(document: Any) -> bytes:
    """Compact JSON, escaped to ASCII: a lone surrogate (`"\\ud800"`, valid JSON) has no UTF-8 encoding.

    StrictJsonError for a document nested too deeply to write: the writer recurses deeper than `loads`, so
    a body nested just short of the recursion limit is read, then would raise RecursionError here."""
    try:
        return json.dumps(document, separators=(",", ":")).encode()
    except RecursionError:
        raise StrictJsonError("The request body is nested too deeply.") from None
