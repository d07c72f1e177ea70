"""Async engine and sessions, the declarative Base, and column types shared by all tables."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, MetaData, event, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

log = logging.getLogger("keyservice.database")
T = TypeVar("T")


def _without_trace(record: logging.LogRecord) -> bool:
    """asyncpg logs each failed attempt to restore its pool's floor (the token path's pool,
    while the database is down) with the exception's traceback, once a second or more:
    keep its line, name the exception instead, as the service's own warnings do."""
    if record.exc_info and record.exc_info[1] is not None:
        record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
        record.args = None
        record.exc_info = record.exc_text = None
    return True


logging.getLogger("asyncpg.pool").addFilter(_without_trace)

# Deterministic constraint names, so Alembic migrations read the same on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """Return a new random UUID as a string (ids are strings in the API)."""
    return str(uuid.uuid4())


def new_ordered_id() -> str:
    """Return a new UUIDv7 (RFC 9562 §5.7) as a string: Unix milliseconds, then 74 random bits.

    For the rows the token path inserts all day (refresh tokens, their families, audit
    events): ids in time order land on the right-most pages of their indexes instead of
    random ones, so inserts keep touching the same few pages however big the tables grow.
    The id reveals its creation time to the millisecond, which these rows store anyway.
    """
    value = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
    value |= int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10 (RFC 9562)
    return _uuid_text(value)


