"""The policy file: defaults, `${VAR}` interpolation, and every problem reported with its key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from gateway.compiled import compile_policy
from gateway.policy import PolicyError, interpolate, load_policy, parse_policy

MINIMAL = """
projects:
  shop:
    credentials:
      client_application_id: app-id
      client_secret_key: s3cr3t-value
    allowed_origins: [https://shop.example.com]
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(text), env=env or {})
    return caught.value.problems


def test_defaults() -> None:
    policy = parse_policy(MINIMAL, env={})
    assert (policy.listen.host, policy.listen.port) == ("127.0.0.1", 8080)
    assert policy.listen.max_body_bytes == 262144
    assert policy.listen.drain_timeout == 30
    assert (policy.upstream.connect_timeout, policy.upstream.read_timeout) == (2, 10)
    assert policy.admin.port is None
    assert (policy.logging.level, policy.logging.format, policy.logging.client_ip) == ("info", "json", "full")
    assert policy.watch is False
    assert policy.client_ip.trusted_proxies == ()
    assert policy.client_ip.ipv6_prefix == 64
    limits = policy.rate_limit
    assert (limits.storage, limits.strategy, limits.per_ip) == (
        "memory://",
        "moving-window",
        "5 per 5 seconds",
    )
    assert limits.operations == {}
    assert (limits.on_storage_error, limits.storage_timeout) == ("allow", 0.5)
    assert policy.default_project is None
    shop = policy.projects["shop"]
    assert (shop.region, shop.base_url, shop.upstream_auth) == ("eu", "https://api.voucherify.io", "client")
    assert shop.allow_missing_origin is False
    assert not any(shop.danger_zone.model_dump().values())
    assert shop.rate_limit is None


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("eu", "https://api.voucherify.io"),
        ("us1", "https://us1.api.voucherify.io"),
        ("as1", "https://as1.api.voucherify.io"),
        ("https://dedicated.example.com/", "https://dedicated.example.com"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ],
)
def test_regions(region: str, url: str) -> None:
    policy = parse_policy(MINIMAL + f"    region: {region}\n", env={})
    assert policy.projects["shop"].base_url == url


@pytest.mark.parametrize(
    "region",
    [
        "https://user:pw@dedicated.example.com",  # user info: never sent, and it would be a secret in a URL
        "https://user@dedicated.example.com",
        "http://127.0.0.1:99999",  # no such port
        "http://dedicated.example.com:https",
        "http://[::1",  # an unclosed IP literal
        "https://bücher.example",  # not punycode
        "https://:8080",  # no host
    ],
)
def test_a_region_url_the_upstream_client_would_refuse_is_a_load_error(region: str) -> None:
    """`check` called these valid, and then every call of the project was refused by the upstream client
    before a byte was sent: 502 upstream_unavailable for every request, the policy in force."""
    found = problems(MINIMAL + f"    region: '{region}'\n")
    assert any("projects.shop.region" in problem for problem in found), found
    assert not any("pw@" in problem for problem in found), found


def test_interpolation_with_defaults() -> None:
    text = """
    listen:
      port: ${PORT:-9000}
      host: ${HOST:-0.0.0.0}
    projects:
      shop:
        region: ${REGION}
        credentials:
          client_application_id: id-${ID}-x
          client_secret_key: ${SECRET:-}fallback
        allowed_origins: ["${ORIGIN:-https://default.example.com}"]
    """
    policy = parse_policy(textwrap.dedent(text), env={"REGION": "us1", "ID": "42", "HOST": "10.0.0.1"})
    assert (policy.listen.host, policy.listen.port) == ("10.0.0.1", 9000)
    shop = policy.projects["shop"]
    assert shop.region == "us1"
    assert shop.credentials.client_application_id is not None
    assert shop.credentials.client_secret_key is not None
    assert shop.credentials.client_application_id.get_secret_value() == "id-42-x"
    assert shop.credentials.client_secret_key.get_secret_value() == "fallback"
    assert shop.allowed_origins == ("https://default.example.com",)


