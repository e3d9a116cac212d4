"""Instructions per request through `gateway.app.handle`, counted by valgrind: `python -m bench.instructions`.

The VM's CPU time moves 10-20 % between identical runs, more than most changes to the request path save;
an instruction count moves by well under 1 %. Each case runs `handle` in process (bench.micro's
in-process transport, the bench's policy, accounting as served) under `valgrind --tool=callgrind` twice,
with FEW and MANY requests, the same requests built beforehand in both: (I(MANY) - I(FEW)) / (MANY - FEW)
is what one request costs, start-up and building left out. Needs valgrind (Debian's package); takes
about a minute per case. `--gateway-src DIR` counts another checkout's gateway (an A/B of one change).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

FEW, MANY = 500, 2500
CASES = {
    "validation": "POST /validations, the bench's body: every guard, two codes held and given back",
    "hit": "GET the promotion tiers, answered from the cache",
    "flood": "GET /validate from a client past its per-IP limit: 429",
}
ROOT = Path(__file__).resolve().parent.parent


async def _run(case: str, count: int) -> None:
    """The child: build MANY requests, handle `count` of them."""
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from bench import configs, micro
    from gateway import app as gw
    from gateway.policy import parse_policy

    if case == "validation":
        app = micro.validation_app(configs.RESPONSE_BODY.encode())
        for i in range(10):
            assert (await gw.handle(micro.validation_request(app, MANY + i))).status == 200
        requests = [micro.validation_request(app, i) for i in range(MANY)]
    else:  # one bodiless request, handled again and again
        per_ip = "100000000 per minute" if case == "hit" else "5 per minute"
        text = configs.policy_yaml(8080, 8081, "memory://").replace("1000 per minute", per_ip)
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


def _count(case: str, count: int, src: Path) -> int:
    """Instructions of one child run under callgrind."""
    env = {**os.environ, "GATEWAY_SRC": str(src), "PYTHONHASHSEED": "0"}
    tool = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd = [*tool, sys.executable, __file__, "--child", case, str(count)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {done.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "cases", nargs="*", default=list(CASES), help=f"of {', '.join(CASES)}; all by default"
    )
    parser.add_argument("--gateway-src", type=Path, default=ROOT, help="count the gateway of this checkout")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # the gateway package of GATEWAY_SRC, this checkout's bench
        sys.path[:1] = [os.environ["GATEWAY_SRC"]]
        importlib.import_module("gateway")
        sys.path[:1] = [str(ROOT)]
        asyncio.run(_run(args.child[0], int(args.child[1])))
        return
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"no such case: {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.instructions needs valgrind (apt-get install valgrind)")
    src = args.gateway_src.resolve()
    print(f"instructions per request through handle, gateway of {src} ({MANY} - {FEW} requests)\n")
    print("| case | instructions per request |\n|---|---:|")
    for case in args.cases:
        per = (_count(case, MANY, src) - _count(case, FEW, src)) / (MANY - FEW)
        print(f"| {case}: {CASES[case]} | {per:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
