"""API keys: create, list, get, edit, revoke, rotate — for one's own keys and devices' keys."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, func, not_, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from keyservice import paging
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import (
    UPDATABLE,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyUpdate,
)
from keyservice.audit import service as audit
from keyservice.auth.revocation import publish
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import Conflict, NotFound, ValidationFailed, quoted_names
from keyservice.principals.models import Principal, named
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import effective_permissions
from keyservice.scopes.schemas import SCOPE_NAME
from keyservice.security.tokens import (
    compose_api_key,
    holds_api_key,
    is_client_id,
    new_client_id,
    new_client_secret,
)
from keyservice.timestamps import format_utc


def to_read(key: ApiKey, owner: Principal, settings: Settings, now: datetime) -> ApiKeyRead:
    status = key.status(owner_usable=owner.usable, now=now)
    return ApiKeyRead(
        id=key.id,
        client_id=key.client_id,
        name=key.name,
        description=key.description,
        scopes=key.scopes,
        inherits_permissions=key.scopes is None,
        allowed_ips=key.allowed_ips,
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        last_used_ip=key.last_used_ip,
        status=status,
        expires_soon=status in ("valid", "suspended")
        and key.expires_at - now <= timedelta(days=settings.expiry_warning_days),
        owner_id=owner.id,
        owner_type=owner.kind,
        legacy=key.is_legacy,
    )


def latest_expiry(settings: Settings, created_at: datetime) -> datetime:
    """The latest a key made at `created_at` may expire: its secret lives at most
    KEYSERVICE_KEY_MAX_TTL_DAYS, at creation and after any edit; longer takes a rotation."""
    return created_at + timedelta(days=settings.key_max_ttl_days)


def check_expiry(
    expires_at: datetime | None,
    settings: Settings,
    now: datetime,
    created_at: datetime | None = None,
) -> datetime:
    """A new key's expiry (`created_at` None; an imported legacy key's too), or an existing
    key's new one."""
    latest = latest_expiry(settings, created_at or now)
    if expires_at is None:
        return now + timedelta(days=settings.key_default_ttl_days)
    if expires_at <= now or expires_at > latest:
        by = format_utc(latest)
        if created_at is None:
            message = (
                f"expires_at must be in the future and at most {settings.key_max_ttl_days} "
                f"days ahead (between now and {by})."
            )
        else:
            # An edit moving the expiry on and on would keep one secret for good.
            message = (
                f"expires_at must be in the future and at most {settings.key_max_ttl_days} "
                f"days after the key was created (by {by}): a key's secret lives no longer. "
                "Rotate the key for a new secret to go on past that."
            )
        raise ValidationFailed(message, field="expires_at")
    # In UTC, as it is stored and read back: the answer to a create or an edit gave back
    # the offset it was sent with (+05:00), GET the same moment in UTC.
    return expires_at.astimezone(UTC)


def _check_scopes(
    scopes: list[str] | None, owner: Principal, *, kept: Iterable[str] = ()
) -> list[str] | None:
    """The scopes sorted, each a permission the owner holds, or among `kept` (those an edit
    leaves on the key: the exchange grants a scope only while the owner holds it anyway)."""
    if scopes is None:
        return None
    held = effective_permissions(owner.permissions)
    missing = sorted(set(scopes) - held - set(kept))
    if missing:
        raise ValidationFailed(
            "A key's scopes must be permissions its owner holds; not held: "
            + quoted_names(missing, SCOPE_NAME)
            + ".",
            field="scopes",
        )
    return sorted(set(scopes))


async def _hold_scopes(
    session: AsyncSession, scopes: Sequence[str] | None, *, rotating: bool = False
) -> None:
    """Keep the key's scopes in the catalog until the commit: a concurrent deletion of one
    waits, then counts this key (scopes/service.py). A scope the owner held when it was
    checked may have left the catalog meanwhile: 422. Not for a rotation, which copies the
    scopes as they are (the old key, unrevoked, kept them in the catalog)."""
    missing = await scopes_service.hold(session, names=scopes or ())
    if missing and not rotating:
        raise scopes_service.not_in_catalog(missing, field="scopes")


