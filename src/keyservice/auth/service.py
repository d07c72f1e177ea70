"""The token exchange: what spans keys, owners, addresses, scopes, tokens and the audit log.

Each grant (auth/grants/*) runs validate → generate → persist with the pieces here. The
refresh token, the audit event and the coalesced `last_used_*` write of an exchange or
refresh commit together (auth/store.py), so an acknowledged token is never lost (unless
KEYSERVICE_TOKEN_COMMIT=async, on PostgreSQL, lets a database crash lose the last moment
of exchanges).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth.models import RevokedFamily
from keyservice.auth.revocation import publish
from keyservice.auth.store import IssueWrite, KeyRecord
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.database import new_ordered_id, ordered_id_time, utcnow
from keyservice.exceptions import (
    InvalidClient,
    InvalidScope,
    KeyServiceError,
    SlowDown,
    echoable,
)
from keyservice.principals.models import Principal, revoked_through
from keyservice.scopes.models import effective_permissions
from keyservice.scopes.schemas import SCOPE_NAME
from keyservice.security import ip as ipmod
from keyservice.security.tokens import is_client_id, new_refresh_token
from keyservice.timestamps import format_utc

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
    access_token: str = field(repr=False)
    expires_in: int
    refresh_token: str = field(repr=False)
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
    """Parse a space-separated scope parameter; None when absent or empty.

    A malformed scope is invalid_scope (RFC 6749 §5.2: "invalid, unknown, malformed, or
    exceeds the scope granted"); a `scope` sent twice is invalid_request (the router's).
    """
    if value is None or not value.strip(" "):
        return None
    parts = [part for part in value.split(" ") if part]
    for part in parts:
        if not _SCOPE_TOKEN.match(part):
            raise InvalidScope(
                "The scope parameter holds characters RFC 6749 section 3.3 forbids: scope "
                "names are printable ASCII without quotes or backslashes, separated by spaces.",
                reason="malformed scope",
            )
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
    """Narrow to the requested scopes; asking for one not available is invalid_scope.

    `admin` among them holds the other built-ins (API.md), so a key scoped `["admin"]` may
    ask for `introspect` alone; unrequested, the token carries `available` as it is.
    """
    if requested is None:
        return available
    missing = requested - effective_permissions(available)
    if missing:
        named = sorted(name for name in missing if echoable(name, SCOPE_NAME))
        if len(named) == len(missing):
            detail = ": " + ", ".join(named)
        else:  # a secret pasted into `scope` is not echoed back, not even in part
            detail = f" (among them {', '.join(named)})" if named else ""
        raise InvalidScope(
            f"The requested scope includes permissions this client does not hold{detail}."
        )
    return requested


@lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> list[ipmod.IPNetwork]:
    return ipmod.parse_cidrs(cidrs)


def key_refusal(
    *, key: ApiKey, owner: Principal, caller: Caller, now: datetime, legacy_until: datetime | None
) -> str | None:
    """Return the precise reason a key cannot be used now, or None (API.md check order)."""
    unusable = key_unusable(key=key, owner=owner, now=now, legacy_until=legacy_until)
    if unusable is not None:
        return unusable
    if not ipmod.ip_allowed(caller.ip, _networks(tuple(key.allowed_ips))):
        return "ip not allowed"
    return None


def describe_key_refusal(reason: str, *, key: ApiKey, caller: Caller) -> str | None:
    """Say why a key was refused, to a caller that proved it holds the key (or one of its
    refresh tokens); None leaves the generic description.

    Only after the secret checked out: whoever reads this already has the key, so it tells
    nothing about which client ids exist, and "Client authentication failed" sent people
    hunting for a typo in a key that was simply expired or used from another network.
    """
    if reason == "ip not allowed":
        where = f" from {caller.ip_text}" if caller.ip_text else " from this address"
        return (
            f"This API key may not be used{where}: the address is not in its allowed IPs. "
            "Call from an allowed address, or have the key's allowed IPs changed."
        )
    if reason == "key expired":
        when = format_utc(key.expires_at)
        return f"This API key expired at {when}. Generate a new key and use it instead."
    if reason == "key revoked":
        return "This API key was deleted. Generate a new key and use it instead."
    if reason == "legacy keys no longer accepted":
        return "Legacy keys are no longer accepted: create a new API key and use it instead."
    return None


def key_unusable(
    *, key: ApiKey, owner: Principal, now: datetime, legacy_until: datetime | None
) -> str | None:
    """Return why a key cannot be used now by anyone, wherever they call from, or None."""
    if key.revoked_at is not None:
        return "key revoked"
    if now >= key.expires_at:
        return "key expired"
    if key.is_legacy and legacy_until is not None and now >= legacy_until:
        return "legacy keys no longer accepted"
    if not owner.usable:
        return "owner disabled" if owner.deleted_at is None else "owner deleted"
    return None


def actor_for(*, key: ApiKey | None, owner: Principal | None) -> str | None:
    if key is not None:
        return f"key:{key.client_id}"
    if owner is not None:
        return f"{owner.kind}:{owner.name}"
    return None


async def family_holder(
    session: AsyncSession, *, key_id: str | None, principal_id: str
) -> str | None:
    """Who presents a family's tokens, as exchanges and refreshes name them: its key
    (`key:<client id>`), or the user of a password sign-in (`user:<username>`)."""
    if key_id is not None:
        client_id = await session.scalar(select(ApiKey.client_id).where(ApiKey.id == key_id))
        return f"key:{client_id}" if client_id is not None else None
    owner = (
        await session.execute(
            select(Principal.kind, Principal.name).where(Principal.id == principal_id)
        )
    ).first()
    return f"{owner.kind}:{owner.name}" if owner is not None else None


async def refuse(
    ctx: AppContext,
    error: KeyServiceError,
    *,
    event: str,
    reason: str,
    caller: Caller,
    key: ApiKey | None = None,
    key_id: str | None = None,
    principal_id: str | None = None,
    actor: str | None = None,
    throttle_subject: str | None = None,
    session: AsyncSession | None = None,
) -> NoReturn:
    """Audit a refusal with its precise reason, then raise.

    With `throttle_subject` the refusal is a failure counted against that client id (none
    when empty) and the caller's IP, unless they are over their limit already: concurrent
    attempts all passed the throttle before any of them failed, and past the limit their
    outcome is withheld (429, not counted) as after a lock-out.

    The event is written in `session` when given (after rolling back whatever it held,
    which on SQLite releases the write lock a second session would wait for), else in a
    session of its own.
    """
    if throttle_subject is not None:
        try:
            ctx.throttle.check_local(client=throttle_subject, ip=caller.ip_text)
        except SlowDown as exc:
            error, reason = exc, "throttled"
        else:
            await ctx.throttle.failure(client=throttle_subject, ip=caller.ip_text)
    key_id = key_id or (key.id if key is not None else None)
    principal_id = principal_id or (key.principal_id if key is not None else None)
    if session is not None:
        session.expunge_all()  # keep loaded objects readable after the rollback
        await session.rollback()
        await _record_refusal(session, event, reason, caller, key_id, principal_id, actor)
    else:
        async with ctx.database.token_sessionmaker() as own:
            await _record_refusal(own, event, reason, caller, key_id, principal_id, actor)
    raise error


async def refuse_unaudited(
    ctx: AppContext,
    error: KeyServiceError,
    *,
    event: str,
    caller: Caller,
    client_id: str | None,
    actor: str | None = None,
) -> NoReturn:
    """Audit a refusal raised with its `reason` before any event was written, then raise.

    `client_id` is the one the request names, unauthenticated: if it exists, the event
    carries its key (API.md: a refusal for a known client id carries its key_id), and is
    by that key unless an `actor` is given (a caller already verified otherwise). An
    invalid_client here (malformed Basic credentials) is a failed client authentication,
    counted for the source IP's throttle (no client id is known), and once the IP is past
    its limit answered 429 like any other.
    """
    assert error.reason is not None
    found = None
    if client_id is not None and is_client_id(client_id):
        found = await ctx.tokens.fetch_key(client_id)
    await refuse(
        ctx,
        error,
        event=event,
        reason=error.reason,
        caller=caller,
        key_id=found.key_id if found is not None else None,
        principal_id=found.principal_id if found is not None else None,
        actor=actor or (f"key:{client_id}" if found is not None else None),
        throttle_subject="" if isinstance(error, InvalidClient) else None,
    )


async def _record_refusal(
    session: AsyncSession,
    event: str,
    reason: str,
    caller: Caller,
    key_id: str | None,
    principal_id: str | None,
    actor: str | None,
) -> None:
    audit.record(
        session,
        type=event,
        outcome="failure",
        actor=actor,
        principal_id=principal_id,
        key_id=key_id,
        ip=caller.ip_text,
        reason=reason,
    )
    await session.commit()


async def load_key(ctx: AppContext, *, client_id: str) -> tuple[ApiKey, Principal] | None:
    """Fetch a key and its owner in one round trip, as objects."""
    record = await ctx.tokens.fetch_key(client_id)
    return record.objects() if record is not None else None


def authenticate_secret(ctx: AppContext, found: KeyRecord | None, secret: str) -> str | None:
    """Constant-time secret check; an unknown client does the same HMAC work. Returns the
    label of the server secret the stored HMAC was made under (None: no match)."""
    return ctx.hasher.match(secret, found.secret_hash if found is not None else None)


async def rehash_if_needed(
    ctx: AppContext, found: KeyRecord, secret: str, hashed_under: str
) -> None:
    """Store a key's HMAC under the current server secret, and label it, if it matched
    under the fallback or carries no label yet (made before labels: hashing.secret_label).
    Once per key (at most once a minute per process, AppContext.rehashed); a concurrent
    exchange of the same key doing it too changes nothing."""
    if hashed_under == ctx.hasher.label and found.hashed_under == ctx.hasher.label:
        return
    if not ctx.rehashed.due(found.key_id):
        return
    async with ctx.database.sessionmaker() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == found.key_id, ApiKey.secret_hash == found.secret_hash)
            .values(secret_hash=ctx.hasher.hash(secret), hashed_under=ctx.hasher.label)
        )
        await session.commit()


def password_session_end(settings: Settings, family_id: str) -> int:
    """When a password sign-in session ends (Unix seconds): its family's start, which the
    family's id holds (a UUIDv7), plus KEYSERVICE_PASSWORD_SESSION_MAX_SECONDS. Refreshing
    does not move it. A family id of another kind was made before ordered ids: long over."""
    started = ordered_id_time(family_id)
    if started is None:
        return 0
    return int(started) + settings.password_session_max_seconds


# Further off than this, the cut-off is in the future by a clock gone wrong: not waited for.
_LONGEST_WAIT = 2.0


async def past_revocation(tokens_revoked_at: datetime, now: datetime) -> datetime:
    """`now`, or the start of the next second if tokens issued now would be born revoked.

    Disabling an owner revokes its tokens through the whole second of the disable (`iat` is
    whole seconds: principals.models.revoked_through). Re-enabled within that second, its
    exchange answered 200 with tokens every endpoint then refused, for good; waiting out
    the rest of the second (at most one, only then) issues tokens that work.
    """
    through = revoked_through(tokens_revoked_at)
    wait = through + 1 - now.timestamp()
    if not 0 < wait <= _LONGEST_WAIT:
        return now
    for _ in range(3):  # the wall clock may lag the loop's clock a little
        await asyncio.sleep(wait)
        now = utcnow()
        wait = through + 1 - now.timestamp()
        if wait <= 0:
            break
    return now


async def issue(
    ctx: AppContext,
    *,
    owner: Principal,
    key: ApiKey | None,
    scopes: frozenset[str],
    caller: Caller,
    event: str,
    family_id: str | None = None,
    parent_id: str | None = None,
    grant_scope: str | None = None,
    until: int | None = None,
) -> Issued | None:
    """Sign an access token and persist its refresh token and audit event in one write.

    The access token carries `scopes`; the refresh token carries `grant_scope`, the scope
    of the original grant (default: the same), so that a refresh asking for less narrows
    that access token only and a later one may ask for the rest again (RFC 6749 §6: an
    omitted scope is "equal to the scope originally granted").

    With `parent_id` (a refresh) the parent is claimed in the same atomic write, so of N
    concurrent refreshes exactly one gets tokens; the others get None. The write may share
    its commit with other requests' (auth/store.py). When this returns the write is
    committed, and flushed too unless KEYSERVICE_TOKEN_COMMIT=async applies (no claim).

    `until` (Unix seconds) ends both tokens then if that is sooner than their lifetimes: a
    password sign-in session's end. Each lives at least a second, so a refresh checked just
    before that end, and issued just after it, does not get a token that is already dead.
    """
    settings = ctx.settings
    now = utcnow()
    if owner.tokens_revoked_at is not None:
        now = await past_revocation(owner.tokens_revoked_at, now)
    iat = int(now.timestamp())
    refresh_ttl = settings.refresh_token_ttl
    rt_expires = now + timedelta(seconds=refresh_ttl)
    if until is not None:
        until = max(until, iat + 1)
        ends = datetime.fromtimestamp(until, UTC)
        if ends < rt_expires:
            rt_expires, refresh_ttl = ends, until - iat
    family = family_id or new_ordered_id()
    refresh_token = new_refresh_token()
    scope = format_scope(scopes)
    write = IssueWrite(
        now=now,
        rt_id=new_ordered_id(),
        rt_hash=ctx.hasher.hash(refresh_token),
        family_id=family,
        parent_id=parent_id,
        principal_id=owner.id,
        key_id=key.id if key is not None else None,
        scope=scope if grant_scope is None else grant_scope,
        rt_expires=rt_expires,
        au_id=new_ordered_id(),
        event=event,
        # Written by the batch writer (store.py) without audit.record(): scrubbed here.
        actor=audit.without_secrets(actor_for(key=key, owner=owner)),
        ip=caller.ip_text,
        last_used=key is not None and ctx.last_used.due(key.id),
    )
    if not await ctx.tokens.write_issue(write):
        return None
    claims: dict[str, object] = {
        "sub": owner.id,
        "scope": scope,
        "principal_type": owner.kind,
        "sid": family,
    }
    if key is not None:
        claims["client_id"] = key.client_id
    access_token, exp = ctx.keyring.issue(claims, now=iat, until=until)
    sunset = None
    if key is not None and key.expires_at - now <= timedelta(days=settings.expiry_warning_days):
        sunset = key.expires_at
    return Issued(
        access_token=access_token,
        expires_in=exp - iat,
        refresh_token=refresh_token,
        refresh_expires_in=refresh_ttl,
        scope=scope,
        sunset=sunset,
    )


async def revoke_family(
    ctx: AppContext, session: AsyncSession, *, family_id: str, reason: str
) -> None:
    """Mark a family revoked (idempotent); every replica, this one included, learns of it
    when the caller commits."""
    # Every loser of a refresh race lands here at once: insert idempotently.
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(RevokedFamily)
        .values(family_id=family_id, revoked_at=utcnow(), reason=reason)
        .on_conflict_do_nothing(index_elements=["family_id"])
    )
    await publish(session, ctx.revocation, f"family:{family_id}")


def invalid_client(basic: bool, description: str | None = None) -> InvalidClient:
    headers = {"WWW-Authenticate": 'Basic realm="keyservice"'} if basic else None
    return InvalidClient(description, headers=headers)
