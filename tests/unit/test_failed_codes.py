"""The failed-code budget's rules (gateway/guards/failed_codes.py), without sockets: counted routes, codes
named, unknown codes in an answer (hostile and odd answers included) and the RateLimit field members."""

from __future__ import annotations

import itertools
import json

import pytest
from multidict import CIMultiDict

from gateway.catalog import ROUTES, Route
from gateway.compiled import compile_policy
from gateway.decide import Admit, check_body, decide
from gateway.errors import Refused
from gateway.guards.failed_codes import (
    FailedCodeBudget,
    _surely_utf8,
    counts,
    named_codes,
    refusal_retry_after,
    remaining_after,
    state_member,
    unknown_codes,
    with_budget_fields,
)
from gateway.policy import parse_policy
from tests.support.constants import ORIGIN


def route(method: str, template: str) -> Route:
    (found,) = [r for r in ROUTES if r.method == method and r.template == template]
    return found


VALIDATE = route("GET", "/validate")
PROMOTIONS_VALIDATION = route("GET", "/promotions/validation")
VALIDATIONS = route("POST", "/validations")
REDEEM = route("POST", "/redeem")
REDEMPTIONS = route("POST", "/redemptions")
COUNTED = (VALIDATE, VALIDATIONS, REDEEM, REDEMPTIONS)
BUDGET = FailedCodeBudget.parse("shop", "10 per hour")


def voucher(code: str) -> dict[str, object]:
    return {"object": "voucher", "id": code}


def answer(document: object) -> bytes:
    return json.dumps(document).encode()


def result(code: object, error_code: object = None) -> dict[str, object]:
    """A stackable answer's redeemable; `error_code` 404 is Voucherify's "no such code"."""
    element: dict[str, object] = {"object": "voucher", "id": code, "status": "APPLICABLE", "result": {}}
    if error_code is not None:
        element["status"] = "INAPPLICABLE"
        element["result"] = {
            "error": {"code": error_code, "key": "not_found", "message": "Resource not found"}
        }
    return element


# --------------------------------------------------------------------------------------- counted routes


def test_exactly_the_four_routes_of_the_contract_are_counted() -> None:
    assert {(r.operation.name, r.template) for r in ROUTES if counts(r)} == {
        ("validate", "/validate"),
        ("validate_stackable", "/validations"),
        ("redeem", "/redeem"),
        ("redeem_stackable", "/redemptions"),
    }
    assert not counts(PROMOTIONS_VALIDATION)  # validate, but not on /validate


def test_uncounted_routes_name_nothing_whatever_their_body_says() -> None:
    for r in ROUTES:
        if not counts(r):
            assert named_codes(r, {"redeemables": [voucher("A"), voucher("B")]}) == 0, r.template


# ----------------------------------------------------------------------------------------- codes named


@pytest.mark.parametrize("r", [VALIDATE, REDEEM])
@pytest.mark.parametrize("document", [None, {}, {"redeemables": [voucher("A"), voucher("B")]}])
def test_legacy_validate_and_redeem_name_one_code(r: Route, document: object) -> None:
    assert named_codes(r, document) == 1


@pytest.mark.parametrize("r", [VALIDATIONS, REDEMPTIONS])
@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"redeemables": [voucher("A")]}, 1),
        ({"redeemables": [voucher("A"), voucher("B"), voucher("C")]}, 3),
        ({"redeemables": [voucher("A"), voucher("A")]}, 2),  # the same code twice is asked twice
        ({"redeemables": [voucher(f"C{i}") for i in range(30)]}, 30),
        ({"redeemables": [{"object": "promotion_tier", "id": "promo_1"}, 7, None]}, 3),  # odd elements too
        ({"redeemables": []}, 0),
        ({"redeemables": None}, 0),
        ({}, 0),
        ({"order": {"amount": 100}}, 0),
        (None, 0),  # no body
        ({"redeemables": {"0": voucher("A")}}, 1),  # not a list: at least one, never free
        ({"redeemables": "A"}, 1),
        ({"redeemables": 5}, 1),
        ({"redeemables": False}, 1),
        ({"order": {"redeemables": [voucher("A"), voucher("B")]}}, 0),  # only the top-level list
    ],
)
def test_stackable_operations_name_the_length_of_redeemables(r: Route, document: object, named: int) -> None:
    assert named_codes(r, document) == named


