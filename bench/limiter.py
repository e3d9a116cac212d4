"""Time `Limiter.hit` on its own, in memory and on a local redis-server: `python -m bench.limiter`.

20,000 sequential hits per (storage, strategy), over 1,000 client keys, with the bench's budget (1000 per
minute, so nearly every hit is allowed) and a two-item bucket (both items counted on every hit). The event
loop is uvloop's, as in the gateway. redis-server is started on a free port and killed afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from gateway.models import Bucket, Strategy
from gateway.ratelimit import Limiter, LimiterPool

N = 20_000
STRATEGIES = tuple(Strategy)
BUCKETS = {
    "1 item": "1000 per minute",
    "2 items": "1000 per minute;100 per second",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


async def run(uri: str) -> None:
    pool = LimiterPool()
    pool.store(uri, 5.0)
    await pool.start()
    for strategy in STRATEGIES:
        limiter = Limiter(pool.store(uri, 5.0), strategy)
        for label, limit in BUCKETS.items():
            bucket = Bucket.parse("per_ip", limit, f"bench-{strategy}-{label}/per_ip")
            keys = itertools.cycle([f"10.0.{i // 256}.{i % 256}" for i in range(1000)])
            for _ in range(500):  # warm up: connections, scripts, keys
                await limiter.hit(bucket, next(keys))
            started = time.perf_counter()
            for _ in range(N):
                await limiter.hit(bucket, next(keys))
            elapsed = time.perf_counter() - started
            kind = uri.split("://")[0]
            row = f"| {kind} | {strategy.value} | {label} | {elapsed:.2f} | {elapsed / N * 1e6:.1f} |"
            print(row, flush=True)
    await pool.close()


def main() -> None:
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    print(f"{N} sequential `Limiter.hit` calls per row\n")
    print("| storage | strategy | bucket | seconds | µs per hit |\n|---|---|---|---:|---:|")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run("memory://"))
    proc, url = start_redis()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(url))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
