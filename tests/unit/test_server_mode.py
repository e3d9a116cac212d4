"""Server mode's translation, without sockets: client-side operation in, server-side call out."""

from __future__ import annotations

import json
import sys

import pytest

from gateway import strictjson
from gateway.catalog import OPERATIONS
from gateway.errors import ErrorKey, GatewayError, Refused
from gateway.models import UpstreamCall
from gateway.modes.qs import legacy_validation_document, parse_query
from gateway.modes.server import KEY_REJECTED_STATUSES, keys_rejected_log, narrowed_listing, twin_call


def translate(operation: str, method: str, path: str, query: str, body: bytes) -> UpstreamCall | GatewayError:
    """Server mode's request half for one operation, the body parsed as check_body hands it on."""
    document = strictjson.loads(body) if body else None
    try:
        return twin_call(OPERATIONS[operation], method, path, query, body, document)
    except Refused as refused:
        return refused.error


def rejects_gateway_keys(status: int) -> bool:
    return status in KEY_REJECTED_STATUSES


def client_view(
    operation: str, status: int, headers: list[tuple[str, str]], body: bytes
) -> tuple[list[tuple[str, str]], bytes] | GatewayError:
    """The answer's narrowing as ServerMode.response applies it: only narrowed operations' 2xx answers."""
    if not OPERATIONS[operation].narrowed or not 200 <= status < 300:
        return headers, body
    try:
        return narrowed_listing(headers, body)
    except Refused as refused:
        return refused.error


# Captured from @voucherify/sdk (VoucherifyClientSide.validate) with qs.stringify: brackets percent-encoded,
# arrays as item[0][...], nested objects as metadata[k][0]. Only the code differs from the capture (it held a
# '/', which server mode refuses).
SDK_VALIDATE_QUERY = (
    "code=SAVE%2010%3Fx&item%5B0%5D%5Bproduct_id%5D=prod_1&item%5B0%5D%5Bquantity%5D=2"
    "&item%5B0%5D%5Bprice%5D=750&item%5B1%5D%5Bsku_id%5D=sku%202&item%5B1%5D%5Bquantity%5D=1"
    "&item%5B1%5D%5Bamount%5D=300&item%5B1%5D%5Brelated_object%5D=sku&amount=1500&metadata%5Bk%5D=v"
    "&metadata%5Bn%5D=5&order%5Bmetadata%5D%5Bchannel%5D=web&order%5Bmetadata%5D%5Btags%5D%5B0%5D=a"
    "&order%5Bmetadata%5D%5Btags%5D%5B1%5D=b&customer%5Bsource_id%5D=cust%2B1%40x.com"
    "&customer%5Bmetadata%5D%5Btier%5D=gold&tracking_id=track%201&session_type=LOCK&session_key=sk"
    "&session_ttl=7&session_ttl_unit=DAYS"
)
SDK_VALIDATE_BODY = {
    "customer": {"source_id": "cust+1@x.com", "metadata": {"tier": "gold"}},
    "order": {
        "amount": 1500,
        "items": [
            {"product_id": "prod_1", "quantity": 2, "price": 750},
            {"sku_id": "sku 2", "quantity": 1, "amount": 300, "related_object": "sku"},
        ],
        "metadata": {"channel": "web", "tags": ["a", "b"]},
    },
    "metadata": {"k": "v", "n": "5"},
    "session": {"type": "LOCK", "key": "sk", "ttl": 7, "ttl_unit": "DAYS"},
    "tracking_id": "track 1",
}


def call(operation: str, method: str, path: str, query: str = "", body: bytes = b"") -> UpstreamCall:
    result = translate(operation, method, path, query, body)
    assert isinstance(result, UpstreamCall), result
    return result


def refused(operation: str, method: str, path: str, query: str = "", body: bytes = b"") -> GatewayError:
    result = translate(operation, method, path, query, body)
    assert isinstance(result, GatewayError), result
    return result