def test_a_body_naming_redeemables_twice_is_refused_before_anything_is_counted() -> None:
    """The strict parser refuses a key written twice, so a body cannot be counted by one `redeemables` and
    reach Voucherify with another (which one wins differs between parsers)."""
    policy = compile_policy(
        parse_policy(
            """
rate_limit: {failed_codes: 10 per hour}
projects:
  shop:
    credentials: {client_application_id: a, client_secret_key: b}
    allowed_origins: [https://shop.example.com]
    danger_zone: {redeem: true}
default_project: shop
""",
            env={},
        )
    )
    headers = CIMultiDict({"Origin": ORIGIN, "Content-Type": "application/json"})
    long = json.dumps([voucher(f"G{i}") for i in range(10)])
    bodies = [
        f'{{"redeemables": [], "redeemables": {long}}}',
        f'{{"redeemables": {long}, "redeemables": [{{"object": "voucher", "id": "A"}}]}}',
        f'{{"redeemables": null, "redeemables": {long}}}',
        f'{{"order": {{"amount": 1}}, "redeemables": {long}, "redeemables": []}}',
    ]
    for path in ("/client/v1/validations", "/client/v1/redemptions"):
        admit = decide(policy, "POST", path, headers)
        assert isinstance(admit, Admit)
        assert admit.target.project.failed_codes == BUDGET
        for body in bodies:
            with pytest.raises(Refused) as refused:
                check_body(admit, body.encode())
            assert refused.value.error.key == "invalid_payload"
            assert refused.value.error.status == 400
        document = check_body(admit, f'{{"redeemables": {long}}}'.encode())
        assert named_codes(admit.target.route, document) == 10


# ---------------------------------------------------------------------------------------- unknown codes


def test_an_upstream_404_counts_one() -> None:
    assert unknown_codes(404, answer({"code": 404, "key": "not_found"}), 1) == 1
    assert unknown_codes(404, b"", 1) == 1
    assert unknown_codes(404, b"<html>not found</html>", 3) == 1  # one, whatever the body


def test_a_404_for_a_request_that_named_nothing_costs_nothing() -> None:
    assert unknown_codes(404, answer({"code": 404}), 0) == 0
    assert unknown_codes(200, answer({"redeemables": [result("A", 404)]}), 0) == 0


def test_legacy_validate_answer_with_an_error_404_counts_one() -> None:
    body = {"valid": False, "code": "NOPE", "reason": "voucher not found", "error": {"code": 404}}
    assert unknown_codes(200, answer(body), 1) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"valid": False, "reason": "voucher expired", "error": {"code": 400, "key": "voucher_expired"}},
        {"valid": False, "reason": "voucher is disabled", "error": {"code": 400, "key": "voucher_disabled"}},
        {"valid": False, "reason": "order does not match validation rules", "error": {"code": 400}},
        {"valid": True, "code": "SAVE10", "discount": {"type": "AMOUNT", "amount_off": 1000}},
        {"valid": False, "error": {"code": 4040}},
        {"valid": False, "error": {"code": "not found"}},
        {"valid": False, "error": "404"},  # not an object with a code
        {"valid": False, "error": {"key": "not_found"}},
        {"valid": False, "code": 404},  # the top-level `code` is the voucher's, not an error code
        {"valid": False, "error": {"code": True}},
    ],
)
def test_codes_that_exist_cost_nothing(body: dict[str, object]) -> None:
    """Expired, inactive and inapplicable codes exist; only Voucherify's 404 says a code does not."""
    assert unknown_codes(200, answer(body), 1) == 0


@pytest.mark.parametrize("code", [404, 404.0, "404", " 404 "])
def test_a_404_error_code_is_read_as_a_number_or_a_string(code: object) -> None:
    assert unknown_codes(200, answer({"valid": False, "error": {"code": code}}), 1) == 1


def test_a_stackable_answer_counts_each_redeemable_whose_result_error_is_404() -> None:
    body = {
        "valid": False,
        "redeemables": [
            result("SAVE10"),
            result("NOPE1", 404),
            result("EXPIRED", 400),
            result("NOPE2", 404),
            result("PERCENT20"),
        ],
    }
    assert unknown_codes(200, answer(body), 5) == 2


def test_never_more_than_the_request_named() -> None:
    body = {"valid": False, "redeemables": [result(f"N{i}", 404) for i in range(7)], "error": {"code": 404}}
    assert unknown_codes(200, answer(body), 3) == 3
    assert unknown_codes(200, answer(body), 1) == 1


def test_failures_listed_in_inapplicable_redeemables_count_once() -> None:
    """Newer API versions list failures in `inapplicable_redeemables`, alone or as well as in
    `redeemables`: a code listed in both counts once, a code listed only there is not free."""
    both = {
        "redeemables": [result("A"), result("NOPE", 404)],
        "inapplicable_redeemables": [result("NOPE", 404)],
    }
    assert unknown_codes(200, answer(both), 2) == 1
    only_there = {
        "redeemables": [result("A")],
        "inapplicable_redeemables": [result("X", 404), result("Y", 404)],
    }
    assert unknown_codes(200, answer(only_there), 3) == 2


