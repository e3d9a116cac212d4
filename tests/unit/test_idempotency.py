"""Idempotency-Key without a store (gateway/guards/idempotency.py): the header, the fingerprint, what is
kept and what an existing record means for a new request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from gateway import errors
from gateway.compiled import CompiledPolicy, compile_policy
from gateway.decide import Admit, Preflight, decide
from gateway.errors import ErrorKey, GatewayError
from gateway.guards import idempotency as idem
from gateway.guards.idempotency import Claim, Replay, Result, Settings
from gateway.headers import request_headers
from gateway.models import Outcome, Target
from gateway.observe.access import AccessLog, access_log
from gateway.observe.accounting import Accounting
from gateway.observe.logs import JsonFormatter
from gateway.observe.metrics import Metrics
from tests.conftest import ORIGIN, base_policy, make_policy

DANGER = {"redeem": True, "publish": True, "create_customers": True}
NONCE = b"n" * idem.NONCE_SIZE


def compiled(tree_changes: dict[str, Any] | None = None, **project: Any) -> CompiledPolicy:
    tree = base_policy("http://upstream.test", **{"danger_zone": DANGER, **project})
    tree["listen"] = {"max_body_bytes": 1000}
    tree.update(tree_changes or {})
    return compile_policy(make_policy(tree))


POLICY = compiled()


def admit(method: str, target: str, policy: CompiledPolicy = POLICY, **headers: str) -> Admit:
    all_headers = CIMultiDict({"Origin": ORIGIN, **headers})
    decision = decide(policy, method, target, all_headers)
    assert isinstance(decision, Admit), decision
    return decision


def target(path: str = "/client/v1/redeem?code=A", method: str = "POST", **kw: Any) -> Target:
    return admit(method, path, **kw).target


def settings(policy: CompiledPolicy = POLICY, project: str = "shop") -> Settings:
    return policy.projects[project].idempotency


def claim(
    key: str = "k-1", body: bytes = b'{"a":1}', where: Target | None = None, nonce: bytes = NONCE
) -> Claim:
    made = idem.begin(settings(), where or target(), [key], body, nonce)
    assert isinstance(made, Claim), made
    return made


def key_of(error: object) -> str:
    assert isinstance(error, GatewayError), error
    return error.key.value


# ---------------------------------------------------------------------------------------------- the header


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("k-1", "k-1"),
        ('"k-1"', "k-1"),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("x", "x"),
        ("x" * 255, "x" * 255),
        ('"' + "x" * 255 + '"', "x" * 255),
        (" \tk-1 \t", "k-1"),  # the field's own whitespace
        ('"a b"', "a b"),
        ("a b", "a b"),  # printable ASCII includes the space
        ("!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"),
        ('" k "', " k "),  # inside the quotes, spaces are the key's
    ],
)
def test_valid_keys(value: str, key: str) -> None:
    assert idem.parse_key(value) == key


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        '""',
        '"',
        '"k',
        'k"',
        'a"b',
        "a\\b",
        '"a\\"b"',  # an sf-string escape: the key would hold a quote
        '"a\\\\b"',  # and here a backslash
        '"k";a=1',  # sf parameters are not a key
        '"k" "l"',
        "x" * 256,
        '"' + "x" * 256 + '"',
        "k\x00",
        "k\x7f",
        "k\r\nX-Injected: 1",
        "\tk\x01",
        "ké",
        "k\u2028",
        '"ké"',
        "k\udcff",  # a byte that was not UTF-8
    ],
)
def test_invalid_keys(value: str) -> None:
    assert idem.parse_key(value) is None


@pytest.mark.parametrize("code", [*range(0x00, 0x20), 0x7F, 0x22, 0x5C, 0x80, 0xFF])
def test_every_forbidden_character_is_refused_bare_and_quoted(code: int) -> None:
    char = chr(code)
    assert idem.parse_key(f"a{char}b") is None
    assert idem.parse_key(f'"a{char}b"') is None


def test_quoted_and_bare_are_one_key_in_one_project() -> None:
    assert claim('"k-1"').storage_key == claim("k-1").storage_key
    assert claim("k-1").storage_key != claim("k-2").storage_key
    assert claim("K-1").storage_key != claim("k-1").storage_key  # keys are case-sensitive


def test_a_key_belongs_to_its_project() -> None:
    two = compiled(
        {
            "projects": {
                "shop": base_policy("http://upstream.test", danger_zone=DANGER)["projects"]["shop"],
                "other": base_policy("http://upstream.test", danger_zone=DANGER)["projects"]["shop"],
            }
        }
    )
    shop = idem.begin(settings(two, "shop"), target(policy=two), ["k"], b"", NONCE)
    other = idem.begin(
        settings(two, "other"), target("/other/client/v1/redeem?code=A", policy=two), ["k"], b"", NONCE
    )
    assert isinstance(shop, Claim) and isinstance(other, Claim)
    assert shop.storage_key != other.storage_key
    assert shop.fingerprint == other.fingerprint  # the same request, in two projects


def test_storage_keys_are_bounded_free_of_braces_and_never_hold_the_key() -> None:
    hostile = "KEYTEXT{x}" + "}" * 200 + "{"
    made = claim(hostile)
    assert made.storage_key.startswith("idempotency/shop/")
    assert "{" not in made.storage_key and "}" not in made.storage_key  # the store adds the hash tag
    assert len(made.storage_key) == len("idempotency/shop/") + 64
    assert "KEYTEXT" not in made.storage_key


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/client/v1/redeem?code=A"),
        ("POST", "/client/v1/redemptions"),
        ("POST", "/client/v1/promotions/tiers/promo_1/redemption"),
        ("POST", "/client/v1/publish?campaign=c"),
        ("POST", "/client/v1/customers"),
    ],
)
def test_the_five_operations_take_a_key(method: str, path: str) -> None:
    assert isinstance(idem.begin(settings(), target(path, method), ["k"], b"", NONCE), Claim)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/client/v1/validate?code=A"),
        ("POST", "/client/v1/validations"),
        ("POST", "/client/v1/qualifications"),
        ("POST", "/client/v1/events"),
        ("PUT", "/client/v1/customers/c1/consents"),
        ("GET", "/client/v1/vouchers"),
    ],
)
def test_other_operations_ignore_the_header_even_a_bad_one_and_when_required(method: str, path: str) -> None:
    required = compiled({"idempotency": {"required": True}}, danger_zone={**DANGER, "list_vouchers": True})
    where = target(path, method, policy=required)
    for values in ([], ["k"], ["bad\x01"], ["a", "b"]):
        assert idem.begin(settings(required), where, values, b"", NONCE) is None


def test_missing_header_is_fine_unless_required() -> None:
    assert idem.begin(settings(), target(), [], b"", NONCE) is None
    required = compiled({"idempotency": {"required": True}})
    refused = idem.begin(settings(required), target(policy=required), [], b"", NONCE)
    assert key_of(refused) == "idempotency_key_required"
    assert isinstance(refused, GatewayError)
    assert refused.status == 400 and "redeem" in refused.details


def test_two_headers_are_refused_even_when_equal() -> None:
    for values in (["k", "k"], ["k", "l"], ['"k"', "k"]):
        refused = idem.begin(settings(), target(), values, b"", NONCE)
        assert key_of(refused) == "invalid_idempotency_key" and isinstance(refused, GatewayError)
        assert refused.status == 400


def test_an_invalid_value_is_400_and_never_echoed() -> None:
    hostile = "secret-ish\x00<script>"
    refused = idem.begin(settings(), target(), [hostile], b"", NONCE)
    assert key_of(refused) == "invalid_idempotency_key" and isinstance(refused, GatewayError)
    assert "secret-ish" not in refused.body("gw-1").decode()


def test_ttl_zero_turns_it_off_and_required_with_it() -> None:
    off = compiled({"idempotency": {"ttl": 0, "required": True}})
    assert not settings(off).enabled and not settings(off).required
    for values in ([], ["k"], ["bad\x01"], ["a", "b"]):
        assert idem.begin(settings(off), target(policy=off), values, b"", NONCE) is None


# ---------------------------------------------------------------------------------------------- fingerprint


def fp(path: str, body: bytes = b"", method: str = "POST", **kw: Any) -> bytes:
    return claim("k", body, target(path, method, **kw)).fingerprint


def test_fingerprint_covers_operation_path_query_and_body() -> None:
    base = fp("/client/v1/redeem?code=A", b'{"a":1}')
    assert len(base) == idem.FINGERPRINT_SIZE
    assert fp("/client/v1/redeem?code=A", b'{"a":1}') == base
    assert fp("/client/v1/redeem?code=B", b'{"a":1}') != base
    assert fp("/client/v1/redeem?code=A", b'{"a": 1}') != base  # bytes, not meaning
    assert fp("/client/v1/redeem?code=A&", b'{"a":1}') != base  # the raw query
    assert fp("/client/v1/redeem?code=%41", b'{"a":1}') != base  # not decoded
    assert fp("/client/v1/redemptions?code=A", b'{"a":1}') != base
    tier = fp("/client/v1/promotions/tiers/t1/redemption")
    assert fp("/client/v1/promotions/tiers/t2/redemption") != tier
    assert fp("/client/v1/promotions/tiers/t%31/redemption") != tier  # raw, as matched


def test_fingerprint_is_the_path_as_matched_whatever_the_prefix() -> None:
    base = fp("/client/v1/redeem?code=A")
    assert fp("/shop/client/v1/redeem?code=A") == base  # the default project under both prefixes
    assert fp("//client/v1//redeem?code=A") == base  # repeated slashes merged (the SDK's //client/v1)
    assert fp("http://gw.example/client/v1/redeem?code=A") == base  # absolute form


def test_fingerprint_parts_cannot_slide_into_each_other() -> None:
    # without length prefixes, "redeem" + "/x" + "" and "redeem/x" + ... could hash the same
    assert idem.fingerprint("redeem", "/a", "b", b"") != idem.fingerprint("redeem", "/ab", "", b"")
    assert idem.fingerprint("redeem", "/a", "", b"b") != idem.fingerprint("redeem", "/a", "b", b"")
    assert idem.fingerprint("redeem", "/a", "", b"") != idem.fingerprint("redeem_stackable", "/a", "", b"")


def test_a_body_near_the_limit_is_fingerprinted_whole() -> None:
    body = b'{"x":"' + b"a" * 990 + b'"}'
    assert len(body) < 1000
    changed = body[:-3] + b'b"}'
    assert fp("/client/v1/redeem", body) != fp("/client/v1/redeem", changed)


# ---------------------------------------------------------------------------------------------- markers


def test_the_marker_carries_the_fingerprint_and_a_nonce_of_its_own() -> None:
    made = claim()
    assert made.marker == idem.IN_FLIGHT + made.fingerprint + NONCE
    one = idem.begin(settings(), target(), ["k-1"], b'{"a":1}')
    two = idem.begin(settings(), target(), ["k-1"], b'{"a":1}')
    assert isinstance(one, Claim) and isinstance(two, Claim)
    assert one.marker != two.marker and one.fingerprint == two.fingerprint
    assert len(one.marker) == 1 + idem.FINGERPRINT_SIZE + idem.NONCE_SIZE


def test_marker_lifetime_is_the_request_bounds_and_a_margin() -> None:
    policy = compiled(
        {
            "upstream": {"connect_timeout": 1.5, "read_timeout": 4},
            "listen": {"body_timeout": 3, "max_body_bytes": 1000},
            "rate_limit": {"per_ip": "1000 per minute", "storage_timeout": 0.25},
        }
    )
    made = idem.begin(settings(policy), target(policy=policy), ["k"], b"", NONCE)
    assert isinstance(made, Claim)
    assert made.marker_ttl == pytest.approx(1.5 + 4 + 3 + idem.MARGIN_SECONDS + 3 * 0.25)
    assert made.ttl == 86400


def test_same_key_same_request_in_flight_is_409() -> None:
    first, second = claim(nonce=b"1" * 16), claim(nonce=b"2" * 16)
    verdict = idem.judge(second, first.marker)
    assert key_of(verdict) == "idempotency_key_in_flight" and verdict.status == 409
    assert idem.result_of(verdict) is Result.IN_FLIGHT


def test_same_key_other_request_in_flight_is_422() -> None:
    first = claim(body=b'{"a":1}')
    for other in (
        claim(body=b'{"a":2}'),
        claim(where=target("/client/v1/redeem?code=B")),
        claim(where=target("/client/v1/redemptions")),
    ):
        verdict = idem.judge(other, first.marker)
        assert key_of(verdict) == "idempotency_key_reused" and verdict.status == 422
        assert idem.result_of(verdict) is Result.REUSED


# ---------------------------------------------------------------------------------------------- kept answers


@pytest.mark.parametrize("status", [200, 201, 204, 400, 401, 403, 404, 409, 422, 499])
def test_voucherify_answers_below_500_are_kept_and_replayed_exactly(status: int) -> None:
    first = claim()
    body = b'{"id":"r_1","result":"SUCCESS"}'
    record = idem.keep_answer(first, status, "application/json; charset=utf-8", body)
    assert record is not None
    replay = idem.judge(claim(nonce=b"x" * 16), record)
    assert replay == Replay(status, "application/json; charset=utf-8", body)
    assert replay.answer("gw-2") == (status, "application/json; charset=utf-8", body)
    assert idem.result_of(replay) is Result.REPLAYED


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_voucherify_429_and_5xx_are_not_kept(status: int) -> None:
    assert idem.keep_answer(claim(), status, "application/json", b"{}") is None


def test_a_kept_answer_with_another_fingerprint_is_422() -> None:
    record = idem.keep_answer(claim(body=b'{"a":1}'), 200, "application/json", b"{}")
    assert record is not None
    assert key_of(idem.judge(claim(body=b'{"a":2}'), record)) == "idempotency_key_reused"


def test_no_content_type_and_an_empty_body_round_trip() -> None:
    record = idem.keep_answer(claim(), 204, None, b"")
    assert record is not None
    assert idem.judge(claim(), record) == Replay(204, None, b"")


def test_binary_and_non_utf8_bodies_round_trip() -> None:
    body = bytes(range(256)) * 3
    record = idem.keep_answer(claim(), 200, "application/octet-stream", body)
    assert record is not None
    assert idem.judge(claim(), record) == Replay(200, "application/octet-stream", body)


def test_an_oversized_content_type_is_not_kept() -> None:
    record = idem.keep_answer(claim(), 200, "application/json;" + "x" * 2000, b"{}")
    assert record is not None
    assert idem.judge(claim(), record) == Replay(200, None, b"{}")


def test_the_kept_body_is_bounded_by_max_body_bytes() -> None:
    limit = settings().max_kept_body
    assert limit == 1000
    at_limit = b"a" * limit
    record = idem.keep_answer(claim(), 200, "application/json", at_limit)
    assert record is not None and len(record) < limit + 64
    assert idem.judge(claim(), record) == Replay(200, "application/json", at_limit)

    over = idem.keep_answer(claim(), 201, "application/json", b"a" * (limit + 1))
    assert over is not None and len(over) < 64  # the status is kept, the body is not
    replay = idem.judge(claim(), over)
    assert isinstance(replay, Replay) and replay.error is not None
    status, content_type, body = replay.answer("gw-9")
    assert (status, content_type) == (502, "application/json")
    document = json.loads(body)
    assert document["key"] == "upstream_unavailable" and document["request_id"] == "gw-9"
    assert "201" in document["details"] and "larger than the gateway keeps" in document["details"]
    assert idem.result_of(replay) is Result.REPLAYED


def test_unknown_outcomes_are_kept_as_the_gateways_own_answer() -> None:
    """Replayed with the replaying request's id in the body, as in its X-Request-Id (POLICY.md: the same
    id), and otherwise the first answer as it was."""
    first = claim()
    for error in (
        errors.upstream_timeout(),  # a 504, sent or not: the contract keeps every upstream_timeout
        errors.upstream_timeout(sent=False),
        errors.upstream_unavailable("The connection was lost.", sent=True),
        errors.upstream_rejected(),  # server mode: Voucherify answered the gateway's keys, so it was sent
    ):
        record = idem.keep_error(first, error, "gw-1")
        assert record is not None, error
        replay = idem.judge(claim(), record)
        assert isinstance(replay, Replay) and idem.result_of(replay) is Result.REPLAYED
        assert replay.answer("gw-2") == (error.status, "application/json", error.body("gw-2"))
        assert json.loads(error.body("gw-1")) | {"request_id": "gw-2"} == json.loads(replay.answer("gw-2")[2])


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"key": "internal_error", "message": "m", "details": "d"}',  # never kept: not an unknown outcome
        b'{"key": "upstream_timeout", "message": 1, "details": "d"}',
        b'{"key": "upstream_timeout", "message": "m"}',
    ],
)
def test_a_kept_gateway_error_that_is_not_one_answers_503(body: bytes) -> None:
    """A 5xx record is only ever the gateway's own unknown outcome: any other is unreadable (a store's
    data is not trusted), not replayed as it is."""
    record = idem.keep_answer(claim(), 200, "application/json", body)
    assert record is not None
    forged = record[:33] + (504).to_bytes(2, "big") + record[35:]
    answer = idem.judge(claim(), forged)
    assert isinstance(answer, GatewayError) and answer.key is ErrorKey.IDEMPOTENCY_UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        errors.upstream_unavailable(),  # nothing sent
        errors.too_many_requests(3),
        errors.rate_limit_unavailable(),
        errors.idempotency_unavailable(),
        errors.invalid_payload("x"),
        errors.payload_too_large(10),
        errors.request_timeout(1),
        errors.danger_zone_disabled("redeem", "redeem"),
    ],
)
def test_nothing_is_kept_after_a_502_not_sent_or_any_refusal(error: GatewayError) -> None:
    assert idem.keep_error(claim(), error, "gw-1") is None


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"I",
        b"X" + b"\0" * 60,
        b"K" + b"\0" * 10,
        b"garbage from another program",
    ],
)
def test_an_unreadable_record_is_503_never_a_replay(record: bytes) -> None:
    verdict = idem.judge(claim(), record)
    assert key_of(verdict) == "idempotency_unavailable" and verdict.status == 503
    assert idem.result_of(verdict) is Result.UNAVAILABLE


def test_a_damaged_kept_record_is_503() -> None:
    good = idem.keep_answer(claim(), 200, "application/json", b"{}")
    assert good is not None
    head = 1 + idem.FINGERPRINT_SIZE
    bad_status = good[:head] + (7).to_bytes(2, "big") + good[head + 2 :]
    bad_flags = good[: head + 2] + b"\x80" + good[head + 3 :]
    long_type = good[: head + 3] + (5000).to_bytes(2, "big") + good[head + 5 :]
    for record in (bad_status, bad_flags, long_type, good[: head + 4]):
        assert key_of(idem.judge(claim(), record)) == "idempotency_unavailable"


# ---------------------------------------------------------------------------------------------- the policy


def test_defaults_and_per_project_overrides() -> None:
    policy = compiled()
    assert settings(policy) == Settings(
        "shop", 86400, False, 2 + 10 + 10 + idem.MARGIN_SECONDS + 3 * 0.5, 1000
    )
    tree = base_policy("http://upstream.test", idempotency={"ttl": 60})
    tree["idempotency"] = {"required": True, "ttl": 3600}
    tree["projects"]["other"] = {**tree["projects"]["shop"], "idempotency": {"required": False}}
    tree["projects"]["third"] = {**tree["projects"]["shop"]}
    del tree["projects"]["third"]["idempotency"]
    both = compile_policy(make_policy(tree))
    assert (both.projects["shop"].idempotency.ttl, both.projects["shop"].idempotency.required) == (60, True)
    assert (both.projects["other"].idempotency.ttl, both.projects["other"].idempotency.required) == (
        3600,
        False,
    )
    assert (both.projects["third"].idempotency.ttl, both.projects["third"].idempotency.required) == (
        3600,
        True,
    )


def test_null_in_a_project_inherits() -> None:
    tree = base_policy("http://upstream.test", idempotency={"ttl": None, "required": None})
    tree["idempotency"] = {"ttl": 5, "required": True}
    runtime = compile_policy(make_policy(tree)).projects["shop"].idempotency
    assert (runtime.ttl, runtime.required) == (5, True)


@pytest.mark.parametrize(
    ("where", "value", "path"),
    [
        ("top", {"ttl": -1}, "idempotency.ttl"),
        ("top", {"ttl": "a day"}, "idempotency.ttl"),
        ("top", {"ttl": 10**12}, "idempotency.ttl"),
        ("top", {"required": "maybe"}, "idempotency.required"),
        ("top", {"tll": 5}, "idempotency.tll: unknown key"),
        ("project", {"ttl": -5}, "projects.shop.idempotency.ttl"),
        ("project", {"keep": 1}, "projects.shop.idempotency.keep: unknown key"),
    ],
)
def test_bad_values_are_load_errors_with_their_path(where: str, value: dict[str, Any], path: str) -> None:
    from gateway.policy import PolicyError

    tree = base_policy("http://upstream.test")
    if where == "top":
        tree["idempotency"] = value
    else:
        tree["projects"]["shop"]["idempotency"] = value
    with pytest.raises(PolicyError) as caught:
        make_policy(tree)
    assert any(problem.startswith(path) for problem in caught.value.problems), caught.value.problems


# ---------------------------------------------------------------------------------------------- around it


def test_preflights_allow_the_header_and_answers_expose_the_replay_flag() -> None:
    decision = decide(
        POLICY,
        "OPTIONS",
        "/client/v1/redeem",
        CIMultiDict({"Origin": ORIGIN, "Access-Control-Request-Headers": "idempotency-key"}),
    )
    assert isinstance(decision, Preflight)
    headers = dict(decision.headers)
    allowed = [name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")]
    assert "idempotency-key" in allowed
    exposed = [name.strip().lower() for name in headers["Access-Control-Expose-Headers"].split(",")]
    assert "idempotent-replayed" in exposed
    answer_cors = dict(admit("POST", "/client/v1/redeem?code=A").cors)
    assert "Idempotent-Replayed" in answer_cors["Access-Control-Expose-Headers"]


def test_the_header_is_never_copied_upstream() -> None:
    incoming = CIMultiDict({"Idempotency-Key": "k-1", "Content-Type": "application/json"})
    incoming.add("Connection", "Idempotency-Key")
    out = request_headers(incoming, (), ORIGIN, "gw-1", forward_origin=True)
    assert "Idempotency-Key" not in out and "k-1" not in list(out.values())


@pytest.mark.parametrize(
    ("make", "status", "key"),
    [
        (errors.invalid_idempotency_key, 400, "invalid_idempotency_key"),
        (lambda: errors.idempotency_key_required("redeem"), 400, "idempotency_key_required"),
        (errors.idempotency_key_in_flight, 409, "idempotency_key_in_flight"),
        (errors.idempotency_key_reused, 422, "idempotency_key_reused"),
        (errors.idempotency_unavailable, 503, "idempotency_unavailable"),
    ],
)
def test_error_keys_and_statuses(make: Callable[[], GatewayError], status: int, key: str) -> None:
    error = make()
    document = json.loads(error.body("gw-3"))
    assert (error.status, document["code"], document["key"]) == (status, status, key)
    assert document["message"] and document["details"] and document["request_id"] == "gw-3"


def test_the_access_line_and_the_metric_say_what_the_key_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "level", logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_log.addHandler(handler)
    metrics = Metrics(CollectorRegistry())
    accounting = Accounting([AccessLog(), metrics])
    try:
        for result, decision, status in [
            (Result.REPLAYED, idem.REPLAYED_DECISION, 200),
            (Result.IN_FLIGHT, "idempotency_key_in_flight", 409),
            (Result.REUSED, "idempotency_key_reused", 422),
            (Result.KEPT, "forwarded", 200),
            (None, "forwarded", 200),
        ]:
            accounting.started()
            outcome = Outcome("gw-1", "POST", "shop", "redeem", decision, status)
            outcome.idempotency = result.value if result else None
            accounting.record(outcome)
        accounting.flush()
    finally:
        access_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("idempotency") for line in lines] == ["replayed", "in_flight", "reused", "kept", None]
    assert "idempotency" not in lines[-1]
    registry = metrics.registry
    for name in ("replayed", "in_flight", "reused", "kept"):
        labels = {"project": "shop", "operation": "redeem", "result": name}
        assert registry.get_sample_value("gateway_idempotency_total", labels) == 1
    replayed = {"project": "shop", "operation": "redeem", "decision": "replayed", "status": "200"}
    assert registry.get_sample_value("gateway_requests_total", replayed) == 1
