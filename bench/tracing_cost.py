"""What tracing costs the gateway's process per request, in process: `python -m bench.tracing_cost`.

`gateway.app.handle` on one reused GET /validate, in front of the real `Http1Transport` with its socket
call replaced by the bench's answer (so the CLIENT span and the `traceparent` are the real code's), with
the bench's JSON access log, then with tracing off, on at sample 0.0 (every request gets a trace id, none
is recorded) and on at 1.0 exporting to the bench's collector (`bench/otlp_sink.py`, a subprocess on a
local socket). Each figure is the whole process's CPU time (`time.process_time()`: the export thread's
encoding and posting included) over the requests, once every span was exported, the three interleaved
for `--rounds` rounds; the medians are printed, and the added µs per request against tracing off.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import uvloop
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from bench import configs
from bench.procs import free_port
from gateway import app as gw
from gateway.http1 import Http1Client
from gateway.models import Timeouts, UpstreamCall, UpstreamResponse
from gateway.observe.access import AccessLog, access_log
from gateway.observe.accounting import Accounting
from gateway.observe.logs import BufferedStreamHandler, JsonFormatter
from gateway.observe.tracing import Tracing
from gateway.policy import parse_policy
from gateway.serving import settle_heap
from gateway.upstream import Http1Transport

ROOT = Path(__file__).resolve().parent.parent
WARM = 2048  # requests before the measure: four whole export batches


class AnsweringTransport(Http1Transport):
    """`Http1Transport` whose socket call answers at once: `send`'s tracing is the real one."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = UpstreamResponse(200, [("Content-Type", "application/json")], answer, 0.0)

    async def start(self) -> None:
        self._client = Http1Client(1000)

    async def _send(
        self, base_url: str, call: UpstreamCall, headers: CIMultiDict[str], timeouts: Timeouts
    ) -> UpstreamResponse:
        return self.answer


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(port)], cwd=ROOT)
    endpoint = f"http://127.0.0.1:{port}/v1/traces"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, data=b""), timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


async def per_request_us(
    endpoint: str | None, ratio: float, requests: int, handler: BufferedStreamHandler
) -> float:
    """CPU µs per request of `requests` requests, their accounting and (with an endpoint) their export."""
    tracing = None
    text = configs.policy_yaml(8080, 8081, "memory://", None if endpoint is None else (endpoint, ratio))
    policy = parse_policy(text.replace("1000 per minute", "1000000000 per minute"), env={})
    sinks: list[object] = [AccessLog(handler)]
    if endpoint is not None:
        tracing = Tracing(policy.tracing)
        sinks.append(tracing)
    accounting = Accounting(sinks)  # type: ignore[arg-type]
    app = gw.create_app(
        policy,
        accounting,
        transport=AnsweringTransport(configs.RESPONSE_BODY.encode()),
        tracer=None if tracing is None else tracing.starter,
    )
    headers = CIMultiDict({"Host": "127.0.0.1:8080", "Origin": configs.ORIGIN, "Accept": "application/json"})
    request = make_mocked_request("GET", "/client/v1/validate?code=SAVE10", headers=headers, app=app)
    state = app[gw.STATE]
    await state.transport.start()
    for _ in range(WARM):  # caches, the writer's shapes, the sender's connection: four whole batches
        await gw.handle(request)
    accounting.flush()
    if tracing is not None and ratio > 0:
        _exported(tracing, WARM)  # blocking: the loop has nothing else to do
    assert (await gw.handle(request)).status == 200
    accounting.flush()
    settle_heap()  # as `serve` does once started
    started = time.process_time()
    for _ in range(requests):
        await gw.handle(request)
    accounting.flush()
    if tracing is not None:  # the last spans leave at exit, as with `serve`; the export thread ends
        tracing.shutdown()
        tracing._thread.join()
        assert tracing.dropped == 0, f"{tracing.dropped} requests' spans were dropped"
        assert tracing.exported == (WARM + 1 + requests if ratio > 0 else 0), tracing.exported
    elapsed = time.process_time() - started
    await state.transport.close()
    await state.limiters.close()
    return elapsed / requests * 1e6


def _exported(tracing: Tracing, count: int) -> None:
    """Wait until `count` requests' spans were exported: asleep (the loop has nothing else to do), so the
    wait itself costs next to no CPU or instructions."""
    deadline = time.monotonic() + 600
    while tracing.exported + tracing.dropped < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the spans were not exported")
        time.sleep(0.01)


async def main(rounds: int, requests: int) -> None:
    handler = BufferedStreamHandler(io.StringIO())  # as `serve` writes access lines
    handler.setFormatter(JsonFormatter())
    access_log.setLevel(logging.INFO)
    sink, endpoint = start_sink()
    try:
        kinds: list[tuple[str, str | None, float]] = [
            ("tracing off", None, 1.0),
            ("tracing on, sample 0 (trace ids only)", endpoint, 0.0),
            ("tracing on, sample 1.0 (exported)", endpoint, 1.0),
        ]
        figures: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
        for _ in range(rounds):
            for name, where, ratio in kinds:
                figures[name].append(await per_request_us(where, ratio, requests, handler))
                handler.stream = io.StringIO()
    finally:
        sink.terminate()
        sink.wait()
    off = statistics.median(figures["tracing off"])
    print(
        f"{requests} requests per figure, median of {rounds} rounds, CPU µs per request (pid {os.getpid()})"
    )
    print("| | CPU µs/request | added |\n|---|---:|---:|")
    for name, values in figures.items():
        us = statistics.median(values)
        spread = f" ({min(values):.1f}..{max(values):.1f})"
        print(f"| {name} | {us:.1f}{spread} | {us - off:+.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    options = parser.parse_args()
    uvloop.run(main(options.rounds, options.requests))