@pytest.mark.parametrize(
    ("operation", "method", "path", "query"),
    [
        ("validate_stackable", "POST", "/validations", ""),
        ("redeem_stackable", "POST", "/redemptions", ""),
        ("redeem_promotion_tier", "POST", "/promotions/tiers/promo%20tier%2F1/redemption", ""),
        ("qualifications", "POST", "/qualifications", ""),
        (
            "list_promotion_tiers",
            "GET",
            "/promotions/tiers",
            "is_available=true&limit=10&page=2&order=-created_at",
        ),
        ("track_event", "POST", "/events", ""),
        ("list_vouchers", "GET", "/vouchers", "campaign=Camp%201&created_at%5Bbefore%5D=2024-01-01&limit=5"),
        ("create_customer", "POST", "/customers", ""),
        ("list_consents", "GET", "/consents", ""),
        ("update_consents", "PUT", "/customers/c%201%2Fx/consents", ""),
    ],
)
def test_same_shape_operations_move_to_v1_unchanged(
    operation: str, method: str, path: str, query: str
) -> None:
    body = b'{"customer": {"source_id": "c1"}, "x": [1, 2.50, "\\u00e9"]}' if method != "GET" else b""
    result = call(operation, method, path, query, body)
    assert result.method == method
    assert result.path == "/v1" + path + (f"?{query}" if query else "")
    assert result.body == body  # byte for byte, not re-serialised
    assert result.content_type is None  # the caller's Content-Type stands


def test_redeem_moves_code_into_path_and_keeps_other_query_parameters() -> None:
    body = b'{"order": {"amount": 10}}'
    result = call("redeem", "POST", "/redeem", "code=A%3FB%23C&tracking_id=t%201&x=%5B", body)
    assert result.method == "POST"
    assert result.path == "/v1/vouchers/A%3FB%23C/redemption?tracking_id=t%201&x=%5B"
    assert result.body == body
    assert result.content_type is None


@pytest.mark.parametrize(
    ("query", "segment"),
    [
        ("code=SAVE10", "SAVE10"),
        ("code=a%3Fb", "a%3Fb"),
        ("code=a?b", "a%3Fb"),
        ("code=a%23b", "a%23b"),
        ("code=50%25+off", "50%25%20off"),  # qs reads + as a space
        ("code=%C3%A9t%C3%A9", "%C3%A9t%C3%A9"),
        ("code=...", "..."),
        ("code=a..b", "a..b"),
        ("%63ode=X", "X"),  # the key is decoded too
    ],
)
def test_redeem_code_is_one_encoded_segment(query: str, segment: str) -> None:
    assert call("redeem", "POST", "/redeem", query).path == f"/v1/vouchers/{segment}/redemption"


@pytest.mark.parametrize(
    "query",
    [
        "",
        "tracking_id=t",
        "code=",
        "code=.",
        "code=..",
        "code=%2e%2e",
        "code=%2E",
        "code=../../v1/campaigns",
        "code=a%2F..%2Fb",
        "code=a/b",
        "code=a%5Cb",
        "code=a%00b",
        "code=a%0Ab",
        "code=a%7Fb",
        "code=a%C2%85b",  # NEL, a C1 control
        "code=A&code=B",
        "code=%FF",  # not UTF-8
    ],
)
def test_redeem_refuses_codes_that_are_no_safe_segment(query: str) -> None:
    error = refused("redeem", "POST", "/redeem", query)
    assert error.key is ErrorKey.INVALID_PAYLOAD
    assert error.status == 400


def test_publish_moves_campaign_into_body() -> None:
    body = b'{"customer": {"source_id": "track 1"}, "channel": "Voucherify.js"}'
    result = call("publish", "POST", "/publish", "join_once=true&campaign=Camp%201", body)
    assert result.method == "POST"
    assert result.path == "/v1/publications?join_once=true"
    assert result.content_type == "application/json"
    assert json.loads(result.body) == {
        "customer": {"source_id": "track 1"},
        "channel": "Voucherify.js",
        "campaign": {"name": "Camp 1"},
    }


def test_publish_with_empty_body_and_campaign_only() -> None:
    result = call("publish", "POST", "/publish", "campaign=Summer", b"")
    assert result.path == "/v1/publications"
    assert json.loads(result.body) == {"campaign": {"name": "Summer"}}


def test_publish_query_campaign_replaces_a_body_campaign() -> None:
    result = call("publish", "POST", "/publish", "campaign=Q", b'{"campaign": {"name": "B", "count": 9}}')
    assert json.loads(result.body) == {"campaign": {"name": "Q"}}