def test_a_missing_variable_is_an_error_naming_it_and_its_key() -> None:
    found = problems(
        """
        projects:
          shop:
            credentials:
              client_application_id: ${SHOP_APP_ID}
              client_secret_key: ${SHOP_SECRET}
        """,
        env={"SHOP_APP_ID": "x"},
    )
    assert any("projects.shop.credentials.client_secret_key" in p and "SHOP_SECRET" in p for p in found), (
        found
    )


def test_secrets_never_show_in_reprs() -> None:
    policy = parse_policy(MINIMAL, env={})
    assert "s3cr3t-value" not in repr(policy)
    assert "app-id" not in repr(policy)
    assert "s3cr3t-value" not in policy.model_dump_json()


def test_every_problem_is_listed_with_its_key_path() -> None:
    found = problems(
        """
        listen:
          port: 70000
          colour: blue
        rate_limit:
          per_ip: lots
          strategy: token-bucket
          operations: {redeem: 3 per fortnight, teleport: 1/second}
        logging: {level: chatty}
        client_ip: {trusted_proxies: [not-a-network]}
        projects:
          shop:
            region: mars
            upstream_auth: server
            allowed_origins: [shop.example.com]
            danger_zone: {redeem: true, self_destruct: true}
            rate_limit: {per_ip: sometimes}
          Bad_Name:
            credentials: {client_application_id: a, client_secret_key: b}
        """
    )
    text = "\n".join(found)
    for expected in [
        "listen.port",
        "listen.colour: unknown key",
        "rate_limit.per_ip: 'lots' is not a rate limit",
        "rate_limit.strategy",
        "rate_limit.operations",
        "logging.level",
        "client_ip.trusted_proxies.0",
        "projects.shop.region",
        "projects.shop.allowed_origins",
        "has no scheme",
        "projects.shop.danger_zone.self_destruct: unknown key",
        "projects.shop.rate_limit.per_ip",
        "projects.Bad_Name: String should match pattern",
    ]:
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert "rate_limit.operations.teleport: unknown operation teleport" in text, text
    assert "rate_limit.operations.redeem: '3 per fortnight'" in text, text


def test_missing_credentials_for_the_mode() -> None:
    client = problems("projects:\n  shop:\n    credentials: {client_application_id: a}\n")
    assert any("projects.shop" in p and "credentials.client_secret_key" in p for p in client), client
    server = problems(
        "projects:\n  shop:\n    upstream_auth: server\n"
        "    credentials: {client_application_id: a, client_secret_key: b}\n"
    )
    text = "\n".join(server)
    assert "credentials.application_id" in text and "credentials.secret_key" in text, text


def test_missing_credentials_are_reported_beside_other_problems() -> None:
    found = problems("projects:\n  shop:\n    region: mars\n")
    text = "\n".join(found)
    assert "projects.shop.region" in text, text
    assert (
        "projects.shop.credentials: upstream_auth: client needs credentials.client_application_id" in text
    ), text


def test_every_bad_origin_entry_is_reported() -> None:
    found = problems(
        MINIMAL.replace(
            "[https://shop.example.com]", "[https://ok.example.com, shop.example.com, https://x.com/path]"
        )
    )
    text = "\n".join(found)
    assert "projects.shop.allowed_origins.1: 'shop.example.com' has no scheme" in text, text
    assert "projects.shop.allowed_origins.2: 'https://x.com/path' is not an origin" in text, text
    assert len(found) == 2, found


def test_default_project_must_exist_and_projects_are_needed() -> None:
    assert any("default_project" in p for p in problems(MINIMAL + "default_project: nope\n"))
    assert any("projects" in p for p in problems("projects: {}\n"))
    assert any("projects" in p for p in problems("listen: {port: 1}\n"))


def test_duplicate_keys_and_non_mappings_are_refused() -> None:
    assert any("duplicate key" in p for p in problems(MINIMAL + "watch: true\nwatch: false\n"))
    assert problems("- a list\n")
    assert problems("projects: [\n")


@pytest.mark.parametrize("key", ["[a, b]", "{a: 1}"])
def test_a_key_that_is_a_list_or_a_mapping_is_a_problem_not_a_crash(key: str) -> None:
    """`? [a, b]: 1` made the duplicate-key check raise TypeError: check and serve died with a traceback."""
    found = problems(MINIMAL + f"? {key}\n: 1\n")
    assert len(found) == 1 and "not valid YAML" in found[0] and "unhashable key" in found[0], found