def ordered_id_time(value: str) -> float | None:
    """When `new_ordered_id()` made `value` (Unix seconds, to the millisecond); None for a
    string that is not a UUIDv7."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return (parsed.int >> 80) / 1000


def _uuid_text(value: int) -> str:
    """`str(uuid.UUID(int=value))` without building the UUID (1.0 instead of 2.8 us; three
    ids an exchange)."""
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC so that text comparisons stay ordered.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


CONNECT_TIMEOUT_SECONDS = 3
# The admin commands' (keyservice keys list, prune, migrate...) and the migrations' (also
# run by serve as it starts): a person or an orchestrator waits for them, and a database
# slow to take a connection (a TLS handshake over a long link, a cold serverless instance,
# a machine under load) is not down. Requests keep the short one, to answer 503 fast.
ADMIN_CONNECT_TIMEOUT_SECONDS = 10
COMMAND_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 5
# Connections a process keeps per pool (KEYSERVICE_DATABASE_POOL_SIZE): SQLAlchemy's pool
# may add as many again for a burst, the token path has a pool of its own, and the
# revocation view one LISTEN connection: at most 3 x this + 1 per process.
DEFAULT_POOL_SIZE = 10
# A token-path connection kept (see Database.raw_connection) but unused for this long goes
# back to the pool, whose own idle limit (300 s) then closes it: a burst's connections do
# not stay open for ever. The app's lifespan checks every RAW_IDLE_CHECK_SECONDS.
RAW_IDLE_SECONDS = 60
RAW_IDLE_CHECK_SECONDS = 30
# A kept connection goes back to the pool after this many uses, and the pool (whose
# max_queries is the same figure, asyncpg's default) closes it and opens a new one: the
# recycling a connection acquired per statement would get at its release.
RAW_MAX_USES = 50_000
# The token path's statements are a few fixed point lookups and one batched write, prepared
# once per connection. Their plans must not depend on how big the tables were when a
# connection first ran them: planned while refresh_token was nearly empty, the refresh
# lookup scanned the whole table for the life of the connection (PostgreSQL CPU grew with
# the table; the refresh chains halved). So: never a sequential scan where an index
# answers, and generic plans only (with enable_seqscan=off, plan_cache_mode=auto re-planned
# both lookups on every execution, their generic plans looking dearer than custom ones; a
# plan of the refresh lookup costs ~0.7 ms of server CPU). Only this pool is affected.
_TOKEN_PATH_PLANNING = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}
# Query parameters of a SQLAlchemy asyncpg URL that are the dialect's, not the server's.
_SQLALCHEMY_ONLY = {"prepared_statement_cache_size", "prepared_statement_name_func"}


# A session's `info` key: its audit events are logged once committed (audit/service.py).
LOG_AUDIT_EVENTS = "keyservice.audit.log"


class Database:
    """One engine and session factory per app (tests run several side by side)."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        bounded: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        log_audit_events: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        """`bounded=False` lifts COMMAND_TIMEOUT_SECONDS, for migrations: building an index
        on a big table, or waiting for a lock a long transaction holds, takes longer than
        a request may, and a migration cut short can never complete. `connect_timeout`
        bounds each new PostgreSQL connection (ADMIN_CONNECT_TIMEOUT_SECONDS for
        the admin commands and migrations)."""
        self.url = url
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        # KEYSERVICE_AUDIT_LOG: every committed audit event is a log line too (audit/service).
        self.log_audit_events = log_audit_events
        # No pre-ping: it would cost a round trip per checkout on the token path. A
        # connection that died with its server fails once; SQLAlchemy then invalidates the
        # whole pool (every older connection is replaced at checkout) and the request
        # answers 503, so the pool recovers by itself when the database is back.
        # hide_parameters: a statement's parameters stay out of SQLAlchemy's errors and its
        # log. They carry password hashes, key-secret HMACs and whatever a client typed as
        # a username, and the trace of an unexpected database error goes to the log.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": False, "hide_parameters": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # Fail fast when PostgreSQL is down or restarting: a bounded connect, a bounded
            # statement and a bounded wait for a pooled connection, so that requests answer
            # 503 within seconds instead of hanging (dead connections are replaced once the
            # server is back: see above).
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_recycle=1800,
                pool_timeout=POOL_TIMEOUT_SECONDS,
                connect_args={
                    "timeout": connect_timeout,
                    "command_timeout": COMMAND_TIMEOUT_SECONDS if bounded else None,
                },
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._raw_pool: Any = None
        self._raw_pool_lock = asyncio.Lock()
        # Raw connections kept acquired between statements, with when each was last put
        # back (time.monotonic()) and how many times it was used: the newest last, so the
        # times never decrease along the list (see raw_connection and release_idle).
        self._raw_held: list[tuple[Any, float, int]] = []
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        info = {LOG_AUDIT_EVENTS: True} if log_audit_events else None
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, info=info)
        # The token path writes with single statements: on PostgreSQL they run in
        # autocommit, which saves the BEGIN and COMMIT round trips; SQLite keeps its
        # serialising write transactions.
        self.token_sessionmaker = (
            self.sessionmaker
            if self.is_sqlite
            else async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                info=info,
            )
        )

    async def raw_pool(self) -> Any:
        """PostgreSQL only: an asyncpg pool of its own for the token path (see auth/store).

        Made on first use, in the running event loop; closed by dispose().
        """
        if self._raw_pool is None:
            async with self._raw_pool_lock:
                if self._raw_pool is None:
                    import asyncpg  # type: ignore[import-untyped]

                    # The URL is SQLAlchemy's: `ssl=` is a connect argument there (asyncpg
                    # would send an unknown query parameter to the server as a setting).
                    url = make_url(self.url)
                    query = {k: v for k, v in url.query.items() if k not in _SQLALCHEMY_ONLY}
                    ssl = query.pop("ssl", None)
                    dsn = url.set(drivername="postgresql", query=query)
                    self._raw_pool = await asyncpg.create_pool(
                        dsn.render_as_string(hide_password=False),
                        ssl=ssl,
                        min_size=1,
                        max_size=self.pool_size,
                        timeout=self.connect_timeout,
                        command_timeout=COMMAND_TIMEOUT_SECONDS,
                        max_inactive_connection_lifetime=300,
                        max_queries=RAW_MAX_USES,
                        reset=_keep_session_state,
                        server_settings=_TOKEN_PATH_PLANNING,
                    )
        return self._raw_pool

    @contextlib.asynccontextmanager
    async def raw_connection(self) -> AsyncIterator[Any]:
        """A raw asyncpg connection; one that failed other than by an SQL error is dropped.

        Connections stay acquired from the pool between uses, in a LIFO list of their own:
        `pool.acquire()` and its release cost ~27 us of CPU per statement (bench/README.md,
        2026-12-06), a few percent of an exchange at low concurrency. The pool still bounds
        how many there are (an empty list acquires one, waiting at most
        POOL_TIMEOUT_SECONDS), and dispose() hands them back before closing it. One the
        server closed while it sat in the list is released to the pool and the next taken;
        ones left unused for RAW_IDLE_SECONDS go back to the pool (release_idle), and one
        used RAW_MAX_USES times goes back to be closed and replaced (asyncpg's max_queries,
        which a connection never released would escape).

        No reset query runs between uses (a round trip per request), so a connection left
        mid-operation by a lost server or a cancellation must not be used again as it is:
        it is terminated here, released, and a fresh one is acquired when needed.
        """
        pool = await self.raw_pool()
        connection = None
        uses = 0
        while self._raw_held:
            candidate, _kept_at, used = self._raw_held.pop()
            if _open(candidate):
                connection, uses = candidate, used
                break
            await pool.release(candidate)  # the pool has it back already: a no-op
        if connection is None:
            # Bounded like SQLAlchemy's pool (pool_timeout): a request waits at most this long.
            connection = await pool.acquire(timeout=POOL_TIMEOUT_SECONDS)
        try:
            yield connection
        except BaseException as exc:
            if not _answered_by_server(exc) and _open(connection):
                connection.terminate()  # closed now: released below, never kept
            raise
        finally:
            uses += 1
            if self._raw_pool is pool and _open(connection) and uses < RAW_MAX_USES:
                self._raw_held.append((connection, time.monotonic(), uses))
            else:  # disposed meanwhile (its close() waits for this), lost, or used up
                await pool.release(connection)

    async def release_idle(self, older_than: float | None = None) -> int:
        """Hand kept connections unused for `older_than` seconds (default RAW_IDLE_SECONDS)
        back to the pool, which closes them once idle past its own limit; return how many.

        A LIFO list reuses its newest entries, so after a burst the oldest ones would
        otherwise stay acquired, and open, for the life of the process.
        """
        pool = self._raw_pool
        if pool is None:
            return 0
        horizon = time.monotonic() - (RAW_IDLE_SECONDS if older_than is None else older_than)
        count = 0
        while count < len(self._raw_held) and self._raw_held[count][1] <= horizon:
            count += 1
        # Taken off the list before the first await: raw_connection may pop meanwhile.
        idle, self._raw_held[:count] = self._raw_held[:count], []
        for connection, _kept_at, _uses in idle:
            await pool.release(connection)
        return count

    async def raw_run(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run `operation(connection)` on a pooled asyncpg connection (see raw_connection).

        A connection the server dropped while it sat in the pool (a restart, backends
        terminated by an admin) fails its next use with asyncpg's InternalClientError,
        raised before anything is sent (asyncpg#1069, SQLAlchemy#13241): it is dropped and
        the operation runs once more on a fresh connection.
        """
        for attempt in range(2):
            try:
                async with self.raw_connection() as connection:
                    return await operation(connection)
            except Exception as exc:
                if attempt or type(exc).__name__ != "InternalClientError":
                    raise
                log.info("a pooled connection was dropped by the server; retried on a new one")
        raise AssertionError("unreachable")

    async def session(self) -> AsyncGenerator[AsyncSession, None]:
        """Yield a session that is rolled back and closed at the end (services commit)."""
        async with self.sessionmaker() as session:
            try:
                yield session
            finally:
                await session.rollback()

    async def dispose(self) -> None:
        pool, self._raw_pool = self._raw_pool, None
        held, self._raw_held = self._raw_held, []
        if pool is not None:
            for connection, _kept_at, _uses in held:
                await pool.release(connection)
            await pool.close()
        await self.engine.dispose()