async def _lock_owner(session: AsyncSession, owner_id: str) -> None:
    # Serialises concurrent creates for one owner so the limit holds (SQLite: BEGIN IMMEDIATE
    # already serialises writers).
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            select(Principal.id).where(Principal.id == owner_id).with_for_update()
        )


def _live(now: datetime) -> ColumnElement[bool]:
    """SQL for a key that is neither revoked nor expired at `now`."""
    return and_(ApiKey.revoked_at.is_(None), ApiKey.expires_at > now)


async def count_live(
    session: AsyncSession, *, owner_id: str, now: datetime, rotating: str | None = None
) -> int:
    """Count keys that are neither revoked nor expired.

    A key that a rotation replaced (or is replacing now) does not count during its grace
    period: rotating must work at the limit, and the pair is one credential in transition.
    Only while the replacement is live: once it is deleted the key it replaced counts
    again, or deleting replacements and rotating again would keep any number of keys alive.
    """
    successor = aliased(ApiKey)
    # A replacement is its key's owner's (rotate): said so, the owner's index finds it,
    # where `rotated_from_id` alone (no index) read every live key of every owner.
    superseded = (
        select(successor.id)
        .where(
            successor.principal_id == owner_id,
            successor.rotated_from_id == ApiKey.id,
            successor.revoked_at.is_(None),
            successor.expires_at > now,
        )
        .exists()
    )
    query = (
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.principal_id == owner_id,
            _live(now),
            ~superseded,
        )
    )
    if rotating is not None:
        query = query.where(ApiKey.id != rotating)
    return int(await session.scalar(query) or 0)


@dataclass(frozen=True)
class RotationHold:
    """Why a live key may not be rotated now, and until when (see rotation_holds)."""

    replaced: bool  # True: already rotated, in its grace; False: its predecessor's still is
    other_client_id: str  # the replacement, or the key this one replaced
    until: datetime  # when the key in its grace period stops working


async def rotation_holds(
    session: AsyncSession, *, owner_id: str, now: datetime
) -> dict[str, RotationHold]:
    """The owner's keys that may not be rotated now, by key id: a chain of rotations holds
    at most two live keys.

    A replaced key does not count towards the limit during its grace period (count_live),
    so a key may have only one live replacement, and a replacement may itself be rotated
    only once the key it replaced has expired or been deleted. Otherwise rotating again and
    again would keep any number of keys alive past the limit. Rotation refuses these keys
    (_check_rotation) and the console does not offer to rotate them.
    """
    newer, older = aliased(ApiKey), aliased(ApiKey)
    holds: dict[str, RotationHold] = {}
    replaced = await session.execute(
        select(older.id, older.expires_at, newer.client_id)
        .join(newer, newer.rotated_from_id == older.id)
        .where(
            older.principal_id == owner_id,
            newer.principal_id == owner_id,  # as in count_live: the owner's index finds it
            newer.revoked_at.is_(None),
            newer.expires_at > now,
        )
    )
    for key_id, expires_at, successor in replaced:
        holds[key_id] = RotationHold(replaced=True, other_client_id=successor, until=expires_at)
    replacing = await session.execute(
        select(newer.id, older.expires_at, older.client_id)
        .join(older, newer.rotated_from_id == older.id)
        .where(
            newer.principal_id == owner_id,
            older.revoked_at.is_(None),
            older.expires_at > now,
        )
    )
    for key_id, expires_at, predecessor in replacing:
        holds.setdefault(
            key_id, RotationHold(replaced=False, other_client_id=predecessor, until=expires_at)
        )
    return holds


async def replacement_hold(
    session: AsyncSession, *, owner_id: str, key_id: str, now: datetime
) -> RotationHold | None:
    """The hold of a key being replaced (its grace period's end fixes its expiry), if any:
    an edit may not move that expiry, and the console's Edit form shows it read-only."""
    hold = (await rotation_holds(session, owner_id=owner_id, now=now)).get(key_id)
    return hold if hold is not None and hold.replaced else None


async def _check_rotation(session: AsyncSession, key: ApiKey, now: datetime) -> None:
    """409 unless `key` may be rotated (rotation_holds)."""
    hold = (await rotation_holds(session, owner_id=key.principal_id, now=now)).get(key.id)
    if hold is None:
        return
    if hold.replaced:
        raise Conflict(
            f"This key was already rotated: rotate its replacement ({hold.other_client_id}) "
            "instead."
        )
    until = format_utc(hold.until)
    raise Conflict(
        f"The key this one replaced ({hold.other_client_id}) is still valid until "
        f"{until}, its grace period: delete it first, or rotate once it has expired."
    )


