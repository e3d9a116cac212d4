"""Fixtures for the sandbox suite: a real-socket aiohttp test client per test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.sandbox import SandboxCredentials, create_sandbox_app

ORIGIN = "https://shop.example.com"
CLIENT_HEADERS = {
    "X-Client-Application-Id": "sandbox-client-app-id",
    "X-Client-Token": "sandbox-client-secret-key",
    "Origin": ORIGIN,
}
SERVER_HEADERS = {"X-App-Id": "sandbox-app-id", "X-App-Token": "sandbox-secret-key"}

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(**kwargs: Any) -> Client:
        credentials = kwargs.pop("credentials", SandboxCredentials(allowed_origins=(ORIGIN, ".example.org")))
        client: Client = await aiohttp_client(create_sandbox_app(credentials, **kwargs))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()