def _open(connection: Any) -> bool:
    """Whether a pooled asyncpg connection can still be used.

    One the server closed is handed back to its pool by asyncpg itself, and the proxy we
    hold then refuses every call, is_closed() included (InterfaceError).
    """
    try:
        return not connection.is_closed()
    except Exception:
        return False


def _answered_by_server(exc: BaseException) -> bool:
    """An SQL error the server sent on a healthy connection (not a lost or closing one)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] not in {"08", "57", "53"}


async def _keep_session_state(_connection: Any) -> None:
    """asyncpg's default reset costs a round trip per release (RESET ALL, UNLISTEN *, ...).

    The token path never changes session state (no SET, LISTEN, advisory locks or cursors)
    and asyncpg still rolls back a transaction left open, so there is nothing to reset.
    """


def _configure_sqlite(engine: AsyncEngine) -> None:
    # pysqlite's implicit deferred BEGIN lets two writers deadlock into "database is locked";
    # BEGIN IMMEDIATE takes the write lock up front so concurrent writers simply queue
    # (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL").
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: each commit reaches the disk before it is answered, as PostgreSQL's default
        # does. NORMAL (WAL's usual choice) can lose the last commits to a power cut or a
        # host crash: a revocation, a deleted key, a spent refresh token's claim.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
