"""Every file the bench runs on, generated at run time into a temp dir: nginx.conf, the policy, wrk's Lua."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ORIGIN = "https://shop.example.com"
PATH = "/client/v1/validations"
BARE = {  # the relays without a policy (contenders of bench.runner), and their modules
    "bare-aiohttp": "bench.bare_proxy",
    "bare-http1": "bench.bare_http1",
    "bare-httptools": "bench.bare_httptools",
}
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
# Scenario (b) holds this many checkouts in flight. A gateway sized for them says so in its policy: the
# defaults (1,024 connections per process, 1,000 requests in flight per upstream host) are a single
# process's safe bounds, and over them the gateway closes connections and answers 502 by design.
SLOW_CONNECTIONS = 2000
IN_FLIGHT = 2 * SLOW_CONNECTIONS  # the bench policy's max_connections and max_in_flight_per_host
CLIENT_IPS = 10_000  # distinct shoppers named in X-Forwarded-For, in turn
# Scenario (c): a legacy client-side redemption, sent with an Idempotency-Key; (d): a promotion-tier listing.
REDEEM_PATH = "/client/v1/redeem?code=BLCKFRDY-2024"
TIERS_PATH = "/client/v1/promotions/tiers?is_available=true&limit=10"
SDK_HEADERS = {  # what the SDK sends beside Origin (and a body's Content-Length): wrk's, micro's, served's
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "voucherify-js-sdk/2 bench",
    "X-Client-Application-Id": "-",
    "X-Client-Token": "-",
}

# A stackable validation as a checkout sends it: two redeemables, an order with items, a customer.
REQUEST_BODY = json.dumps(
    {
        "redeemables": [
            {"object": "voucher", "id": "BLCKFRDY-2024"},
            {"object": "promotion_tier", "id": "promo_2kCgE8sPtP7TyPZuNxNY0Khb"},
        ],
        "order": {
            "amount": 24900,
            "items": [
                {"product_id": "prod_0b7d7dfb05cbe5c616", "quantity": 2, "price": 8900},
                {"sku_id": "sku_0b7d7dfb076a8d2d16", "quantity": 1, "price": 7100},
            ],
            "metadata": {"channel": "web", "store": "berlin-01"},
        },
        "customer": {"source_id": "cust_8f3a2c", "email": "shopper@example.com"},
        "session": {"type": "LOCK"},
        "options": {"expand": ["order", "redeemable"]},
    },
    separators=(",", ":"),
)

# Voucherify's answer to it, trimmed but of realistic size and shape (about 1.5 KB).
RESPONSE_BODY = json.dumps(
    {
        "valid": True,
        "redeemables": [
            {
                "status": "APPLICABLE",
                "id": "BLCKFRDY-2024",
                "object": "voucher",
                "order": {"amount": 24900, "discount_amount": 2490, "total_amount": 22410},
                "applicable_to": {"data": [], "total": 0, "object": "list"},
                "inapplicable_to": {"data": [], "total": 0, "object": "list"},
                "result": {"discount": {"type": "PERCENT", "percent_off": 10, "effect": "APPLY_TO_ORDER"}},
                "metadata": {},
            },
            {
                "status": "APPLICABLE",
                "id": "promo_2kCgE8sPtP7TyPZuNxNY0Khb",
                "object": "promotion_tier",
                "order": {"amount": 22410, "discount_amount": 1000, "total_amount": 21410},
                "result": {"discount": {"type": "AMOUNT", "amount_off": 1000, "effect": "APPLY_TO_ORDER"}},
                "metadata": {"campaign": "black-friday"},
            },
        ],
        "order": {
            "amount": 24900,
            "discount_amount": 3490,
            "total_discount_amount": 3490,
            "total_amount": 21410,
            "applied_discount_amount": 3490,
            "total_applied_discount_amount": 3490,
            "items": [
                {
                    "object": "order_item",
                    "product_id": "prod_0b7d7dfb05cbe5c616",
                    "quantity": 2,
                    "price": 8900,
                },
                {"object": "order_item", "sku_id": "sku_0b7d7dfb076a8d2d16", "quantity": 1, "price": 7100},
            ],
            "metadata": {"channel": "web", "store": "berlin-01"},
            "object": "order",
        },
        "tracking_id": "track_zTa+v4d+mc0ixHNURqEvtCLxLs3nFj7oqnH/mjXDVZuE=",
        "session": {
            "key": "ssn_yQGMTeKBSw8OOuFPwlBEjzGy8d8VA9Ts",
            "type": "LOCK",
            "ttl": 7,
            "ttl_unit": "DAYS",
        },
        "stacking_rules": {
            "redeemables_limit": 30,
            "applicable_redeemables_limit": 5,
            "applicable_exclusive_redeemables_limit": 1,
            "exclusive_categories": [],
            "joint_categories": [],
        },
    },
    separators=(",", ":"),
)


REDEEM_BODY = json.dumps(
    {
        "customer": {"source_id": "cust_8f3a2c"},
        "order": {"amount": 24900, "items": [{"product_id": "prod_0b7d7dfb05cbe5c616", "quantity": 2}]},
    },
    separators=(",", ":"),
)

# The stub's answers to those two: small JSON bodies of Voucherify's shape.
REDEEM_RESPONSE = json.dumps(
    {
        "id": "r_0c5d710a87c8a31f86",
        "object": "redemption",
        "result": "SUCCESS",
        "voucher": {"code": "BLCKFRDY-2024", "discount": {"type": "PERCENT", "percent_off": 10}},
        "order": {"amount": 24900, "discount_amount": 2490, "total_amount": 22410},
    },
    separators=(",", ":"),
)
TIERS_RESPONSE = json.dumps(
    {
        "object": "list",
        "data_ref": "tiers",
        "tiers": [
            {
                "id": f"promo_2kCgE8sPtP7TyPZuNxNY0Kh{i}",
                "name": f"Spend {50 * (i + 1)}, get {5 * (i + 1)} off",
                "banner": "Black Friday",
                "action": {"discount": {"type": "AMOUNT", "amount_off": 500 * (i + 1)}},
                "metadata": {"campaign": "black-friday"},
            }
            for i in range(3)
        ],
        "total": 3,
        "has_more": False,
    },
    separators=(",", ":"),
)


def _nginx_main(workdir: Path, name: str, *, modules: str = "") -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""{modules}{user}worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/json;
"""


