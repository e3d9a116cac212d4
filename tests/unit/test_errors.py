"""The gateway's own errors: Voucherify's shape, and caller text neutralised before it is echoed."""

from __future__ import annotations

import json

import pytest

from gateway import errors


def test_error_body_has_voucherify_shape_and_the_request_id() -> None:
    body = json.loads(errors.danger_zone_disabled("redeem", "redeem").body("gw-1"))
    assert body == {
        "code": 403,
        "key": "danger_zone_disabled",
        "message": "Operation disabled for client-side use",
        "details": body["details"],
        "request_id": "gw-1",
    }
    assert "danger_zone.redeem" in body["details"]


def test_a_hostile_origin_is_shortened_and_stripped_of_control_characters_before_it_is_echoed() -> None:
    hostile = "https://evil.example/\x1b[31m\r\nX-Injected: 1" + "a" * 500
    details = errors.origin_not_allowed(hostile).details
    assert "\x1b" not in details and "\r" not in details and "\n" not in details
    assert "a" * 201 not in details  # at most 200 characters of it
    assert details.count("…") == 1


def test_a_hostile_method_in_a_405_is_neutralised() -> None:
    details = errors.method_not_allowed("GET\x00\x07", ("POST",)).details
    assert "\x00" not in details and "\x07" not in details
    assert details.startswith("GET?? is not supported")


def test_upstream_quota_exhausted_is_a_503_for_both_reasons():
    for busy in (False, True):
        error = errors.upstream_quota_exhausted(7, voucherify_busy=busy)
        body = json.loads(error.body("gw-2"))
        assert (error.status, body["code"], body["key"]) == (503, 503, "upstream_quota_exhausted")
        assert "7 seconds" in body["details"] and "nothing was sent" in body["details"]
    assert "Voucherify" in errors.upstream_quota_exhausted(1, voucherify_busy=True).details


@pytest.mark.parametrize(
    "error",
    [
        errors.too_many_requests(7),
        errors.origin_not_allowed('https://a"b\\c.example\u2028'),
        errors.invalid_payload('The request body has a "__proto__" key.'),
        errors.not_found(),
    ],
)
@pytest.mark.parametrize("request_id", ["gw-0123456789abcdef", 'odd"id\\\x00'])
def test_the_body_is_voucherifys_shape_whatever_its_text(error: errors.GatewayError, request_id: str) -> None:
    """The pre-encoded halves plus the id are exactly the JSON of the whole error."""
    assert json.loads(error.body(request_id)) == {
        "code": error.status,
        "key": error.key.value,
        "message": error.message,
        "details": error.details,
        "request_id": request_id,
    }