@pytest.mark.parametrize("status", [201, 204, 299])
def test_any_2xx_is_read(status: int) -> None:
    assert unknown_codes(status, answer({"redeemables": [result("N", 404)]}), 1) == 1


@pytest.mark.parametrize("status", [100, 301, 304, 400, 401, 403, 409, 422, 429, 500, 502, 503, 504])
def test_other_statuses_count_nothing_even_with_404s_inside(status: int) -> None:
    body = {"code": status, "error": {"code": 404}, "redeemables": [result("N", 404)]}
    assert unknown_codes(status, answer(body), 1) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"<html>404</html>",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'[{"error": {"code": 404}}]',  # a list, not an answer object
        b"404",
        b'"404"',
        b"null",
        b'{"error": {"code": 404}',  # cut short
        b"[" * 100_000,  # deeper than any parser's recursion
        b'{"redeemables": {"0": {"result": {"error": {"code": 404}}}}}',  # not a list
        b'{"redeemables": [404, "404", null, [], {"result": 404}, {"result": {"error": 404}}]}',
        b'{"redeemables": [{"error": {"code": 404}}]}',  # the error is not under `result`
        b'{"error": {"code": NaN}}',
    ],
)
def test_odd_or_hostile_answers_count_only_what_the_rules_say(body: bytes) -> None:
    assert unknown_codes(200, body, 5) == 0
    assert unknown_codes(404, body, 5) == 1


def test_an_answer_nested_deeper_than_the_parser_goes_still_counts_its_404s() -> None:
    """The browser's parser reads it; the budget's gave up: an answer echoing a deep `metadata` (the request
    itself just shallow enough to be read) must not make its unknown codes free."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    found = [result("N1", 404), result("K", None), result("N2", 404)]
    body = answer({"valid": False, "redeemables": found, "order": {"metadata": 0}})
    body = body[: body.rindex(b"0}")] + deep.encode() + b"}}"  # the metadata 5,000 levels deep
    assert unknown_codes(200, body, 3) == 2
    assert unknown_codes(200, body, 1) == 1  # never more than named
    assert unknown_codes(200, b"[" * 100_000, 5) == 0  # not an answer: nothing in it says 404


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_an_answer_in_another_unicode_encoding_is_still_read(encoding: str) -> None:
    body = json.dumps({"error": {"code": 404}}).encode(encoding)  # json.loads reads every one of these
    assert unknown_codes(200, body, 1) == 1


def test_the_shortcut_past_an_answer_without_error_takes_only_what_json_reads_as_utf8() -> None:
    """Every start of an answer (its first 0-5 bytes, from the bytes that mark encodings) that the budget
    skips unparsed is one json.loads would read as UTF-8, where `"error"` cannot be spelt otherwise."""
    marks = (0x00, 0xFF, 0xFE, 0xEF, 0xBB, 0xBF, 0x7B, 0x20)
    starts = [b""] + [bytes(p) for p in itertools.product(marks, repeat=4)]
    for start in starts:
        for length in range(6):
            body = (start + b"{}  ")[:length]
            if _surely_utf8(body):
                assert json.detect_encoding(body).startswith("utf-8"), body
    assert not _surely_utf8('{"error": {"code": 404}}'.encode("utf-16-le"))
    assert _surely_utf8(b'\xef\xbb\xbf{"valid": true}')  # UTF-8 with its mark: utf-8-sig


def test_a_key_written_twice_in_an_answer_is_read_as_a_browser_reads_it() -> None:
    """JSON.parse keeps the last of two equal keys, as Python's parser does."""
    assert unknown_codes(200, b'{"error": {"code": 404}, "error": {"code": 400}}', 1) == 0
    assert unknown_codes(200, b'{"error": {"code": 400}, "error": {"code": 404}}', 1) == 1


# ---------------------------------------------------------------------------------------- the budget


def test_the_budget_is_compiled_from_a_single_limit() -> None:
    assert (BUDGET.project, BUDGET.limit, BUDGET.window) == ("shop", 10, 3600)
    assert BUDGET.policy_member == '"failed_codes";q=10;w=3600'
    assert FailedCodeBudget.parse("p", "3/minute").policy_member == '"failed_codes";q=3;w=60'
    assert FailedCodeBudget.parse("p", "5 per 2 days").window == 2 * 86400
    with pytest.raises(ValueError):
        FailedCodeBudget.parse("p", "10/hour;3/minute")