class CountingEnv(dict[str, str]):
    """An environment that fails a test once more than `bound` references were looked up in it."""

    def __init__(self, bound: int, **values: str) -> None:
        super().__init__(values)
        self.bound, self.lookups = bound, 0

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        assert self.lookups <= self.bound, "a node shared through YAML aliases was walked at every alias"
        return super().__contains__(key)


def alias_bomb(levels: int) -> str:
    """A "billion laughs": `levels` levels of ten aliases each, 10 ** levels strings once expanded."""
    lines = ['  a0: &a0 ["${V}", x, x, x, x, x, x, x, x, x]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "anchors:\n" + "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_walked_once_not_expanded() -> None:
    """Nine levels of ten aliases (600 bytes) were copied at each alias by the `${VAR}` walk: ten minutes
    and gigabytes in `check`, at start-up, and in a reload's thread that held the reload lock."""
    last = "*a8"
    text = alias_bomb(9) + f"client_ip: {{trusted_proxies: {last}}}\nrate_limit: {{strategy: {last}}}\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(MINIMAL + text, env=CountingEnv(10, V="v"))
    found = caught.value.problems
    assert "anchors: unknown key" in found, found
    assert "rate_limit.strategy: Input should be a valid string" in found, found
    assert "client_ip.trusted_proxies.0: Input should be a valid string" in found, found


def test_a_node_shared_through_aliases_is_interpolated_once_and_shared() -> None:
    problems: list[str] = []
    tree = yaml.safe_load("a: &a [x, '${V}', '${MISSING}']\nb: [*a, *a]\n")
    out = interpolate(tree, CountingEnv(2, V="v"), problems)
    assert out["a"] == ["x", "v", ""]
    assert out["b"][0] is out["b"][1] is out["a"]
    assert problems == ["a.2: environment variable MISSING is not set"]


@pytest.mark.parametrize("text", ["x: &a [*a]\n", "x: &a {y: [1, *a]}\n"])
def test_a_yaml_node_that_contains_itself_is_a_problem_not_a_crash(text: str) -> None:
    """`x: &a [*a]` made the `${VAR}` walk recurse until RecursionError: a traceback from check."""
    found = problems(MINIMAL + text)
    assert any("a YAML alias refers to a node that contains it" in p for p in found), found


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("rate_limit: {strategy: [[fixed-window]]}", "rate_limit.strategy"),
        ("client_ip: {trusted_proxies: [[10.0.0.0/8]]}", "client_ip.trusted_proxies.0"),
    ],
)
def test_a_list_where_a_string_belongs_is_not_rendered_into_the_message(text: str, path: str) -> None:
    """The enum's and the IP network's messages quoted their input: a list there was rendered whole (an
    alias bomb's 10 ** 8 strings took three minutes for trusted_proxies alone)."""
    assert problems(MINIMAL + text + "\n") == [f"{path}: Input should be a valid string"]


@pytest.mark.parametrize("key", ["x", "client_ip"])
def test_yaml_nested_too_deeply_is_a_problem_not_a_crash(key: str) -> None:
    """A few hundred nested `[` made PyYAML's composer raise RecursionError: a traceback from check."""
    found = problems(MINIMAL + f"{key}: {'[' * 1000}{']' * 1000}\n")
    assert found == ["policy: not valid YAML: nested too deeply"], found


@pytest.mark.parametrize(
    "broken",
    [
        "client_secret_key: sk-live-4f2a9c: x",  # a colon in the value
        'client_secret_key: "sk-live-4f2a9c',  # a quote left open, or a file read while being written
        "client_secret_key: sk-live-4f2a9c\n     client_application_id: app",  # an indentation slip
    ],
)
def test_a_yaml_error_names_its_line_but_never_quotes_it(broken: str) -> None:
    """PyYAML's message quotes the lines around the error: a credential written in the file was printed
    by check and logged by a reload ("reload rejected: ...")."""
    found = problems(f"projects:\n  shop:\n    credentials:\n      {broken}\n")
    assert len(found) == 1 and found[0].startswith("policy: not valid YAML: "), found
    assert "sk-live" not in found[0] and "4f2a9c" not in found[0], found
    assert "(line 5, column " in found[0] or "(line 4, column " in found[0], found


