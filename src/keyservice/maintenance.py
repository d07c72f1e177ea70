"""Housekeeping that keeps tables bounded: `keyservice prune`, and the server's own timer.

One prune runs at a time on PostgreSQL: every worker of every replica has the timer, and
their deletes would otherwise compete for the same rows each round. A worker whose turn
is taken skips the round; the command waits for it. On SQLite the workers of one `serve`
share one file whose write lock queues their deletes, and the ones that come second
find nothing left to delete: they are not kept from running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit_service
from keyservice.auth.models import RefreshToken, RevokedFamily, SigningKey
from keyservice.config import MAX_ACCESS_TOKEN_TTL, MAX_REFRESH_TOKEN_EXTRA_TTL
from keyservice.console.models import ConsoleSpent
from keyservice.context import AppContext
from keyservice.database import utcnow

log = logging.getLogger(__name__)

# Expired refresh tokens are kept a day, so a late retry still reads as "expired".
REFRESH_TOKEN_GRACE = timedelta(days=1)
# A console sign-out or used form id is kept this long past its session's end: a replica
# whose clock runs behind the pruning one's would otherwise accept a signed-out cookie (or
# a used form) again for the difference.
CONSOLE_SPENT_GRACE = timedelta(hours=1)
# A retired signing key is deleted this long after its retirement: longer than any
# replica publishes it (the longest access-token TTL allowed + 60 s, whatever this
# process's own TTL is) and a day for clocks running behind; its encrypted private key
# serves nothing by then.
SIGNING_KEY_GRACE = timedelta(days=1)
SIGNING_KEY_KEPT = timedelta(seconds=MAX_ACCESS_TOKEN_TTL + 60) + SIGNING_KEY_GRACE
# Every token of a family was issued before its revocation and lives at most this long.
FAMILY_MARK_KEPT = (
    timedelta(seconds=MAX_ACCESS_TOKEN_TTL + MAX_REFRESH_TOKEN_EXTRA_TTL) + REFRESH_TOKEN_GRACE
)


# Any constant: the advisory lock a prune holds while it runs (PostgreSQL).
PRUNE_LOCK = 0x6B73_7072_756E_65  # "ksprune"
WAIT_SECONDS = 0.5
# SET LOCAL of the limits that would end the lock's idle transaction; only those the
# server has (transaction_timeout is PostgreSQL 17's).
_NO_IDLE_LIMITS = text(
    "SELECT set_config(name, '0', true) FROM pg_settings"
    " WHERE name IN ('idle_in_transaction_session_timeout', 'transaction_timeout')"
)


@dataclass(frozen=True)
class Pruned:
    refresh_tokens: int
    audit_events: int
    revoked_families: int
    console_ids: int
    signing_keys: int


async def _delete(session: AsyncSession, statement: object) -> int:
    result = await session.execute(statement)  # type: ignore[call-overload]
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


@contextlib.asynccontextmanager
async def _turn(
    ctx: AppContext, *, wait: bool, waiting: Callable[[], None] | None
) -> AsyncIterator[bool]:
    """Yield whether this prune may run: on PostgreSQL, while it holds PRUNE_LOCK.

    The lock is the transaction's, on a connection of its own: it ends with the
    transaction, so a prune that fails or is cancelled cannot leave it held on a pooled
    connection (the pool does not reset session state, database.py). A wait tries again
    every WAIT_SECONDS rather than blocking in one statement, which the connections'
    command timeout would cut short of a long prune.

    The transaction sits idle while the prune runs on other sessions: a server's
    idle_in_transaction_session_timeout (or PostgreSQL 17's transaction_timeout) shorter
    than the prune would end its session, and with it the lock, mid-prune. They are off
    for this transaction only (SET LOCAL), so nothing of it stays on the connection.
    """
    if ctx.database.is_sqlite:
        yield True
        return
    try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
    async with ctx.database.engine.connect() as connection, connection.begin():
        await connection.execute(_NO_IDLE_LIMITS)
        got = await connection.scalar(try_lock, {"key": PRUNE_LOCK})
        if not got and wait and waiting is not None:
            waiting()
        while not got and wait:
            await asyncio.sleep(WAIT_SECONDS)
            got = await connection.scalar(try_lock, {"key": PRUNE_LOCK})
        yield bool(got)


async def prune_all(
    ctx: AppContext,
    *,
    now: datetime,
    wait: bool = True,
    waiting: Callable[[], None] | None = None,
    actor: str = "server",
) -> Pruned | None:
    """Delete what no longer serves: long-expired refresh tokens, audit past retention,
    family revocations older than any token of the family can be, and the console's
    signed-out sessions and used forms whose session ended over an hour ago, and retired
    signing keys retired longer ago than any replica publishes them (SIGNING_KEY_KEPT).
    Audit events deleted are counted in an `audit.pruned` event naming `actor`.

    While another prune runs (PostgreSQL), wait for it to end (`waiting` is called first),
    or with `wait=False` return None at once, having deleted nothing.
    """
    async with _turn(ctx, wait=wait, waiting=waiting) as mine:
        return await _prune(ctx, now=now, actor=actor) if mine else None


async def _prune(ctx: AppContext, *, now: datetime, actor: str) -> Pruned:
    settings = ctx.settings
    async with ctx.database.sessionmaker() as session:
        tokens = await _delete(
            session, delete(RefreshToken).where(RefreshToken.expires_at < now - REFRESH_TOKEN_GRACE)
        )
    async with ctx.database.sessionmaker() as session:
        retention = timedelta(days=settings.audit_retention_days)
        events = await audit_service.prune(
            session,
            before=now - retention,
            actor=actor,
            retention_days=settings.audit_retention_days,
        )
    # A revoked family's unused refresh token is refused only by its family's mark, so the
    # mark stays as long as any token of the family can live: tokens issued before a
    # shorter lifetime was configured keep the longer one they were given, up to the bound.
    family_horizon = now - FAMILY_MARK_KEPT
    async with ctx.database.sessionmaker() as session:
        families = await _delete(
            session, delete(RevokedFamily).where(RevokedFamily.revoked_at < family_horizon)
        )
    # Past its session's end the cookie and the form's CSRF token are refused anyway.
    async with ctx.database.sessionmaker() as session:
        console_ids = await _delete(
            session, delete(ConsoleSpent).where(ConsoleSpent.expires_at < now - CONSOLE_SPENT_GRACE)
        )
    # Only a key retired in the past can be this old: the signing key and a pending one
    # have no `retired_at`, or one still ahead (a staged handover).
    signing_horizon = now - SIGNING_KEY_KEPT
    async with ctx.database.sessionmaker() as session:
        signing_keys = await _delete(
            session,
            delete(SigningKey).where(
                SigningKey.retired_at.is_not(None), SigningKey.retired_at < signing_horizon
            ),
        )
    return Pruned(
        refresh_tokens=tokens,
        audit_events=events,
        revoked_families=families,
        console_ids=console_ids,
        signing_keys=signing_keys,
    )


async def prune_periodically(ctx: AppContext) -> None:
    """Prune every `prune_interval_seconds` until shutdown; failures are logged, not fatal."""
    from keyservice.context import ticks

    async for _ in ticks(ctx.stopping, ctx.settings.prune_interval_seconds):
        try:
            pruned = await prune_all(ctx, now=utcnow(), wait=False)
        except Exception as exc:  # the database may be down; try again next time
            log.warning("periodic prune failed: %s", type(exc).__name__)
            if ctx.metrics is not None:
                ctx.metrics.background_failure("prune")
            continue
        if pruned is None:
            log.debug("periodic prune skipped: another worker or replica is pruning")
        elif any(astuple(pruned)):
            log.info(
                "pruned %d refresh tokens, %d audit events, %d family revocations, "
                "%d console session/form ids, %d unpublished signing keys",
                pruned.refresh_tokens,
                pruned.audit_events,
                pruned.revoked_families,
                pruned.console_ids,
                pruned.signing_keys,
            )