# What a key may reach, from where and until when: its events carry their values (the name
# and description are only named), as a principal's carry its permissions.
AUDITED_SETTINGS = ("scopes", "allowed_ips", "expires_at")


def audited_value(key: ApiKey, name: str) -> str:
    """One of AUDITED_SETTINGS of the key as its audit events show it (never a secret)."""
    if name == "scopes":
        return "inherited" if key.scopes is None else " ".join(sorted(key.scopes))
    if name == "allowed_ips":
        return " ".join(key.allowed_ips) or "any"
    return format_utc(key.expires_at)


def audited_settings(key: ApiKey) -> str:
    """Every one of AUDITED_SETTINGS of the key, as its creation's event says them."""
    return "; ".join(f"{name}: {audited_value(key, name)}" for name in AUDITED_SETTINGS)


async def create(
    ctx: AppContext,
    session: AsyncSession,
    *,
    owner: Principal,
    data: ApiKeyCreate,
    actor: str,
    ip: str | None,
    rotated_from: ApiKey | None = None,
) -> ApiKeyCreated:
    """Create a key for `owner`; the secret is returned here and never again."""
    settings = ctx.settings
    now = utcnow()
    # A rotation copies the key's scopes as they are: the owner may have lost one since, and
    # refusing would leave a leaked key unrotatable; tokens carry only what the owner holds.
    scopes = data.scopes if rotated_from is not None else _check_scopes(data.scopes, owner)
    expires_at = check_expiry(data.expires_at, settings, now)
    await _lock_owner(session, owner.id)
    await _hold_scopes(session, scopes, rotating=rotated_from is not None)
    if rotated_from is not None:
        await _check_rotation(session, rotated_from, now)
    live = await count_live(
        session,
        owner_id=owner.id,
        now=now,
        rotating=rotated_from.id if rotated_from is not None else None,
    )
    if live >= settings.max_keys_per_principal:
        raise Conflict(
            f"At most {settings.max_keys_per_principal} API keys that are neither revoked nor "
            "expired are allowed per owner; delete one first."
        )
    client_id, secret = new_client_id(), new_client_secret()
    key = ApiKey(
        client_id=client_id,
        secret_hash=ctx.hasher.hash(secret),
        hashed_under=ctx.hasher.label,
        principal_id=owner.id,
        name=data.name,
        description=data.description,
        scopes=scopes,
        allowed_ips=data.allowed_ips,
        created_at=now,
        expires_at=expires_at,
        rotated_from_id=rotated_from.id if rotated_from is not None else None,
    )
    session.add(key)
    await session.flush()
    audit.record(
        session,
        type="api_key.rotated" if rotated_from is not None else "api_key.created",
        actor=actor,
        principal_id=owner.id,
        key_id=key.id,
        ip=ip,
        reason=f"rotated from {rotated_from.id}"
        if rotated_from is not None
        else audited_settings(key),
    )
    if rotated_from is not None:
        # The old key ends too (its expiry moved to the grace period's end): on record under
        # its own id, where a reader of that key's history looks.
        audit.record(
            session,
            type="api_key.updated",
            actor=actor,
            principal_id=owner.id,
            key_id=rotated_from.id,
            ip=ip,
            reason=f"rotated to {key.id}; expires {audited_value(rotated_from, 'expires_at')}",
        )
    await session.commit()
    read = to_read(key, owner, settings, now)
    return ApiKeyCreated(
        **read.model_dump(), client_secret=secret, api_key=compose_api_key(client_id, secret)
    )


async def list_for_owner(
    ctx: AppContext, session: AsyncSession, *, owner: Principal
) -> list[ApiKeyRead]:
    keys: Sequence[ApiKey] = (
        await session.scalars(
            select(ApiKey)
            .where(ApiKey.principal_id == owner.id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at.desc())
        )
    ).all()
    now = utcnow()
    return [to_read(key, owner, ctx.settings, now) for key in keys]


