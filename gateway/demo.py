"""`voucherify-gateway demo`: the gateway in front of the offline sandbox, with the demo checkout page.

One command, no configuration, no network: the sandbox runs in the same process on a free loopback port,
the gateway on `--port` (default 8080) with a built-in policy that allows the demo page's own origin.
"""

from __future__ import annotations

import asyncio
import socket

from gateway.app import create_app
from gateway.listen import GatewayRunner
from gateway.observe.access import AccessLog
from gateway.observe.accounting import Accounting
from gateway.observe.logs import BufferedStreamHandler, configure_logging, flush_logs
from gateway.policy import Credentials, DangerZone, PolicyFile, Project
from gateway.sandbox import SandboxCredentials, create_sandbox_app
from gateway.serving import Serving, http_url, port_of

DEMO_FAILED_CODES = "5 per 10 minutes"


def demo_policy(sandbox_url: str, port: int, sandbox: SandboxCredentials) -> PolicyFile:
    origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
    project = Project.model_validate(
        {
            "region": sandbox_url,
            "credentials": Credentials.model_validate(
                {
                    "client_application_id": sandbox.client_application_id,
                    "client_secret_key": sandbox.client_secret_key,
                }
            ),
            "allowed_origins": origins,
            "danger_zone": DangerZone(redeem=True, publish=True),
        }
    )
    return PolicyFile.model_validate(
        {
            "default_project": "demo",
            "projects": {"demo": project},
            "logging": {"format": "text"},
            # the failed-code budget, small enough to see: the sixth unknown code in 10 minutes is refused
            "rate_limit": {"failed_codes": DEMO_FAILED_CODES},
        }
    )


async def run_demo(host: str, port: int, log_handler: BufferedStreamHandler | None = None) -> int:
    credentials = SandboxCredentials()
    accounting = Accounting([AccessLog(log_handler)])
    async with Serving(flush=(accounting.flush, flush_logs)) as serving:
        sandbox = await serving.listen(create_sandbox_app(credentials))  # a free loopback port
        sandbox_url = http_url("127.0.0.1", port_of(sandbox))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))  # bound first: the policy allows the page's own origin, port included
        bound = sock.getsockname()[1]
        policy = demo_policy(sandbox_url, bound, credentials)
        app = create_app(policy, accounting, demo_page=True)
        await serving.listen(GatewayRunner(app, policy.listen), sock=sock)  # the public port's own runner
        serving.announce(
            f"voucherify-gateway demo listening on {http_url(host, bound)}",
            f"open http://localhost:{bound}/ for the demo checkout (sandbox upstream at {sandbox_url})",
        )
        await serving.wait()
    return 0  # the gateway is cleaned up first, then the sandbox it calls


def demo(host: str, port: int) -> int:
    return asyncio.run(run_demo(host, port, configure_logging("info", "text")))
