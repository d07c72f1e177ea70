"""Console work that is not a page: signing in and out (audited), and used-up ids."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.auth.grants import password as password_grant
from keyservice.auth.grants.password import EVENT
from keyservice.auth.service import Caller, past_revocation
from keyservice.console.models import SESSION, ConsoleSpent
from keyservice.console.session import ConsoleSession, SessionCodec
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.security import ip as ipmod

SIGN_OUT_EVENT = "logout"


async def sign_in(
    ctx: AppContext, *, username: str, password: str, ip: ipmod.IPAddress | None
) -> Principal:
    """Return the user for these credentials, or raise InvalidGrant / SlowDown (audited).

    Returns in a second whose sessions the user's last disable did not end: the session's
    sign-in time is whole seconds, and the disable ends those of its whole second
    (principals.models.revoked_through), so a sign-in right after a quick re-enable would
    start a session refused on its first page. It waits that second out, as issuing does.
    """
    caller = Caller(ip=ip)
    user = await password_grant.sign_in(
        ctx, username=username, password=password, caller=caller, reason_prefix="console: "
    )
    if user.tokens_revoked_at is not None:
        await past_revocation(user.tokens_revoked_at, utcnow())
    async with ctx.database.sessionmaker() as session:
        audit.record(
            session,
            type=EVENT,
            actor=f"user:{user.name}",
            principal_id=user.id,
            ip=caller.ip_text,
            reason="console sign-in",
        )
        await session.commit()
    return user


async def spend(session: AsyncSession, *, digest: str, kind: str, until: int) -> bool:
    """Record an id as used up until `until` (Unix seconds: its session's end), in the
    caller's transaction; False if it already was.

    One INSERT ... ON CONFLICT DO NOTHING: of two transactions recording the same id at
    once, PostgreSQL makes the second wait for the first and then insert nothing if it
    committed (or insert if it rolled back); SQLite's write transactions run one at a time.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    result = await session.execute(
        insert(ConsoleSpent)
        .values(digest=digest, kind=kind, expires_at=datetime.fromtimestamp(until, UTC))
        .on_conflict_do_nothing(index_elements=["digest"])
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


async def signed_out(session: AsyncSession, codec: SessionCodec, console: ConsoleSession) -> bool:
    """Whether this console session was signed out (one primary-key lookup)."""
    digest = codec.spent_digest(SESSION, console.id)
    found = await session.scalar(select(ConsoleSpent.digest).where(ConsoleSpent.digest == digest))
    return found is not None


async def sign_out(
    session: AsyncSession, codec: SessionCodec, console: ConsoleSession, *, ip: str | None
) -> None:
    """End a signed-in console session for every copy of its cookie, and commit.

    Audited once per session (signing out a session already signed out records nothing).
    """
    ended = await spend(
        session,
        digest=codec.spent_digest(SESSION, console.id),
        kind=SESSION,
        until=console.expires_at,
    )
    if ended and console.principal_id is not None:
        name = await session.scalar(
            select(Principal.name).where(Principal.id == console.principal_id)
        )
        audit.record(
            session,
            type=SIGN_OUT_EVENT,
            actor=f"user:{name}" if name is not None else None,
            principal_id=console.principal_id,
            ip=ip,
            reason="console sign-out",
        )
    await session.commit()
