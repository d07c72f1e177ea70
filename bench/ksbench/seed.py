"""Seed the service under test through its public interface: users, a scope, API keys."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

BENCH_SCOPE = "bench:read"
USER_PERMISSIONS = ("api_keys:manage", BENCH_SCOPE)
KEYS_PER_USER = 5  # the service's hard limit of live keys per principal
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class SeedError(RuntimeError):
    pass


@dataclass(frozen=True)
class Key:
    owner: str
    client_id: str
    client_secret: str
    api_key: str


@dataclass
class Seeded:
    keys: list[Key]
    user_creation: str  # "api" or "cli"
    scope_creation: str  # "created", "exists", "skipped (<status>)"
    permissions: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fail(what: str, response: httpx.Response) -> SeedError:
    return SeedError(f"{what} -> {response.status_code}: {response.text[:400]}")


def jwt_header(token: str) -> dict[str, Any]:
    """Decode (without verifying) the JOSE header of a compact JWT."""
    head = token.split(".", 1)[0]
    head += "=" * (-len(head) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head))
    return decoded


def password_login(client: httpx.Client, username: str, password: str) -> str:
    """Password grant; return the access token."""
    data = {"grant_type": "password", "username": username, "password": password}
    r = client.post("/token", data=data)
    if r.status_code != 200:
        raise _fail(f"POST /token (password grant for {username})", r)
    return str(r.json()["access_token"])


def exchange(client: httpx.Client, key: Key) -> dict[str, Any]:
    """client_credentials exchange with the form fields; return the token response."""
    data = {
        "grant_type": "client_credentials",
        "client_id": key.client_id,
        "client_secret": key.client_secret,
    }
    r = client.post("/token", data=data)
    if r.status_code != 200:
        raise _fail(f"POST /token (client_credentials for {key.client_id})", r)
    body: dict[str, Any] = r.json()
    if not body.get("refresh_token"):
        raise SeedError("the client_credentials response carries no refresh_token")
    return body


def _ensure_scope(client: httpx.Client, admin: str) -> str:
    r = client.post(
        "/admin/scopes",
        json={"name": BENCH_SCOPE, "description": "read access used by the benchmark"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    if r.status_code == 201:
        return "created"
    if r.status_code == 409:
        return "exists"
    if r.status_code in (404, 405):
        return f"skipped ({r.status_code}: no POST /admin/scopes)"
    raise _fail("POST /admin/scopes", r)


def _create_user_api(
    client: httpx.Client, admin: str, username: str, password: str, perms: Sequence[str]
) -> httpx.Response:
    return client.post(
        "/admin/users",
        json={"username": username, "password": password, "permissions": list(perms)},
        headers={"Authorization": f"Bearer {admin}"},
    )


def _create_user_cli(
    cli: Sequence[str], env: Mapping[str, str], username: str, password: str, perms: Sequence[str]
) -> None:
    argv = [*cli, "users", "create", username]
    for perm in perms:
        argv += ["--permission", perm]
    argv.append("--password-stdin")
    out = subprocess.run(
        argv,
        input=password + "\n",
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        said = " ".join((out.stderr or out.stdout).split())[-400:]
        raise SeedError(f"keyservice users create {username} exited {out.returncode}: {said}")


def _create_keys(client: httpx.Client, username: str, password: str, first: int) -> list[Key]:
    token = password_login(client, username, password)
    auth = {"Authorization": f"Bearer {token}"}
    keys = []
    for n in range(first, first + KEYS_PER_USER):
        r = client.post("/api-keys", json={"name": f"bench-{n}"}, headers=auth)
        if r.status_code != 201:
            raise _fail(f"POST /api-keys (bench-{n} for {username})", r)
        body = r.json()
        keys.append(
            Key(
                owner=username,
                client_id=body["client_id"],
                client_secret=body["client_secret"],
                api_key=body.get("api_key", ""),
            )
        )
    return keys


def seed(
    base_url: str,
    *,
    admin_username: str,
    admin_password: str,
    users: int,
    cli: Sequence[str],
    env: Mapping[str, str],
) -> Seeded:
    """Create `users` users with 5 keys each (POST /admin/users, else the CLI)."""
    started = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=60) as client:
        admin = password_login(client, admin_username, admin_password)
        scope = _ensure_scope(client, admin)
        perms: tuple[str, ...] = USER_PERMISSIONS
        notes: list[str] = []
        creds = [(f"bench-user-{i:02d}", secrets.token_urlsafe(18)) for i in range(users)]

        # The first user decides the way: the admin API if it exists, else the CLI.
        name0, pw0 = creds[0]
        r = _create_user_api(client, admin, name0, pw0, perms)
        if r.status_code == 422 and not scope.startswith(("created", "exists")):
            notes.append(f"{BENCH_SCOPE} refused as a permission ({r.text[:120]}); left out")
            perms = ("api_keys:manage",)
            r = _create_user_api(client, admin, name0, pw0, perms)
        if r.status_code == 201:
            how = "api"

            def create(user: tuple[str, str]) -> None:
                resp = _create_user_api(client, admin, user[0], user[1], perms)
                if resp.status_code != 201:
                    raise _fail(f"POST /admin/users ({user[0]})", resp)

        elif r.status_code in (404, 405):
            how = "cli"

            def create(user: tuple[str, str]) -> None:
                _create_user_cli(cli, env, user[0], user[1], perms)

            try:
                create(creds[0])
            except SeedError as exc:
                # Without POST /admin/scopes the catalog may not know bench:read.
                if scope.startswith(("created", "exists")) or "ermission" not in str(exc):
                    raise
                notes.append(f"{BENCH_SCOPE} refused as a permission ({exc}); left out")
                perms = ("api_keys:manage",)
                create(creds[0])
        else:
            raise _fail(f"POST /admin/users ({name0})", r)

        def one_user(index: int) -> list[Key]:
            username, password = creds[index]
            if index > 0:
                create(creds[index])
            return _create_keys(client, username, password, index * KEYS_PER_USER + 1)

        # Password hashing makes each user cost ~0.1-0.3 s; a few at a time is enough.
        with ThreadPoolExecutor(max_workers=4) as pool:
            keys = [k for batch in pool.map(one_user, range(users)) for k in batch]

    return Seeded(
        keys=keys,
        user_creation=how,
        scope_creation=scope,
        permissions=perms,
        notes=notes,
        seconds=time.monotonic() - started,
    )


def exchanges(base_url: str, keys: Sequence[Key], count: int) -> list[dict[str, Any]]:
    """Do `count` client_credentials exchanges, rotating through `keys`."""
    with httpx.Client(base_url=base_url, timeout=60) as client:
        return [exchange(client, keys[i % len(keys)]) for i in range(count)]