def test_yaml_merge_keys_share_a_project_s_settings() -> None:
    """`<<: *base` was "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'": the
    duplicate-key check constructed the merge key itself, so no policy could use YAML merge keys."""
    text = """
    projects:
      shop: &base
        region: us1
        credentials: {client_application_id: a, client_secret_key: b}
        allowed_origins: [https://shop.example.com]
      outlet:
        <<: *base
        allowed_origins: [https://outlet.example.com]
      kiosk:
        <<: [*base, {allow_missing_origin: true}]
    """
    policy = parse_policy(textwrap.dedent(text), env={})
    outlet, kiosk = policy.projects["outlet"], policy.projects["kiosk"]
    assert (outlet.region, outlet.allowed_origins) == ("us1", ("https://outlet.example.com",))
    assert (kiosk.region, kiosk.allow_missing_origin) == ("us1", True)
    assert any("duplicate key 'watch'" in p for p in problems(MINIMAL + "watch: false\nwatch: true\n"))
    merged_twice = MINIMAL + "x: &x {a: 1}\nlisten: {<<: *x, <<: *x}\n"
    assert any("duplicate key '<<'" in p for p in problems(merged_twice))


def test_project_rate_limit_overrides_inherit_the_rest() -> None:
    text = MINIMAL + textwrap.dedent(
        """\
            rate_limit: {per_ip: 20 per minute}
        rate_limit:
          strategy: fixed-window
          per_ip: 5 per 5 seconds
          operations: {redeem: 3 per minute}
        """
    )
    policy = parse_policy(text, env={})
    limits = policy.rate_limit_for("shop")
    assert limits.per_ip == "20 per minute"
    assert limits.strategy == "fixed-window"
    assert limits.operations == {"redeem": "3 per minute"}


def test_compiled_buckets_per_operation() -> None:
    text = MINIMAL + "rate_limit:\n  operations: {redeem: 3 per minute}\n"
    shop = compile_policy(parse_policy(text, env={})).projects["shop"]
    assert shop.buckets["redeem"].name == "redeem"
    assert shop.buckets["redeem"].policy_header == '"redeem";q=3;w=60'
    assert shop.buckets["validate"] is shop.buckets["publish"]
    assert shop.buckets["validate"].policy_header == '"per_ip";q=5;w=5'
    assert shop.buckets["validate"].namespace != shop.buckets["redeem"].namespace


def test_load_policy_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(MINIMAL)
    assert "shop" in load_policy(path, env={}).projects
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml", env={})
    assert "missing.yaml" in caught.value.problems[0]


