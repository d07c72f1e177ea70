"""Fixtures for the SDK tests: a real `keyservice serve` process and helpers to get keys."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from .support import ACCESS_TOKEN_TTL, BIN, CUSTOM_SCOPES, Server, TokenLog


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start `keyservice serve` on a free port with an embedded SQLite database."""
    executable = BIN / "keyservice"
    if not executable.exists():
        pytest.fail(f"{executable} is missing: install the package with the server extra")
    data_dir = tmp_path_factory.mktemp("keyservice-data")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    admin_password = secrets.token_urlsafe(24)
    # Inherit PATH and the like, but no KEYSERVICE_* setting from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")}
    env.update(
        {
            "KEYSERVICE_DATA_DIR": str(data_dir),
            "KEYSERVICE_SECRET_KEY": secrets.token_urlsafe(36),
            "KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME": "admin",
            "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
            "KEYSERVICE_ISSUER": url,
            "KEYSERVICE_ACCESS_TOKEN_TTL": str(ACCESS_TOKEN_TTL),
        }
    )
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: workers die with it
        )
    srv = Server(url, env, "admin", admin_password, log_path)
    try:
        _wait_ready(srv, process)
        _ensure_scopes(srv)
        yield srv
    finally:
        _stop(process)


def _wait_ready(srv: Server, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=srv.url, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"keyservice serve exited ({process.returncode}):\n{srv.log_tail()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail(f"keyservice serve not ready after 60 s:\n{srv.log_tail()}")


def _ensure_scopes(srv: Server) -> None:
    with srv.admin_client() as admin:
        for name in CUSTOM_SCOPES:
            response = admin.post("/admin/scopes", json={"name": name, "description": name})
            assert response.status_code in (201, 409), (response.status_code, response.text)


@pytest.fixture
def api_key(server: Server) -> str:
    """Return a fresh API key string (its owner holds USER_PERMISSIONS)."""
    return str(server.create_key()["api_key"])


@pytest.fixture
def token_log() -> TokenLog:
    return TokenLog()
