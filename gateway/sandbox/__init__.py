"""An offline imitation of Voucherify's client-side and server-side API, for demos and tests.

``create_sandbox_app()`` returns an aiohttp application; ``python -m gateway.sandbox`` runs it standalone.
"""

from gateway.sandbox.app import SANDBOX_RECORDS, RecordedRequest, SandboxCredentials, create_sandbox_app
from gateway.sandbox.routes import SANDBOX_STORE
from gateway.sandbox.store import Store

__all__ = [
    "SANDBOX_RECORDS",
    "SANDBOX_STORE",
    "RecordedRequest",
    "SandboxCredentials",
    "Store",
    "create_sandbox_app",
]