def test_publish_without_campaign_keeps_body() -> None:
    body = b'{"voucher": "CODE1"}'
    result = call("publish", "POST", "/publish", "join_once=false", body)
    assert (result.path, result.body, result.content_type) == ("/v1/publications?join_once=false", body, None)


def test_publish_refuses_repeated_campaign() -> None:
    assert refused("publish", "POST", "/publish", "campaign=A&campaign=B").key is ErrorKey.INVALID_PAYLOAD


def test_publish_of_a_body_nested_as_deep_as_the_parser_takes_is_a_400_not_a_crash() -> None:
    # The writer recurses deeper than the reader: a body nested just short of the recursion limit was
    # parsed, then strictjson.dumps raised RecursionError when the campaign was added (a 500, an error line).
    answers = []
    for depth in range(sys.getrecursionlimit(), 0, -1):
        body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        try:
            answers.append(translate("publish", "POST", "/publish", "campaign=C", body))
        except strictjson.StrictJsonError:
            continue  # too deep for the parser itself: check_body's 400
        if len(answers) == 20:
            break
    refusals = [answer for answer in answers if isinstance(answer, GatewayError)]
    assert refusals, "the deepest bodies the parser takes must reach the writer's limit"
    assert all(error.key is ErrorKey.INVALID_PAYLOAD for error in refusals)
    assert isinstance(answers[-1], UpstreamCall)


def test_validate_with_code_from_sdk_query() -> None:
    result = call("validate", "GET", "/validate", SDK_VALIDATE_QUERY)
    assert result.method == "POST"
    assert result.path == "/v1/vouchers/SAVE%2010%3Fx/validate"
    assert result.content_type == "application/json"
    assert json.loads(result.body) == SDK_VALIDATE_BODY


def test_validate_raw_brackets_read_as_encoded_ones() -> None:
    raw = SDK_VALIDATE_QUERY.replace("%5B", "[").replace("%5D", "]").replace("code=SAVE%2010%3Fx", "code=S1")
    result = call("validate", "GET", "/validate", raw)
    assert result.path == "/v1/vouchers/S1/validate"
    assert json.loads(result.body) == SDK_VALIDATE_BODY


def test_promotions_validation_has_no_code_in_path() -> None:
    result = call("validate", "GET", "/promotions/validation", "amount=99&tracking_id=track%201&code=IGNORED")
    assert result.method == "POST"
    assert result.path == "/v1/promotions/validation"
    assert json.loads(result.body) == {"order": {"amount": 99}, "tracking_id": "track 1"}


def test_promotions_validation_without_query_sends_empty_object() -> None:
    result = call("validate", "GET", "/promotions/validation")
    assert json.loads(result.body) == {}


@pytest.mark.parametrize("query", ["", "amount=5", "code=", "code=%2e%2e", "code=a%2Fb", "code=a%5Cb"])
def test_validate_refuses_missing_or_unsafe_code(query: str) -> None:
    assert refused("validate", "GET", "/validate", query).key is ErrorKey.INVALID_PAYLOAD


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("amount=10.5", {"order": {"amount": "10.5"}}),  # only integers become numbers
        ("amount=-3", {"order": {"amount": -3}}),
        ("amount=007", {"order": {"amount": "007"}}),
        ("amount=1e3", {"order": {"amount": "1e3"}}),
        ("session_ttl=x", {"session": {"ttl": "x"}}),
        ("item[0][quantity]=2.5", {"order": {"items": [{"quantity": "2.5"}]}}),
        ("item[0][product_id]=123", {"order": {"items": [{"product_id": "123"}]}}),  # ids stay strings
        ("metadata[n]=5", {"metadata": {"n": "5"}}),
        ("tracking_id=42", {"tracking_id": "42"}),
        ("customer[source_id]=7", {"customer": {"source_id": "7"}}),
    ],
)
def test_validate_numbers_only_where_the_contract_says(query: str, expected: dict[str, object]) -> None:
    assert legacy_validation_document(parse_query(query)) == expected


def test_validate_items_ordered_by_index_and_compacted() -> None:
    query = "item[10][price]=3&item[2][price]=2&item[0][price]=1"
    assert legacy_validation_document(parse_query(query)) == {
        "order": {"items": [{"price": 1}, {"price": 2}, {"price": 3}]}
    }


