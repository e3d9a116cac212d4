"""`voucherify-gateway demo`: the gateway in front of the offline sandbox, with the demo checkout page.

One command, no configuration, no network: the sandbox runs in the same process on a free loopback port,
the gateway on `--port` (default 8080) with a built-in policy that allows the demo page's own origin.
"""

from __future__ import annotations

import asyncio
import signal
import socket

from aiohttp import web

from gateway.app import create_app
from gateway.observe import configure_logging, flush_logs, flush_logs_periodically
from gateway.policy import Credentials, DangerZone, PolicyFile, Project
from gateway.sandbox import SandboxCredentials, create_sandbox_app
from gateway.serve import http_url

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


async def run_demo(host: str, port: int) -> int:
    credentials = SandboxCredentials()
    sandbox = web.AppRunner(create_sandbox_app(credentials), access_log=None)
    await sandbox.setup()
    sandbox_site = web.TCPSite(sandbox, "127.0.0.1", 0)
    await sandbox_site.start()
    sandbox_url = f"http://127.0.0.1:{sandbox.addresses[0][1]}"

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    gateway = web.AppRunner(
        create_app(demo_policy(sandbox_url, bound, credentials), demo_page=True), access_log=None
    )
    await gateway.setup()
    await web.SockSite(gateway, sock).start()
    print(f"voucherify-gateway demo listening on {http_url(host, bound)}", flush=True)
    print(
        f"open http://localhost:{bound}/ for the demo checkout (sandbox upstream at {sandbox_url})",
        flush=True,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    flusher = loop.create_task(flush_logs_periodically())
    await stop.wait()
    await gateway.cleanup()
    await sandbox.cleanup()
    flusher.cancel()
    flush_logs()
    return 0


def demo(host: str, port: int) -> int:
    configure_logging("info", "text")
    return asyncio.run(run_demo(host, port))
