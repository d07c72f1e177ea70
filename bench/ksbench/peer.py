"""node-oidc-provider (bench/peer) as a peer at the token endpoint."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from ksbench.procs import LOOPBACK, Service

PEER_DIR = Path(__file__).resolve().parent.parent / "peer"


def node_version() -> str:
    node = shutil.which("node")
    if not node:
        raise SystemExit("--peer needs Node.js 20+ (node is not on PATH)")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    version = out.stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        raise SystemExit(f"--peer needs Node.js 20+, found {version}")
    return version


def ensure_installed() -> str:
    """Install bench/peer's npm dependencies if missing; return oidc-provider's version."""
    pkg = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    if not pkg.exists():
        npm = shutil.which("npm")
        if not npm:
            raise SystemExit("--peer needs npm (not on PATH)")
        lock = (PEER_DIR / "package-lock.json").exists()
        argv = [npm, "ci" if lock else "install", "--no-audit", "--no-fund"]
        print(f"installing the peer: {' '.join(argv[1:])} in {PEER_DIR}")
        subprocess.run(argv, cwd=PEER_DIR, check=True, timeout=600)
    return str(json.loads(pkg.read_text())["version"])


def make_clients(count: int) -> list[dict[str, str]]:
    return [
        {"client_id": f"bench-peer-{i:03d}", "client_secret": secrets.token_urlsafe(32)}
        for i in range(count)
    ]


def start(*, port: int, workers: int, clients_file: Path, log_path: Path) -> Service:
    env = {
        **os.environ,
        "PEER_PORT": str(port),
        "PEER_CLIENTS_FILE": str(clients_file),
        "PEER_WORKERS": str(workers),
        "NODE_ENV": "production",
    }
    node = shutil.which("node") or "node"
    return Service("peer", [node, "server.js"], env=env, log_path=log_path, cwd=PEER_DIR)


def wait_ready(service: Service, base_url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if not service.running():
                raise SystemExit(f"the peer exited early:\n{service.log_tail()}")
            try:
                if client.get("/.well-known/openid-configuration").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"the peer was not ready within {timeout:.0f} s:\n{service.log_tail()}")


def token(base_url: str, client: dict[str, str]) -> dict[str, Any]:
    """One client_credentials exchange at the peer (client_secret_post)."""
    data = {"grant_type": "client_credentials", **client}
    r = httpx.post(f"{base_url}/token", data=data, timeout=10)
    if r.status_code != 200:
        raise SystemExit(f"the peer refused an exchange: {r.status_code} {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"
