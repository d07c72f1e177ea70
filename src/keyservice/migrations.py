"""Apply Alembic migrations from code (`keyservice migrate`, `serve` at start-up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_PACKAGE_DIR = Path(__file__).resolve().parent
# Any constant: the advisory lock an upgrade holds on PostgreSQL, so that replicas started
# together on an empty database (each `serve` migrates) or two `keyservice migrate` run
# one after the other instead of both creating the same tables.
MIGRATION_LOCK = 0x6B73_6D69_6772_61  # "ksmigra"
LOCK_WAIT_SECONDS = 0.2


class SchemaMismatch(Exception):
    """The database's schema is not the one this version of keyservice works with."""


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
    from keyservice.database import Database

    async def read() -> tuple[str, ...]:
        database = Database(database_url)
        try:
            return await _heads(database.engine)
        finally:
            await database.dispose()

    with _quiet():
        return asyncio.run(read())


def _unknown(script: ScriptDirectory, revisions: tuple[str, ...]) -> list[str]:
    known = {revision.revision for revision in script.walk_revisions()}
    return [revision for revision in revisions if revision not in known]


def _newer(unknown: list[str], head: str | None) -> SchemaMismatch:
    # Alembic alone says "Can't locate revision" with a traceback, and a server run against
    # a schema it does not know fails later, on whatever changed.
    return SchemaMismatch(
        f"the database is at schema revision {', '.join(unknown)}, which this version of "
        f"keyservice does not know (its newest is {head}): a newer release migrated it. "
        "Run that release, or restore the database from before its migration"
    )


class Upgraded(NamedTuple):
    applied: tuple[str, ...]  # oldest first; none if the database was there already
    current: tuple[str, ...]  # the revisions the database is stamped with now


def upgrade(database_url: str, revision: str = "head") -> Upgraded:
    """Bring the database to `revision` (blocking; not for use inside a running loop).

    Raises SchemaMismatch, changing nothing, if the database was migrated past what this
    version knows. On PostgreSQL one upgrade runs at a time: another one waits for it,
    then finds the database migrated and applies nothing.
    """
    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    if make_url(database_url).get_backend_name() == "postgresql":
        return asyncio.run(_upgrade_locked(database_url, config, script, revision))
    before = current_revisions(database_url)
    unknown = _unknown(script, before)
    if unknown:
        raise _newer(unknown, script.get_current_head())
    command.upgrade(config, revision)
    return _upgraded(script, before, current_revisions(database_url))


async def _upgrade_locked(
    database_url: str, config: Config, script: ScriptDirectory, revision: str
) -> Upgraded:
    """upgrade() on PostgreSQL: the look, the migrations and the look after, in one
    transaction that holds MIGRATION_LOCK (it ends with the transaction, failed or not)."""
    from keyservice.database import Database

    def migrate(connection: Connection) -> None:
        config.attributes["connection"] = connection  # env.py runs on it
        command.upgrade(config, revision)

    database = Database(database_url, bounded=False)
    try:
        async with database.engine.connect() as connection:
            await _lock(connection)
            with _quiet():
                before = await _connection_heads(connection)
            unknown = _unknown(script, before)
            if unknown:
                raise _newer(unknown, script.get_current_head())
            await connection.run_sync(migrate)
            with _quiet():
                after = await _connection_heads(connection)
            await connection.commit()
    finally:
        await database.dispose()
    return _upgraded(script, before, after)


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


def _upgraded(script: ScriptDirectory, before: tuple[str, ...], after: tuple[str, ...]) -> Upgraded:
    if after == before:
        return Upgraded((), after)
    # Read back rather than foretold: what the database went through, from one stamp to
    # the other (iterate_revisions walks down from the newest, the older end excluded).
    steps = script.iterate_revisions(after, before or "base")
    return Upgraded(tuple(step.revision for step in reversed(list(steps))), after)


def _check(script: ScriptDirectory, current: tuple[str, ...]) -> None:
    head = script.get_current_head()
    unknown = _unknown(script, current)
    if unknown:
        raise _newer(unknown, head)
    if current != (head,):
        where = f"at schema revision {', '.join(current)}" if current else "empty"
        raise SchemaMismatch(
            f"the database is {where}, and this version of keyservice needs {head}: "
            "run `keyservice migrate` first (or serve without --no-migrate)"
        )


def check_current(database_url: str) -> None:
    """Raise SchemaMismatch unless the database is at this version's newest revision."""
    _check(
        ScriptDirectory.from_config(alembic_config(database_url)), current_revisions(database_url)
    )


def check_file(database_url: str) -> None:
    """Raise SchemaMismatch, as check_current would, for a SQLite file that does not exist.

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
        _check(ScriptDirectory.from_config(alembic_config(database_url)), ())
    except OSError:
        return  # a file where a folder should be, no permission: using it says which


async def check_engine(engine: AsyncEngine) -> None:
    """check_current on a database already open (the admin commands' own engine)."""
    script = ScriptDirectory.from_config(alembic_config(engine.url.render_as_string()))
    with _quiet():
        current = await _heads(engine)
    _check(script, current)
