"""Per-step cost of the gateway's request path, in process, without sockets: `python -m bench.micro`.

Each step of `gateway/app.py`'s pipeline is timed on its own with the bench's policy and request, so a change
to one step shows up as a figure that a busy machine barely moves (wrk figures move by 10 % between runs).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from bench import configs
from gateway import app as gw
from gateway.decide import Admit, check_body, decide
from gateway.models import Outcome
from gateway.observe import JsonFormatter, Observer, access_log
from gateway.policy import parse_policy
from gateway.translate import upstream_call
from gateway.upstream import request_headers, response_headers


def per_call_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            fn()
        n += 200
    return elapsed / n * 1e6


async def per_await_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            await fn()  # type: ignore[misc]
        n += 200
    return elapsed / n * 1e6


async def main() -> None:
    policy = parse_policy(configs.policy_yaml(8080, 8081, "memory://"), env={})
    state = gw.GatewayState(policy)
    compiled = state.policy
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "127.0.0.1:8080",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Origin": configs.ORIGIN,
                "User-Agent": "voucherify-js-sdk/2 bench",
                "X-Client-Application-Id": "-",
                "X-Client-Token": "-",
                "Content-Length": str(len(configs.REQUEST_BODY)),
            }
        )
    )
    body = configs.REQUEST_BODY.encode()
    admit = decide(compiled, "POST", configs.PATH, headers)
    assert isinstance(admit, Admit)
    project = admit.target.project
    limiter = state.limiters.limiter(project.rate_limit.storage, project.rate_limit.strategy)
    bucket = project.buckets[admit.target.operation]
    upstream_headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", "1500"),
        ("Connection", "close"),
    ]
    answer = configs.RESPONSE_BODY.encode()
    path, peer, ip_policy = configs.PATH, "127.0.0.1", compiled.client_ip
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    observer = Observer()

    def record() -> None:
        outcome = Outcome(gw.new_request_id(), "POST", "shop", "validate_stackable", status=200)
        observer.record(outcome)

    keys = itertools.cycle([f"10.0.{i // 256}.{i % 256}" for i in range(1000)])  # real per-IP lists are short
    credentials, origin, cors = project.credential_headers, admit.origin, admit.cors
    content_type = [("Content-Type", "application/json")]
    steps: list[tuple[str, float]] = [
        (
            "decide (route, origin, danger zone, headers)",
            per_call_us(lambda: decide(compiled, "POST", path, headers)),
        ),
        ("check_body (JSON parse)", per_call_us(lambda: check_body(admit, body))),
        (
            "client (address, bucket key, log strings; cached)",
            per_call_us(lambda: ip_policy.client(peer, [])),
        ),
        (
            "rate limit hit (memory, moving window)",
            await per_await_us(lambda: limiter.hit(bucket, next(keys))),
        ),
        ("upstream_call", per_call_us(lambda: upstream_call(admit.target, body))),
        (
            "request_headers",
            per_call_us(lambda: request_headers(headers, credentials, origin, "gw-1", forward_origin=True)),
        ),
        ("response_headers", per_call_us(lambda: response_headers(upstream_headers))),
        (
            "_respond (build the web.Response)",
            per_call_us(lambda: gw._respond(200, answer, "gw-1", cors, content_type, None)),
        ),
        ("access log line (Observer.record, accounted in batches)", per_call_us(record)),
    ]
    await state.limiters.close()
    print("| step | µs per request |\n|---|---:|")
    for name, us in steps:
        print(f"| {name} | {us:.1f} |")
    print(f"| total of the steps | {sum(us for _, us in steps):.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