def stub_conf(workdir: Path, port: int, delay_ms: int) -> str:
    """The Voucherify stand-in: nginx answering the fixed JSON at once, or after `delay_ms` via echo_sleep."""
    if delay_ms:
        modules = f"load_module {ECHO_MODULE};\n"
        answer = f"echo_read_request_body; echo_sleep {delay_ms / 1000:.3f}; echo '{RESPONSE_BODY}';"
    else:
        modules = ""
        answer = f"return 200 '{RESPONSE_BODY}';"
    return (
        _nginx_main(workdir, f"stub-{port}", modules=modules)
        + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location = {PATH} {{ {answer} }}
        location = {REDEEM_PATH.split("?")[0]} {{ return 200 '{REDEEM_RESPONSE}'; }}
        location = {TIERS_PATH.split("?")[0]} {{ return 200 '{TIERS_RESPONSE}'; }}
        location / {{ return 404 '{{"code":404,"key":"not_found"}}'; }}
    }}
}}
"""
    )


def nginx_proxy_conf(workdir: Path, port: int, upstream_port: int) -> str:
    """What an operator would pick instead: `map` origin check, per-IP `limit_req`, keepalive upstream."""
    return (
        _nginx_main(workdir, f"proxy-{port}")
        + f"""    map $http_origin $origin_allowed {{
        default 0;
        "{ORIGIN}" 1;
        "~^https://([a-z0-9-]+\\.)+example\\.com$" 1;
    }}
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    limit_req_zone $binary_remote_addr zone=per_ip:10m rate=1000r/m;
    upstream voucherify {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {PATH} {{
            if ($origin_allowed = 0) {{ return 403 '{{"code":403,"key":"origin_not_allowed"}}'; }}
            limit_req zone=per_ip burst=1000 nodelay;
            proxy_pass http://voucherify;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Cookie "";
            proxy_set_header Authorization "";
            proxy_set_header X-Client-Application-Id "bench-app-id";
            proxy_set_header X-Client-Token "bench-client-token";
            add_header Vary Origin always;
            add_header Access-Control-Allow-Origin $http_origin always;
            add_header Access-Control-Allow-Credentials true always;
        }}
        location / {{ return 404 '{{"code":404,"key":"not_found"}}'; }}
    }}
}}
"""
    )


# The second release's guards, set so that the validation scenario exercises each without tripping it: the
# failed-code budget reserves and gives back the stub's (existing) code, the upstream quota counts every call,
# idempotency covers redemptions (not this scenario's validations; scenario (c) redeems with keys, so the
# policy allows `redeem`), and cached reads are on for listings (scenario (d); a validation is never cached).
# Every gateway contender runs them (issue 15's policy); scenario (e) leaves some out to price each one.
GUARD_KEYS = ("failed_codes", "upstream_quota", "idempotency", "cache")


def _guards(without: frozenset[str]) -> str:
    limits = ""
    if "failed_codes" not in without:
        limits += "  failed_codes: 1000000 per hour\n"
    if "upstream_quota" not in without:
        limits += "  upstream_quota: 10000000 per minute\n  redeem_reserve: 0.2\n"
    ttl = 0 if "idempotency" in without else 86400  # the default is on: 0 turns it off
    cache = "" if "cache" in without else "cache:\n  ttl: 30\n"
    return f"{limits}idempotency:\n  ttl: {ttl}\n{cache}"


# Scenario (g), allowed origins: the small list and the large one (half exact origins, half wildcards), and
# the origins the load sends, allowed by both lists (every one a subdomain of example.com).
def origin_entries(count: int) -> list[str]:
    """`count` allowed_origins entries, half exact, half wildcards; 2 is the bench's usual pair."""
    if count <= 2:
        return [ORIGIN, "https://*.example.com"]
    half = count // 2
    exact = [f"https://shop{i}.example.com" for i in range(half)]
    return exact + [f"https://*.b{i}.example.com" for i in range(count - half)]


