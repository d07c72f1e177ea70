"""Revocation (RFC 7009) and introspection (RFC 7662) of the tokens this service issued."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth import service
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.grants.client_credentials import authenticate
from keyservice.auth.models import RefreshToken, RevokedFamily
from keyservice.auth.service import Caller
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.security.jwt import TokenError, UnknownKeyError
from keyservice.security.tokens import is_refresh_token


async def _verified(ctx: AppContext, token: str) -> dict[str, Any] | None:
    """The claims of one of our access tokens, or None; as the Bearer check does, a `kid`
    not loaded yet (another replica's new key) reloads the keys first."""
    try:
        return ctx.keyring.verify(token)
    except UnknownKeyError:
        if not await ctx.reload_signing_keys():
            return None
    except TokenError:
        return None
    try:
        return ctx.keyring.verify(token)
    except TokenError:
        return None


async def _family_of(ctx: AppContext, token: str) -> tuple[str, str | None, str] | None:
    """Return (family_id, key_id, principal_id) for a refresh token or one of our JWTs."""
    if is_refresh_token(token):
        async with ctx.database.sessionmaker() as session:
            row = (
                await session.execute(
                    select(RefreshToken.family_id, RefreshToken.key_id, RefreshToken.principal_id)
                    .where(RefreshToken.token_hash.in_(ctx.hasher.lookups(token)))
                    .limit(1)
                )
            ).first()
        return (row.family_id, row.key_id, row.principal_id) if row is not None else None
    claims = await _verified(ctx, token)
    if claims is None:
        return None
    sid = claims.get("sid")
    if not isinstance(sid, str):
        return None
    async with ctx.database.sessionmaker() as session:
        key_id = await session.scalar(
            select(ApiKey.id).where(ApiKey.client_id == claims.get("client_id"))
        )
    return sid, key_id, claims["sub"]


async def revoke(
    ctx: AppContext, *, token: str, creds: ClientCredentials | None, caller: Caller
) -> None:
    """Revoke the token's whole family; unknown tokens are silently accepted (RFC 7009 §2.2)."""
    key: ApiKey | None = None
    if creds is not None:
        key, _owner = await authenticate(ctx, creds, caller, event="token.revoke")
    found = await _family_of(ctx, token)
    if found is None:
        return
    family_id, key_id, principal_id = found
    async with ctx.database.sessionmaker() as session:
        if key is not None and key.id != key_id:
            # Not this client's token: refuse silently, revealing nothing about it; the
            # audit log names the key that tried and the token's key and owner.
            audit.record(
                session,
                type="token.revoke",
                outcome="failure",
                actor=service.actor_for(key=key, owner=None),
                principal_id=principal_id,
                key_id=key_id,
                ip=caller.ip_text,
                reason="token of another key; not revoked",
            )
            await session.commit()
            return
        await service.revoke_family(ctx, session, family_id=family_id, reason="revoked")
        audit.record(
            session,
            type="token.revoke",
            actor=service.actor_for(key=key, owner=None)
            or await service.family_holder(session, key_id=key_id, principal_id=principal_id),
            principal_id=principal_id,
            key_id=key_id,
            ip=caller.ip_text,
        )
        await session.commit()


async def introspect(ctx: AppContext, *, token: str) -> dict[str, Any]:
    """Describe a token; inactive if expired, revoked, or its key/owner is no longer usable."""
    inactive: dict[str, Any] = {"active": False}
    if is_refresh_token(token):
        return await _introspect_refresh(ctx, token) or inactive
    claims = await _verified(ctx, token)
    if claims is None:
        return inactive
    if ctx.revocation.reason(claims) is not None:
        return inactive
    result = {"active": True, "token_type": "Bearer"}
    for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "sid"):
        if name in claims:
            result[name] = claims[name]
    # Refused from then on, also when a shortened TTL ends it before its own `exp`.
    result["exp"] = ctx.keyring.honoured_until(claims)
    result["principal_type"] = claims.get("principal_type")
    return result


async def _introspect_refresh(ctx: AppContext, token: str) -> dict[str, Any] | None:
    now = utcnow()
    async with ctx.database.sessionmaker() as session:
        row = (
            await session.execute(
                select(RefreshToken, Principal, ApiKey, RevokedFamily.family_id)
                .join(Principal, Principal.id == RefreshToken.principal_id)
                .outerjoin(ApiKey, ApiKey.id == RefreshToken.key_id)
                .outerjoin(RevokedFamily, RevokedFamily.family_id == RefreshToken.family_id)
                .where(RefreshToken.token_hash.in_(ctx.hasher.lookups(token)))
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    refresh, owner, key, revoked = row
    if refresh.used_at is not None or revoked is not None or now >= refresh.expires_at:
        return None
    if not owner.usable or owner.tokens_revoked(refresh.created_at):
        return None
    if refresh.key_id is not None and key is None:
        return None
    if refresh.key_id is None and now.timestamp() >= service.password_session_end(
        ctx.settings, refresh.family_id
    ):
        return None  # a password sign-in past its maximum age, as a refresh would find
    if key is not None and service.key_unusable(
        key=key, owner=owner, now=now, legacy_until=ctx.settings.legacy_keys_until
    ):
        return None
    # What a refresh would carry now: the key's scopes and the owner's permissions may have
    # narrowed since the token was issued (the grant never widens past its first scope).
    scope = service.available_scopes(owner=owner, key=key, ceiling=frozenset(refresh.scope.split()))
    result: dict[str, Any] = {
        "active": True,
        "token_type": "refresh_token",
        "scope": service.format_scope(scope),
        "sub": owner.id,
        "exp": int(refresh.expires_at.timestamp()),
        "iat": int(refresh.created_at.timestamp()),
        "sid": refresh.family_id,
    }
    if key is not None:
        result["client_id"] = key.client_id
    return result
