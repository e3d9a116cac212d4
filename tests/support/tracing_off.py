"""Run as `python -m tests.support.tracing_off` (a fresh interpreter): serve a preflight and a 404 with
tracing off, then print what of OpenTelemetry the gateway imported (nothing, when all is well).

redis-py (8.x) imports opentelemetry.sdk.metrics itself whenever the SDK is installed, tracing or not;
so this records, for each opentelemetry module imported, the file whose import statement asked for it.
None may be the gateway's, and the tracing machinery (the trace SDK, the exporter, the gateway's tracing
sink) may not be loaded at all.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import FrameType
from typing import Any

GATEWAY = str(Path(__file__).resolve().parents[2] / "gateway")
ASKED: list[tuple[str, str]] = []


class _Who:
    def find_spec(self, name: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if name.split(".")[0] == "opentelemetry":
            frame: FrameType | None = sys._getframe(1)
            while frame is not None and (
                frame.f_code.co_filename.startswith("<frozen") or frame.f_code.co_filename == __file__
            ):
                frame = frame.f_back
            ASKED.append((name, frame.f_code.co_filename if frame is not None else "?"))
        return None


sys.meta_path.insert(0, _Who())

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

import gateway.cli  # noqa: E402
import gateway.serve  # noqa: E402
import gateway.workers  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.observe.access import AccessLog  # noqa: E402
from gateway.observe.accounting import Accounting  # noqa: E402
from gateway.observe.metrics import Metrics  # noqa: E402
from gateway.policy import parse_policy  # noqa: E402

POLICY = """
projects:
  shop:
    region: http://127.0.0.1:9
    credentials: {client_application_id: a, client_secret_key: b}
    allowed_origins: [https://shop.example.com]
default_project: shop
"""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def main() -> None:
    policy = parse_policy(POLICY, env={})
    assert gateway.serve.start_tracing(policy) is None
    accounting = Accounting([AccessLog(), Metrics()])
    client = TestClient(TestServer(create_app(policy, accounting)))
    await client.start_server()
    headers = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "GET"}
    resp = await client.options("/client/v1/validate", headers={**headers, "traceparent": TRACEPARENT})
    assert resp.status == 204, resp.status
    resp = await client.get("/client/v1/nope", headers={"traceparent": TRACEPARENT})
    assert resp.status == 404, resp.status
    accounting.flush()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
    by_gateway = sorted({name for name, where in ASKED if where.startswith(GATEWAY)})
    machinery = sorted(
        name
        for name in sys.modules
        if name.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter", "gateway.observe.tracing"))
    )
    print(",".join(by_gateway + machinery))
