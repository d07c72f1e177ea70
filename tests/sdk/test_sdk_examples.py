"""The scripts in examples/ work against a real server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from keyservice.client import KeyServiceAuth
from tests.conftest import refused_port

from .support import Server

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_client(
    server: Server, api_key: str | None, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {k: v for k, v in server.env.items() if not k.startswith("KEYSERVICE_")}
    env["KEYSERVICE_URL"] = url or server.url
    if api_key is not None:
        env["KEYSERVICE_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "client.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_client_example(server: Server) -> None:
    key = server.create_key()
    result = run_client(server, key["api_key"])
    assert result.returncode == 0, result.stderr
    assert f"authenticated as {key['_owner']['username']} (user)" in result.stdout
    assert "projects:read" in result.stdout
    assert key["api_key"] not in result.stdout + result.stderr


def test_client_example_reports_a_refused_key(server: Server) -> None:
    result = run_client(server, "ksk_" + "A" * 16 + "_" + "B" * 49)
    assert result.returncode == 1
    assert "invalid_client" in result.stderr
    assert "B" * 49 not in result.stderr
    assert run_client(server, None).returncode == 2


def test_client_example_reports_an_unreachable_service(server: Server) -> None:
    key = server.create_key()
    result = run_client(server, key["api_key"], url=f"http://127.0.0.1:{refused_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "ConnectError" in result.stderr
    assert "Traceback" not in result.stderr
    assert key["api_key"] not in result.stdout + result.stderr


async def test_downstream_service_example(server: Server) -> None:
    app = load("downstream_service").create_app(server.url)
    key = server.create_key()
    auth = KeyServiceAuth(key["api_key"], server.token_url)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://projects", auth=auth) as c:
        projects = await c.get("/projects")
        invoice = await c.post("/invoices")
    assert projects.status_code == 200
    assert projects.json()["client_id"] == key["client_id"]
    assert invoice.status_code == 403
    assert 'scope="billing:write"' in invoice.headers["WWW-Authenticate"]
    async with httpx.AsyncClient(transport=transport, base_url="http://projects") as anonymous:
        assert (await anonymous.get("/projects")).status_code == 401
