"""Principals as callers see themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice import paging
from keyservice.api_keys import service as api_keys
from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth import service as auth_service
from keyservice.auth.models import RefreshToken, RevokedFamily
from keyservice.auth.revocation import publish
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import Conflict, InvalidToken, NotFound
from keyservice.principals.models import Principal, named, revoked_through
from keyservice.principals.schemas import KeyWarning, MeRead
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import ADMIN, effective_permissions


async def describe(session: AsyncSession, *, principal_id: str, settings: Settings) -> MeRead:
    """Return the principal with a warning for each own key expired or expiring soon."""
    principal = await session.get(Principal, principal_id)
    if principal is None or not principal.usable:
        raise InvalidToken("The account behind this token no longer exists or is disabled.")
    now = utcnow()
    soon = now + timedelta(days=settings.expiry_warning_days)
    keys = await session.scalars(
        select(ApiKey)
        .where(
            ApiKey.principal_id == principal.id,
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at <= soon,
        )
        .order_by(ApiKey.expires_at)
    )
    warnings = [
        KeyWarning(
            key_id=key.id,
            client_id=key.client_id,
            name=key.name,
            expires_at=key.expires_at,
            status="expired" if now >= key.expires_at else "expires_soon",
        )
        for key in keys
    ]
    if any(warning.status == "expires_soon" for warning in warnings):
        # A key already rotated expires at the end of its grace period: say by which key,
        # so that it is not taken for one still to rotate (it cannot be rotated again).
        holds = await api_keys.rotation_holds(session, owner_id=principal.id, now=now)
        for warning in warnings:
            hold = holds.get(warning.key_id)
            if warning.status == "expires_soon" and hold is not None and hold.replaced:
                warning.replaced_by = hold.other_client_id
    return MeRead(
        id=principal.id,
        type=principal.kind,
        username=principal.name if principal.kind == "user" else None,
        name=principal.name if principal.kind == "device" else None,
        permissions=sorted(effective_permissions(principal.permissions)),
        warnings=warnings,
    )


async def insert(
    session: AsyncSession,
    principal: Principal,
    *,
    event: str,
    taken: str,
    actor: str | None,
    ip: str | None,
) -> Principal:
    """Store a new user or device with its audit event and commit.

    The name was checked before; a concurrent create can still take it first, which the
    unique index reports at the INSERT: that is the 409 `taken` too, not a 500. The
    permissions were checked too, maybe in an earlier transaction (before a slow password
    hash): they are held here, in the one that writes them (scopes/service.py).
    """
    await _hold_permissions(session, principal.permissions)
    session.add(principal)
    try:
        await session.flush()
        audit.record(
            session,
            type=event,
            actor=actor,
            principal_id=principal.id,
            ip=ip,
            reason=f"permissions: {' '.join(principal.permissions) or '(none)'}",
        )
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(taken) from None
    return principal


def taken(said: str, name: str, holder: str | None) -> str:
    """The 409 for a name in use: `said`, and who holds it when only the letter case
    differs (names are one whatever their case: models.py)."""
    if holder is None or holder == name:
        return f"{said}."
    return f"{said} (as '{holder}': names are the same whatever their letter case)."


async def _hold_permissions(session: AsyncSession, permissions: Sequence[str]) -> None:
    """Keep the permissions in the catalog until the commit (422 if one left it meanwhile):
    a concurrent deletion of one waits, then counts this principal (scopes/service.py)."""
    missing = await scopes_service.hold(session, names=permissions)
    if missing:
        raise scopes_service.not_in_catalog(missing, field="permissions")


def set_disabled(principal: Principal, disabled: bool | None) -> list[str]:
    """Apply `disabled`; return the revocation messages to send if it changed.

    Disabling does not touch the principal's keys: they list as `suspended` and their
    tokens are refused (the revocation view), and re-enabling makes them valid again. Its
    tokens are another matter: disabling records `tokens_revoked_at`, and every token
    issued up to then stays refused for good, so re-enabling brings back the keys but not
    what was out there; they exchange for new tokens.
    """
    if disabled is None or disabled == principal.disabled:
        return []
    principal.disabled = disabled
    revoked_at = utcnow()
    if not disabled:
        # An exchange that read the owner just before the disable committed may have
        # issued a token after `tokens_revoked_at`, refused only while disabled. Nothing
        # is issued while disabled, so the cut-off moves up to a second before the
        # re-enable: that token dies too, and those issued from now on are not refused.
        revoked_at -= timedelta(seconds=1)
        if principal.tokens_revoked_at is not None:
            revoked_at = max(revoked_at, principal.tokens_revoked_at)
    principal.tokens_revoked_at = revoked_at
    through = revoked_through(revoked_at)
    # The cut-off first: no replica sees the principal enabled again without it.
    return [
        f"principal-tokens:{principal.id}:{through}",
        f"principal-{'disabled' if disabled else 'enabled'}:{principal.id}",
    ]


async def end_token_sessions(
    session: AsyncSession,
    ctx: AppContext,
    *,
    principal_id: str,
    reason: str,
    sign_ins_only: bool = False,
) -> int:
    """End the principal's live refresh-token families and return how many were live.

    With `sign_ins_only`, those of its password sign-ins, each revoked (a new password ends
    them; API keys are separate credentials and keep theirs): their access tokens are
    refused by the families' revocation. Otherwise (a disable, which `set_disabled` has
    applied) every family, sign-ins and key exchanges alike, is only counted: the disable's
    `tokens_revoked_at` already refuses every token issued up to it, refresh and access
    tokens, on every replica. Revoking each family too cost a row and a NOTIFY per family,
    in one transaction holding the principal's lock: a device exchanging once a second has
    ~10,000 live families, and each replica's revocation view would hold them all. The
    caller commits. Only password sign-ins are indexed by principal (migration 0003: an
    index entry per exchange would cost the token path), so a disable reads the live rows
    (BRIN on expires_at on PostgreSQL): a rare admin action pays for it, not every exchange.
    """
    query = (
        select(RefreshToken.family_id)
        .outerjoin(RevokedFamily, RevokedFamily.family_id == RefreshToken.family_id)
        .where(
            RefreshToken.principal_id == principal_id,
            RefreshToken.expires_at > utcnow(),
            RevokedFamily.family_id.is_(None),
        )
        .distinct()
    )
    if not sign_ins_only:
        return await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.where(RefreshToken.key_id.is_(None))
    families = (await session.scalars(query)).all()
    for family_id in families:
        await auth_service.revoke_family(ctx, session, family_id=family_id, reason=reason)
    return len(families)


def set_permissions(principal: Principal, permissions: Sequence[str] | None) -> str | None:
    """Apply `permissions` (sorted, checked); return the revocation message if they changed.

    Tokens issued before carry the old scopes: the revocation view refuses those that
    carry a permission the principal no longer holds (auth/revocation.py).
    """
    if permissions is None or list(permissions) == sorted(principal.permissions):
        return None
    principal.permissions = list(permissions)
    principal.permissions_changed_at = utcnow()
    return permissions_message(principal.id, principal.permissions)


def permissions_message(principal_id: str, permissions: Sequence[str]) -> str:
    """The revocation view's message for a principal's new permissions."""
    return "principal-permissions:" + json.dumps({"id": principal_id, "held": list(permissions)})


# Any constant: the transactions that take an admin away queue on it (PostgreSQL).
_ADMIN_CHANGE_LOCK = 0x6B73_6164_6D69_6E  # "ksadmin"


def _an_admin(principal: Principal) -> bool:
    """A person who can sign in and use the admin API (a device with `admin` is not)."""
    return principal.is_user and principal.usable and ADMIN in principal.permissions


async def _keep_an_admin(session: AsyncSession, ctx: AppContext, principal: Principal) -> None:
    """Refuse a change that would leave no enabled admin user.

    Two admins disabling or demoting each other are each authorized when their request
    starts, and each would see the other still an admin: these changes queue on a lock
    (PostgreSQL; SQLite's write lock serialises them anyway), and the count below reads
    what the one before committed.
    """
    if not ctx.database.is_sqlite:
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADMIN_CHANGE_LOCK}
        )
    held = await session.scalars(
        select(Principal.permissions).where(
            Principal.kind == "user",
            Principal.id != principal.id,
            Principal.disabled.is_(False),
            Principal.deleted_at.is_(None),
        )
    )
    if not any(ADMIN in permissions for permissions in held):
        raise Conflict(
            f"'{principal.name}' is the last enabled admin: make another user an admin first."
        )


async def save_update(
    session: AsyncSession,
    ctx: AppContext,
    principal: Principal,
    *,
    changes: list[str],
    disabled: bool | None,
    event: str,
    actor: str | None,
    ip: str | None,
    permissions: Sequence[str] | None = None,
) -> Principal:
    """Apply `permissions` and `disabled`, audit the changes and commit; either change
    reaches every replica's revocation view at commit (this process's before this returns).
    """
    messages: list[str] = []
    if permissions is not None:
        await _hold_permissions(session, permissions)
    if _an_admin(principal) and (
        disabled is True or (permissions is not None and ADMIN not in permissions)
    ):
        # Before anything changes (a page shown after the refusal reads this principal)
        # and before anything is revoked: a refusal leaves everything as it was.
        await _keep_an_admin(session, ctx, principal)
    message = set_permissions(principal, permissions)
    if message is not None:
        changes.insert(0, f"permissions: {' '.join(principal.permissions) or '(none)'}")
        messages.append(message)
    disabling = set_disabled(principal, disabled)
    if disabling:
        if principal.disabled:
            ended = await end_token_sessions(
                session, ctx, principal_id=principal.id, reason="owner disabled"
            )
            changes.append(f"disabled; {ended} token session(s) ended")
        else:
            changes.append("enabled")
        messages.extend(disabling)
    for message in messages:
        await publish(session, ctx.revocation, message)
    if changes:
        audit.record(
            session,
            type=event,
            actor=actor,
            principal_id=principal.id,
            ip=ip,
            reason="; ".join(changes),
        )
    await session.commit()
    return principal


async def page_live(
    session: AsyncSession,
    *,
    kind: str,
    limit: int | None = None,
    cursor: str | None = None,
    name: str | None = None,
) -> tuple[list[Principal], str | None]:
    """The users or devices that are not deleted, by name (then id); with `limit`, one page
    and the next cursor (its kind "users" or "devices": one list's cursor is refused by the
    other). No user is ever deleted (only devices are, softly); saying so lets the
    live-name index (kind, name) serve the keyset for both. `name`: only the one so named,
    in any letter case (live names are unique whatever their case), if any."""
    limit = paging.clamp(limit)
    cursor_kind = f"{kind}s"
    query = select(Principal).where(Principal.kind == kind, Principal.deleted_at.is_(None))
    if name is not None:
        query = query.where(named(name))
    if cursor is not None:
        name, principal_id = paging.decode(cursor, cursor_kind, 2)
        query = query.where(
            Principal.name >= name, or_(Principal.name > name, Principal.id > principal_id)
        )
    query = query.order_by(Principal.name, Principal.id)
    if limit is not None:
        query = query.limit(limit + 1)
    found, more = paging.page((await session.scalars(query)).all(), limit)
    last = found[-1] if more else None
    return found, paging.encode(cursor_kind, last.name, last.id) if last is not None else None


async def get_live(
    session: AsyncSession, *, kind: str, principal_id: str, for_update: bool = False
) -> Principal:
    """Return the live user or device with this id; 404 for an unknown, deleted or other
    kind's id (a user id at a device URL is as unknown as any)."""
    query = select(Principal).where(
        Principal.id == principal_id, Principal.kind == kind, Principal.deleted_at.is_(None)
    )
    if for_update:
        query = query.with_for_update()
    principal = await session.scalar(query)
    if principal is None:
        raise NotFound(f"No {kind} with this id.")
    return principal
