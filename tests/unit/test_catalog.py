"""The operation table and raw-path matching, without sockets."""

from __future__ import annotations

import pytest

from gateway.catalog import CATALOG, OPERATIONS, ROUTES, DangerOption, Twin
from gateway.policy import DangerZone


def segments(path: str) -> tuple[str, ...]:
    """The raw segments after /client/v1, as `decide` hands them over (a trailing slash is an empty one)."""
    return tuple(path[1:].split("/"))


# POLICY.md's table: name, method, route, danger-zone option needed for every call.
CONTRACT = [
    ("validate", "GET", "/validate", None),
    ("validate", "GET", "/promotions/validation", None),
    ("validate_stackable", "POST", "/validations", None),
    ("redeem", "POST", "/redeem", "redeem"),
    ("redeem_stackable", "POST", "/redemptions", "redeem"),
    ("redeem_promotion_tier", "POST", "/promotions/tiers/{tier_id}/redemption", "redeem"),
    ("publish", "POST", "/publish", "publish"),
    ("qualifications", "POST", "/qualifications", None),
    ("list_promotion_tiers", "GET", "/promotions/tiers", None),
    ("track_event", "POST", "/events", None),
    ("list_vouchers", "GET", "/vouchers", "list_vouchers"),
    ("create_customer", "POST", "/customers", "create_customers"),
    ("list_consents", "GET", "/consents", None),
    ("update_consents", "PUT", "/customers/{customer_id}/consents", None),
]


def test_routes_are_exactly_the_contracts_table() -> None:
    table = [
        (r.operation.name, r.method, r.template, r.operation.danger and r.operation.danger.value)
        for r in ROUTES
    ]
    assert sorted(table) == sorted(CONTRACT)
    assert len(OPERATIONS) == 13


def test_track_event_needs_its_option_only_for_loyalty_or_referral() -> None:
    track = OPERATIONS["track_event"]
    assert track.danger is None
    assert track.body_danger is DangerOption.CREATE_LOYALTY_REFERRAL_EVENTS
    assert set(track.body_danger_keys) == {"loyalty", "referral"}


@pytest.mark.parametrize(("name", "method", "template", "_"), CONTRACT)
def test_every_route_matches_itself(name: str, method: str, template: str, _: str | None) -> None:
    path = template.replace("{tier_id}", "tier_1").replace("{customer_id}", "cust_1")
    found = CATALOG.match(segments(path))
    assert found is not None
    assert found.routes[method].operation.name == name


def test_paths_shared_by_two_methods_list_both() -> None:
    # /customers is POST only; /customers/{id}/consents is PUT only; /promotions/tiers GET only.
    def methods(path: str) -> set[str]:
        found = CATALOG.match(segments(path))
        assert found is not None, path
        return set(found.routes)

    assert methods("/customers") == {"POST"}
    assert methods("/customers/c/consents") == {"PUT"}
    assert methods("/promotions/tiers") == {"GET"}


def test_parameters_are_kept_exactly_as_sent() -> None:
    found = CATALOG.match(segments("/customers/c%201%2Fx/consents"))
    assert found is not None
    assert found.params == {"customer_id": "c%201%2Fx"}
    found = CATALOG.match(segments("/promotions/tiers/promo_TIER-1~x/redemption"))
    assert found is not None
    assert found.params == {"tier_id": "promo_TIER-1~x"}


@pytest.mark.parametrize(
    "path",
    [
        "/Validate",
        "/VALIDATE",
        "/%76alidate",
        "/validate/",
        "/validate/x",
        "/validate%2f",
        "/./validate",
        "/promotions/%2e%2e/validate",
        "/promotions/tiers/",
        "/customers/",
        "/customers/c/consents/",
        "/customers/c/Consents",
        "/vouchers/code",
        "/v1/vouchers",
        "",
    ],
)
def test_static_segments_match_to_the_letter(path: str) -> None:
    found = CATALOG.match(segments(path) if path else ())
    assert found is None


@pytest.mark.parametrize(
    "param",
    [
        "..",
        ".",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e",
        "a%2f..",
        "a%2F..%2Fb",
        "..%2fv1",
        "a%2f.%2fb",
        "%5c",
        "a%5cb",
        "a\\b",
        "a%00b",
        "a%0ab",
        "a%0D%0Ab",
        "a%7fb",
        "a%1fb",
        "a%C2%85b",  # U+0085 (NEL), a C1 control character, in UTF-8
        "a%c2%9b",  # U+009B (CSI)
        "%C2%80",
        "a%",
        "a%2",
        "a%zz",
        "a b",
        "a?b",
        "a#b",
        'a"b',
        "a<b",
        "é",
    ],
)
@pytest.mark.parametrize("template", ["/customers/{}/consents", "/promotions/tiers/{}/redemption"])
def test_unsafe_parameters_match_nothing(template: str, param: str) -> None:
    assert CATALOG.match(segments(template.format(param))) is None


@pytest.mark.parametrize(
    "param", ["c%201%2Fx", "a.b", "...", "a..b", "%2e%2e%2e", "a%2fb", "x@y.z", "%C3%A9"]
)
def test_safe_parameters_match(param: str) -> None:
    found = CATALOG.match(segments(f"/customers/{param}/consents"))
    assert found is not None
    assert found.params == {"customer_id": param}


def test_the_operations_twins_are_the_references_table() -> None:
    """reference/voucherify-client-api.md: ten twins of the same shape, and three that move things."""
    moved = {name: op.twin for name, op in OPERATIONS.items() if op.twin is not Twin.SAME}
    assert moved == {"redeem": Twin.CODE_IN_PATH, "publish": Twin.PUBLICATION, "validate": Twin.QUERY_TO_BODY}
    assert [name for name, op in OPERATIONS.items() if op.narrowed] == ["list_vouchers"]


def test_every_danger_option_has_a_policy_switch() -> None:
    assert set(DangerZone.model_fields) == {option.value for option in DangerOption}
