"""The token exchange: what spans keys, owners, addresses, scopes, tokens and the audit log.

Each grant (auth/grants/*) runs validate → generate → persist with the pieces here. One
transaction per exchange or refresh: the refresh token, the audit event and the coalesced
`last_used_*` write commit together, so an acknowledged token is never lost.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth.models import RefreshToken, RevokedFamily
from keyservice.auth.revocation import notify
from keyservice.context import AppContext
from keyservice.database import new_id, utcnow
from keyservice.exceptions import InvalidClient, InvalidScope, KeyServiceError
from keyservice.principals.models import Principal
from keyservice.scopes.models import effective_permissions
from keyservice.security import ip as ipmod
from keyservice.security.tokens import new_refresh_token

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


@dataclass(frozen=True)
class Caller:
    """Where a token request comes from."""

    ip: ipmod.IPAddress | None

    @property
    def ip_text(self) -> str | None:
        return str(self.ip) if self.ip is not None else None


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    scope: str
    sunset: datetime | None = None

    def body(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_token_expires_in": self.refresh_expires_in,
            "scope": self.scope,
        }


def parse_scope(value: str | None) -> frozenset[str] | None:
    """Parse a space-separated scope parameter; None when absent or empty."""
    if value is None or not value.strip(" "):
        return None
    parts = [part for part in value.split(" ") if part]
    for part in parts:
        if not _SCOPE_TOKEN.match(part):
            from keyservice.exceptions import InvalidRequest

            raise InvalidRequest("The scope parameter holds characters RFC 6749 §3.3 forbids.")
    return frozenset(parts)


def format_scope(scopes: frozenset[str] | set[str]) -> str:
    return " ".join(sorted(scopes))


def available_scopes(
    *, owner: Principal, key: ApiKey | None, ceiling: frozenset[str] | None = None
) -> frozenset[str]:
    """Return what a token may carry: key scopes (or inherited) ∩ owner's current permissions."""
    held = effective_permissions(owner.permissions)
    if key is not None and key.scopes is not None:
        held &= frozenset(key.scopes)
    if ceiling is not None:
        held &= ceiling
    return held


def grant_scopes(requested: frozenset[str] | None, available: frozenset[str]) -> frozenset[str]:
    """Narrow to the requested scopes; asking for one not available is invalid_scope."""
    if requested is None:
        return available
    missing = requested - available
    if missing:
        raise InvalidScope(
            "The requested scope includes permissions this client does not hold: "
            + ", ".join(sorted(missing))
            + "."
        )
    return requested


@lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> list[ipmod.IPNetwork]:
    return ipmod.parse_cidrs(cidrs)


def key_refusal(
    *, key: ApiKey, owner: Principal, caller: Caller, now: datetime, legacy_until: datetime | None
) -> str | None:
    """Return the precise reason a key cannot be used now, or None (API.md check order)."""
    if key.revoked_at is not None:
        return "key revoked"
    if now >= key.expires_at:
        return "key expired"
    if key.is_legacy and legacy_until is not None and now >= legacy_until:
        return "legacy keys no longer accepted"
    if not owner.usable:
        return "owner disabled" if owner.deleted_at is None else "owner deleted"
    if not ipmod.ip_allowed(caller.ip, _networks(tuple(key.allowed_ips))):
        return "ip not allowed"
    return None


def actor_for(*, key: ApiKey | None, owner: Principal | None) -> str | None:
    if key is not None:
        return f"key:{key.client_id}"
    if owner is not None:
        return f"{owner.kind}:{owner.name}"
    return None


