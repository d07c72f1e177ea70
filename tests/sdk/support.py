"""Helpers for the SDK tests: the server handle and a recorder of token-endpoint traffic."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

BIN = Path(sys.executable).parent
ACCESS_TOKEN_TTL = 3
USER_PERMISSIONS = ["api_keys:manage", "projects:read"]
CUSTOM_SCOPES = ["projects:read", "billing:write"]


@dataclass
class Server:
    url: str
    env: dict[str, str]
    admin_username: str
    admin_password: str
    log_path: Path
    _admin_token: tuple[str, float] = ("", float("-inf"))

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def password_token(
        self, username: str, password: str, scope: str | None = None
    ) -> dict[str, Any]:
        """Log in with the password grant and return the token response."""
        form = {"grant_type": "password", "username": username, "password": password}
        if scope:
            form["scope"] = scope
        with httpx.Client(base_url=self.url, timeout=10) as client:
            response = client.post("/token", data=form)
        assert response.status_code == 200, (response.status_code, response.text)
        return dict(response.json())

    def exchange(self, api_key: str, scope: str | None = None) -> dict[str, Any]:
        """Exchange an API key by hand and return the token response."""
        form = {"grant_type": "client_credentials", "api_key": api_key}
        if scope:
            form["scope"] = scope
        with httpx.Client(base_url=self.url, timeout=10) as client:
            response = client.post("/token", data=form)
        assert response.status_code == 200, (response.status_code, response.text)
        return dict(response.json())

    def admin_client(self) -> httpx.Client:
        """Return a client authenticated as the bootstrap admin (caller closes it)."""
        # Password logins are slow on purpose (argon2): reuse a token while it is young.
        token, at = self._admin_token
        if time.monotonic() - at > ACCESS_TOKEN_TTL / 2:
            token = self.password_token(self.admin_username, self.admin_password)["access_token"]
            self._admin_token = (token, time.monotonic())
        return httpx.Client(
            base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        )

    def create_user(self, permissions: list[str]) -> tuple[str, str]:
        """Create a user through the admin API (or the CLI if the API is missing)."""
        username = f"sdk-{uuid.uuid4().hex[:12]}"
        password = secrets.token_urlsafe(18)
        body = {"username": username, "password": password, "permissions": permissions}
        with self.admin_client() as admin:
            response = admin.post("/admin/users", json=body)
        if response.status_code == 201:
            return username, password
        if response.status_code not in (404, 405):
            raise AssertionError(f"POST /admin/users: {response.status_code} {response.text}")
        args = [str(BIN / "keyservice"), "users", "create", username, "--password-stdin"]
        for permission in permissions:
            args += ["--permission", permission]
        subprocess.run(args, input=password, text=True, env=self.env, check=True, timeout=60)
        return username, password

    def create_key(self, *, permissions: list[str] | None = None, **body: Any) -> dict[str, Any]:
        """Create a fresh user (so the 5-key limit never bites) and one API key for it."""
        username, password = self.create_user(permissions or USER_PERMISSIONS)
        token = self.password_token(username, password)["access_token"]
        body.setdefault("name", "sdk")
        with httpx.Client(
            base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            response = client.post("/api-keys", json=body)
        assert response.status_code == 201, (response.status_code, response.text)
        key = dict(response.json())
        key["_owner"] = {"username": username, "password": password}
        return key

    def delete_key(self, key: dict[str, Any]) -> None:
        """Revoke a key created by create_key, as its owner."""
        owner = key["_owner"]
        token = self.password_token(owner["username"], owner["password"])["access_token"]
        with httpx.Client(
            base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            response = client.delete(f"/api-keys/{key['id']}")
        assert response.status_code == 204, (response.status_code, response.text)


@dataclass
class TokenLog:
    """Records the token endpoint traffic of a KeyServiceAuth's token client."""

    requests: list[str] = field(default_factory=list)  # grant types, in order
    presented_refresh_tokens: list[str] = field(default_factory=list)
    responses: list[tuple[str, int, dict[str, Any], httpx.Headers]] = field(default_factory=list)

    def count(self, grant_type: str, status: int | None = None) -> int:
        if status is None:
            return self.requests.count(grant_type)
        return sum(1 for g, s, _, _ in self.responses if g == grant_type and s == status)

    @property
    def exchanges(self) -> int:
        return self.count("client_credentials")

    @property
    def refreshes(self) -> int:
        return self.count("refresh_token")

    def last_refresh_token(self) -> str:
        for _, status, body, _ in reversed(self.responses):
            if status == 200 and "refresh_token" in body:
                return str(body["refresh_token"])
        raise AssertionError("no refresh token seen")

    def _grant(self, request: httpx.Request) -> str:
        form = parse_qs(request.content.decode())
        return form.get("grant_type", ["?"])[0]

    def on_request(self, request: httpx.Request) -> None:
        self.requests.append(self._grant(request))
        form = parse_qs(request.content.decode())
        if "refresh_token" in form:
            self.presented_refresh_tokens.append(form["refresh_token"][0])

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        try:
            body = json.loads(response.content)
        except ValueError:
            body = {}
        self.responses.append(
            (self._grant(response.request), response.status_code, body, response.headers)
        )

    async def aon_request(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def aon_response(self, response: httpx.Response) -> None:
        await response.aread()
        self.on_response(response)

    def client(self) -> httpx.Client:
        return httpx.Client(
            timeout=10, event_hooks={"request": [self.on_request], "response": [self.on_response]}
        )

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=10,
            event_hooks={"request": [self.aon_request], "response": [self.aon_response]},
        )


def no_secret_hook(*secrets_: str) -> Callable[[httpx.Request], None]:
    """Return a request hook failing if a secret appears anywhere in an ordinary request."""

    def hook(request: httpx.Request) -> None:
        raw = str(request.url) + str(request.headers.raw) + request.content.decode(errors="replace")
        for secret in secrets_:
            assert secret not in raw, "a secret was sent on an ordinary request"

    return hook
