"""Apply Alembic migrations from code (`keyservice migrate`, `serve` at start-up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from keyservice.database import Database

_PACKAGE_DIR = Path(__file__).resolve().parent
# Any constant: the advisory lock an upgrade holds on PostgreSQL, so that replicas started
# together on an empty database (each `serve` migrates) or two `keyservice migrate` run
# one after the other instead of both creating the same tables.
MIGRATION_LOCK = 0x6B73_6D69_6772_61  # "ksmigra"
LOCK_WAIT_SECONDS = 0.2
# How long a migration's statement waits for a table's lock (PostgreSQL's lock_timeout)
# before the upgrade rolls back and tries again. While an ALTER TABLE waits for a lock a
# long transaction holds, every query of the running servers on that table queues behind
# it: waited for in one go, a rolling upgrade stalled the service for as long as the
# transaction lasted (for ever, one left idle), its requests failing after 10 s.
TABLE_LOCK_TIMEOUT_SECONDS = 2.0
TABLE_LOCK_PAUSE_SECONDS = 1.0  # between tries: the queued requests go through
TABLE_LOCK_PATIENCE_SECONDS = 600.0  # then the upgrade gives up, changing nothing
TABLE_LOCK_SAY_EVERY_SECONDS = 30.0
_LOCK_NOT_AVAILABLE = "55P03"


class SchemaMismatch(Exception):
    """The database's schema is not the one this version of keyservice works with."""


class NoDatabaseFile(SchemaMismatch):
    """check_file: the SQLite file is not there (an empty database, were it opened)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def database_name(database_url: str) -> str:
    """The database as messages name it: a SQLite file's path, else the URL, password masked."""
    try:
        url = make_url(database_url)
    except Exception:  # nothing of it can be shown safely
        return "(KEYSERVICE_DATABASE_URL)"
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


class DataConflict(Exception):
    """A migration cannot apply to the data as it is; the message says what to change.
    That migration changed nothing; on SQLite, where DDL is not held in the run's
    transaction, migrations before it in the same run may stay applied."""


class MigrationBlocked(Exception):
    """Other transactions kept a table locked for TABLE_LOCK_PATIENCE_SECONDS; nothing
    was changed."""


def _script_location() -> Path:
    # In a wheel the folder is packaged as keyservice/_migrations; in a checkout it is the
    # repository's migrations/.
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("cannot find the migrations folder")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


async def _heads(engine: AsyncEngine) -> tuple[str, ...]:
    async with engine.connect() as connection:
        return await _connection_heads(connection)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # A look, not a migration: without Alembic's "Context impl ..." lines at INFO.
    announcer = logging.getLogger("alembic.runtime.migration")
    level = announcer.level
    announcer.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        announcer.setLevel(level)


