"""Where the token path reads keys and refresh tokens and writes what it issues.

Two stores share one interface:

- `SqlTokenStore` (SQLite, the embedded default): SQLAlchemy sessions, one BEGIN IMMEDIATE
  write transaction per issue.
- `PgTokenStore` (PostgreSQL): asyncpg directly, with statements prepared once per
  connection, and a group commit: the writes of every exchange and refresh that arrive
  while the previous batch is in the database go out together as one statement in one
  transaction. Each request still waits for the commit that holds its refresh token and
  audit event, so an acknowledged token is never lost; the database does one commit (one
  WAL flush) per batch instead of one per token. KEYSERVICE_TOKEN_COMMIT=async trades
  that for throughput on batches without a refresh-token claim (see PgTokenStore).

The profile behind this (bench/README.md): SQLAlchemy's session and execution machinery
cost more CPU per exchange than everything else the exchange does.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, cast

import orjson
from sqlalchemy import JSON, bindparam, or_, select, type_coerce, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import NullType

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth.models import RefreshToken, RevokedFamily
from keyservice.database import Database
from keyservice.principals.models import Principal

log = logging.getLogger("keyservice.tokens")


@dataclass(frozen=True)
class IssueWrite:
    """What one issue persists: the refresh token, its audit event, maybe `last_used_*`."""

    now: datetime
    rt_id: str
    rt_hash: str = field(repr=False)
    family_id: str
    parent_id: str | None  # also the token claimed (a refresh), None for a first issue
    principal_id: str
    key_id: str | None
    scope: str
    rt_expires: datetime
    au_id: str
    event: str
    actor: str | None
    ip: str | None
    last_used: bool


@dataclass(frozen=True)
class KeyRecord:
    """A key and its owner as read, before the secret is checked.

    Objects are built only once the secret matched: hydrating them for a known client id
    but not for an unknown one made a wrong secret measurably slower than an unknown client
    id (bench/TIMING.md). Reads stay untyped until then: `values` is the driver's row
    (`k_*` and `p_*` labels) and `build(model, prefix, values)` makes an object of it.
    """

    values: Any = field(repr=False)  # the key's secret hash and the owner's password hash
    build: Callable[[Any, str, Any], Any]

    @property
    def key_id(self) -> str:
        return str(self.values["k_id"])

    @property
    def principal_id(self) -> str:
        return str(self.values["k_principal_id"])

    @property
    def secret_hash(self) -> str | None:
        return cast(str | None, self.values["k_secret_hash"])

    @property
    def hashed_under(self) -> str | None:
        return cast(str | None, self.values["k_hashed_under"])

    def objects(self) -> tuple[ApiKey, Principal]:
        """Build (detached) objects for the checks that follow a matching secret."""
        key: ApiKey = self.build(ApiKey, "k_", self.values)
        owner: Principal = self.build(Principal, "p_", self.values)
        return key, owner


@dataclass(frozen=True)
class RefreshRecord:
    """A refresh token with everything its checks need, read in one round trip."""

    token: RefreshToken
    owner: Principal
    key: ApiKey | None
    family_revoked: bool


class TokenStore(ABC):
    @abstractmethod
    async def fetch_key(self, client_id: str) -> KeyRecord | None: ...

    @abstractmethod
    async def load_refresh(self, token_hash: str) -> RefreshRecord | None: ...

    @abstractmethod
    async def write_issue(self, write: IssueWrite) -> bool:
        """Persist an issue atomically; False if its parent token was claimed by another."""


def make_token_store(database: Database, *, async_commit: bool = False) -> TokenStore:
    """The store for `database`; `async_commit` (PostgreSQL only) see PgTokenStore."""
    if database.is_sqlite:
        return SqlTokenStore(database)
    return PgTokenStore(database, async_commit=async_commit)


# ---------------------------------------------------------------------------------------
# SQLAlchemy (SQLite)
# ---------------------------------------------------------------------------------------

# Untyped: the driver's raw values, so that no per-column processing (time zones, JSON)
# runs before the secret is checked; the types' processors run in objects().
_KEY_COLUMNS = [
    type_coerce(column, NullType()).label(f"k_{column.key}") for column in ApiKey.__table__.columns
]
_OWNER_COLUMNS = [
    type_coerce(column, NullType()).label(f"p_{column.key}")
    for column in Principal.__table__.columns
]
_LOAD_KEY = (
    select(*_KEY_COLUMNS, *_OWNER_COLUMNS)
    .select_from(ApiKey)
    .join(Principal, Principal.id == ApiKey.principal_id)
    .where(ApiKey.client_id == bindparam("client_id"))
)
_LOAD_REFRESH = (
    select(RefreshToken, Principal, ApiKey, RevokedFamily.family_id)
    .join(Principal, Principal.id == RefreshToken.principal_id)
    .outerjoin(ApiKey, ApiKey.id == RefreshToken.key_id)
    .outerjoin(RevokedFamily, RevokedFamily.family_id == RefreshToken.family_id)
    .where(RefreshToken.token_hash == bindparam("token_hash"))
)


@lru_cache(maxsize=8)
def _processors(model: Any, dialect: Dialect) -> list[tuple[str, Any]]:
    return [
        (column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
        for column in model.__table__.columns
    ]


def _loaded(model: Any, values: dict[str, Any]) -> Any:
    """A detached object holding `values`, made as the ORM makes loaded rows.

    Without the constructor: it would run an attribute event per column, which cost the
    exchange more than reading the row. The objects are only read, never added to a session.
    """
    instance = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


def _build(model: Any, prefix: str, mapping: Any, dialect: Dialect) -> Any:
    values = {}
    for name, processor in _processors(model, dialect):
        value = mapping[prefix + name]
        values[name] = processor(value) if processor is not None and value is not None else value
    return _loaded(model, values)


class SqlTokenStore(TokenStore):
    def __init__(self, database: Database) -> None:
        self.database = database

    async def fetch_key(self, client_id: str) -> KeyRecord | None:
        async with self.database.token_sessionmaker() as session:
            row = (await session.execute(_LOAD_KEY, {"client_id": client_id})).first()
            dialect = session.get_bind().dialect
        if row is None:
            return None
        return KeyRecord(row._mapping, partial(_build, dialect=dialect))

    async def load_refresh(self, token_hash: str) -> RefreshRecord | None:
        async with self.database.token_sessionmaker() as session:
            row = (await session.execute(_LOAD_REFRESH, {"token_hash": token_hash})).first()
            if row is None:
                return None
            token, owner, key, revoked = row
            session.expunge_all()
        return RefreshRecord(token, owner, key, revoked is not None)

    async def write_issue(self, write: IssueWrite) -> bool:
        async with self.database.token_sessionmaker() as session:
            if write.parent_id is not None:
                result = await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.id == write.parent_id, RefreshToken.used_at.is_(None))
                    .values(used_at=write.now)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    # Lost to a concurrent claim. The key was used all the same, and the
                    # winner may have found its last-used write not due (coalesced per key):
                    # it is written here, as the PostgreSQL batch writes it for every row.
                    await _write_last_used(session, write)
                    await session.commit()
                    return False
            session.add(
                RefreshToken(
                    id=write.rt_id,
                    token_hash=write.rt_hash,
                    family_id=write.family_id,
                    parent_id=write.parent_id,
                    principal_id=write.principal_id,
                    key_id=write.key_id,
                    scope=write.scope,
                    created_at=write.now,
                    expires_at=write.rt_expires,
                )
            )
            audit.record(
                session,
                type=write.event,
                actor=write.actor,
                principal_id=write.principal_id,
                key_id=write.key_id,
                ip=write.ip,
            )
            await _write_last_used(session, write)
            await session.commit()
        return True


async def _write_last_used(session: AsyncSession, write: IssueWrite) -> None:
    """The coalesced `last_used_*` write, if due; never moving them back in time."""
    if write.last_used and write.key_id is not None:
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == write.key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < write.now),
            )
            .values(last_used_at=write.now, last_used_ip=write.ip)
        )


# ---------------------------------------------------------------------------------------
# asyncpg (PostgreSQL)
# ---------------------------------------------------------------------------------------


def _select_list(model: Any, alias: str, prefix: str) -> str:
    return ", ".join(f"{alias}.{c.name} AS {prefix}{c.key}" for c in model.__table__.columns)


@lru_cache(maxsize=4)
def _json_columns(model: Any) -> frozenset[str]:
    return frozenset(c.key for c in model.__table__.columns if isinstance(c.type, JSON))


@lru_cache(maxsize=4)
def _column_keys(model: Any, prefix: str) -> tuple[tuple[str, str, bool], ...]:
    json_columns = _json_columns(model)
    return tuple((c.key, prefix + c.key, c.key in json_columns) for c in model.__table__.columns)


def _build_raw(model: Any, prefix: str, record: Any) -> Any:
    """An object from an asyncpg record: JSON arrives as text, timestamps as aware UTC."""
    values = {}
    for key, label, is_json in _column_keys(model, prefix):
        value = record[label]
        values[key] = orjson.loads(value) if is_json and value is not None else value
    return _loaded(model, values)


_PG_LOAD_KEYS = (
    f"SELECT {_select_list(ApiKey, 'k', 'k_')}, {_select_list(Principal, 'p', 'p_')} "
    "FROM api_key k JOIN principal p ON p.id = k.principal_id "
    "WHERE k.client_id = ANY($1::varchar[])"
)
_PG_LOAD_REFRESHES = (
    f"SELECT {_select_list(RefreshToken, 'r', 'r_')}, {_select_list(Principal, 'p', 'p_')}, "
    f"{_select_list(ApiKey, 'k', 'k_')}, rf.family_id IS NOT NULL AS family_revoked "
    "FROM refresh_token r JOIN principal p ON p.id = r.principal_id "
    "LEFT JOIN api_key k ON k.id = r.key_id "
    "LEFT JOIN revoked_family rf ON rf.family_id = r.family_id "
    "WHERE r.token_hash = ANY($1::varchar[])"
)

# One statement for a whole batch. `claimed` takes the parent tokens still unused (a
# refresh); `ok` is every row that needs no claim or won its claim; the refresh tokens and
# audit events of exactly those rows are inserted, and the coalesced last-used write skips
# a key row another transaction holds (it writes nearly the same value), so that batches
# never wait on each other there, and a row holding a later use already (a batch of
# another worker, or one that waited less, committed first), so that it never goes back.
# A batch never claims one parent twice (see _take).
# The claims ($16, the parent tokens) are a plain `id = ANY(array)` that the planner answers
# from the primary key even in the generic plan of a prepared statement: joined to the
# unnest() of the rows it chose sequential scans of refresh_token, which grew with the table.
# $17/$19 are the keys due a last-used write and their callers' addresses, $18 the time.
_PG_WRITE_BATCH_TEMPLATE = """
WITH input AS (
    SELECT * FROM unnest(
        $1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
        $6::varchar[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::varchar[],
        $11::varchar[], $12::varchar[], $13::varchar[], $14::bool[], $15::int[]
    ) AS t(rt_id, rt_hash, family_id, parent_id, principal_id, key_id, scope, now,
           rt_expires, au_id, event, actor, ip, last_used, ord)
),
{claim}
rt AS (
    INSERT INTO refresh_token
        (id, token_hash, family_id, parent_id, principal_id, key_id, scope, created_at,
         expires_at)
    SELECT rt_id, rt_hash, family_id, parent_id, principal_id, key_id, scope, now, rt_expires
    FROM ok
),
au AS (
    INSERT INTO audit_event (id, at, type, actor, principal_id, key_id, ip, outcome)
    SELECT au_id, now, event, actor, principal_id, key_id, ip, 'success'
    FROM ok ORDER BY ord
){last_used}
SELECT rt_id FROM ok{commit}
"""
_PG_CLAIM = """claimed AS (
    UPDATE refresh_token SET used_at = $18
    WHERE id = ANY($16::varchar[]) AND used_at IS NULL
    RETURNING id
),
ok AS (
    SELECT * FROM input
    WHERE parent_id IS NULL OR parent_id IN (SELECT id FROM claimed)
),"""
# Without claims (a batch of exchanges only) there is no UPDATE of refresh_token at all: a
# generic plan made while the table was small would scan it whole for an empty array.
_PG_NO_CLAIM = """ok AS (SELECT * FROM input WHERE $16::varchar[] IS NOT NULL),"""
_PG_LAST_USED = """,
lu AS (
    UPDATE api_key SET last_used_at = $18, last_used_ip = u.ip
    FROM unnest($17::varchar[], $19::varchar[]) AS u(id, ip)
    WHERE api_key.id = u.id
        AND (api_key.last_used_at IS NULL OR api_key.last_used_at < $18)
        AND api_key.id IN (
            SELECT id FROM api_key WHERE id = ANY($17::varchar[]) FOR NO KEY UPDATE SKIP LOCKED
        )
)"""
# Most batches have no last-used write due (they are coalesced per key): their statement has
# no `lu` at all, since PostgreSQL sets up every node of a plan on each execution, run or not
# (ExecInitNode was 13 % of the server's CPU under the exchange load). The parameters stay
# the same in every variant; one that is not used is still referenced, to have a type.
_PG_NO_LAST_USED = """,
lu AS (
    SELECT WHERE $17::varchar[] IS NOT NULL AND $18::timestamptz IS NOT NULL
        AND $19::varchar[] IS NOT NULL
)"""
# KEYSERVICE_TOKEN_COMMIT=async: this transaction commits without waiting for its WAL
# flush (set_config(..., true) lasts until the commit, which is the end of this statement,
# and PostgreSQL reads synchronous_commit at commit time). A crash of the database server
# can then lose the last moments of such commits (up to 3 x wal_writer_delay), never part
# of one, and a later flushed commit carries every earlier one. Only batches without a
# claim use it: a lost claim would make a spent refresh token usable once more.
_PG_ASYNC_COMMIT = " WHERE set_config('synchronous_commit', 'off', true) = 'off'"
_PG_WRITE_BATCH = {
    (claim, last_used, async_commit): _PG_WRITE_BATCH_TEMPLATE.replace(
        "{claim}", _PG_CLAIM if claim else _PG_NO_CLAIM
    )
    .replace("{last_used}", _PG_LAST_USED if last_used else _PG_NO_LAST_USED)
    .replace("{commit}", _PG_ASYNC_COMMIT if async_commit else "")
    for claim in (True, False)
    for last_used in (True, False)
    for async_commit in ((False,) if claim else (True, False))
}

# Errors after which the same batch may simply run again (the transaction rolled back).
_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
MAX_BATCH = 256


async def _fetch(sql: str, values: list[str], connection: Any) -> list[Any]:
    return cast(list[Any], await connection.fetch(sql, values))


class _Drainers:
    """At most `limit` tasks running `drain` at once, each referenced until it is done.

    A batcher wakes one on every submission; a drain takes whatever is pending and loops
    until nothing is, so submissions that arrive while `limit` drains run ride with them.
    """

    def __init__(self, drain: Callable[[], Coroutine[Any, Any, None]], limit: int) -> None:
        self.drain = drain
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        if len(self._tasks) < self.limit:
            self._tasks.add(asyncio.get_running_loop().create_task(self._run()))

    async def _run(self) -> None:
        try:
            await self.drain()
        finally:
            # In the same step as the drain's last look at its queue, with no await in
            # between: a done-callback would leave the task counted for one more turn of the
            # loop, and a submission woken in that turn would start no drain and wait for
            # the next request to come along (seen as a 20 s hang in the restart test).
            self._tasks.discard(asyncio.current_task())


class _ReadBatcher:
    """Coalesce concurrent single-row reads into one `= ANY($1)` query per round.

    Whatever arrives while a query is in the database goes out in the next one; each
    caller gets the row for its own value (or None). One pool checkout and one round trip
    serve the whole batch.
    """

    def __init__(self, database: Database, sql: str, column: str, max_inflight: int) -> None:
        self.database = database
        self.sql = sql
        self.column = column
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}
        self._drainers = _Drainers(self._drain, max_inflight)

    async def get(self, value: str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(value, []).append(future)
        self._drainers.wake()
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                values = list(batch)
                rows = await self.database.raw_run(partial(_fetch, self.sql, values))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            found = {row[self.column]: row for row in rows}
            for value, futures in batch.items():
                row = found.get(value)
                for future in futures:
                    if not future.done():
                        future.set_result(row)


class PgTokenStore(TokenStore):
    """asyncpg with prepared statements and a group commit of issues (see the module doc).

    With `async_commit` (KEYSERVICE_TOKEN_COMMIT=async) a batch that claims no refresh
    token (exchanges, sign-ins) is answered without waiting for its WAL flush: a crash of
    the database server may lose its refresh tokens and audit events from the last fraction
    of a second. A batch holding a claim always waits.
    """

    def __init__(
        self, database: Database, *, max_inflight: int = 2, async_commit: bool = False
    ) -> None:
        self.database = database
        self.async_commit = async_commit
        self._pending: list[tuple[IssueWrite, asyncio.Future[bool]]] = []
        self._flushers = _Drainers(self._flush, max_inflight)
        self._keys = _ReadBatcher(database, _PG_LOAD_KEYS, "k_client_id", max_inflight)
        self._refreshes = _ReadBatcher(database, _PG_LOAD_REFRESHES, "r_token_hash", max_inflight)

    async def fetch_key(self, client_id: str) -> KeyRecord | None:
        record = await self._keys.get(client_id)
        return KeyRecord(record, _build_raw) if record is not None else None

    async def load_refresh(self, token_hash: str) -> RefreshRecord | None:
        record = await self._refreshes.get(token_hash)
        if record is None:
            return None
        key = _build_raw(ApiKey, "k_", record) if record["k_id"] is not None else None
        return RefreshRecord(
            token=_build_raw(RefreshToken, "r_", record),
            owner=_build_raw(Principal, "p_", record),
            key=key,
            family_revoked=bool(record["family_revoked"]),
        )

    async def write_issue(self, write: IssueWrite) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._flushers.wake()
        return await future

    def _take(self) -> list[tuple[IssueWrite, asyncio.Future[bool]]]:
        """The next batch: at most MAX_BATCH, never two claims of one parent token."""
        batch: list[tuple[IssueWrite, asyncio.Future[bool]]] = []
        rest: list[tuple[IssueWrite, asyncio.Future[bool]]] = []
        claims: set[str] = set()
        for item in self._pending:
            parent = item[0].parent_id
            if len(batch) >= MAX_BATCH or (parent is not None and parent in claims):
                rest.append(item)  # the next batch; a second claim of a parent loses there
                continue
            if parent is not None:
                claims.add(parent)
            batch.append(item)
        self._pending = rest
        return batch

    async def _flush(self) -> None:
        while self._pending:
            await self._write_batch(self._take())

    async def _write_batch(self, batch: list[tuple[IssueWrite, asyncio.Future[bool]]]) -> None:
        try:
            written = await self._execute(batch)
        except Exception as exc:
            if len(batch) > 1 and _is_data_error(exc):
                # One row broke a constraint (a refresh-token hash already stored, say):
                # give every other request its own answer rather than this row's error.
                for item in batch:
                    await self._write_batch([item])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for write, future in batch:
            if not future.done():
                future.set_result(write.rt_id in written)
        if self.database.log_audit_events:
            for write, _ in batch:
                if write.rt_id in written:
                    audit.log_event(
                        id=write.au_id,
                        at=write.now,
                        type=write.event,
                        outcome="success",
                        actor=write.actor,
                        principal_id=write.principal_id,
                        key_id=write.key_id,
                        ip=write.ip,
                        reason=None,
                    )

    async def _execute(self, batch: Sequence[tuple[IssueWrite, asyncio.Future[bool]]]) -> set[str]:
        columns: list[list[Any]] = [[] for _ in range(15)]
        for ord_, (w, _) in enumerate(batch):
            row = (
                w.rt_id, w.rt_hash, w.family_id, w.parent_id, w.principal_id, w.key_id,
                w.scope, w.now, w.rt_expires, w.au_id, w.event, w.actor, w.ip,
                w.last_used, ord_,
            )  # fmt: skip
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        claims = [w.parent_id for w, _ in batch if w.parent_id is not None]
        last_ip = {w.key_id: w.ip for w, _ in batch if w.last_used and w.key_id is not None}
        due = sorted(last_ip)
        at = max(w.now for w, _ in batch)
        ips = [last_ip[k] for k in due]
        sql = _PG_WRITE_BATCH[bool(claims), bool(due), self.async_commit and not claims]
        for attempt in range(3):
            try:
                # One statement is one transaction: no BEGIN/COMMIT round trips around it.
                rows = await self.database.raw_run(
                    lambda c: c.fetch(sql, *columns, claims, due, at, ips)
                )
                return {row[0] for row in rows}
            except Exception as exc:
                if attempt == 2 or getattr(exc, "sqlstate", None) not in _RETRYABLE_SQLSTATES:
                    raise
                log.info("token batch of %d retried after %s", len(batch), type(exc).__name__)
        raise AssertionError("unreachable")


def _is_data_error(exc: BaseException) -> bool:
    """A constraint or data error (class 22 or 23): the batch's rows, not the database."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in {"22", "23"}
