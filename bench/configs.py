"""Every file the bench runs on, generated at run time into a temp dir: nginx.conf, the policy, wrk's Lua."""

from __future__ import annotations

import json
import os
from pathlib import Path

ORIGIN = "https://shop.example.com"
PATH = "/client/v1/validations"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
CLIENT_IPS = 10_000  # distinct shoppers named in X-Forwarded-For, in turn
# Scenario (c): a legacy client-side redemption, sent with an Idempotency-Key; (d): a promotion-tier listing.
REDEEM_PATH = "/client/v1/redeem?code=BLCKFRDY-2024"
TIERS_PATH = "/client/v1/promotions/tiers?is_available=true&limit=10"

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
# guards policy allows `redeem`), and cached reads are on for listings (scenario (d)).
GUARDS = """  failed_codes: 1000000 per hour
  upstream_quota: 10000000 per minute
  redeem_reserve: 0.2
idempotency:
  ttl: 86400
cache:
  ttl: 30
"""


def policy_yaml(
    port: int,
    upstream_port: int,
    storage: str,
    tracing: tuple[str, float] | None = None,
    *,
    guards: bool = False,
) -> str:
    """The gateway's full policy in client mode: origin list, danger zone, a per-IP limit that never triggers.

    The load comes as from a load balancer at 127.0.0.1 that names CLIENT_IPS different shoppers in
    X-Forwarded-For, as in production: per-IP lists stay short. (From one IP, `limits`' moving window would
    keep one entry per request in a single list, and its Redis script reads that list with LINDEX: the
    measure would be of a list no real client can build.)

    `tracing`: (OTLP endpoint, sample ratio) turns tracing on.
    """
    traced = ""
    if tracing is not None:
        traced = f"tracing:\n  otlp_endpoint: {tracing[0]}\n  sample_ratio: {tracing[1]}\n"
    return (
        traced
        + f"""listen:
  host: 127.0.0.1
  port: {port}
  drain_timeout: 2
upstream:
  connect_timeout: 2
  read_timeout: 10
client_ip:
  trusted_proxies: [127.0.0.1/32]
logging:
  level: info
  format: json
rate_limit:
  storage: {storage}
  strategy: moving-window
  per_ip: 1000 per minute
  on_storage_error: allow
{GUARDS if guards else ""}default_project: shop
projects:
  shop:
    region: http://127.0.0.1:{upstream_port}
    upstream_auth: client
    credentials:
      client_application_id: bench-app-id
      client_secret_key: bench-client-token
    allowed_origins:
      - {ORIGIN}
      - https://*.example.com
    danger_zone:
      redeem: {"true" if guards else "false"}
      publish: false
      list_vouchers: false
      create_customers: false
      create_loyalty_referral_events: false
"""
    )


def wrk_script(pace_ms: float = 0.0, kind: str = "validation", key: str = "") -> str:
    """The SDK's request with its headers; `pace_ms` > 0 spaces each connection's requests.

    `kind`: "validation" (scenarios a, b), "redeem-fresh" (a new Idempotency-Key per request, `key` and a
    counter), "redeem-replay" (`key` on every request), "tiers" (GET the promotion-tier listing).
    """
    delay = f"function delay()\n  return {pace_ms:.3f}\nend\n" if pace_ms > 0 else ""
    if kind == "tiers":
        first = f'wrk.method = "GET"\nwrk.path = "{TIERS_PATH}"\n'
    elif kind.startswith("redeem"):
        first = f'wrk.method = "POST"\nwrk.path = "{REDEEM_PATH}"\nwrk.body = [[{REDEEM_BODY}]]\n'
    else:
        first = f'wrk.method = "POST"\nwrk.path = "{PATH}"\nwrk.body = [[{REQUEST_BODY}]]\n'
    keyed = ""
    if kind == "redeem-fresh":
        keyed = f'  wrk.headers["Idempotency-Key"] = "{key}-" .. n\n'
    elif kind == "redeem-replay":
        first += f'wrk.headers["Idempotency-Key"] = "{key}"\n'
    return (
        first
        + f"""wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Origin"] = "{ORIGIN}"
wrk.headers["User-Agent"] = "voucherify-js-sdk/2 bench"
wrk.headers["X-Client-Application-Id"] = "-"
wrk.headers["X-Client-Token"] = "-"
{delay}
local n = 0
function request()
  n = n + 1
  local i = n % {CLIENT_IPS}
  local a, b = math.floor(i / 65536), math.floor(i / 256) % 256
  wrk.headers["X-Forwarded-For"] = "10." .. a .. "." .. b .. "." .. i % 256
{keyed}  return wrk.format()
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
