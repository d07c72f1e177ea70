"""grant_type=password: a person signs in with username and password (console, CLI)."""

from __future__ import annotations

from keyservice.auth import service, throttle
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.service import Caller, Issued
from keyservice.context import AppContext
from keyservice.exceptions import InvalidGrant, InvalidRequest, InvalidScope, UnsupportedGrantType
from keyservice.principals.models import Principal
from keyservice.security.hashing import run_slow_hash, verify_password
from keyservice.users import service as users_service

EVENT = "login"


async def authenticate_user(ctx: AppContext, *, username: str, password: str) -> Principal | None:
    """Return the user for these credentials; same work for an unknown user."""
    async with ctx.database.sessionmaker() as session:
        user = await users_service.get_by_username(session, username=username)
    stored = user.password_hash if user is not None else None
    ok = await run_slow_hash(verify_password, password, stored)
    return user if ok else None


async def handle(
    ctx: AppContext, form: dict[str, str], creds: ClientCredentials | None, caller: Caller
) -> Issued:
    if not ctx.settings.password_grant_enabled:
        raise UnsupportedGrantType("The password grant is switched off on this server.")
    if creds is not None:
        raise InvalidRequest("The password grant takes no client credentials.")
    username, password = form.get("username"), form.get("password")
    if not username or not password:
        raise InvalidRequest("The password grant needs username and password.")
    requested = service.parse_scope(form.get("scope"))
    await throttle.enforce(ctx, client=f"user:{username}", caller=caller, event=EVENT)
    user = await authenticate_user(ctx, username=username, password=password)
    if user is None or not user.usable:
        await service.refuse(
            ctx,
            InvalidGrant("Wrong username or password, or the account is disabled."),
            event=EVENT,
            reason="wrong username or password" if user is None else "user disabled",
            caller=caller,
            principal_id=user.id if user is not None else None,
            actor=f"user:{user.name}" if user is not None else None,
            throttle_subject=f"user:{username}",
        )
    try:
        scopes = service.grant_scopes(requested, service.available_scopes(owner=user, key=None))
    except InvalidScope as exc:
        await service.refuse(
            ctx,
            exc,
            event=EVENT,
            reason="scope not held",
            caller=caller,
            principal_id=user.id,
            actor=f"user:{user.name}",
        )
    issued = await service.issue(
        ctx, owner=user, key=None, scopes=scopes, caller=caller, event=EVENT
    )
    assert issued is not None  # only a refresh can lose a race
    return issued