def test_a_policy_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """A Latin-1 comment (`# café`) raised UnicodeDecodeError: a traceback from check and serve, and a
    reload rejected with no more than the exception's type."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"# caf\xe9\n" + MINIMAL.encode())
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env={})
    assert caught.value.problems == [f"{path}: not UTF-8 text (byte 5)"]


@pytest.mark.parametrize("name", ["config/policy.yaml", "config/policy.example.yaml"])
def test_shipped_policies_are_valid(name: str) -> None:
    root = Path(__file__).resolve().parents[2]
    load_policy(root / name, env={})


def test_cache_ttl_defaults_to_off_and_a_project_may_replace_it() -> None:
    policy = parse_policy(MINIMAL, env={})
    assert policy.cache.ttl == 0 and policy.cache_for("shop").ttl == 0
    assert compile_policy(policy).projects["shop"].cache_ttl == 0
    text = MINIMAL + "    cache: {ttl: 30}\n  blog:\n" + MINIMAL.split("  shop:\n")[1] + "cache: {ttl: 5}\n"
    compiled = compile_policy(parse_policy(text, env={}))
    assert compiled.projects["shop"].cache_ttl == 30
    assert compiled.projects["blog"].cache_ttl == 5  # inherited
    inherit = MINIMAL + "    cache: {}\ncache: {ttl: 2.5}\n"
    assert compile_policy(parse_policy(inherit, env={})).projects["shop"].cache_ttl == 2.5


def test_bad_cache_keys_are_reported_with_their_paths() -> None:
    found = problems(MINIMAL + "    cache: {ttl: -1, size: 3}\ncache: {ttl: soon}\n")
    assert any(p.startswith("projects.shop.cache.ttl:") for p in found), found
    assert "projects.shop.cache.size: unknown key" in found
    assert any(p.startswith("cache.ttl:") for p in found), found


def test_api_version_is_compiled_for_the_upstream_call() -> None:
    shop = compile_policy(parse_policy(MINIMAL + "    api_version: v2018-08-01\n", env={})).projects["shop"]
    assert shop.api_version == "v2018-08-01"
    assert compile_policy(parse_policy(MINIMAL, env={})).projects["shop"].api_version is None


@pytest.mark.parametrize(
    "value",
    [
        "2018-08-01",
        "v2018-8-1",
        "V2018-08-01",
        "v2018-13-01",
        "v2018-02-30",
        "v2018-08-01 ",
        "v2018-08-01\\r\\nX-Evil: 1",
        "v\u0662\u0660\u0661\u0668-08-01",  # Arabic-Indic digits
        "v20180801",
        "latest",
        "1",
    ],
)
def test_check_refuses_an_api_version_that_is_not_vyyyy_mm_dd(value: str) -> None:
    found = problems(MINIMAL + f'    api_version: "{value}"\n')
    assert len(found) == 1 and found[0].startswith("projects.shop.api_version:"), found
    assert "vYYYY-MM-DD" in found[0]


def test_api_version_is_a_string_not_a_yaml_date() -> None:
    found = problems(MINIMAL + "    api_version: 2018-08-01\n")
    assert found and found[0].startswith("projects.shop.api_version:")


def test_upstream_quota_and_its_reserve_are_compiled_per_project() -> None:
    text = MINIMAL + "rate_limit: {upstream_quota: 2000 per minute, redeem_reserve: 0.2}\n"
    shop = compile_policy(parse_policy(text, env={})).projects["shop"]
    assert shop.quota is not None
    assert (shop.quota.limit, shop.quota.window, shop.quota.reserve) == (2000, 60, 400)
    assert shop.quota.limit_for("redeem") == 2000 and shop.quota.limit_for("list_consents") == 1600
    assert compile_policy(parse_policy(MINIMAL, env={})).projects["shop"].quota is None  # default: off


def test_an_explicit_null_turns_the_upstream_quota_off_for_a_project_and_a_left_out_key_inherits() -> None:
    base = "rate_limit: {upstream_quota: 10 per minute, redeem_reserve: 0.5}\n"
    off = compile_policy(parse_policy(MINIMAL + "    rate_limit: {upstream_quota: null}\n" + base, env={}))
    assert off.projects["shop"].quota is None
    kept = compile_policy(parse_policy(MINIMAL + "    rate_limit: {per_ip: 9/minute}\n" + base, env={}))
    assert kept.projects["shop"].quota is not None and kept.projects["shop"].quota.reserve == 5
    own = compile_policy(parse_policy(MINIMAL + "    rate_limit: {redeem_reserve: 0}\n" + base, env={}))
    assert own.projects["shop"].quota is not None and own.projects["shop"].quota.reserve == 0


@pytest.mark.parametrize(
    ("rate_limit", "path"),
    [
        ("{upstream_quota: 10/hour;3/minute}", "rate_limit.upstream_quota"),
        ("{upstream_quota: 0 per hour}", "rate_limit.upstream_quota"),
        ("{upstream_quota: lots}", "rate_limit.upstream_quota"),
        ("{redeem_reserve: 1.5}", "rate_limit.redeem_reserve"),
        ("{redeem_reserve: -0.1}", "rate_limit.redeem_reserve"),
        ("{redeem_reserve: true}", "rate_limit.redeem_reserve"),
    ],
)
def test_check_refuses_bad_quota_keys(rate_limit: str, path: str) -> None:
    found = problems(MINIMAL + f"rate_limit: {rate_limit}\n")
    assert len(found) == 1 and found[0].startswith(f"{path}:"), found
    in_project = problems(MINIMAL + f"    rate_limit: {rate_limit}\n")
    assert len(in_project) == 1 and in_project[0].startswith(f"projects.shop.{path}:"), in_project


@pytest.mark.parametrize(
    ("rate_limit", "path"),
    [
        ("{per_ip: 5 per 0 seconds}", "rate_limit.per_ip"),  # memory and Redis: no limit at all
        ("{per_ip: 100/minute;5 per 0 seconds}", "rate_limit.per_ip"),
        ("{per_ip: 5 per 99999999999999999999 seconds}", "rate_limit.per_ip"),  # Redis: every call fails
        ("{per_ip: 5 per 11 years}", "rate_limit.per_ip"),
        ("{operations: {redeem: 3 per 0 minutes}}", "rate_limit.operations.redeem"),
        ("{failed_codes: 10 per 0 hours}", "rate_limit.failed_codes"),
        ("{upstream_quota: 10 per 0 seconds}", "rate_limit.upstream_quota"),
    ],
)
def test_check_refuses_a_window_of_zero_or_beyond_ten_years(rate_limit: str, path: str) -> None:
    """`check` called these valid; a window of 0 s counted nothing (with sliding-window-counter every
    request was a 500), and one of 1e20 s overflowed Redis's expiry (every request a store error)."""
    found = problems(MINIMAL + f"rate_limit: {rate_limit}\n")
    assert len(found) == 1 and found[0].startswith(f"{path}:") and "window" in found[0], found
    in_project = problems(MINIMAL + f"    rate_limit: {rate_limit}\n")
    assert len(in_project) == 1 and in_project[0].startswith(f"projects.shop.{path}:"), in_project


