"""grant_type=refresh_token: single-use, rotating, with reuse detection (RFC 9700 §4.14.2).

Read, check, then one atomic write: the token is looked up with its key, owner and family;
every check (family, expiry, binding, key, owner, IP, scope) runs before anything is
consumed, so a refused request leaves the token usable; then the claim of the token
(`used_at IS NULL`) and the insert of its successor happen in one statement (PostgreSQL,
possibly batched with other requests' writes: auth/store.py) or one write transaction
(SQLite). Of N concurrent refreshes of one token exactly one
wins; presenting a used token, the losers of a race included, revokes the whole family.
"""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth import service
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.grants.client_credentials import authenticate
from keyservice.auth.models import RefreshToken
from keyservice.auth.service import Caller, Issued
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import InvalidGrant, InvalidRequest, InvalidScope
from keyservice.principals.models import Principal
from keyservice.security.tokens import is_refresh_token

EVENT = "token.refresh"
SESSION_OVER = "sign-in session past its maximum age"
BOUND_ELSEWHERE = "refresh token bound to another key"
# Said to the token's holder, as a key's holder is told its key expired: the way on is to
# sign in again, not to retry or to look for a bug.
SIGN_IN_AGAIN = "This sign-in session has reached its maximum age: sign in again."


async def handle(
    ctx: AppContext, form: dict[str, str], creds: ClientCredentials | None, caller: Caller
) -> Issued:
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is missing.", reason="refresh token missing")
    requested = service.parse_scope(form.get("scope"))
    # Client credentials, when sent, are authenticated before the token is looked at (RFC
    # 6749 §6), a malformed token as any other: so wrong credentials are invalid_client
    # whatever the token, and a refusal of an authenticated client's token names its key.
    bound_key: ApiKey | None = None
    if creds is not None:
        bound_key, _ = await authenticate(ctx, creds, caller, event=EVENT)
    presenter = service.actor_for(key=bound_key, owner=None)
    if not is_refresh_token(token):
        await service.refuse(
            ctx, InvalidGrant(), event=EVENT, reason="malformed refresh token", caller=caller,
            key=bound_key, actor=presenter,
        )  # fmt: skip
    now = utcnow()

    # Under the current secret, then (during a rotation of it) under the fallback: a
    # token made before the switch is claimed as any other, its child made under the new.
    for lookup in ctx.hasher.lookups(token):
        found = await ctx.tokens.load_refresh(lookup)
        if found is not None:
            break
    if found is None:
        await service.refuse(
            ctx, InvalidGrant(), event=EVENT, reason="unknown refresh token", caller=caller,
            key=bound_key, actor=presenter,
        )  # fmt: skip
    parent, owner, key = found.token, found.owner, found.key
    if parent.used_at is not None:
        await _reused(ctx, parent=parent, caller=caller, presenter=bound_key)
    # A password sign-in's tokens end with its session; a key's chain, with the key.
    session_end = (
        service.password_session_end(ctx.settings, parent.family_id)
        if parent.key_id is None
        else None
    )
    reason = _refusal(
        ctx,
        parent=parent,
        session_end=session_end,
        owner=owner,
        key=key,
        revoked=found.family_revoked,
        bound_key=bound_key,
        caller=caller,
        now=now,
    )
    actor = service.actor_for(key=key, owner=owner)
    if reason is not None:
        if reason == BOUND_ELSEWHERE:
            # The event is the token's key's (its key_id); who presented it is the
            # authenticated key, named by its (public) client id as the actor.
            actor = presenter
        error = InvalidGrant(SIGN_IN_AGAIN if reason == SESSION_OVER else None)
        await service.refuse(
            ctx, error, event=EVENT, reason=reason, caller=caller, key=key,
            principal_id=owner.id, actor=actor,
        )  # fmt: skip
    ceiling = frozenset(parent.scope.split())
    try:
        scopes = service.grant_scopes(
            requested, service.available_scopes(owner=owner, key=key, ceiling=ceiling)
        )
    except InvalidScope as exc:
        await service.refuse(
            ctx, exc, event=EVENT, reason="scope not held", caller=caller, key=key,
            principal_id=owner.id, actor=actor,
        )  # fmt: skip
    issued = await service.issue(
        ctx,
        owner=owner,
        key=key,
        scopes=scopes,
        caller=caller,
        event=EVENT,
        family_id=parent.family_id,
        parent_id=parent.id,
        grant_scope=parent.scope,
        until=session_end,
    )
    if issued is None:  # a concurrent refresh claimed it first: that is a reuse too
        await _reused(ctx, parent=parent, caller=caller, presenter=bound_key)
    return issued


def _refusal(
    ctx: AppContext,
    *,
    parent: RefreshToken,
    session_end: int | None,
    owner: Principal,
    key: ApiKey | None,
    revoked: bool,
    bound_key: ApiKey | None,
    caller: Caller,
    now: datetime,
) -> str | None:
    """Return why the token must not be honoured now, or None."""
    if revoked:
        return "refresh token family revoked"
    if owner.tokens_revoked(parent.created_at):
        # Its family was revoked when the owner was disabled; this also ends one written
        # by an exchange that raced the disable (principals/service.py).
        return "refresh token issued before the owner was disabled"
    if session_end is not None and now.timestamp() >= session_end:
        return SESSION_OVER
    if now >= parent.expires_at:
        return "refresh token expired"
    if bound_key is not None and bound_key.id != parent.key_id:
        return BOUND_ELSEWHERE
    if parent.key_id is not None:
        if key is None:
            return "key deleted"
        return service.key_refusal(
            key=key,
            owner=owner,
            caller=caller,
            now=now,
            legacy_until=ctx.settings.legacy_keys_until,
        )
    if not owner.usable:
        return "owner disabled"
    return None


async def _reused(
    ctx: AppContext, *, parent: RefreshToken, caller: Caller, presenter: ApiKey | None
) -> NoReturn:
    """A used token was presented again: revoke its family, audit, refuse.

    The event is the family's; its actor is the family's holder, or the key whose valid
    credentials came with the token when that is another (whoever replays a stolen token
    with their own key is named).
    """
    family_id, key_id, principal_id = parent.family_id, parent.key_id, parent.principal_id
    async with ctx.database.sessionmaker() as session:
        await service.revoke_family(ctx, session, family_id=family_id, reason="refresh reuse")
        if presenter is not None and presenter.id != key_id:
            actor = service.actor_for(key=presenter, owner=None)
        else:
            actor = await service.family_holder(session, key_id=key_id, principal_id=principal_id)
        audit.record(
            session,
            type="token.refresh_reuse",
            outcome="failure",
            actor=actor,
            principal_id=principal_id,
            key_id=key_id,
            ip=caller.ip_text,
            reason="used refresh token presented again; family revoked",
        )
        await session.commit()
    raise InvalidGrant(
        "This refresh token was already used; as a precaution every token from the same "
        "sign-in has been revoked. Authenticate again."
    )
