"""A throwaway PostgreSQL database for one benchmark run."""

from __future__ import annotations

import asyncio
import re
import secrets

import asyncpg

# The maintenance database the harness connects to in order to create and drop its own.
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"

_NAME = re.compile(r"^ks_bench_[a-z0-9]+$")


def new_name() -> str:
    return f"ks_bench_{secrets.token_hex(6)}"


async def _execute(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close(timeout=5)


def create(admin_dsn: str, name: str) -> None:
    """Create database `name` (a ks_bench_* name) in the server of `admin_dsn`."""
    if not _NAME.match(name):
        raise ValueError(f"refusing to create a database named {name!r}")
    asyncio.run(_execute(admin_dsn, f'CREATE DATABASE "{name}"'))


def drop(admin_dsn: str, name: str) -> None:
    """Drop database `name`, closing any sessions still connected to it."""
    if not _NAME.match(name):
        raise ValueError(f"refusing to drop a database named {name!r}")
    asyncio.run(_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _server(admin_dsn: str) -> tuple[str, str]:
    """`admin_dsn`'s server part (user@host:port) and its query string ("" or "?...")."""
    rest, mark, query = admin_dsn.split("://", 1)[1].partition("?")
    return rest.rsplit("/", 1)[0], mark + query


def dsn(admin_dsn: str, name: str) -> str:
    """A plain (asyncpg/libpq) DSN for database `name` on the server of `admin_dsn`.

    The query string is kept: `?host=/var/run/postgresql` reaches the server over its
    Unix socket.
    """
    base, query = _server(admin_dsn)
    return f"postgresql://{base}/{name}{query}"


def sqlalchemy_url(admin_dsn: str, name: str) -> str:
    """The service's KEYSERVICE_DATABASE_URL for database `name` on the same server."""
    base, query = _server(admin_dsn)
    return f"postgresql+asyncpg://{base}/{name}{query}"