@pytest.mark.parametrize(
    "query",
    [
        "unknown=1",
        "item[0][secret_field]=1",
        "item[x][price]=1",
        "item[01][price]=1",
        "item[0]=1",
        "item[0][price][deep]=1",
        "customer[password]=1",
        "customer=abc",
        "order[amount]=5",
        "order[items][0][price]=5",
        "session[type]=LOCK",
        "metadata=flat",
        "metadata[]=x",
        "[a]=1",
        "a]b=1",
        "=",
        "code=X",
    ],
)
def test_validate_drops_keys_it_does_not_know(query: str) -> None:
    assert legacy_validation_document(parse_query(query)) == {}


def test_validate_nested_metadata_objects() -> None:
    query = "metadata[a][b]=1&metadata[a][c]=2&customer[metadata][x][0]=p&customer[metadata][x][1]=q"
    assert legacy_validation_document(parse_query(query)) == {
        "metadata": {"a": {"b": "1", "c": "2"}},
        "customer": {"metadata": {"x": ["p", "q"]}},
    }


def test_validate_large_indices_stay_object_keys_as_in_qs() -> None:
    assert legacy_validation_document(parse_query("metadata[k][21]=a")) == {"metadata": {"k": {"21": "a"}}}


@pytest.mark.parametrize(
    "query",
    [
        "amount=1&amount=2",
        "amount=1&%61mount=2",
        "item[0][price]=1&item%5B0%5D%5Bprice%5D=2",
        "metadata[a]=1&metadata[a][b]=2",
        "metadata[a][b]=2&metadata[a]=1",
        "tracking_id=a&tracking_id=b",
    ],
)
def test_validate_refuses_repeated_or_conflicting_keys(query: str) -> None:
    assert refused("validate", "GET", "/promotions/validation", query).key is ErrorKey.INVALID_PAYLOAD


def test_plus_is_a_space_and_encoded_plus_is_a_plus() -> None:
    body = legacy_validation_document(parse_query("customer[source_id]=a+b%2Bc&metadata[k]=%26%3D"))
    assert body == {"customer": {"source_id": "a b+c"}, "metadata": {"k": "&="}}


def test_unicode_survives_into_the_body() -> None:
    result = call("validate", "GET", "/promotions/validation", "metadata[city]=Krak%C3%B3w")
    assert json.loads(result.body.decode("utf-8")) == {"metadata": {"city": "Kraków"}}


def test_key_rejection_statuses() -> None:
    assert rejects_gateway_keys(401) and rejects_gateway_keys(403)
    assert not any(rejects_gateway_keys(status) for status in (200, 400, 404, 429, 500))


def test_key_rejection_log_names_the_fix_and_nothing_from_the_body_but_a_safe_key() -> None:
    line = keys_rejected_log(
        "shop", "redeem", 401, b'{"code":401,"key":"unauthorized","message":"Unauthorized"}'
    )
    assert "shop" in line and "401" in line and "unauthorized" in line and "credentials" in line
    hostile = b'{"key": "app-id-1234 token=abc", "message": "token abc"}'
    line = keys_rejected_log("shop", "redeem", 403, hostile)
    assert "abc" not in line and "app-id-1234" not in line
    assert "key unknown" in keys_rejected_log("shop", "redeem", 403, b"not json")


SERVER_VOUCHER = {
    "id": "v_1",
    "object": "voucher",
    "code": "SAVE10",
    "active": True,
    "metadata": {"m": 1},
    "assets": {"qr": {"url": "https://q"}},
    "expiration_date": None,
    "start_date": "2024-01-01T00:00:00Z",
    "holder_id": "cust_secret_holder",
    "redemption": {"quantity": 1, "redeemed_quantity": 0},
    "publish": {"count": 1},
    "validation_rules_assignments": {"data": []},
    "campaign": "Camp",
}


def test_list_vouchers_answer_is_cut_to_the_client_side_listing() -> None:
    body = json.dumps(
        {"object": "list", "data_ref": "vouchers", "vouchers": [SERVER_VOUCHER, "x"], "total": 1}
    )
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("ETag", '"abc"'),
        ("Cache-Control", "no-store"),
    ]
    view = client_view("list_vouchers", 200, headers, body.encode())
    assert not isinstance(view, GatewayError)
    out_headers, out_body = view
    assert json.loads(out_body) == {
        "object": "list",
        "total": 1,
        "data_ref": "vouchers",
        "vouchers": [
            {
                "object": "voucher",
                "code": "SAVE10",
                "active": True,
                "metadata": {"m": 1},
                "assets": {"qr": {"url": "https://q"}},
                "expiration_date": None,
                "start_date": "2024-01-01T00:00:00Z",
            }
        ],
    }
    assert out_headers == [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"vouchers": {"a": 1}}'])
