"""Test data built through the real services and HTTP API."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import httpx
import jwt

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyCreated
from keyservice.context import AppContext
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from keyservice.security import hashing
from keyservice.security.hashing import hash_password

PASSWORD = "correct horse battery staple"


def _password_hash(password: str) -> str:
    # argon2 is slow on purpose; hash the test password once per run and cost (conftest.py).
    return _hashed(password, hashing._PASSWORDS)


@lru_cache
def _hashed(password: str, context: object) -> str:
    return hash_password(password)


async def create_principal(
    ctx: AppContext,
    name: str,
    *,
    kind: str = "user",
    permissions: list[str] | None = None,
    password: str = PASSWORD,
    disabled: bool = False,
) -> Principal:
    """Insert a user or device directly (scopes it names are added to the catalog)."""
    perms = permissions if permissions is not None else ["api_keys:manage"]
    async with ctx.database.sessionmaker() as session:
        for perm in perms:
            if await session.get(Scope, perm) is None:
                session.add(Scope(name=perm, description=f"test scope {perm}"))
        principal = Principal(
            kind=kind,
            name=name,
            permissions=perms,
            password_hash=_password_hash(password) if kind == "user" else None,
            disabled=disabled,
        )
        session.add(principal)
        await session.commit()
        return principal


async def add_scope(ctx: AppContext, name: str, description: str = "") -> None:
    async with ctx.database.sessionmaker() as session:
        session.add(Scope(name=name, description=description or name))
        await session.commit()


async def login(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD, **extra: str
) -> dict[str, Any]:
    response = await client.post(
        "/token",
        data={"grant_type": "password", "username": username, "password": password, **extra},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user_token(
    ctx: AppContext, client: httpx.AsyncClient, name: str, permissions: list[str] | None = None
) -> str:
    """Create a user and return an access token from a password login."""
    await create_principal(ctx, name, permissions=permissions)
    return str((await login(client, name))["access_token"])


async def create_key(
    client: httpx.AsyncClient, token: str, expect: int = 201, **body: Any
) -> dict[str, Any]:
    body.setdefault("name", "test key")
    response = await client.post("/api-keys", json=body, headers=bearer(token))
    assert response.status_code == expect, response.text
    created: dict[str, Any] = response.json()
    return created


async def service_key(ctx: AppContext, owner: Principal, name: str, **fields: Any) -> ApiKeyCreated:
    """A key of `owner`'s made through the service (no HTTP), as its creation answers it."""
    async with ctx.database.sessionmaker() as session:
        return await api_keys.create(
            ctx, session, owner=owner, data=ApiKeyCreate(name=name, **fields), actor="test", ip=None
        )


async def exchange(client: httpx.AsyncClient, api_key: str, **extra: str) -> httpx.Response:
    return await client.post(
        "/token", data={"grant_type": "client_credentials", "api_key": api_key, **extra}
    )


async def audit_events(
    ctx: AppContext, type: str | None = None, *, outcome: str | None = None
) -> list[Any]:
    """Read audit rows straight from the database, oldest first; of one outcome if given."""
    from sqlalchemy import select

    from keyservice.audit.models import AuditEvent

    async with ctx.database.sessionmaker() as session:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if type is not None:
            query = query.where(AuditEvent.type == type)
        if outcome is not None:
            query = query.where(AuditEvent.outcome == outcome)
        return list((await session.scalars(query)).all())


async def set_principal(ctx: AppContext, principal_id: str, **values: Any) -> None:
    """Change a principal directly (e.g. disable it) as the admin API would."""
    async with ctx.database.sessionmaker() as session:
        principal = await session.get(Principal, principal_id)
        assert principal is not None
        for name, value in values.items():
            setattr(principal, name, value)
        await session.commit()
    if "disabled" in values:
        ctx.revocation.apply(
            f"principal-{'disabled' if values['disabled'] else 'enabled'}:{principal_id}"
        )


async def set_key(ctx: AppContext, key_id: str, **values: Any) -> None:
    from keyservice.api_keys.models import ApiKey

    async with ctx.database.sessionmaker() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        for name, value in values.items():
            setattr(key, name, value)
        await session.commit()


async def replica_signs(context: AppContext, claims: dict[str, object]) -> str:
    """A token signed by a key another replica has just made (not loaded here yet)."""
    replica = AppContext(context.settings)
    try:
        async with replica.database.sessionmaker() as session:
            await replica.keyring.ensure_key(session)
            await replica.keyring.create_key(session, retire_current=True, delay=0)
            await session.commit()
            await replica.keyring.load(session)
        token, _ = replica.keyring.issue(claims)
    finally:
        await replica.database.dispose()
    loaded = {jwk["kid"] for jwk in context.keyring.jwks()["keys"]}
    assert jwt.get_unverified_header(token)["kid"] not in loaded
    context.keyring._last_reload = 0  # the reload rate limit would otherwise apply
    return token