async def refuse(
    ctx: AppContext,
    error: KeyServiceError,
    *,
    event: str,
    reason: str,
    caller: Caller,
    key: ApiKey | None = None,
    principal_id: str | None = None,
    actor: str | None = None,
    throttle_subject: str | None = None,
) -> NoReturn:
    """Audit a refusal with its precise reason (in its own transaction), then raise."""
    if throttle_subject is not None:
        await ctx.throttle.failure(client=throttle_subject, ip=caller.ip_text)
    async with ctx.database.sessionmaker() as session:
        audit.record(
            session,
            type=event,
            outcome="failure",
            actor=actor,
            principal_id=principal_id or (key.principal_id if key is not None else None),
            key_id=key.id if key is not None else None,
            ip=caller.ip_text,
            reason=reason,
        )
        await session.commit()
    raise error


async def load_key(session: AsyncSession, *, client_id: str) -> tuple[ApiKey, Principal] | None:
    """Fetch a key and its owner in one round trip."""
    row = (
        await session.execute(
            select(ApiKey, Principal)
            .join(Principal, Principal.id == ApiKey.principal_id)
            .where(ApiKey.client_id == client_id)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def authenticate_secret(
    ctx: AppContext, found: tuple[ApiKey, Principal] | None, secret: str
) -> bool:
    """Constant-time secret check; an unknown client does the same HMAC work."""
    stored = found[0].secret_hash if found is not None else None
    return ctx.hasher.verify(secret, stored)


async def issue(
    ctx: AppContext,
    session: AsyncSession,
    *,
    owner: Principal,
    key: ApiKey | None,
    scopes: frozenset[str],
    caller: Caller,
    event: str,
    family_id: str | None = None,
    parent_id: str | None = None,
) -> Issued:
    """Create the refresh token, sign the access token, audit, and commit."""
    settings = ctx.settings
    now = utcnow()
    family = family_id or new_id()
    refresh_token = new_refresh_token()
    session.add(
        RefreshToken(
            token_hash=ctx.hasher.hash(refresh_token),
            family_id=family,
            parent_id=parent_id,
            principal_id=owner.id,
            key_id=key.id if key is not None else None,
            scope=format_scope(scopes),
            created_at=now,
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl),
        )
    )
    claims: dict[str, object] = {
        "sub": owner.id,
        "scope": format_scope(scopes),
        "principal_type": owner.kind,
        "sid": family,
    }
    if key is not None:
        claims["client_id"] = key.client_id
        if ctx.last_used.due(key.id):
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key.id)
                .values(last_used_at=now, last_used_ip=caller.ip_text)
            )
    audit.record(
        session,
        type=event,
        actor=actor_for(key=key, owner=owner),
        principal_id=owner.id,
        key_id=key.id if key is not None else None,
        ip=caller.ip_text,
    )
    access_token, _exp = ctx.keyring.issue(claims, now=int(now.timestamp()))
    await session.commit()
    sunset = None
    if key is not None and key.expires_at - now <= timedelta(days=settings.expiry_warning_days):
        sunset = key.expires_at
    return Issued(
        access_token=access_token,
        expires_in=settings.access_token_ttl,
        refresh_token=refresh_token,
        refresh_expires_in=settings.refresh_token_ttl,
        scope=format_scope(scopes),
        sunset=sunset,
    )


async def revoke_family(
    ctx: AppContext, session: AsyncSession, *, family_id: str, reason: str
) -> None:
    """Mark a family revoked (idempotent) and tell every replica; the caller commits."""
    exists = await session.scalar(
        select(RevokedFamily.family_id).where(RevokedFamily.family_id == family_id)
    )
    if exists is None:
        session.add(RevokedFamily(family_id=family_id, revoked_at=utcnow(), reason=reason))
    await notify(session, f"family:{family_id}")
    ctx.revocation.apply(f"family:{family_id}")


async def run_blocking_check(func: object, *args: object) -> bool:
    """Run a slow hash check (argon2, bcrypt) off the event loop."""
    assert callable(func)
    return bool(await asyncio.to_thread(func, *args))


def invalid_client(basic: bool, description: str | None = None) -> InvalidClient:
    headers = {"WWW-Authenticate": 'Basic realm="keyservice"'} if basic else None
    return InvalidClient(description, headers=headers)


def unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))
