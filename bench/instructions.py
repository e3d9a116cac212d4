"""Instructions per request through `gateway.app.handle`, counted by valgrind: `python -m bench.instructions`.

The VM's CPU time moves 10-20 % between identical runs, more than most changes to the request path save;
an instruction count moves by well under 1 %. Each case runs `handle` in process (bench.micro's
in-process transport, the bench's policy, accounting as served) under `valgrind --tool=callgrind` twice,
with FEW and MANY requests, the same requests built beforehand in both: (I(MANY) - I(FEW)) / (MANY - FEW)
is what one request costs, start-up and building left out. Needs valgrind (Debian's package); takes
about a minute per case. `--gateway-src DIR` counts another checkout's gateway (an A/B of one change).

`protections` counts the validation again with each protection off in turn (PROTECTIONS: the second
release's four guards, the access log, the metrics), then with all of them off: what each one costs is
the difference. Its runs go two at a time; it takes about a quarter of an hour.

`served` counts issue 15's headline ratio in instructions: the gateway (`python -m gateway serve` on the
bench's policy, every guard on) and `bare-http1` (the same server and client, no policy), each under
callgrind on a real socket in front of the bench's nginx stub, driven by one keep-alive connection here:
WARM requests, counters zeroed (`callgrind_control -z`), SERVED requests, counters dumped. It prints each
one's instructions per request and bare-http1's over the gateway's against the 0.7x target. User space
only: the kernel's share (the same four socket calls per request for both) is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.runner import Bench

FEW, MANY = 500, 2500
IN_PROCESS = {  # through `handle`
    "validation": "POST /validations, the bench's body: every guard, two codes held and given back",
    "hit": "GET the promotion tiers, answered from the cache",
    "flood": "GET /validate from a client past its per-IP limit: 429",
}
PROTECTIONS = ("failed_codes", "upstream_quota", "idempotency", "cache", "access_log", "metrics")
CASES = {
    **IN_PROCESS,
    "protections": "the validation with each second-release guard, the access log, the metrics off in turn",
    "served": "POST /validations on a socket: the gateway against bare-http1 (issue 15's 0.7x)",
}
WARM, SERVED = 300, 1000
TARGET = 0.7  # bare-http1's cost over the gateway's, issue 15
ROOT = Path(__file__).resolve().parent.parent


async def _run(case: str, count: int, without: frozenset[str]) -> None:
    """The child: build MANY requests, handle `count` of them (`without`: PROTECTIONS off, a validation)."""
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from bench import configs, micro
    from gateway import app as gw
    from gateway.policy import parse_policy

    if case == "validation":
        app = micro.validation_app(configs.RESPONSE_BODY.encode(), without)
        for i in range(10):
            assert (await gw.handle(micro.validation_request(app, MANY + i))).status == 200
        requests = [micro.validation_request(app, i) for i in range(MANY)]
    else:  # one bodiless request, handled again and again
        per_ip = "100000000 per minute" if case == "hit" else "5 per minute"
        text = configs.policy_yaml(8080, 8081, "memory://", per_ip=per_ip)
        answer = (configs.TIERS_RESPONSE if case == "hit" else configs.RESPONSE_BODY).encode()
        transport = micro.InProcessTransport(answer)
        app = gw.create_app(parse_policy(text, env={}), micro.served_accounting(), transport=transport)
        headers = CIMultiDict(
            {"Host": "127.0.0.1:8080", "Origin": configs.ORIGIN, "Accept": "application/json"}
        )
        path = configs.TIERS_PATH if case == "hit" else "/client/v1/validate?code=SAVE10"
        one = make_mocked_request("GET", path, headers=headers, app=app)
        for _ in range(10):  # the cache filled, the flood past its limit
            await gw.handle(one)
        assert (await gw.handle(one)).status == (429 if case == "flood" else 200)
        requests = [one] * MANY
    for request in requests[:count]:
        await gw.handle(request)
    await app[gw.STATE].limiters.close()


async def _count(case: str, count: int, src: Path, without: frozenset[str] = frozenset()) -> int:
    """Instructions of one child run under callgrind."""
    env = {**os.environ, "GATEWAY_SRC": str(src), "PYTHONHASHSEED": "0"}
    tool = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd = [*tool, sys.executable, __file__, "--child", case, str(count), ",".join(sorted(without))]
    child = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await child.communicate()
    stderr = err.decode(errors="replace")
    found = re.search(r"Collected : (\d+)", stderr)
    if child.returncode != 0 or found is None:
        raise RuntimeError(f"{case} under callgrind failed ({child.returncode}): {stderr[-500:]}")
    return int(found.group(1))


async def per_request(case: str, src: Path, without: frozenset[str] = frozenset()) -> float:
    """What one request of `case` costs: the MANY and FEW runs side by side (a count is the same whatever
    else runs on the machine)."""
    many, few = await asyncio.gather(_count(case, MANY, src, without), _count(case, FEW, src, without))
    return (many - few) / (MANY - FEW)


async def protections(src: Path) -> None:
    """Print what each protection adds to a validation: the full count minus the count with it off."""
    print("| the validation with | instructions per request | the protection's cost |\n|---|---:|---:|")
    full = await per_request("validation", src)
    print(f"| every protection on | {full:,.0f} | |", flush=True)
    for off in [*PROTECTIONS, "all of them"]:
        without = frozenset(PROTECTIONS if off == "all of them" else (off,))
        left = await per_request("validation", src, without)
        print(f"| {off} off | {left:,.0f} | {full - left:,.0f} ({(full - left) / full:.0%}) |", flush=True)


def drive(port: int, count: int, start: int = 0) -> None:
    """`count` of the bench's validations on one keep-alive connection, each from its own shopper (the
    X-Forwarded-For of wrk's script); every answer must be a 200."""
    from bench import configs

    body = configs.REQUEST_BODY.encode()
    headers = {**configs.SDK_HEADERS, "Origin": configs.ORIGIN}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for n in range(start, start + count):
            i = n % 10_000
            client = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
            connection.request("POST", configs.PATH, body, {**headers, "X-Forwarded-For": client})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"request {n} answered {answer.status}")
    finally:
        connection.close()


