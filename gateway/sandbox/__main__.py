"""``python -m gateway.sandbox --host 127.0.0.1 --port 0``: run the sandbox until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from gateway.sandbox.app import SandboxCredentials, create_sandbox_app
from gateway.serving import Serving, http_url


def _per_minute(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("must be a whole number of requests a minute, at least 1")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fixtures", type=Path, default=None, help="seed data (default: built-in)")
    parser.add_argument("--allowed-origin", action="append", default=None, help="repeatable; default *")
    parser.add_argument("--rate-limit", action="store_true", help="emulate 5 client requests / 5 s per IP")
    parser.add_argument(
        "--plan-limit",
        type=_per_minute,
        default=None,
        metavar="N",
        help="emulate a plan of N server requests a minute",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    origins = tuple(args.allowed_origin) if args.allowed_origin else ("*",)
    app = create_sandbox_app(
        SandboxCredentials(allowed_origins=origins),
        fixtures=args.fixtures,
        emulate_client_rate_limit=args.rate_limit,
        plan_limit=args.plan_limit,
    )
    async with Serving() as serving:
        runner = await serving.listen(app, host=args.host, port=args.port)
        host, port = runner.addresses[0][:2]
        serving.announce(f"sandbox listening on {http_url(host, port)}")
        await serving.wait()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
