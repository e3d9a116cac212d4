"""The `voucherify-gateway` command line: serve, check, schema, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from gateway.lint import policy_warnings
from gateway.policy import Listen, PolicyError, PolicyFile, load_policy

DEFAULT_CONFIG = "config/policy.yaml"


def default_config() -> str:
    return os.environ.get("VOUCHERIFY_GATEWAY_CONFIG", DEFAULT_CONFIG)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.config)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{args.config}: {len(exc.problems)} problem(s)")
        return 1
    if policy.tracing.otlp_endpoint is not None:
        from gateway.observe.trace_context import tracing_unavailable

        missing = tracing_unavailable()
        if missing is not None:
            print(f"error: {missing}")
            print(f"{args.config}: 1 problem(s)")
            return 1
    for note in policy_warnings(policy):
        print(f"warning: {note}")
    print(f"{args.config}: valid, {len(policy.projects)} project(s)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    json.dump(PolicyFile.model_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import trap_early_hangups

    trap_early_hangups()  # before the imports and the policy load: a SIGHUP meanwhile is a reload, later
    from gateway.serve import serve

    if args.worker or args.workers > 1:
        from gateway import workers

        if args.worker:
            kept = Path(args.kept) if args.kept else None
            return workers.run_worker(Path(args.config), args.host, args.port, kept, args.parent)
        return workers.supervise(Path(args.config), args.host, args.port, args.workers)
    return serve(Path(args.config), args.host, args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    return demo(args.host, args.port)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _port(value: str) -> int:
    """0 to 65535, as `listen.port`: uvloop bound 70000 as 4464 (modulo 65536), and -5 was a traceback."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError("must be a port from 0 to 65535")
    return number


def _host(value: str) -> str:
    """As `listen.host` (empty: the policy's): `--host localhost:8080` passed, then start-up died resolving
    it (socket.gaierror, a traceback)."""
    try:
        if value:
            Listen(host=value)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            "must be an IP address or a host name, without a port, brackets or a scheme"
        ) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voucherify-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=default_config(), help="policy file (default: %(default)s)")
    serve.add_argument("--host", type=_host, help="override listen.host")
    serve.add_argument("--port", type=_port, help="override listen.port")
    serve.add_argument("--workers", type=_positive, default=1, help="processes sharing the port (default 1)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: run as a worker
    # internal, for a worker: the policy to start with when --config is rejected; the supervisor's pid
    serve.add_argument("--kept", help=argparse.SUPPRESS)
    serve.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("--config", default=default_config(), help="policy file (default: %(default)s)")
    check.set_defaults(func=cmd_check)

    schema = commands.add_parser("schema", help="print the policy file's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    demo = commands.add_parser(
        "demo", help="run the gateway in front of the offline sandbox, with a demo page"
    )
    demo.add_argument("--host", type=_host, default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8080, help="0 picks a free port")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
