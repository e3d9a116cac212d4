"""Fixtures for the sandbox suite: a real-socket aiohttp test client per test."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.sandbox import SandboxCredentials, create_sandbox_app

ORIGIN = "https://shop.example.com"
CLIENT_HEADERS = {
    "X-Client-Application-Id": "sandbox-client-app-id",
    "X-Client-Token": "sandbox-client-secret-key",
    "Origin": ORIGIN,
}
SERVER_HEADERS = {"X-App-Id": "sandbox-app-id", "X-App-Token": "sandbox-secret-key"}

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(**kwargs: Any) -> Client:
        credentials = kwargs.pop("credentials", SandboxCredentials(allowed_origins=(ORIGIN, ".example.org")))
        return await aiohttp_client(create_sandbox_app(credentials, **kwargs))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@asynccontextmanager
async def standalone_sandbox(*args: str) -> AsyncIterator[int]:
    """``python -m gateway.sandbox --port 0 ARGS``: yields its port once it says where it listens, and
    checks that it exits cleanly on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        match = re.fullmatch(r"sandbox listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        yield int(match.group(1))
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are on a fresh connection and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer
