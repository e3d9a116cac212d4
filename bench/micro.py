"""Cost of the gateway's request path, in process, without sockets: `python -m bench.micro`.

Two tables, with the bench's policy and request. Steps: the public functions that `gateway/app.py`'s
pipeline calls, each timed on its own, so a change to one shows up as a figure that a busy machine barely
moves (wrk figures move by 10 % between runs). Whole requests: `gateway.app.handle` itself on one reused
request, in front of an in-process transport (`create_app(transport=...)`), forwarded and refused 429 by the
per-IP limit (a flood). Times are this process's CPU time, so other load on the machine moves them less.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from bench import configs
from gateway import app as gw
from gateway.decide import Admit, check_body, decide
from gateway.headers import request_headers, response_headers
from gateway.models import Outcome, Timeouts, UpstreamCall, UpstreamResponse
from gateway.observe.access import AccessLog, access_log
from gateway.observe.accounting import Accounting, Sink
from gateway.observe.logs import BufferedStreamHandler, JsonFormatter
from gateway.observe.metrics import Metrics
from gateway.policy import parse_policy
from gateway.ratelimit.gates import pass_gates


def per_call_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    n, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        for _ in range(200):
            fn()
        n += 200
    return elapsed / n * 1e6


async def per_await_us(fn: Callable[[], Awaitable[object]], seconds: float = 0.3) -> float:
    n, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        for _ in range(200):
            await fn()
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
                **configs.SDK_HEADERS,
                "Origin": configs.ORIGIN,
                "Content-Length": str(len(configs.REQUEST_BODY)),
            }
        )
    )
    body = configs.REQUEST_BODY.encode()
    admit = decide(compiled, "POST", configs.PATH, headers)
    assert isinstance(admit, Admit)
    project = admit.target.project
    limits = project.rate_limit
    store = state.limiters.store(limits.storage, limits.storage_timeout)
    bucket = project.buckets[admit.target.operation]
    upstream_headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", "1500"),
        ("Connection", "close"),
    ]
    answer = configs.RESPONSE_BODY.encode()
    path, peer, ip_policy = configs.PATH, "127.0.0.1", compiled.client_ip
    accounting = served_accounting()

    def record() -> None:
        outcome = Outcome(gw.new_request_id(), "POST", "shop", "validate_stackable", status=200)
        accounting.started()
        accounting.record(outcome)

    keys = itertools.cycle([f"10.0.{i // 256}.{i % 256}" for i in range(1000)])  # real per-IP lists are short
    outcome = Outcome(gw.new_request_id(), "POST")

    def per_ip(key: str) -> Awaitable[None]:  # as the pipeline counts a request (1000 keys: never refused)
        return pass_gates(store, (state.limiters.gate(store, limits, bucket, key, outcome),))

    credentials, origin = project.credential_headers, admit.origin
    mode, document = project.mode, check_body(admit, body)
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
            "rate limit hit (memory, moving window: the per-IP gate through pass_gates)",
            await per_await_us(lambda: per_ip(next(keys))),
        ),
        ("the mode's upstream call", per_call_us(lambda: mode.request(admit.target, body, document))),
        (
            "request_headers",
            per_call_us(lambda: request_headers(headers, credentials, origin, "gw-1", forward_origin=True)),
        ),
        ("response_headers", per_call_us(lambda: response_headers(upstream_headers))),
        ("access log line and metrics (Accounting.record, accounted in batches)", per_call_us(record)),
    ]
    await state.limiters.close()
    print("| step | µs per request |\n|---|---:|")
    for name, us in steps:
        print(f"| {name} | {us:.1f} |")
    print(f"| total of the steps | {sum(us for _, us in steps):.1f} |")
    print("\n| whole request through `handle` | µs per request |\n|---|---:|")
    for name, us in await whole_requests(answer):
        print(f"| {name} | {us:.1f} |")


def served_accounting(without: frozenset[str] = frozenset()) -> Accounting:
    """What `gateway.serve` accounts with: access lines written straight to the log's buffered handler (JSON,
    here into memory), and the metrics; `without` may name "access_log" and "metrics"."""
    handler = BufferedStreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    access_log.setLevel(logging.INFO)
    sinks: dict[str, Sink] = {"access_log": AccessLog(handler), "metrics": Metrics()}
    return Accounting([sink for name, sink in sinks.items() if name not in without])


class InProcessTransport:
    """Answers every call at once with the bench's answer: the handler's own cost, no socket."""

    ready = True

    def __init__(self, answer: bytes) -> None:
        self.answer = UpstreamResponse(200, [("Content-Type", "application/json")], answer, 0.0)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(
        self, base_url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
    ) -> UpstreamResponse:
        return self.answer


async def whole_requests(answer: bytes) -> list[tuple[str, float]]:
    """`handle` on one reused GET /validate (a bodiless request can be replayed), forwarded, then a flood."""
    headers = CIMultiDict({"Host": "127.0.0.1:8080", "Origin": configs.ORIGIN, "Accept": "application/json"})
    rows = []
    for name, per_ip in (("forwarded (GET /validate)", "1000000 per minute"), ("429 flood", "5 per minute")):
        text = configs.policy_yaml(8080, 8081, "memory://").replace("1000 per minute", per_ip)
        app = gw.create_app(
            parse_policy(text, env={}), served_accounting(), transport=InProcessTransport(answer)
        )
        request = make_mocked_request("GET", "/client/v1/validate?code=SAVE10", headers=headers, app=app)
        for _ in range(10):  # past the flood's limit
            await gw.handle(request)
        expected = 200 if name.startswith("forwarded") else 429
        assert (await gw.handle(request)).status == expected

        def handled(request: web.Request = request) -> Awaitable[web.StreamResponse]:
            return gw.handle(request)

        rows.append((name, await per_await_us(handled, 0.5)))
        await app[gw.STATE].limiters.close()
    rows.append(("forwarded (POST /validations, the bench's body)", await validations(answer)))
    return rows


class _Reading:
    """The protocol side of a request body that arrived whole with its head."""

    _reading_paused = False

    def pause_reading(self, *args: object, **kwargs: object) -> None:
        pass

    def resume_reading(self, *args: object, **kwargs: object) -> None:
        pass


class _Peer:
    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def validation_app(answer: bytes, without: frozenset[str] = frozenset()) -> web.Application:
    """The bench's gateway in front of an in-process transport answering `answer`, accounting as served;
    `without`: guards (configs.GUARD_KEYS) and accounting sinks (served_accounting) left out."""
    return gw.create_app(
        parse_policy(configs.policy_yaml(8080, 8081, "memory://", without=without), env={}),
        served_accounting(without),
        transport=InProcessTransport(answer),
    )


def validation_request(app: web.Application, i: int) -> web.Request:
    """The bench's stackable validation from shopper `i` of 10,000 behind the bench's proxy (a body is read
    once, so each call makes a new request)."""
    body = configs.REQUEST_BODY.encode()
    headers = CIMultiDict(
        {
            "Host": "127.0.0.1:8080",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Origin": configs.ORIGIN,
            "Content-Length": str(len(body)),
            "X-Forwarded-For": f"10.0.{i // 256 % 40}.{i % 256}",
        }
    )
    payload = StreamReader(_Reading(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request(
        "POST", configs.PATH, headers=headers, app=app, payload=payload, transport=_Peer()
    )


async def validations(answer: bytes, count: int = 5000) -> float:
    """`handle` on the bench's stackable validation (its body parsed, its two codes held and given back),
    one new request per call, from 10,000 shoppers: CPU µs per request, the requests built beforehand."""
    app = validation_app(answer)
    for i in range(200):
        assert (await gw.handle(validation_request(app, i))).status == 200
    requests = [validation_request(app, i) for i in range(count)]
    started = time.process_time()
    for one in requests:
        await gw.handle(one)
    elapsed = time.process_time() - started
    await app[gw.STATE].limiters.close()
    return elapsed / count * 1e6


if __name__ == "__main__":
    asyncio.run(main())