def test_list_vouchers_answer_that_is_no_list_is_not_passed_on(body: bytes) -> None:
    view = client_view("list_vouchers", 200, [], body)
    assert isinstance(view, GatewayError)
    assert view.key is ErrorKey.UPSTREAM_UNAVAILABLE


def test_a_voucher_list_nested_as_deep_as_the_reader_takes_is_a_502_not_a_crash() -> None:
    """Every answer from upstream may be wrong: a list whose voucher metadata is nested just short of the
    reader's limit was read, then the writer (which recurses deeper) raised, a 500 and an error line."""
    views = []
    for depth in range(sys.getrecursionlimit(), 0, -1):
        nested = b"[" * depth + b"]" * depth
        body = b'{"vouchers": [{"code": "C", "metadata": ' + nested + b"}]}"
        views.append(client_view("list_vouchers", 200, [], body))
        if not isinstance(views[-1], GatewayError) and len(views) >= 20:
            break
    refusals = [view for view in views if isinstance(view, GatewayError)]
    assert any("nested too deeply" in error.details for error in refusals), "the writer's limit was reached"
    assert all(error.key is ErrorKey.UPSTREAM_UNAVAILABLE for error in refusals)
    assert not isinstance(views[-1], GatewayError)  # and shallower lists pass


@pytest.mark.parametrize(
    ("operation", "status"),
    [("list_vouchers", 400), ("list_vouchers", 404), ("validate", 200), ("redeem", 200)],
)
def test_other_answers_pass_through_unchanged(operation: str, status: int) -> None:
    headers = [("Content-Type", "application/json"), ("ETag", "e")]
    assert client_view(operation, status, headers, b'{"holder_id": "x"}') == (headers, b'{"holder_id": "x"}')


def test_validate_nesting_stops_at_qs_depth_and_keeps_the_rest_as_one_key() -> None:
    # qs (depth 5) keeps brackets past the fifth as one literal key; a query line of 8 KB would otherwise
    # nest thousands of objects deep and overflow the recursion while building the body.
    assert legacy_validation_document(parse_query("metadata[a][b][c][d][e][f][g]=1")) == {
        "metadata": {"a": {"b": {"c": {"d": {"e": {"[f][g]": "1"}}}}}}
    }
    deep = "code=A&metadata" + "[a]" * 2700 + "=1&customer[metadata]" + "%5Bb%5D" * 900 + "=2"
    body = json.loads(call("validate", "GET", "/validate", deep).body)
    assert list(body) == ["customer", "metadata"]


@pytest.mark.parametrize(
    "query",
    [
        "metadata[__proto__][admin]=1",
        "metadata%5B__proto__%5D%5Badmin%5D=1",
        "customer[metadata][__proto__]=x",
        "order[metadata][constructor][prototype][admin]=1",
        "metadata[a][toString]=1",
        "__proto__[amount]=1",
        "metadata[a][b][c][d][hasOwnProperty]=1",
    ],
)
def test_validate_drops_keys_naming_object_prototype_properties_as_qs_does(query: str) -> None:
    # qs (allowPrototypes off, its default) drops such keys, and never sets `__proto__`: the server-side body
    # must not carry one to a Node parser that could end up merging it into a prototype.
    assert legacy_validation_document(parse_query(query + "&metadata[k]=v")) == {"metadata": {"k": "v"}}


def test_publish_body_with_a_lone_surrogate_is_rewritten_as_valid_json() -> None:
    # "\ud800" is valid JSON text; Python holds it as a lone surrogate, which UTF-8 cannot encode.
    result = call("publish", "POST", "/publish", "campaign=C", b'{"metadata": {"x": "\\ud800"}}')
    assert result.body.isascii()
    assert json.loads(result.body) == {"metadata": {"x": "\ud800"}, "campaign": {"name": "C"}}
