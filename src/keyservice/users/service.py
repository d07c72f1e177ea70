"""Users: people who sign in with a password and manage their own keys."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.config import Settings
from keyservice.exceptions import Conflict, ValidationFailed
from keyservice.principals import service as principals_service
from keyservice.principals.models import Principal, named
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import ADMIN
from keyservice.security.hashing import hash_password, run_slow_hash
from keyservice.users.schemas import MIN_PASSWORD_LENGTH

if TYPE_CHECKING:
    from keyservice.context import AppContext


async def get_by_username(session: AsyncSession, *, username: str) -> Principal | None:
    return await session.scalar(
        select(Principal).where(
            Principal.kind == "user", named(username), Principal.deleted_at.is_(None)
        )
    )


async def current_password_hash(session: AsyncSession, *, user_id: str) -> str | None:
    """Return the user's password hash as committed, after any password change in progress.

    FOR SHARE waits for the FOR UPDATE that `update` holds while it changes the password.
    """
    return await session.scalar(
        select(Principal.password_hash).where(Principal.id == user_id).with_for_update(read=True)
    )


async def list_users(session: AsyncSession) -> list[Principal]:
    """Every one of them, in list order (the console, the CLI)."""
    return (await page_users(session))[0]


async def page_users(
    session: AsyncSession,
    *,
    limit: int | None = None,
    cursor: str | None = None,
    username: str | None = None,
) -> tuple[list[Principal], str | None]:
    """Return the users by name (then id); with `limit`, one page and the next cursor; with
    `username`, only the user of that name (in any letter case), if any."""
    return await principals_service.page_live(
        session, kind="user", limit=limit, cursor=cursor, name=username
    )


async def get(session: AsyncSession, *, user_id: str, for_update: bool = False) -> Principal:
    """Return the user with this id; 404 for an unknown id or a device's."""
    return await principals_service.get_live(
        session, kind="user", principal_id=user_id, for_update=for_update
    )


async def check_permissions(session: AsyncSession, permissions: Sequence[str]) -> list[str]:
    """Return the permissions deduplicated; 422 naming any that is not in the catalog."""
    missing = await scopes_service.unknown(session, names=permissions)
    if missing:
        raise scopes_service.not_in_catalog(missing, field="permissions")
    return sorted(set(permissions))


def check_password(password: str, *, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"The password must have at least {MIN_PASSWORD_LENGTH} characters.", field=field
        )


async def _slow_password_hash(session: AsyncSession, password: str) -> str:
    """Hash a new password with no transaction open: argon2 takes ~100 ms of CPU.

    What the session read so far (the caller's checks) is only read, so its transaction
    ends first: a pooled connection held for the hash's length, and on SQLite the write
    lock (BEGIN IMMEDIATE) that every exchange, refresh and sign-in waits for. The hash
    runs off the event loop, on the bounded hashing pool.
    """
    if session.in_transaction():
        await session.commit()
    return await run_slow_hash(hash_password, password)


def _taken(username: str, holder: str | None = None) -> str:
    return principals_service.taken(f"The username '{username}' is taken", username, holder)


async def check_new(
    session: AsyncSession, *, username: str, permissions: Sequence[str]
) -> list[str]:
    """What `create` reads first: 422 for an unknown permission, 409 for a taken name.

    A read only, so `keyservice users create` asks it before the password; a user made
    meanwhile is still the same 409 at the insert.
    """
    perms = await check_permissions(session, permissions)
    holder = await get_by_username(session, username=username)
    if holder is not None:
        raise Conflict(_taken(username, holder.name))
    return perms


async def create(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    permissions: Sequence[str],
    actor: str | None,
    ip: str | None,
) -> Principal:
    """Create a user (409 if the username is taken) and commit."""
    check_password(password)
    perms = await check_new(session, username=username, permissions=permissions)
    password_hash = await _slow_password_hash(session, password)
    user = Principal(kind="user", name=username, password_hash=password_hash, permissions=perms)
    return await principals_service.insert(
        session,
        user,
        event="user.created",
        taken=_taken(username),
        actor=actor,
        ip=ip,
    )


async def ensure_bootstrap_admin(
    session: AsyncSession, settings: Settings
) -> tuple[str, str | None] | None:
    """On an empty database, create the first admin.

    Returns (username, generated password or None) when an admin was created. With no
    bootstrap settings, the password is random and must be shown to the operator once.
    """
    count = await session.scalar(select(func.count()).select_from(Principal))
    if count:
        return None
    generated: str | None = None
    if settings.bootstrap_admin_username and settings.bootstrap_admin_password:
        username = settings.bootstrap_admin_username
        password = settings.bootstrap_admin_password.get_secret_value()
    else:
        username, password = "admin", secrets.token_urlsafe(18)
        generated = password
    try:
        await create(
            session,
            username=username,
            password=password,
            permissions=[ADMIN],
            actor="bootstrap",
            ip=None,
        )
    except Conflict:  # another process of this deployment created it first
        return None
    return username, generated


async def update(
    session: AsyncSession,
    ctx: AppContext,
    *,
    user_id: str,
    disabled: bool | None = None,
    permissions: Sequence[str] | None = None,
    password: str | None = None,
    actor: str | None,
    ip: str | None,
    actor_id: str | None = None,
) -> Principal:
    """Change a user's state, permissions or password, audit it and commit.

    Disabling refuses the user's access and refresh tokens on every replica within
    seconds; `actor_id` (the caller's principal id) keeps an admin from locking themself
    out by disabling their own account or dropping their own `admin`.
    """
    if password is not None:
        check_password(password)
    perms = await check_permissions(session, permissions) if permissions is not None else None
    # Before the row is locked (FOR UPDATE): the hash is slow.
    new_hash = await _slow_password_hash(session, password) if password is not None else None
    user = await get(session, user_id=user_id, for_update=True)
    if actor_id is not None and actor_id == user.id:
        if disabled or (perms is not None and ADMIN in user.permissions and ADMIN not in perms):
            raise Conflict(
                "You cannot disable your own account or remove your own admin permission; "
                "ask another admin."
            )
    changes: list[str] = []
    if new_hash is not None:
        user.password_hash = new_hash
        ended = await principals_service.end_token_sessions(
            session, ctx, principal_id=user.id, reason="password changed", sign_ins_only=True
        )
        changes.append(f"password changed; {ended} sign-in session(s) ended")  # never the password
    return await principals_service.save_update(
        session, ctx, user, changes=changes, disabled=disabled, permissions=perms,
        event="user.updated", actor=actor, ip=ip,
    )  # fmt: skip