def sent_origins(entries: int, count: int) -> tuple[str, ...]:
    """`count` distinct origins spread over a list of `entries` (as origin_entries builds it): half match an
    exact entry, half a wildcard, from the first entries to the last."""
    half = max(entries // 2, 1)
    picks = [round(j * (half - 1) / max(count // 2 - 1, 1)) for j in range(count // 2)]
    return tuple(o for i in picks for o in (f"https://shop{i}.example.com", f"https://x.b{i}.example.com"))


def project_names(count: int) -> list[str]:
    return ["shop", *(f"p{i}" for i in range(1, count))]


def policy_yaml(
    port: int,
    upstream_port: int,
    storage: str,
    tracing: tuple[str, float] | None = None,
    *,
    without: frozenset[str] = frozenset(),
    origins: list[str] | None = None,
    projects: int = 1,
    per_ip: str = "1000 per minute",
) -> str:
    """The gateway's full policy in client mode: origin list, danger zone, a per-IP limit that never triggers,
    and the second release's guards (`without`: the GUARD_KEYS left out).

    The load comes as from a load balancer at 127.0.0.1 that names CLIENT_IPS different shoppers in
    X-Forwarded-For, as in production: per-IP lists stay short. (From one IP, `limits`' moving window would
    keep one entry per request in a single list, and its Redis script reads that list with LINDEX: the
    measure would be of a list no real client can build.)

    `tracing`: (OTLP endpoint, sample ratio) turns tracing on. Scenario (g): `origins` (the allowed_origins
    of every project), `projects` (that many projects, `shop` then p1, p2, ..., identical but for the name),
    `per_ip` (an hour's window holds a million clients).
    """
    traced = ""
    if tracing is not None:
        traced = f"tracing:\n  otlp_endpoint: {tracing[0]}\n  sample_ratio: {tracing[1]}\n"
    allowed = "".join(f"      - {entry}\n" for entry in (origins or origin_entries(2)))
    project = f"""    region: http://127.0.0.1:{upstream_port}
    upstream_auth: client
    credentials:
      client_application_id: bench-app-id
      client_secret_key: bench-client-token
    allowed_origins:
{allowed}    danger_zone:
      redeem: true
      publish: false
      list_vouchers: false
      create_customers: false
      create_loyalty_referral_events: false
"""
    return (
        traced
        + f"""listen:
  host: 127.0.0.1
  port: {port}
  drain_timeout: 2
  max_connections: {IN_FLIGHT}
upstream:
  connect_timeout: 2
  read_timeout: 10
  max_in_flight_per_host: {IN_FLIGHT}
client_ip:
  trusted_proxies: [127.0.0.1/32]
logging:
  level: info
  format: json
rate_limit:
  storage: {storage}
  strategy: moving-window
  per_ip: {per_ip}
  on_storage_error: allow
{_guards(without)}default_project: shop
projects:
"""
        + "".join(f"  {name}:\n{project}" for name in project_names(projects))
    )


@dataclass(frozen=True)
class Load:
    """What each request of a wrk run looks like (configs.wrk_script).

    `kind`: "validation" (scenarios a, b, e, g, w), "redeem-fresh" (a new Idempotency-Key per request, `key`
    and a counter), "redeem-replay" (`key` on every request), "tiers" (GET the promotion-tier listing).
    `clients`: distinct shoppers named in X-Forwarded-For, in turn, from the `start`-th on (a run that goes
    on where the last one stopped names new ones). `projects`: the validation path of that many projects
    (project_names), in turn. `origins`: sent in turn; `fresh_origins`: a new origin per request instead
    (`https://u<n>.b<last>.example.com`, allowed by both lists of scenario g). `body`: the validation body.
    """

    kind: str = "validation"
    key: str = ""
    clients: int = CLIENT_IPS
    start: int = 0
    projects: int = 0  # 0: the default project's path (no prefix)
    origins: tuple[str, ...] = (ORIGIN,)
    fresh_origins: int = 0  # > 0: the index of the wildcard the fresh origins match
    body: str = REQUEST_BODY


VALIDATION = Load()


def validation_body(size: int) -> str:
    """A stackable validation of about `size` bytes: the bench's body with more order items (a big cart)."""
    document = json.loads(REQUEST_BODY)
    items = document["order"]["items"]
    base = len(REQUEST_BODY)
    item = {"product_id": "prod_0b7d7dfb05cbe5c616", "quantity": 2, "price": 8900}
    one = len(json.dumps(item, separators=(",", ":"))) + 1
    if size < base:
        document["order"]["items"] = items[:1]  # the smallest: one code, one item, no extras
        document["redeemables"] = document["redeemables"][:1]
        for extra in ("options", "session"):
            document.pop(extra)
        document["order"].pop("metadata")
        document["customer"].pop("email")
    else:
        items.extend([item] * ((size - base) // one))
    return json.dumps(document, separators=(",", ":"))


def _lua_list(values: tuple[str, ...]) -> str:
    return "{" + ", ".join(json.dumps(v) for v in values) + "}"


def wrk_script(pace_ms: float = 0.0, load: Load = VALIDATION) -> str:
    """The SDK's request with its headers; `pace_ms` > 0 spaces each connection's requests."""
    kind, key = load.kind, load.key
    delay = f"function delay()\n  return {pace_ms:.3f}\nend\n" if pace_ms > 0 else ""
    paths = ""
    if kind == "tiers":
        first = f'wrk.method = "GET"\nwrk.path = "{TIERS_PATH}"\n'
    elif kind.startswith("redeem"):
        first = f'wrk.method = "POST"\nwrk.path = "{REDEEM_PATH}"\nwrk.body = [==[{REDEEM_BODY}]==]\n'
    else:
        first = f'wrk.method = "POST"\nwrk.path = "{PATH}"\nwrk.body = [==[{load.body}]==]\n'
        if load.projects:
            names = tuple(f"/{name}{PATH}" for name in project_names(load.projects))
            paths = f"  wrk.path = paths[n % {len(names)} + 1]\n"
            first += f"local paths = {_lua_list(names)}\n"
    keyed = ""
    if kind == "redeem-fresh":
        keyed = f'  wrk.headers["Idempotency-Key"] = "{key}-" .. n\n'
    elif kind == "redeem-replay":
        first += f'wrk.headers["Idempotency-Key"] = "{key}"\n'
    if load.fresh_origins:
        origin = f'  wrk.headers["Origin"] = "https://u" .. n .. ".b{load.fresh_origins - 1}.example.com"\n'
    elif len(load.origins) > 1:
        first += f"local origins = {_lua_list(load.origins)}\n"
        origin = f'  wrk.headers["Origin"] = origins[n % {len(load.origins)} + 1]\n'
    else:
        first += f'wrk.headers["Origin"] = "{load.origins[0]}"\n'
        origin = ""
    sdk = "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in SDK_HEADERS.items())
    return (
        first
        + sdk
        + f"""{delay}
local n = {load.start}
function request()
  n = n + 1
  local i = n % {load.clients}
  local a, b = math.floor(i / 65536), math.floor(i / 256) % 256
  wrk.headers["X-Forwarded-For"] = "10." .. a .. "." .. b .. "." .. i % 256
{keyed}{paths}{origin}  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""
    )
