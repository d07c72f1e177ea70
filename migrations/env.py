"""Alembic environment: async engines for both aiosqlite and asyncpg."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from keyservice.database import Database
from keyservice.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from keyservice.config import get_settings

        url = get_settings().effective_database_url
    return str(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Turn SQLite's foreign-key enforcement on or off for this connection.

    Off while migrating, as Alembic advises for batch mode: SQLite alters a table by copying
    it to a new one and dropping the old, and with enforcement on, dropping `principal`
    deleted every API key through api_key's ON DELETE CASCADE (undoing 0005, say). The
    PRAGMA is ignored inside a transaction, so it is set on the driver's connection before
    the migrations' transaction begins.
    """
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


async def _run_online() -> None:
    database = Database(_url(), bounded=False)  # a migration may outlast a request
    try:
        async with database.engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                await connection.run_sync(_sqlite_foreign_keys, on=False)
            await connection.run_sync(_configure)
            await connection.commit()
            if sqlite:
                await connection.run_sync(_sqlite_foreign_keys, on=True)
    finally:
        await database.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_online())