def test_windows_of_one_second_to_ten_years_are_valid() -> None:
    policy = parse_policy(MINIMAL + "rate_limit: {per_ip: 1/second;5 per 10 years}\n", env={})
    assert policy.rate_limit.per_ip == "1/second;5 per 10 years"


@pytest.mark.parametrize(
    "key",
    [
        "listen.drain_timeout",
        "listen.body_timeout",
        "listen.header_timeout",
        "listen.keepalive_timeout",
        "upstream.connect_timeout",
        "upstream.read_timeout",
        "rate_limit.storage_timeout",
        "cache.ttl",
    ],
)
@pytest.mark.parametrize("value", [".inf", "1e300", "315360001"])
def test_check_refuses_a_duration_beyond_ten_years(key: str, value: str) -> None:
    """`check` called `.inf` and 1e300 valid durations. An Idempotency-Key's in-flight marker lives for the
    upstream and body timeouts together: on Redis, `.inf` made every keyed request a 500 (OverflowError)
    and 1e300 every keyed request a 503 (Redis refused the expiry)."""
    section, name = key.split(".")
    found = problems(MINIMAL + f"{section}: {{{name}: {value}}}\n")
    assert len(found) == 1 and found[0].startswith(f"{key}: Input should be less than or equal to"), found


@pytest.mark.parametrize(("section", "name"), [("rate_limit", "storage_timeout"), ("cache", "ttl")])
def test_a_project_cannot_set_a_duration_beyond_ten_years(section: str, name: str) -> None:
    found = problems(MINIMAL + f"    {section}: {{{name}: .inf}}\n")
    assert len(found) == 1 and found[0].startswith(f"projects.shop.{section}.{name}:"), found