def current_revisions(database_url: str) -> tuple[str, ...]:
    """The revisions the database is stamped with (none for an empty database)."""
    from keyservice.database import ADMIN_CONNECT_TIMEOUT_SECONDS, Database

    async def read() -> tuple[str, ...]:
        database = Database(database_url, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
        try:
            return await _heads(database.engine)
        finally:
            await database.dispose()

    with _quiet():
        return asyncio.run(read())


def _unknown(script: ScriptDirectory, revisions: tuple[str, ...]) -> list[str]:
    known = {revision.revision for revision in script.walk_revisions()}
    return [revision for revision in revisions if revision not in known]


def _newer(unknown: list[str], head: str | None, database_url: str) -> SchemaMismatch:
    # Alembic alone says "Can't locate revision" with a traceback, and a server run against
    # a schema it does not know fails later, on whatever changed.
    return SchemaMismatch(
        f"the database {database_name(database_url)} is at schema revision "
        f"{', '.join(unknown)}, which this version of "
        f"keyservice does not know (its newest is {head}): a newer release migrated it. "
        f"Run that release, or take the database back with its `keyservice migrate --to "
        f"{head}` (README: Upgrading)"
    )


class Upgraded(NamedTuple):
    applied: tuple[str, ...]  # oldest first; none if the database was there already
    current: tuple[str, ...]  # the revisions the database is stamped with now
    # The `schema.migrated` event recorded (its fields, for the audit log's log line), or
    # why none was: see _audit.
    event: dict[str, Any] | None = None
    unrecorded: str | None = None


class Downgraded(NamedTuple):
    undone: tuple[str, ...]  # newest first
    current: tuple[str, ...]
    event: dict[str, Any] | None = None
    unrecorded: str | None = None


def _reason(before: tuple[str, ...], result: Upgraded | Downgraded) -> str:
    """What a migration did, as its event says it: from which revision to which, and the
    migrations applied (oldest first) or undone (newest first)."""
    start = ", ".join(before) or "an empty database"
    end = ", ".join(result.current) or "no schema"
    if isinstance(result, Downgraded):
        return f"from {start} back to {end} (undid {', '.join(result.undone)})"
    return f"from {start} to {end} (applied {', '.join(result.applied)})"


def _event_row(actor: str, reason: str) -> dict[str, Any]:
    from keyservice.audit.service import without_secrets
    from keyservice.database import new_ordered_id, utcnow

    return {
        "id": new_ordered_id(),
        "at": utcnow(),
        "type": "schema.migrated",
        "outcome": "success",
        "actor": without_secrets(actor),
        "principal_id": None,
        "key_id": None,
        "ip": None,
        "reason": reason,
    }


def _write_event(connection: Connection, row: dict[str, Any]) -> bool:
    """Insert the event on `connection` if the schema has an audit table; whether it did.

    With the columns every revision's audit_event has (0001 made them), through Core: the
    model may be newer than the schema a downgrade left.
    """
    from keyservice.audit.models import AuditEvent

    if not inspect(connection).has_table(AuditEvent.__tablename__):
        return False
    connection.execute(insert(AuditEvent).values(**row))
    return True


NO_AUDIT_TABLE = "the schema it is at has no audit table"


def _audit(
    result: Upgraded | Downgraded, before: tuple[str, ...], actor: str | None
) -> dict[str, Any] | None:
    """The event a migration that changed the schema records, or None."""
    if actor is None or not (result.undone if isinstance(result, Downgraded) else result.applied):
        return None
    return _event_row(actor, _reason(before, result))


def upgrade(
    database_url: str,
    revision: str = "head",
    *,
    waiting: Callable[[str], None] | None = None,
    actor: str | None = None,
) -> Upgraded:
    """Bring the database to `revision` (blocking; not for use inside a running loop).

    With `actor`, a migration that changed the schema is a `schema.migrated` event naming
    it: on PostgreSQL in the migrations' own transaction, on SQLite (whose DDL does not wait
    for a commit) right after them. A schema with no audit table afterwards records none
    (`unrecorded` says why); no revision this version knows is without one.

    Raises SchemaMismatch, changing nothing, if the database was migrated past what this
    version knows. On PostgreSQL one upgrade runs at a time: another one waits for it,
    then finds the database migrated and applies nothing. A table another transaction
    keeps locked is waited for in short tries (see TABLE_LOCK_TIMEOUT_SECONDS), each
    wait told to `waiting`; MigrationBlocked after TABLE_LOCK_PATIENCE_SECONDS.
    """
    result = _migrate(database_url, revision, waiting, back=False, actor=actor)
    assert isinstance(result, Upgraded)
    return result


def migrate_to(
    database_url: str,
    revision: str,
    *,
    waiting: Callable[[str], None] | None = None,
    actor: str | None = None,
) -> Upgraded | Downgraded:
    """Bring the database to `revision`, one of this version's: up as upgrade() does, or
    back down to it, undoing the later migrations (for a rollback to an older release,
    whose newest revision it is). SchemaMismatch, changing nothing, for a revision this
    version does not know. `actor` as upgrade() has it."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    known = [step.revision for step in script.walk_revisions()]
    if revision not in known:
        raise SchemaMismatch(
            f"{revision} is not a schema revision this version of keyservice knows "
            f"({known[-1]} to {known[0]})"
        )
    return _migrate(database_url, revision, waiting, back=True, actor=actor)


def _migrate(
    database_url: str,
    revision: str,
    waiting: Callable[[str], None] | None,
    *,
    back: bool,
    actor: str | None,
) -> Upgraded | Downgraded:
    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    if make_url(database_url).get_backend_name() == "postgresql":
        return asyncio.run(
            _upgrade_patiently(
                database_url, config, script, revision, waiting, back=back, actor=actor
            )
        )
    before = current_revisions(database_url)
    unknown = _unknown(script, before)
    if unknown:
        raise _newer(unknown, script.get_current_head(), database_url)
    down = back and _behind(script, before, revision)
    (command.downgrade if down else command.upgrade)(config, revision)
    result = _result(script, before, current_revisions(database_url), down=down)
    row = _audit(result, before, actor)
    if row is None:
        return result
    try:
        written = asyncio.run(_record(database_url, row))
    except SQLAlchemyError as exc:
        # The migrations are committed: the command says they are not in the log.
        return result._replace(unrecorded=f"the event could not be written ({type(exc).__name__})")
    return result._replace(event=row) if written else result._replace(unrecorded=NO_AUDIT_TABLE)


async def _record(database_url: str, row: dict[str, Any]) -> bool:
    """_write_event in a transaction of its own (SQLite, after the migrations)."""
    from keyservice.database import ADMIN_CONNECT_TIMEOUT_SECONDS, Database

    database = Database(database_url, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        async with database.engine.begin() as connection:
            return await connection.run_sync(_write_event, row)
    finally:
        await database.dispose()


def _behind(script: ScriptDirectory, current: tuple[str, ...], revision: str) -> bool:
    """Whether `revision` is older than the database's: reached by undoing migrations."""
    if not current or revision in current:
        return False
    return revision in {step.revision for step in script.iterate_revisions(current, "base")}


async def _upgrade_patiently(
    database_url: str,
    config: Config,
    script: ScriptDirectory,
    revision: str,
    waiting: Callable[[str], None] | None,
    *,
    back: bool,
    actor: str | None,
) -> Upgraded | Downgraded:
    """_upgrade_locked, tried again while other transactions keep a table locked."""
    from keyservice.database import ADMIN_CONNECT_TIMEOUT_SECONDS, Database

    database = Database(database_url, bounded=False, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        started = time.monotonic()
        said = -TABLE_LOCK_SAY_EVERY_SECONDS
        while True:
            try:
                return await _upgrade_locked(
                    database, config, script, revision, back=back, actor=actor
                )
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                    raise
            waited = time.monotonic() - started
            holders = await _long_transactions(database)
            if waited >= TABLE_LOCK_PATIENCE_SECONDS:
                raise MigrationBlocked(
                    f"the migration waited {waited:.0f} s for a table that other "
                    f"transactions keep locked ({holders}), and gave up: nothing was "
                    "changed. End those transactions (pg_terminate_backend(pid)) and run "
                    "`keyservice migrate` again"
                ) from None
            if waiting is not None and waited - said >= TABLE_LOCK_SAY_EVERY_SECONDS:
                said = waited
                waiting(
                    f"the migration is waiting for a table that other transactions keep "
                    f"locked ({holders}); it tries again every "
                    f"{TABLE_LOCK_TIMEOUT_SECONDS + TABLE_LOCK_PAUSE_SECONDS:g} s (each try "
                    f"holds up queries on that table for up to {TABLE_LOCK_TIMEOUT_SECONDS:g} "
                    f"s) and gives up after {TABLE_LOCK_PATIENCE_SECONDS:g} s, changing nothing"
                )
            await asyncio.sleep(TABLE_LOCK_PAUSE_SECONDS)
    finally:
        await database.dispose()


async def _long_transactions(database: Database) -> str:
    """The other transactions on this database open longer than a try waits, oldest first:
    who most likely holds the lock (its pid, program, state and age; never its query)."""
    query = text(
        "SELECT pid, application_name, state, "
        "EXTRACT(EPOCH FROM clock_timestamp() - xact_start)::int AS age "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
        "AND xact_start < clock_timestamp() - make_interval(secs => :seconds) "
        "ORDER BY xact_start LIMIT 3"
    )
    async with database.engine.connect() as connection:
        rows = (await connection.execute(query, {"seconds": TABLE_LOCK_TIMEOUT_SECONDS})).all()
    if not rows:
        return "none open now"
    return ", ".join(
        f"pid {pid}: {name or 'no application name'}, {state}, open for {age} s"
        for pid, name, state, age in rows
    )


async def _upgrade_locked(
    database: Database,
    config: Config,
    script: ScriptDirectory,
    revision: str,
    *,
    back: bool,
    actor: str | None,
) -> Upgraded | Downgraded:
    """upgrade() on PostgreSQL: the look, the migrations, the look after and the event, in
    one transaction that holds MIGRATION_LOCK (it ends with the transaction, failed or not).
    A statement waiting over TABLE_LOCK_TIMEOUT_SECONDS for a lock fails it all."""

    def migrate(connection: Connection, down: bool) -> None:
        config.attributes["connection"] = connection  # env.py runs on it
        (command.downgrade if down else command.upgrade)(config, revision)

    async with database.engine.connect() as connection:
        await _lock(connection)
        timeout_ms = int(TABLE_LOCK_TIMEOUT_SECONDS * 1000)
        await connection.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
        with _quiet():
            before = await _connection_heads(connection)
        unknown = _unknown(script, before)
        if unknown:
            raise _newer(unknown, script.get_current_head(), database.engine.url.render_as_string())
        down = back and _behind(script, before, revision)
        await connection.run_sync(migrate, down)
        with _quiet():
            after = await _connection_heads(connection)
        result = _result(script, before, after, down=down)
        row = _audit(result, before, actor)
        if row is not None:
            if await connection.run_sync(_write_event, row):
                result = result._replace(event=row)
            else:
                result = result._replace(unrecorded=NO_AUDIT_TABLE)
        await connection.commit()
    return result


async def _lock(connection: AsyncConnection) -> None:
    # Tried again and again rather than waited for in one statement, which the
    # connections' command timeout would cut short of a long migration.
    try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
    while not await connection.scalar(try_lock, {"key": MIGRATION_LOCK}):
        await asyncio.sleep(LOCK_WAIT_SECONDS)


async def _connection_heads(connection: AsyncConnection) -> tuple[str, ...]:
    return tuple(
        await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
    )


def _result(
    script: ScriptDirectory, before: tuple[str, ...], after: tuple[str, ...], *, down: bool
) -> Upgraded | Downgraded:
    if down:  # from the newest undone down to `after`, which stays
        return Downgraded(tuple(s.revision for s in script.iterate_revisions(before, after)), after)
    if after == before:
        return Upgraded((), after)
    # Read back rather than foretold: what the database went through, from one stamp to
    # the other (iterate_revisions walks down from the newest, the older end excluded).
    steps = script.iterate_revisions(after, before or "base")
    return Upgraded(tuple(step.revision for step in reversed(list(steps))), after)


def _check(script: ScriptDirectory, current: tuple[str, ...], database_url: str) -> None:
    head = script.get_current_head()
    unknown = _unknown(script, current)
    if unknown:
        raise _newer(unknown, head, database_url)
    if current != (head,):
        where = f"at schema revision {', '.join(current)}" if current else "empty"
        raise SchemaMismatch(
            f"the database {database_name(database_url)} is {where}, and this version of "
            f"keyservice needs {head}: "
            "run `keyservice migrate` first (or serve without --no-migrate)"
        )


def check_current(database_url: str) -> None:
    """Raise SchemaMismatch unless the database is at this version's newest revision."""
    _check(
        ScriptDirectory.from_config(alembic_config(database_url)),
        current_revisions(database_url),
        database_url,
    )


def check_file(database_url: str) -> None:
    """Raise NoDatabaseFile, a SchemaMismatch, for a SQLite file that does not exist.

    Without opening it: SQLite would create the file (an empty database) just to look.
    """
    url = make_url(database_url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if url.query.get("uri") or path.startswith("file:"):
        return  # a URI names its file its own way; opening it reads what is there
    try:
        Path(path).stat()
    except FileNotFoundError:
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        raise NoDatabaseFile(
            f"there is no database at {path}, and this version of keyservice needs {head}: "
            "run `keyservice migrate` first (or serve without --no-migrate)",
            path,
        ) from None
    except OSError:
        return  # a file where a folder should be, no permission: using it says which


async def check_engine(engine: AsyncEngine) -> None:
    """check_current on a database already open (the admin commands' own engine)."""
    database_url = engine.url.render_as_string()  # password masked: named, not used
    script = ScriptDirectory.from_config(alembic_config(database_url))
    with _quiet():
        current = await _heads(engine)
    _check(script, current, database_url)