async def get_owned(
    session: AsyncSession, *, key_id: str, owner_id: str, for_update: bool = False
) -> ApiKey:
    """Return the owner's live key; another principal's or a revoked key is 404.

    `for_update` locks the row (PostgreSQL; SQLite serialises writers) and reads it afresh.
    """
    key = await session.get(
        ApiKey, key_id, with_for_update=for_update or None, populate_existing=for_update
    )
    if key is None or key.principal_id != owner_id or key.revoked_at is not None:
        raise NotFound("No API key with this id.")
    return key


async def revoke(
    ctx: AppContext, session: AsyncSession, *, key: ApiKey, actor: str, ip: str | None
) -> None:
    """Revoke a key for good: its refresh tokens die now, its JWTs within seconds everywhere."""
    if key.revoked_at is not None:
        return
    # Only if still live when the row is written: of concurrent revocations (two admins, a
    # double click) read before either committed, one is recorded and the others change
    # nothing (PostgreSQL re-checks the row once the first commits; SQLite serialises).
    revoked = await session.execute(
        sql_update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if revoked.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return
    audit.record(
        session,
        type="api_key.deleted",
        actor=actor,
        principal_id=key.principal_id,
        key_id=key.id,
        ip=ip,
    )
    await publish(session, ctx.revocation, f"client:{key.client_id}")
    await session.commit()


async def rotate(
    ctx: AppContext,
    session: AsyncSession,
    *,
    key: ApiKey,
    owner: Principal,
    grace_seconds: int,
    actor: str,
    ip: str | None,
) -> ApiKeyCreated:
    """Issue a new key with the same settings; the old one expires after the grace period."""
    # The key's row locked and read afresh, as an edit takes it (`update`), before anything
    # is copied or computed from it: `key` may have been read before an edit or a deletion
    # committed, whose expiry this would overwrite, or which this would rotate (404).
    key = await get_owned(session, key_id=key.id, owner_id=owner.id, for_update=True)
    now = utcnow()
    if now >= key.expires_at:
        raise Conflict("This key has expired; create a new one instead of rotating it.")
    # The stored settings as they are, not validated again: a key written before an input
    # check was added (a zone id in allowed_ips) still rotates to a key with its settings.
    # Its lifetime is one of them: the replacement of a key made to live a year lives a year
    # from now, not the default 90 days (no longer than keys may live now, though). A key
    # rotated before, whose replacement was deleted, had its expiry cut to the end of that
    # grace period: its lifetime is the one its latest replacement was given.
    earlier = await session.scalar(
        select(ApiKey)
        # A replacement has its key's owner: the owner's index finds it (test_key_plans).
        .where(ApiKey.principal_id == key.principal_id, ApiKey.rotated_from_id == key.id)
        .order_by(ApiKey.created_at.desc())
        .limit(1)
    )
    made = earlier if earlier is not None else key
    lifetime = min(made.expires_at - made.created_at, timedelta(days=ctx.settings.key_max_ttl_days))
    data = ApiKeyCreate.model_construct(
        name=key.name,
        description=key.description,
        scopes=key.scopes,
        allowed_ips=list(key.allowed_ips),
        expires_at=now + lifetime,
    )
    key.expires_at = min(key.expires_at, now + timedelta(seconds=grace_seconds))
    return await create(ctx, session, owner=owner, data=data, actor=actor, ip=ip, rotated_from=key)


def scopes_message(client_id: str, scopes: Sequence[str] | None) -> str:
    """The revocation view's message for a key's new scopes (None: it inherits)."""
    return "key-scopes:" + json.dumps({"client_id": client_id, "scopes": scopes})


async def update(
    ctx: AppContext,
    session: AsyncSession,
    *,
    owner: Principal,
    key_id: str,
    data: ApiKeyUpdate,
    actor: str,
    ip: str | None,
) -> ApiKeyRead:
    """Change the settings `data` sets (`model_fields_set`) of one of `owner`'s keys, audit
    it and commit; the secret stays the same.

    Sent values are checked as at creation, those equal to the stored ones not again (a
    form sending the whole key back works when the owner has lost one of its scopes since,
    as rotation does). New settings apply at the key's next exchange and refresh; its
    access tokens carrying a scope it no longer has are refused within seconds everywhere.
    """
    if not data.model_fields_set:
        raise ValidationFailed(
            "Nothing to change: give at least one of " + ", ".join(UPDATABLE) + "."
        )
    settings = ctx.settings
    now = utcnow()
    # The key's row lock makes concurrent edits apply in turn, each to the row as the last
    # one committed it, and a rotation (which takes it first too) copies the edited key.
    # The owner's lock, as create and rotate take it, orders an edit with the owner's
    # rotations, whose keys rotation_holds reads. In this order: a rotation locks the old
    # key's row before it locks the owner, and the reverse order deadlocked against it
    # (PostgreSQL).
    key = await get_owned(session, key_id=key_id, owner_id=owner.id, for_update=True)
    await _lock_owner(session, owner.id)
    if now >= key.expires_at:
        raise Conflict(
            "This key has expired, and an edit cannot bring it back: that would get around "
            f"the limit of {settings.max_keys_per_principal} keys that are neither revoked "
            "nor expired. Create a new key instead."
        )
    changed: dict[str, Any] = {}
    fields = data.model_fields_set
    if "name" in fields and data.name != key.name:
        changed["name"] = data.name
    if "description" in fields and data.description != key.description:
        changed["description"] = data.description
    if "scopes" in fields:
        scopes = None if data.scopes is None else sorted(set(data.scopes))
        if scopes != (None if key.scopes is None else sorted(set(key.scopes))):
            changed["scopes"] = _check_scopes(scopes, owner, kept=key.scopes or ())
            await _hold_scopes(session, changed["scopes"])
    if "expires_at" in fields and data.expires_at != key.expires_at:
        changed["expires_at"] = check_expiry(data.expires_at, settings, now, key.created_at)
        hold = await replacement_hold(session, owner_id=owner.id, key_id=key.id, now=now)
        if hold is not None:
            until = format_utc(hold.until)
            raise Conflict(
                f"This key is being replaced: it was rotated to {hold.other_client_id} and "
                f"stays valid only until {until}, the end of its grace period, which an "
                "edit cannot move. Delete it to end it sooner; its other settings may change."
            )
    if "allowed_ips" in fields and data.allowed_ips != key.allowed_ips:
        changed["allowed_ips"] = data.allowed_ips
    if not changed:  # every value sent is the stored one: nothing to write or audit
        await session.commit()  # ends the transaction and its locks; objects stay loaded
        return to_read(key, owner, settings, now)
    for name, value in changed.items():
        setattr(key, name, value)
    if "scopes" in changed:
        key.scopes_changed_at = now
        await publish(session, ctx.revocation, scopes_message(key.client_id, key.scopes))
    audit.record(
        session,
        type="api_key.updated",
        actor=actor,
        principal_id=owner.id,
        key_id=key.id,
        ip=ip,
        reason="changed: "
        + ", ".join(
            f"{name} ({audited_value(key, name)})" if name in AUDITED_SETTINGS else name
            for name in UPDATABLE
            if name in changed
        ),
    )
    await session.commit()
    return to_read(key, owner, settings, now)


KEY_STATUSES = ("revoked", "expired", "suspended", "valid")


def _status_clause(status: str, now: datetime) -> ColumnElement[bool]:
    """SQL for `ApiKey.status()`: revoked, expired, suspended (owner unusable), valid."""
    owner_usable = and_(Principal.disabled == false(), Principal.deleted_at.is_(None))
    live = _live(now)
    if status == "revoked":
        return ApiKey.revoked_at.is_not(None)
    if status == "expired":
        return and_(ApiKey.revoked_at.is_(None), ApiKey.expires_at <= now)
    if status == "suspended":
        return and_(live, not_(owner_usable))
    if status == "valid":
        return and_(live, owner_usable)
    raise ValidationFailed(f"status must be one of: {', '.join(KEY_STATUSES)}.", field="status")


def check_client_id(value: str) -> str:
    """Return `value` as a client id to filter by; 422 in words for anything else.

    The client id is public and is all that goes in a query string. A whole key string
    pasted instead carries the secret (into browser history, proxy logs, screenshots): it
    is refused as that, never quoted, and the words say to revoke it.
    """
    if holds_api_key(value):
        raise ValidationFailed(
            "That is an API key string (it starts with ksk_), which holds the key's secret: "
            "give only its client ID, kc_ followed by the 16 letters and digits after ksk_. "
            "Treat the pasted key as leaked: revoke it.",
            field="client_id",
            location="query",
        )
    if not is_client_id(value):
        raise ValidationFailed(
            "A client ID is kc_ followed by 16 letters and digits, as the key lists show it.",
            field="client_id",
            location="query",
        )
    return value


async def search(
    session: AsyncSession,
    *,
    client_id: str | None = None,
    owner_type: str | None = None,
    owner_id: str | None = None,
    owner_name: str | None = None,
    status: str | Sequence[str] | None = None,
    expires_before: datetime | None = None,
    now: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int | None = None,
) -> list[tuple[ApiKey, Principal]]:
    """Return every principal's keys matching the filters, with their owners, newest first.

    `after` (created_at, id) and `limit` read one page of them (list_all).
    """
    now = now or utcnow()
    query = select(ApiKey, Principal).join(Principal, Principal.id == ApiKey.principal_id)
    if client_id is not None:  # unique: one row of uq_api_key_client_id at most
        query = query.where(ApiKey.client_id == client_id)
    if owner_type is not None:
        query = query.where(Principal.kind == owner_type)
    if owner_id is not None:
        query = query.where(ApiKey.principal_id == owner_id)
    if owner_name is not None:
        query = query.where(named(owner_name))
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        query = query.where(or_(*(_status_clause(one, now) for one in statuses)))
    if expires_before is not None:
        query = query.where(ApiKey.expires_at <= expires_before)
    if after is not None:
        # Keyset: after (created_at, id) in this order, newest first then by id; the first
        # condition alone is an index range (ix_api_key_created_at_id).
        created_at, key_id = after
        query = query.where(
            ApiKey.created_at <= created_at,
            or_(ApiKey.created_at < created_at, ApiKey.id > key_id),
        )
    query = query.order_by(ApiKey.created_at.desc(), ApiKey.id)
    if limit is not None:
        query = query.limit(limit)
    rows = await session.execute(query)
    return [(row[0], row[1]) for row in rows]


_CURSOR_KIND = "api-keys"


async def list_all(
    ctx: AppContext,
    session: AsyncSession,
    *,
    client_id: str | None = None,
    owner_type: str | None = None,
    owner_id: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> tuple[list[ApiKeyRead], str | None]:
    """Return all keys (revoked ones included, listed as such) for the admin API.

    Newest first; with `limit`, one page of them and the cursor of the next (paging.py).
    """
    rows, next_cursor = await list_all_with_owners(
        ctx,
        session,
        client_id=client_id,
        owner_type=owner_type,
        owner_id=owner_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return [read for read, _owner in rows], next_cursor


async def list_all_with_owners(
    ctx: AppContext,
    session: AsyncSession,
    *,
    client_id: str | None = None,
    owner_type: str | None = None,
    owner_id: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> tuple[list[tuple[ApiKeyRead, Principal]], str | None]:
    """list_all, each key with its owner (the console names them)."""
    if client_id is not None:
        check_client_id(client_id)
    now = utcnow()
    limit = paging.clamp(limit)
    after = None
    if cursor is not None:
        at, key_id = paging.decode(cursor, _CURSOR_KIND, 2)
        after = (paging.decode_time(at), key_id)
    rows = await search(
        session,
        client_id=client_id,
        owner_type=owner_type,
        owner_id=owner_id,
        status=status,
        now=now,
        after=after,
        limit=None if limit is None else limit + 1,
    )
    rows, more = paging.page(rows, limit)
    next_cursor = None
    if more:
        last = rows[-1][0]
        next_cursor = paging.encode(_CURSOR_KIND, last.created_at.isoformat(), last.id)
    reads = [(to_read(key, owner, ctx.settings, now), owner) for key, owner in rows]
    return reads, next_cursor


async def get_any(session: AsyncSession, *, key_id: str) -> tuple[ApiKey, Principal]:
    """Return any principal's key (revoked ones too) with its owner; 404 if unknown."""
    row = (
        await session.execute(
            select(ApiKey, Principal)
            .join(Principal, Principal.id == ApiKey.principal_id)
            .where(ApiKey.id == key_id)
        )
    ).first()
    if row is None:
        raise NotFound("No API key with this id.")
    return row[0], row[1]