@pytest.mark.parametrize(
    "uri",
    [
        "redis://localhost",  # limits needs the port: ConfigurationError at start-up
        "redis://:hunter2@localhost/0",
        "redis://:hunter2@localhost:99999",  # "Port out of range"
        "redis+sentinel://:hunter2@h:99999/mymaster",  # limits: "Unable to parse storage uri <the URI>"
        "redis+sentinel://:hunter2@h:26379",  # no service name
        "redis+sentinel://",
        "redis+cluster://:hunter2@h",
        "redis+cluster://:hunter2@[::1:7000",
        "redis+cluster://",
    ],
)
def test_a_storage_uri_serve_cannot_open_is_a_load_error_that_never_quotes_it(uri: str) -> None:
    """check called these valid; serve then died opening the store, with a traceback quoting the URI,
    password included, and a reload was rejected with no more than the exception's type."""
    from limits.errors import ConfigurationError
    from redis.exceptions import RedisClusterException

    from gateway.ratelimit import open_store

    with pytest.raises((ValueError, ConfigurationError, RedisClusterException)):  # serve could not start
        open_store(uri)
    for text in (
        MINIMAL + f"rate_limit: {{storage: '{uri}'}}\n",
        MINIMAL + f"    rate_limit: {{storage: '{uri}'}}\n",
    ):
        found = problems(text)
        assert len(found) == 1 and "rate_limit.storage: " in found[0], found
        assert "hunter2" not in found[0], found


@pytest.mark.parametrize(
    "uri",
    [
        "redis://",
        "redis://localhost:6379/0",
        "rediss://:hunter2@h:6380",
        "redis://:p@ss@h:6379",
        "redis://:pw@[::1]:6379",
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster",
        "redis+cluster://h1:7000,h2:7001",
    ],
)
def test_a_storage_uri_serve_can_open_is_valid(uri: str) -> None:
    from gateway.ratelimit import open_store

    open_store(uri)
    assert parse_policy(MINIMAL + f"rate_limit: {{storage: '{uri}'}}\n", env={}).rate_limit.storage == uri


@pytest.mark.parametrize("section", ["admin", "listen"])
def test_an_empty_host_is_a_load_error_not_every_interface(section: str) -> None:
    """An empty host binds every interface: `admin.host: ${ADMIN_HOST:-}` with the variable unset put
    the admin listener (/metrics, /readyz) on 0.0.0.0 and [::]."""
    found = problems(MINIMAL + f"{section}:\n  host: ${{ADMIN_HOST:-}}\n  port: 9090\n")
    assert len(found) == 1 and found[0].startswith(f"{section}.host: String should have at least 1"), found
    policy = parse_policy(MINIMAL + f"{section}: {{host: '${{ADMIN_HOST:-0.0.0.0}}'}}\n", env={})
    assert getattr(policy, section).host == "0.0.0.0"  # said so, it is allowed


@pytest.mark.parametrize(
    "secret", ["s3cr3t-value\n", "s3cr3t-value\r\n", "s3cr3t\x00value", " s3cr3t-value", "s3cr3t vålue"]
)
@pytest.mark.parametrize(
    "key", ["client_application_id", "client_secret_key", "application_id", "secret_key"]
)
def test_a_credential_that_cannot_be_a_header_value_is_a_load_error_that_never_quotes_it(
    key: str, secret: str
) -> None:
    """A secret read from a file often ends in a newline: check called it valid, then the upstream client
    refused every call (a header that could split the request), and every request was a 502."""
    mode = "server" if key in ("application_id", "secret_key") else "client"
    others = {
        "client": {"client_application_id": "app-id", "client_secret_key": "key"},
        "server": {"application_id": "app-id", "secret_key": "key"},
    }[mode]
    text = f"projects:\n  shop:\n    upstream_auth: {mode}\n    credentials:\n"
    text += "".join(f"      {name}: {value}\n" for name, value in others.items() if name != key)
    text += f"      {key}: ${{KEY}}\n"
    found = problems(text, env={"KEY": secret})
    assert len(found) == 1 and found[0].startswith(f"projects.shop.credentials.{key}: holds a space"), found
    assert "s3cr3t" not in found[0], found


@pytest.mark.parametrize(
    "place",
    [
        "    api_version: ${WRONG}\n",  # its validator quotes what it refuses
        "    rate_limit: {per_ip: '${WRONG}'}\n",
        "    rate_limit: {failed_codes: '${WRONG} per hour'}\n",  # quoted inside a longer value
    ],
)
def test_a_value_from_the_environment_is_never_quoted_by_a_problem(place: str) -> None:
    """A secret put in a field that is not a credential by mistake (the wrong variable) was printed by
    check and logged by a rejected reload, in the field's own message. It is named by its reference."""
    secret = "sk_live_9f8e7d6c5b4a"
    found = problems(MINIMAL + place, env={"WRONG": secret})
    assert len(found) == 1 and secret not in found[0] and "'${WRONG}" in found[0], found


