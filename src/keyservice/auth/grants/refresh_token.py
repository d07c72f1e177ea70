"""grant_type=refresh_token: single-use, rotating, with reuse detection (RFC 9700 §4.14.2).

The claim is one conditional UPDATE (`used_at IS NULL`), so of N concurrent refreshes of one
token exactly one wins, on one process or many replicas. Presenting a used token, the
losers of a race included, revokes the whole family. If a check after the claim fails (IP,
scope, binding), the transaction rolls back and the token stays usable.
"""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth import service
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.grants.client_credentials import authenticate
from keyservice.auth.models import RefreshToken, RevokedFamily
from keyservice.auth.service import Caller, Issued
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import InvalidGrant, InvalidRequest, InvalidScope
from keyservice.principals.models import Principal
from keyservice.security.tokens import is_refresh_token

EVENT = "token.refresh"
PARAMETERS = ("refresh_token", "scope")


async def handle(
    ctx: AppContext, form: dict[str, str], creds: ClientCredentials | None, caller: Caller
) -> Issued:
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is missing.")
    requested = service.parse_scope(form.get("scope"))
    if not is_refresh_token(token):
        await service.refuse(
            ctx, InvalidGrant(), event=EVENT, reason="malformed refresh token", caller=caller
        )
    bound_key: ApiKey | None = None
    if creds is not None:
        bound_key, _ = await authenticate(ctx, creds, caller, event=EVENT)
    token_hash = ctx.hasher.hash(token)
    now = utcnow()

    async with ctx.database.sessionmaker() as session:
        claimed = (
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
                .values(used_at=now)
                .returning(
                    RefreshToken.id,
                    RefreshToken.family_id,
                    RefreshToken.key_id,
                    RefreshToken.principal_id,
                    RefreshToken.scope,
                    RefreshToken.expires_at,
                )
            )
        ).first()
        if claimed is None:
            await _unknown_or_reused(ctx, session, token_hash=token_hash, caller=caller)
        row = (
            await session.execute(
                select(Principal, ApiKey, RevokedFamily.family_id)
                .select_from(Principal)
                .outerjoin(ApiKey, ApiKey.id == claimed.key_id)
                .outerjoin(RevokedFamily, RevokedFamily.family_id == claimed.family_id)
                .where(Principal.id == claimed.principal_id)
            )
        ).one()
        owner, key, revoked_family = row[0], row[1], row[2]
        reason = _refusal(
            ctx,
            owner=owner,
            key=key,
            revoked=revoked_family is not None,
            expires_at=claimed.expires_at,
            key_id=claimed.key_id,
            bound_key=bound_key,
            caller=caller,
            now=now,
        )
        if reason is not None:
            # Keep owner and key readable: a rollback would expire their attributes.
            session.expunge_all()
            await session.rollback()
            await service.refuse(
                ctx,
                InvalidGrant(),
                event=EVENT,
                reason=reason,
                caller=caller,
                key=key,
                principal_id=owner.id,
                actor=service.actor_for(key=key, owner=owner),
            )
        ceiling = frozenset(claimed.scope.split()) if claimed.scope else frozenset()
        try:
            scopes = service.grant_scopes(
                requested, service.available_scopes(owner=owner, key=key, ceiling=ceiling)
            )
        except InvalidScope as exc:
            # Keep owner and key readable: a rollback would expire their attributes.
            session.expunge_all()
            await session.rollback()
            await service.refuse(
                ctx,
                exc,
                event=EVENT,
                reason="scope not held",
                caller=caller,
                key=key,
                principal_id=owner.id,
                actor=service.actor_for(key=key, owner=owner),
            )
        return await service.issue(
            ctx,
            session,
            owner=owner,
            key=key,
            scopes=scopes,
            caller=caller,
            event=EVENT,
            family_id=claimed.family_id,
            parent_id=claimed.id,
        )


def _refusal(
    ctx: AppContext,
    *,
    owner: Principal,
    key: ApiKey | None,
    revoked: bool,
    expires_at: datetime,
    key_id: str | None,
    bound_key: ApiKey | None,
    caller: Caller,
    now: datetime,
) -> str | None:
    """Return why the claimed token must not be honoured, or None."""
    if revoked:
        return "refresh token family revoked"
    if now >= expires_at:
        return "refresh token expired"
    if bound_key is not None and bound_key.id != key_id:
        return "refresh token bound to another key"
    if key_id is not None:
        if key is None:
            return "key deleted"
        refusal = service.key_refusal(
            key=key,
            owner=owner,
            caller=caller,
            now=now,
            legacy_until=ctx.settings.legacy_keys_until,
        )
        if refusal is not None:
            return refusal
    elif not owner.usable:
        return "owner disabled"
    return None


async def _unknown_or_reused(
    ctx: AppContext, session: AsyncSession, *, token_hash: str, caller: Caller
) -> NoReturn:
    """No unused token matched: either it never existed, or this is a reuse."""
    used = (
        await session.execute(
            select(RefreshToken.family_id, RefreshToken.key_id, RefreshToken.principal_id).where(
                RefreshToken.token_hash == token_hash
            )
        )
    ).first()
    if used is None:
        await session.rollback()
        await service.refuse(
            ctx, InvalidGrant(), event=EVENT, reason="unknown refresh token", caller=caller
        )
    await service.revoke_family(ctx, session, family_id=used.family_id, reason="refresh reuse")
    audit.record(
        session,
        type="token.refresh_reuse",
        outcome="failure",
        principal_id=used.principal_id,
        key_id=used.key_id,
        ip=caller.ip_text,
        reason="used refresh token presented again; family revoked",
    )
    await session.commit()
    raise InvalidGrant(
        "This refresh token was already used; as a precaution every token from the same "
        "sign-in has been revoked. Authenticate again."
    )