def test_the_ledger_key_is_the_clients_bucket_key_per_project_and_not_the_limit() -> None:
    assert BUDGET.key("203.0.113.7") == "failed_codes/shop/203.0.113.7"
    assert BUDGET.key("2001:db8::/64") == "failed_codes/shop/2001:db8::/64"
    assert FailedCodeBudget.parse("other", "10 per hour").key("203.0.113.7") != BUDGET.key("203.0.113.7")
    # a reload that changes the budget keeps counting in the same key
    assert FailedCodeBudget.parse("shop", "3 per minute").key("203.0.113.7") == BUDGET.key("203.0.113.7")


def test_state_member() -> None:
    assert state_member(3, 1199.2) == '"failed_codes";r=3;t=1200'
    assert state_member(0, 0) == '"failed_codes";r=0;t=0'
    assert state_member(-1, -5) == '"failed_codes";r=0;t=0'


def test_remaining_after_settling_gives_back_what_existed() -> None:
    # held 3, 1 unknown: 2 come back
    assert remaining_after(BUDGET, remaining=4, held=3, kept=1) == 6
    assert remaining_after(BUDGET, remaining=4, held=3, kept=3) == 4
    assert remaining_after(BUDGET, remaining=9, held=3, kept=0) == 10  # never above the limit
    assert remaining_after(BUDGET, remaining=0, held=0, kept=0) == 0


def test_retry_after_is_at_least_one_second_and_never_before_t() -> None:
    assert refusal_retry_after(0, 0) == 1
    assert refusal_retry_after(12.1, 3) == 13
    assert refusal_retry_after(2, 40.5) == 41


PER_IP = [
    ("RateLimit-Policy", '"per_ip";q=5;w=5'),
    ("RateLimit", '"per_ip";r=4;t=5'),
]


def test_the_budget_is_the_second_member_after_the_per_ip_one() -> None:
    fields = with_budget_fields(PER_IP, BUDGET, state_member(7, 3000))
    assert fields == [
        ("RateLimit-Policy", '"per_ip";q=5;w=5, "failed_codes";q=10;w=3600'),
        ("RateLimit", '"per_ip";r=4;t=5, "failed_codes";r=7;t=3000'),
    ]


def test_a_refusal_adds_retry_after() -> None:
    fields = with_budget_fields(PER_IP, BUDGET, state_member(0, 50), retry_after=50)
    assert ("Retry-After", "50") in fields


def test_retry_after_is_the_later_of_both() -> None:
    earlier = [*PER_IP, ("Retry-After", "3")]
    assert ("Retry-After", "50") in with_budget_fields(earlier, BUDGET, state_member(0, 50), retry_after=50)
    later = [*PER_IP, ("Retry-After", "90")]
    assert ("Retry-After", "90") in with_budget_fields(later, BUDGET, state_member(0, 50), retry_after=50)
    untouched = with_budget_fields(later, BUDGET, state_member(0, 50))
    assert [v for n, v in untouched if n == "Retry-After"] == ["90"]


def test_without_per_ip_fields_the_budget_stands_alone() -> None:
    """The per-IP step failed open (store down, on_storage_error: allow) and left no fields."""
    assert with_budget_fields([], BUDGET, state_member(10, 0)) == [
        ("RateLimit-Policy", '"failed_codes";q=10;w=3600'),
        ("RateLimit", '"failed_codes";r=10;t=0'),
    ]


def test_an_operations_own_bucket_keeps_its_name() -> None:
    own = [("RateLimit-Policy", '"redeem";q=3;w=60'), ("RateLimit", '"redeem";r=2;t=60')]
    fields = dict(with_budget_fields(own, BUDGET, state_member(1, 9)))
    assert fields["RateLimit-Policy"] == '"redeem";q=3;w=60, "failed_codes";q=10;w=3600'
    assert fields["RateLimit"] == '"redeem";r=2;t=60, "failed_codes";r=1;t=9'


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"valid":false,"\u0065rror":{"code":404}}',  # the key spelled with an escape
        rb'{"valid":false,"redeemables":[{"id":"N","result":{"err\u006fr":{"code":404}}}]}',
        rb'{"valid":false,"error":{"code":4.04e2}}',  # 404 as JSON spells it otherwise
    ],
)
def test_the_shortcut_for_answers_without_errors_misses_no_spelling_of_one(raw: bytes) -> None:
    """Answers that name no `error` are not parsed (most validations): an answer that spells the key with
    `\\u` escapes, or the code in another JSON form, still counts."""
    assert unknown_codes(200, raw, 1) == 1