def test_a_short_value_from_the_environment_leaves_the_message_readable() -> None:
    found = problems(MINIMAL.replace("shop:", "shop:\n    api_version: ${V}"), env={"V": "v1"})
    assert found == [
        "projects.shop.api_version: 'v1' is not an API version such as v2018-08-01 (vYYYY-MM-DD)"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "admin: {port: 8080}\n",  # listen's default port, both on 127.0.0.1
        "listen: {port: 9000}\nadmin: {port: 9000}\n",
        "listen: {host: 0.0.0.0, port: 9000}\nadmin: {port: 9000}\n",
        "listen: {host: 10.0.0.5, port: 9000}\nadmin: {host: '::', port: 9000}\n",
    ],
)
def test_the_admin_listener_on_the_public_port_is_a_load_error(text: str) -> None:
    """check called it valid; serve then died at start-up binding the second listener (a traceback)."""
    found = problems(MINIMAL + text)
    assert found == ["admin: port 8080 is listen.port: the admin listener needs a port of its own"] or (
        found == ["admin: port 9000 is listen.port: the admin listener needs a port of its own"]
    ), found


def test_the_admin_listener_may_share_a_port_number_on_another_address() -> None:
    text = "listen: {host: 10.0.0.5, port: 9000}\nadmin: {host: 127.0.0.1, port: 9000}\n"
    assert parse_policy(MINIMAL + text, env={}).admin.port == 9000
    assert parse_policy(MINIMAL + "admin: {port: 0}\nlisten: {port: 0}\n", env={}).admin.port == 0


@pytest.mark.parametrize(
    "value",
    [
        "${SHOP_SECRET",  # the closing brace forgotten
        "${shop-secret}",  # not a variable name
        "${1SECRET}",
        "${SHOP_SECRET:-${FALLBACK_SECRET}}",  # a reference in a default: was the text `${FALLBACK_SECRET}`
        "prefix-${SHOP_SECRET}-${",
    ],
)
def test_a_dollar_brace_that_is_no_reference_is_a_problem_not_text(value: str) -> None:
    """Kept as text, a malformed reference became the credential itself: check called the policy valid
    and every call was refused upstream."""
    text = MINIMAL.replace("s3cr3t-value", f"'{value}'")
    found = problems(text, env={"SHOP_SECRET": "hunter2", "FALLBACK_SECRET": "hunter3"})
    assert len(found) == 1, found
    assert found[0].startswith("projects.shop.credentials.client_secret_key: a '${' that is not a reference")
    assert "hunter" not in found[0] and "SECRET" not in found[0], found


def test_a_variable_holding_dollar_brace_is_taken_as_it_is() -> None:
    policy = parse_policy(MINIMAL.replace("s3cr3t-value", "${KEY}"), env={"KEY": "a${b"})
    secret = policy.projects["shop"].credentials.client_secret_key
    assert secret is not None and secret.get_secret_value() == "a${b"  # env values are not read again


@pytest.mark.parametrize("section", ["admin", "listen"])
@pytest.mark.parametrize("host", ["localhost:9090", "[::1]", "http://0.0.0.0", "127.0.0.1 ", "a..b"])
def test_a_host_that_cannot_be_bound_is_a_load_error(section: str, host: str) -> None:
    """check called `admin.host: localhost:9090` valid; start-up then died resolving it (socket.gaierror)."""
    found = problems(MINIMAL + f"{section}: {{host: '{host}'}}\n")
    assert len(found) == 1 and found[0].startswith(f"{section}.host: must be an IP address or a host name")


@pytest.mark.parametrize(
    "host", ["localhost", "0.0.0.0", "::", "::1", "10.0.0.5", "gw.example.com", "my_service"]
)
def test_addresses_and_host_names_are_valid_hosts(host: str) -> None:
    assert parse_policy(MINIMAL + f"admin: {{host: '{host}'}}\n", env={}).admin.host == host
