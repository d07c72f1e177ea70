"""grant_type=password: a person signs in with username and password (console, CLI)."""

from __future__ import annotations

import hmac
from typing import NoReturn

from keyservice.auth import service
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.service import Caller, Issued
from keyservice.context import AppContext
from keyservice.database import new_ordered_id
from keyservice.exceptions import InvalidGrant, InvalidRequest, InvalidScope, SlowDown
from keyservice.principals.models import Principal
from keyservice.security.hashing import run_slow_hash, verify_password
from keyservice.users import service as users_service

EVENT = "login"
WRONG = "Wrong username or password, or the account is disabled."


async def check_password(
    ctx: AppContext, *, username: str, password: str
) -> tuple[Principal | None, bool]:
    """Return the user of this name (None if there is none) and whether the password is
    theirs; the same work for an unknown user."""
    async with ctx.database.sessionmaker() as session:
        user = await users_service.get_by_username(session, username=username)
    stored = user.password_hash if user is not None else None
    ok = await run_slow_hash(verify_password, password, stored)
    return user, ok and user is not None


async def authenticate_user(ctx: AppContext, *, username: str, password: str) -> Principal | None:
    """Return the user for these credentials; same work for an unknown user."""
    user, ok = await check_password(ctx, username=username, password=password)
    return user if ok else None


async def sign_in(
    ctx: AppContext, *, username: str, password: str, caller: Caller, reason_prefix: str = ""
) -> Principal:
    """Return the user for these credentials, or audit and raise InvalidGrant / SlowDown.

    Concurrent guesses would all pass the throttle before any of them failed, so the
    password checks of one username take turns in this process and the throttle is checked
    again when a turn comes: a burst costs at most the limit in argon2 runs and answers.
    """
    # One count per account, whatever the case typed: "Alice" and "ALICE" are her too.
    subject = f"user:{username.lower()}"
    await _enforce(ctx, subject, username=username, caller=caller)  # no queueing once locked
    async with ctx.throttle.turn(subject):
        await _enforce(ctx, subject, username=username, caller=caller)
        user, ok = await check_password(ctx, username=username, password=password)
        if user is None or not ok or not user.usable:
            # The answer is the same for all three; the audit log, for admins, says which,
            # and names the account a wrong password was tried on (never the password, nor
            # an unknown name: people type their password into the username field).
            if user is None:
                reason = "unknown username"
            elif not ok:
                reason = "wrong password"
            else:
                reason = "user disabled"
            await service.refuse(
                ctx,
                InvalidGrant(WRONG),
                event=EVENT,
                reason=reason_prefix + reason,
                caller=caller,
                principal_id=user.id if user is not None else None,
                # Only a right password says who is acting.
                actor=f"user:{user.name}" if user is not None and ok else None,
                throttle_subject=subject,
            )
    try:
        # The IP's failures (other usernames) do not take turns with this one.
        ctx.throttle.check_local(client=subject, ip=caller.ip_text)
    except SlowDown as exc:
        await _refuse_throttled(ctx, exc, user=user, caller=caller)
    return user


async def _enforce(ctx: AppContext, subject: str, *, username: str, caller: Caller) -> None:
    try:
        await ctx.throttle.check(client=subject, ip=caller.ip_text)
    except SlowDown as exc:
        # Name the user in the audit event; one read, no password check.
        async with ctx.database.sessionmaker() as session:
            user = await users_service.get_by_username(session, username=username)
        await _refuse_throttled(ctx, exc, user=user, caller=caller)


async def _refuse_throttled(
    ctx: AppContext, exc: SlowDown, *, user: Principal | None, caller: Caller
) -> NoReturn:
    await service.refuse(
        ctx,
        exc,
        event=EVENT,
        reason="throttled",
        caller=caller,
        principal_id=user.id if user is not None else None,
        actor=f"user:{user.name}" if user is not None else None,
    )


async def handle(
    ctx: AppContext, form: dict[str, str], creds: ClientCredentials | None, caller: Caller
) -> Issued:
    # The router refuses this grant while it is switched off (settings.password_grant_enabled).
    if creds is not None:
        raise InvalidRequest(
            "The password grant takes no client credentials.", reason="client credentials sent"
        )
    username, password = form.get("username"), form.get("password")
    if not username or not password:
        raise InvalidRequest(
            "The password grant needs username and password.",
            reason="username or password missing",
        )
    requested = service.parse_scope(form.get("scope"))
    user = await sign_in(ctx, username=username, password=password, caller=caller)
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
    family_id = new_ordered_id()
    issued = await service.issue(
        ctx,
        owner=user,
        key=None,
        scopes=scopes,
        caller=caller,
        event=EVENT,
        family_id=family_id,
        until=service.password_session_end(ctx.settings, family_id),
    )
    assert issued is not None  # only a refresh can lose a race
    await _end_if_password_changed(ctx, user=user, family_id=family_id, caller=caller)
    return issued


async def _end_if_password_changed(
    ctx: AppContext, *, user: Principal, family_id: str, caller: Caller
) -> None:
    """Refuse, and end, a sign-in whose password was changed while it was checked.

    A password change ends the sign-in sessions it finds (users/service.py); one checked
    against the old hash but written after that look would outlive the change. So the hash
    is read again once the session is written, waiting for a change in progress to commit
    (FOR SHARE against its FOR UPDATE; SQLite serialises them anyway): either the change
    saw this family, or this read sees the new hash.
    """
    async with ctx.database.sessionmaker() as session:
        current = await users_service.current_password_hash(session, user_id=user.id)
        if current is not None and hmac.compare_digest(current, user.password_hash or ""):
            return
        await service.revoke_family(ctx, session, family_id=family_id, reason="password changed")
        await session.commit()
    await service.refuse(
        ctx,
        InvalidGrant(WRONG),
        event=EVENT,
        reason="password changed during sign-in",
        caller=caller,
        principal_id=user.id,
        actor=f"user:{user.name}",
    )
