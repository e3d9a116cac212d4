"""A soak: one gateway process at a steady rate with a mixed profile, its RSS and descriptors watched.

    python -m bench.soak --minutes 10                # the recorded run (bench/RESULTS.md)
    python -m bench.soak --minutes 0.1 --interval 2  # a few seconds (tests/e2e/test_bench_smoke.py)

Starts, on 127.0.0.1 and free ports, a Voucherify stand-in (`python -m bench.soak --upstream PORT`: an
aiohttp app answering each operation in Voucherify's shape) and `python -m gateway serve` in front of it
(memory storage, JSON access log at info to a file, as in production), then sends `--rate` requests a
second, open loop (a request is started on schedule whether or not the earlier ones were answered), for
`--minutes`. The profile, in turn over 20 slots: 8 stackable validations, 2 legacy validations, 4
redemptions, 3 tier listings, 2 consent listings, and 1 refusal (5 %: a disallowed origin, an unknown path,
a bad body, a wrong method, in turn). Every request names one of 5,000 shoppers in X-Forwarded-For from a
trusted 127.0.0.1, so the per-IP limit never refuses. The generator uses at most 64 keep-alive
connections (requests past them wait in its pool, and that wait is in the latencies).

Every `--interval` seconds (a minute by default) it prints the gateway's RSS (VmRSS) and open descriptors
(/proc/PID/fd), the achieved rate, latencies and the answers by class; at the end, the least-squares slope
of RSS (MB/min) and descriptors (per min) over the samples after the first (warm-up), and whether any
answer was unexpected (a 5xx, a refusal that should have passed, a pass that should have been refused).
Figures, not pass/fail: the exit status is 1 only when an answer was unexpected or the gateway died.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.procs import Processes, free_port, raise_nofile

ORIGIN = "https://shop.example.com"
SHOPPERS = 5_000
IN_FLIGHT_CAP = 512  # requests the load generator keeps open at most; past it, a slot is skipped and counted
CONNECTIONS = 64  # the load generator's keep-alive connections at most: the gateway's descriptors then
# count its own (upstream pool, files, leaks), not how many connections a latency spike made the client open

VALIDATION = json.dumps(
    {
        "customer": {"source_id": "soak-customer"},
        "order": {"amount": 12000, "items": [{"product_id": "p1", "quantity": 2, "price": 6000}]},
        "redeemables": [{"object": "voucher", "id": "SAVE10"}],
    }
).encode()
REDEMPTION = json.dumps({"customer": {"source_id": "soak-customer"}, "order": {"amount": 12000}}).encode()


@dataclass(frozen=True)
class Call:
    kind: str  # the profile's name for it, also its column in the output
    method: str
    path: str
    body: bytes = b""
    origin: str = ORIGIN
    expect: int = 200


REFUSALS = (
    Call("refused", "GET", "/client/v1/promotions/tiers", origin="https://evil.example.net", expect=403),
    Call("refused", "GET", "/client/v1/no-such-operation", expect=404),
    Call("refused", "POST", "/client/v1/validations", b"[1, 2", expect=400),
    Call("refused", "DELETE", "/client/v1/consents", expect=405),
)
VALIDATE_STACKABLE = Call("validation", "POST", "/client/v1/validations", VALIDATION)
VALIDATE = Call("validation", "GET", "/client/v1/validate?code=SAVE10&amount=12000")
REDEEM = Call("redemption", "POST", "/client/v1/redeem?code=SAVE10", REDEMPTION)
TIERS = Call("listing", "GET", "/client/v1/promotions/tiers?is_available=true")
CONSENTS = Call("listing", "GET", "/client/v1/consents")
PROFILE: tuple[Call | None, ...] = (  # 20 slots; None is the next refusal
    *([VALIDATE_STACKABLE] * 8), *([VALIDATE] * 2), *([REDEEM] * 4), *([TIERS] * 3), *([CONSENTS] * 2), None,
)  # fmt: skip


# ------------------------------------------------------------------------------------------ upstream


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    path = request.path
    if path.endswith("/validations") or path.endswith("/validate"):
        body: dict[str, Any] = {"valid": True, "redeemables": [{"status": "APPLICABLE", "id": "SAVE10"}]}
    elif path.endswith("/redeem") or path.endswith("/redemption"):
        body = {"result": "SUCCESS", "voucher": {"code": "SAVE10"}, "id": f"r_{time.monotonic_ns()}"}
    elif path.endswith("/tiers"):
        body = {"object": "list", "data_ref": "tiers", "tiers": [{"id": f"t{i}"} for i in range(5)]}
    else:
        body = {"object": "list", "data_ref": "consents", "consents": []}
    return web.json_response(body, headers={"X-Rate-Limit-Remaining": "1000"})


def serve_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ------------------------------------------------------------------------------------------ gateway


def policy_yaml(upstream_port: int) -> str:
    return f"""\
