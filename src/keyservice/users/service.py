"""Users: people who sign in with a password and manage their own keys."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.config import Settings
from keyservice.exceptions import Conflict, ValidationFailed
from keyservice.principals.models import Principal
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import ADMIN
from keyservice.security.hashing import hash_password

MIN_PASSWORD_LENGTH = 8


async def get_by_username(session: AsyncSession, *, username: str) -> Principal | None:
    return await session.scalar(
        select(Principal).where(
            Principal.kind == "user", Principal.name == username, Principal.deleted_at.is_(None)
        )
    )


async def list_users(session: AsyncSession) -> Sequence[Principal]:
    return (
        await session.scalars(
            select(Principal).where(Principal.kind == "user").order_by(Principal.name)
        )
    ).all()


async def check_permissions(session: AsyncSession, permissions: Sequence[str]) -> list[str]:
    """Return the permissions deduplicated; 422 naming any that is not in the catalog."""
    missing = await scopes_service.unknown(session, names=permissions)
    if missing:
        raise ValidationFailed(
            "Unknown permission(s): " + ", ".join(missing) + ". Add them to the scope "
            "catalog first.",
            field="permissions",
        )
    return sorted(set(permissions))


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"The password must have at least {MIN_PASSWORD_LENGTH} characters.", field="password"
        )


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
    perms = await check_permissions(session, permissions)
    if await get_by_username(session, username=username) is not None:
        raise Conflict(f"The username '{username}' is taken.")
    user = Principal(
        kind="user", name=username, password_hash=hash_password(password), permissions=perms
    )
    session.add(user)
    await session.flush()
    audit.record(
        session,
        type="user.created",
        actor=actor,
        principal_id=user.id,
        ip=ip,
        reason=f"permissions: {' '.join(perms) or '(none)'}",
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"The username '{username}' is taken.") from None
    return user


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
