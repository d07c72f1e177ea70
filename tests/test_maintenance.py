"""Pruning keeps tables bounded: by command and on the server's own timer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import astuple
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from keyservice import migrations
from keyservice.audit.models import AuditEvent
from keyservice.auth.models import RefreshToken, RevokedFamily, SigningKey
from keyservice.console.models import ConsoleSpent
from keyservice.context import AppContext
from keyservice.database import new_id, utcnow
from keyservice.maintenance import PRUNE_LOCK, SIGNING_KEY_KEPT, prune_all
from tests.conftest import (
    _pg_admin,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
)
from tests.factories import create_principal, login

# Rows of RefreshToken, AuditEvent, RevokedFamily, ConsoleSpent and SigningKey.
# Audit: the two seeded logins and the first signing key's `signing_key.created`.
SEEDED = [2, 3, 2, 2, 4]
# Audit: the recent login, the key's creation, and the prune's own `audit.pruned`.
KEPT = [1, 3, 1, 1, 3]


async def _seed_signing_keys(context) -> dict[str, str]:
    """The signing key and a pending one (a staged rotation), a retired key a little inside
    SIGNING_KEY_KEPT (the longest TTL any replica may publish it for, and a day) and one a
    little past it: the last is the one to prune."""
    keyring = context.keyring
    horizon = utcnow() - SIGNING_KEY_KEPT
    kids = {}
    async with context.database.sessionmaker() as session:
        await keyring.ensure_key(session)
        kids["signing"] = keyring.current_kid
        for name, retired_at in (
            ("old", horizon - timedelta(minutes=1)),
            ("recent", horizon + timedelta(minutes=1)),
        ):
            kids[name] = await keyring.create_key(session, retire_current=False)
            await session.execute(
                update(SigningKey).where(SigningKey.kid == kids[name]).values(retired_at=retired_at)
            )
        kids["pending"] = await keyring.create_key(session, retire_current=True)
        await session.commit()
        await keyring.load(session)
    assert keyring.current_kid == kids["signing"]
    return kids


async def _seed(context):
    await _seed_signing_keys(context)
    owner = await create_principal(context, "old-timer")
    now = utcnow()
    async with context.database.sessionmaker() as session:
        for age_days, expires_in in ((3, -timedelta(days=2)), (0, timedelta(hours=1))):
            session.add(
                RefreshToken(
                    token_hash=new_id(), family_id=new_id(), principal_id=owner.id, scope="",
                    created_at=now - timedelta(days=age_days), expires_at=now + expires_in,
                )
            )  # fmt: skip
        session.add(AuditEvent(type="login", at=now - timedelta(days=400)))
        session.add(AuditEvent(type="login", at=now))
        # Older than any token can live (7 days + 30 days at most, and a day's grace).
        session.add(RevokedFamily(family_id=new_id(), revoked_at=now - timedelta(days=39)))
        session.add(RevokedFamily(family_id=new_id(), revoked_at=now - timedelta(days=3)))
        # A signed-out console session or used form: kept until an hour after its session's
        # end (other replicas' clocks may run behind), so one that ended a minute ago stays.
        for digest, ends_in in (("a", -timedelta(minutes=61)), ("b", -timedelta(minutes=1))):
            session.add(ConsoleSpent(digest=digest * 64, kind="form", expires_at=now + ends_in))
        await session.commit()


async def _counts(context):
    async with context.database.sessionmaker() as session:
        return [
            await session.scalar(select(func.count()).select_from(model))
            for model in (RefreshToken, AuditEvent, RevokedFamily, ConsoleSpent, SigningKey)
        ]


async def test_prune_deletes_only_what_no_longer_serves(context):
    await _seed(context)
    pruned = await prune_all(context, now=utcnow())
    assert (pruned.refresh_tokens, pruned.audit_events, pruned.revoked_families) == (1, 1, 1)
    assert pruned.console_ids == 1
    assert pruned.signing_keys == 1
    assert await _counts(context) == KEPT
    async with context.database.sessionmaker() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.type == "audit.pruned"))
    assert (event.actor, event.outcome) == ("server", "success")
    assert event.reason.startswith("1 event(s) recorded before ")


async def test_prune_deletes_only_signing_keys_unpublished_over_a_day(context):
    kids = await _seed_signing_keys(context)
    keyring = context.keyring
    token, _ = keyring.issue({"sub": "someone", "client_id": "c", "scope": ""})
    jwks_before = keyring.jwks()
    assert {k["kid"] for k in jwks_before["keys"]} == {kids["signing"], kids["pending"]}

    pruned = await prune_all(context, now=utcnow())

    assert pruned.signing_keys == 1
    async with context.database.sessionmaker() as session:
        left = set(await session.scalars(select(SigningKey.kid)))
        assert left == {kids["signing"], kids["pending"], kids["recent"]}
        await keyring.load(session)
    # What is published and what signs are unchanged.
    assert keyring.jwks() == jwks_before
    assert keyring.current_kid == kids["signing"]
    assert keyring.verify(token)["sub"] == "someone"
    # A second prune finds nothing more: the recent key stays until a day has passed.
    again = await prune_all(context, now=utcnow())
    assert again.signing_keys == 0
    later = await prune_all(context, now=utcnow() + timedelta(minutes=2))
    assert later.signing_keys == 1


async def test_prune_keeps_a_revocation_while_a_token_of_the_family_lives(context, client):
    # A password session issued while refresh tokens lived 30 days longer than access tokens,
    # revoked three days ago; the lifetime has since been set back to the default 3 hours.
    await create_principal(context, "roamer")
    session = await login(client, "roamer")
    issued = utcnow() - timedelta(days=3)
    async with context.database.sessionmaker() as db:
        await db.execute(
            update(RefreshToken).values(created_at=issued, expires_at=issued + timedelta(days=30))
        )
        await db.commit()
    revoked = await client.post("/revoke", data={"token": session["refresh_token"]})
    assert revoked.status_code == 200
    async with context.database.sessionmaker() as db:
        await db.execute(update(RevokedFamily).values(revoked_at=issued))
        await db.commit()

    await prune_all(context, now=utcnow())

    # The family's mark is all that refuses its last refresh token, unused and unexpired.
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]}
    )
    assert refreshed.status_code == 400, refreshed.text
    assert refreshed.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("settings_overrides", [{"prune_interval_seconds": 1}])
async def test_server_prunes_by_itself(app, context, settings_overrides):
    await _seed(context)
    for _ in range(50):
        if await _counts(context) == KEPT:
            break
        await asyncio.sleep(0.1)
    assert await _counts(context) == KEPT


@pytest.mark.parametrize("settings_overrides", [{"prune_interval_seconds": 1}])
async def test_a_periodic_prune_that_fails_is_logged_and_tried_again(
    app, context, settings_overrides, caplog
):
    # A table the prune deletes from is not there (a restore gone wrong, a lock timeout):
    # the failure is one warning naming the error's type, and the timer goes on.
    caplog.set_level(logging.WARNING, logger="keyservice.maintenance")
    async with context.database.sessionmaker() as session:
        await session.execute(text("ALTER TABLE audit_event RENAME TO audit_event_away"))
        await session.commit()
    try:
        for _ in range(200):
            failed = [r for r in caplog.records if r.getMessage().startswith("periodic prune")]
            if len(failed) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        async with context.database.sessionmaker() as session:
            await session.execute(text("ALTER TABLE audit_event_away RENAME TO audit_event"))
            await session.commit()
    assert len(failed) >= 2, [r.getMessage() for r in caplog.records]
    for record in failed:
        assert record.levelno == logging.WARNING
        assert record.getMessage() in (
            "periodic prune failed: ProgrammingError",  # PostgreSQL: no such relation
            "periodic prune failed: OperationalError",  # SQLite: no such table
        ), record.getMessage()


async def _waiting_for_a_row_lock(context) -> None:
    """Until a session of this database waits for a row lock (a prune's DELETE here)."""
    for _ in range(100):
        async with context.database.sessionmaker() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no prune is waiting")


async def _lock_the_old_audit_event(holder, *, idle_limit_off: bool = False) -> None:
    """Row-lock the seeded old audit event in `holder`'s transaction: a prune's DELETE of it
    waits there, holding its turn, until `holder` ends."""
    if idle_limit_off:  # the holder itself outlives an impatient server's idle limit
        await holder.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
    await holder.execute(
        select(AuditEvent.seq).where(AuditEvent.at < utcnow() - timedelta(days=1)).with_for_update()
    )


@pytest.mark.postgresql_only
async def test_one_prune_at_a_time(context):
    # Every worker of every replica prunes on its timer: a second prune while one runs would
    # queue its deletes behind the first's on the same rows. It skips (a worker's timer) or
    # waits for its turn (`keyservice prune`).
    await _seed(context)
    async with context.database.sessionmaker() as holder:
        # The old audit event, locked: the first prune stops there, holding its turn.
        await _lock_the_old_audit_event(holder)
        first = asyncio.create_task(prune_all(context, now=utcnow(), wait=False))
        await _waiting_for_a_row_lock(context)
        assert await prune_all(context, now=utcnow(), wait=False) is None
        waits: list[str] = []
        queued = asyncio.create_task(
            prune_all(context, now=utcnow(), waiting=lambda: waits.append("waiting"))
        )
        done, _ = await asyncio.wait({first, queued}, timeout=0.5)
        assert not done and waits == ["waiting"]
        await holder.rollback()
    pruned = await first
    assert astuple(pruned) == (1, 1, 1, 1, 1)
    after = await queued
    assert astuple(after) == (0, 0, 0, 0, 0)
    assert await _counts(context) == KEPT


@pytest.fixture
def impatient_database(database_url, tmp_path):
    """A migrated and seeded (_seed) PostgreSQL database of the test's own whose server ends
    any session left idle in a transaction for 200 ms (idle_in_transaction_session_timeout).

    Seeded before the limit is set: the seeding's transactions pause between statements
    (key generation, hashing), and on a loaded machine a pause of 200 ms ended them.
    """
    url = create_postgres_database("ks_prune")
    try:
        migrations.upgrade(url)

        async def seed() -> None:
            context = AppContext(make_settings(url, tmp_path))
            try:
                await _seed(context)
            finally:
                await context.database.dispose()

        asyncio.run(seed())
        name = url.rsplit("/", 1)[1]
        asyncio.run(
            _pg_admin(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = 200')
        )
        yield url
    finally:
        drop_postgres_database(url)


async def _advisory_locks(context) -> int:
    async with context.database.sessionmaker() as session:
        return int(
            await session.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
            )
        )


@pytest.mark.postgresql_only
async def test_a_prune_longer_than_the_servers_idle_limit_keeps_its_turn(
    impatient_database, tmp_path
):
    # The lock's transaction sits idle while the prune runs on other sessions: the server's
    # idle_in_transaction_session_timeout would end it mid-prune, and another prune with it.
    context = AppContext(make_settings(impatient_database, tmp_path))
    try:
        async with context.database.sessionmaker() as holder:
            await _lock_the_old_audit_event(holder, idle_limit_off=True)
            first = asyncio.create_task(prune_all(context, now=utcnow(), wait=False))
            await _waiting_for_a_row_lock(context)
            await asyncio.sleep(1)  # five times the server's limit
            assert await prune_all(context, now=utcnow(), wait=False) is None
            assert await _advisory_locks(context) == 1
            await holder.rollback()
        pruned = await first
        assert astuple(pruned) == (1, 1, 1, 1, 1)
        assert await _advisory_locks(context) == 0
        assert await _counts(context) == KEPT
    finally:
        await context.database.dispose()


@pytest.mark.postgresql_only
async def test_a_failed_prune_leaves_no_lock_held(impatient_database, tmp_path):
    context = AppContext(make_settings(impatient_database, tmp_path))
    try:
        async with context.database.sessionmaker() as holder:
            await _lock_the_old_audit_event(holder, idle_limit_off=True)
            first = asyncio.create_task(prune_all(context, now=utcnow(), wait=False))
            await _waiting_for_a_row_lock(context)
            await asyncio.sleep(0.5)
            # The prune's blocked DELETE is cancelled (an operator, a statement timeout).
            await holder.execute(
                text(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            with pytest.raises(Exception, match="cancel"):
                await first
            await holder.rollback()
        assert await _advisory_locks(context) == 0
        pruned = await prune_all(context, now=utcnow(), wait=False)
        assert pruned is not None and pruned.audit_events == 1
    finally:
        await context.database.dispose()


@pytest.mark.postgresql_only
@pytest.mark.parametrize("settings_overrides", [{"prune_interval_seconds": 1}])
async def test_the_server_skips_a_round_while_another_prunes(app, context, caplog):
    await _seed(context)
    with caplog.at_level("DEBUG", logger="keyservice.maintenance"):
        async with context.database.sessionmaker() as other_replica:
            await other_replica.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PRUNE_LOCK}
            )
            await asyncio.sleep(2.5)
            assert await _counts(context) == SEEDED
            await other_replica.rollback()
        for _ in range(50):
            if await _counts(context) == KEPT:
                break
            await asyncio.sleep(0.1)
    assert await _counts(context) == KEPT
    skipped = [r for r in caplog.records if "prune skipped" in r.getMessage()]
    assert skipped and all(r.levelname == "DEBUG" for r in skipped)


@pytest.mark.postgresql_only
async def test_the_token_tables_reads_have_indexes_that_cost_exchanges_little(context):
    # Migration 0003: the time columns are BRIN (append-ordered, read in ranges), password
    # sign-ins have a partial index of their own, and refresh tokens have no foreign keys.
    from sqlalchemy import text

    async def plan(session, sql: str) -> str:
        rows = (await session.execute(text(f"EXPLAIN {sql}"))).scalars().all()
        return "\n".join(rows)

    async with context.database.sessionmaker() as session:
        methods = dict(
            (
                await session.execute(
                    text(
                        "SELECT c.relname, a.amname FROM pg_index i"
                        " JOIN pg_class c ON c.oid = i.indexrelid"
                        " JOIN pg_am a ON a.oid = c.relam"
                        " WHERE i.indrelid IN ('refresh_token'::regclass, 'audit_event'::regclass)"
                    )
                )
            ).all()
        )
        foreign_keys = await session.scalar(
            text(
                "SELECT count(*) FROM pg_constraint"
                " WHERE conrelid = 'refresh_token'::regclass AND contype = 'f'"
            )
        )
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        sessions = await plan(
            session,
            "SELECT DISTINCT family_id FROM refresh_token"
            " WHERE principal_id = 'p' AND key_id IS NULL AND expires_at > now()",
        )
        prune_tokens = await plan(session, "DELETE FROM refresh_token WHERE expires_at < now()")
        prune_events = await plan(session, "DELETE FROM audit_event WHERE at < now()")
    assert methods["ix_refresh_token_expires_at"] == "brin"
    assert methods["ix_audit_event_at"] == "brin"
    assert "ix_refresh_token_family_id" not in methods  # never read
    assert foreign_keys == 0
    assert "ix_refresh_token_password_sessions" in sessions, sessions
    assert "ix_refresh_token_expires_at" in prune_tokens, prune_tokens
    assert "ix_audit_event_at" in prune_events, prune_events