def dumped_total(text: str) -> int:
    """The instruction total of one callgrind dump (its `summary:` line, `totals:` in older versions)."""
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("a callgrind dump without a summary line")
    return int(found.group(1))


def served(bench: Bench, warm: int = WARM, count: int = SERVED) -> dict[str, float]:
    """Instructions per served validation, bare-http1's then the gateway's (see the module's docstring):
    `count` requests after `warm`, each contender in front of `bench`'s zero-latency stub, with its
    processes, its files and its gateway (`gateway_src`, the (a) policy of contender `gateway`)."""
    from bench import configs
    from bench.procs import free_port, wait_port

    procs, work, upstream = bench.procs, bench.workdir, bench.stub_port[0]
    per: dict[str, float] = {}
    for name in ("bare-http1", "gateway"):
        port = free_port()
        if name == "gateway":
            policy = work / f"served-policy-{port}.yaml"
            policy.write_text(bench.gateway_policy(name, port, upstream))
            cmd, cwd = [sys.executable, "-m", "gateway", "serve", "--config", str(policy)], bench.gateway_src
        else:
            relay = [configs.BARE[name], str(port), f"http://127.0.0.1:{upstream}"]
            cmd, cwd = [sys.executable, "-m", *relay], ROOT
        out = work / f"served-{name}-{port}.callgrind"
        tool = ["env", "PYTHONHASHSEED=0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        proc = procs.start(f"served-{name}-{port}", [*tool, *cmd], cwd=cwd)  # env execs: valgrind's pid
        try:
            wait_port(port, proc, timeout=300)  # python under valgrind starts in tens of seconds
            drive(port, warm)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            drive(port, count, start=warm)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        finally:
            procs.stop(proc, timeout=60)
        dumps = sorted(work.glob(f"{out.name}.*"))
        if not dumps:
            raise RuntimeError(f"{name}: callgrind wrote no dump")
        per[name] = dumped_total(dumps[0].read_text()) / count
    return per


def served_line(per: dict[str, float]) -> str:
    """The target line of `served`'s counts, as `python -m bench` prints its targets."""
    lean, gateway = per["bare-http1"], per["gateway"]
    ratio = lean / gateway
    return (
        f"  {'PASS' if ratio >= TARGET else 'MISS'}  gateway ≥ {TARGET} x bare-http1 in user-space "
        f"instructions per request (callgrind, served validations; the VM's noise does not move it): "
        f"{ratio:.2f}x ({lean:,.0f} / {gateway:,.0f})"
    )


def _served_alone(src: Path) -> dict[str, float]:
    """`served` with a stub of its own (the command line)."""
    from bench.procs import Processes
    from bench.runner import FULL, Bench

    with tempfile.TemporaryDirectory() as folder, Processes(Path(folder)) as procs:
        bench = Bench(FULL, Path(folder), procs, ("gateway",), "a", named=True)
        bench.gateway_src = src
        bench.start_shared()
        return served(bench)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "cases", nargs="*", default=list(CASES), help=f"of {', '.join(CASES)}; all by default"
    )
    parser.add_argument("--gateway-src", type=Path, default=ROOT, help="count the gateway of this checkout")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "COUNT", "WITHOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # the gateway package of GATEWAY_SRC, this checkout's bench
        sys.path[:1] = [os.environ["GATEWAY_SRC"]]
        importlib.import_module("gateway")
        sys.path[:1] = [str(ROOT)]
        case, count, without = args.child
        asyncio.run(_run(case, int(count), frozenset(filter(None, without.split(",")))))
        return
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"no such case: {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.instructions needs valgrind (apt-get install valgrind)")
    src = args.gateway_src.resolve()
    in_process = [case for case in args.cases if case in IN_PROCESS]
    if in_process:
        print(f"instructions per request through handle, gateway of {src} ({MANY} - {FEW} requests)\n")
        print("| case | instructions per request |\n|---|---:|")
    for case in in_process:
        per = asyncio.run(per_request(case, src))
        print(f"| {case}: {CASES[case]} | {per:,.0f} |", flush=True)
    if "protections" in args.cases:
        print(f"\nwhat each protection costs a validation through handle, gateway of {src}:\n")
        asyncio.run(protections(src))
    if "served" in args.cases:
        counted = _served_alone(src)
        print(f"\nserved validations, user-space instructions per request ({SERVED} after {WARM}):\n")
        print("| contender | instructions per request |\n|---|---:|")
        for name, per in counted.items():
            print(f"| {name} | {per:,.0f} |")
        print("\n" + served_line(counted))


if __name__ == "__main__":
    main()