listen: {{drain_timeout: 5}}
logging: {{level: info, format: json}}
client_ip: {{trusted_proxies: [127.0.0.1/32]}}
rate_limit: {{per_ip: 100 per second}}
default_project: shop
projects:
  shop:
    region: http://127.0.0.1:{upstream_port}
    credentials: {{client_application_id: soak-app, client_secret_key: soak-secret}}
    allowed_origins: [{ORIGIN}]
    danger_zone: {{redeem: true}}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, value) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


# ------------------------------------------------------------------------------------------ load


@dataclass
class Window:
    """What happened since the last sample."""

    answers: Counter[str] = field(default_factory=Counter)  # kind -> answered as expected
    unexpected: Counter[str] = field(default_factory=Counter)  # "kind status" -> count
    latencies: list[float] = field(default_factory=list)  # ms
    skipped: int = 0  # slots not sent: IN_FLIGHT_CAP requests were open


class Load:
    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.window = Window()
        self.total = Window()
        self.sent = 0
        self.refusal = 0
        self.open: set[asyncio.Task[None]] = set()

    def next_call(self) -> Call:
        call = PROFILE[self.sent % len(PROFILE)]
        if call is None:
            call = REFUSALS[self.refusal % len(REFUSALS)]
            self.refusal += 1
        return call

    async def one(self, session: aiohttp.ClientSession, call: Call, shopper: int) -> None:
        headers = {
            "Origin": call.origin,
            "X-Forwarded-For": f"10.{shopper // 65536 % 256}.{shopper // 256 % 256}.{shopper % 256}",
        }
        if call.body:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            async with session.request(call.method, self.url + call.path, data=call.body or None,
                                       headers=headers) as response:  # fmt: skip
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, kind = 0, type(exc).__name__
        else:
            kind = ""
        elapsed = (time.perf_counter() - started) * 1000
        for window in (self.window, self.total):
            window.latencies.append(elapsed)
            if status == call.expect:
                window.answers[call.kind] += 1
            else:
                window.unexpected[f"{call.kind} {status or kind}"] += 1

    async def run(self, seconds: float, on_sample: Any, interval: float) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            loop = asyncio.get_running_loop()
            start = loop.time()
            next_sample = start + interval
            period = 1.0 / self.rate
            while (now := loop.time()) < start + seconds:
                due = start + self.sent * period
                if due > now:
                    await asyncio.sleep(min(due - now, max(0.0, next_sample - now)))
                    if loop.time() < due:
                        if loop.time() >= next_sample:
                            on_sample(loop.time() - start, self.take_window())
                            next_sample += interval
                        continue
                if len(self.open) >= IN_FLIGHT_CAP:
                    self.window.skipped += 1
                    self.total.skipped += 1
                    self.sent += 1
                    continue
                task = loop.create_task(self.one(session, self.next_call(), self.sent % SHOPPERS))
                self.open.add(task)
                task.add_done_callback(self.open.discard)
                self.sent += 1
                if loop.time() >= next_sample:
                    on_sample(loop.time() - start, self.take_window())
                    next_sample += interval
            if self.open:
                await asyncio.wait(list(self.open), timeout=35)
            if loop.time() - (next_sample - interval) >= min(1.0, interval):  # not a sliver of a window
                on_sample(loop.time() - start, self.take_window())

    def take_window(self) -> Window:
        window, self.window = self.window, Window()
        return window


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def soak(minutes: float, rate: float, interval: float) -> int:
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        upstream_port, port = free_port(), free_port()
        env_python = [sys.executable, "-m"]
        procs.start(
            "upstream", [*env_python, "bench.soak", "--upstream", str(upstream_port)], port=upstream_port
        )
        config = workdir / "policy.yaml"
        config.write_text(policy_yaml(upstream_port), encoding="utf-8")
        gateway = procs.start(
            "gateway", [*env_python, "gateway", "serve", "--config", str(config), "--port", str(port)],
            port=port,
        )  # fmt: skip
        pid = gateway.pid
        print(
            f"soak: {rate:g} req/s for {minutes:g} min, sample every {interval:g} s; gateway pid {pid}; "
            f"profile per 20: 8 validate_stackable, 2 validate, 4 redeem, 3 tiers, 2 consents, 1 refused",
            flush=True,
        )
        print("| t s | req/s | ok | refused ok | unexpected | skipped | p50 ms | p99 ms | RSS MB | fds |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        rss: list[tuple[float, float]] = []
        fds: list[tuple[float, float]] = []
        last = [0.0]

        def on_sample(at: float, window: Window) -> None:
            if gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gateway.returncode}")
            memory, descriptors = rss_mb(pid), open_fds(pid)
            rss.append((at / 60, memory))
            fds.append((at / 60, descriptors))
            span = max(at - last[0], 1e-9)
            last[0] = at
            answered = sum(window.answers.values()) + sum(window.unexpected.values())
            print(
                f"| {at:.0f} | {answered / span:.0f} | {sum(window.answers.values())} | "
                f"{window.answers['refused']} | {sum(window.unexpected.values())} | {window.skipped} | "
                f"{_percentile(window.latencies, 0.5):.1f} | {_percentile(window.latencies, 0.99):.1f} | "
                f"{memory:.1f} | {descriptors} |",
                flush=True,
            )

        load = Load(f"http://127.0.0.1:{port}", rate)
        asyncio.run(load.run(minutes * 60, on_sample, interval))
        steady_rss, steady_fds = rss[1:], fds[1:]  # the first sample is the warm-up
        total = load.total
        errors = sum(
            1 for line in (workdir / "gateway.log").read_text().splitlines() if '"level": "error"' in line
        )
        first, end = (steady_rss[0], steady_rss[-1]) if steady_rss else ((0.0, 0.0), (0.0, 0.0))
        fd_first, fd_end = (steady_fds[0], steady_fds[-1]) if steady_fds else ((0.0, 0.0), (0.0, 0.0))
        print(
            f"slope after the first sample: RSS {slope(steady_rss):+.3f} MB/min "
            f"({first[1]:.1f} -> {end[1]:.1f} MB), descriptors {slope(steady_fds):+.2f}/min "
            f"({fd_first[1]:.0f} -> {fd_end[1]:.0f})"
        )
        print(
            f"answers: {dict(total.answers)}; unexpected: {dict(total.unexpected) or 'none'}; "
            f"skipped: {total.skipped}; error lines in the gateway's log: {errors}",
            flush=True,
        )
        return 1 if total.unexpected or errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (default 300)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the stand-in
    args = parser.parse_args(argv)
    if args.upstream is not None:
        serve_upstream(args.upstream)
        return 0
    return soak(args.minutes, args.rate, args.interval)


if __name__ == "__main__":
    sys.exit(main())
