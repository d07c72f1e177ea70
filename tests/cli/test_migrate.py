"""`keyservice migrate` and the schema check of `serve`, on databases of every age (both backends).

An upgrade keeps the data of the revision it starts from; a schema older than the code is
refused by `serve --no-migrate`, and one newer than the code (a release rolled back after
its migration) by every command that would use it, in one line.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from keyservice import migrations
from keyservice.audit.models import AuditEvent
from keyservice.auth.models import RefreshToken
from keyservice.cli import main
from keyservice.context import AppContext
from keyservice.database import Database, UTCDateTime, new_id, new_ordered_id, utcnow
from keyservice.main import create_app
from keyservice.security.tokens import new_refresh_token
from tests.conftest import (
    BACKENDS,
    TEST_SECRET,
    _asyncpg_dsn,
    client_for,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
)
from tests.factories import PASSWORD, _password_hash, audit_events, login
from tests.reliability.support import free_port


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    import uvicorn

    def refuse(*_args, **_kwargs):
        raise AssertionError("serve got past the schema check")

    monkeypatch.setattr(uvicorn, "run", refuse)


def keyservice(*args: str, database_url: str, tmp_path: Path, expect: int) -> Result:
    if args[0] == "serve":  # never 8000: another server on the machine may hold it
        args = (*args, "--port", str(free_port(21000)))
    env = {
        "KEYSERVICE_DATABASE_URL": database_url,
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(main, list(args), env=env)
    # An unhandled exception would be a traceback on an operator's terminal.
    assert isinstance(result.exception, SystemExit | None), (result.output, result.exception)
    assert result.exit_code == expect, result.output
    return result


def one_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


def stamp(database_url: str, revision: str) -> None:
    async def write() -> None:
        database = Database(database_url)
        try:
            async with database.engine.begin() as connection:
                await connection.execute(
                    sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision}
                )
        finally:
            await database.dispose()

    asyncio.run(write())


def test_a_schema_newer_than_the_code_is_refused_in_one_line(empty_database, tmp_path):
    migrations.upgrade(empty_database)
    stamp(empty_database, "0099")  # what a later release's migration leaves
    for command in (["migrate"], ["serve"], ["serve", "--no-migrate"]):
        result = keyservice(*command, database_url=empty_database, tmp_path=tmp_path, expect=1)
        line = one_line(result)
        assert "schema revision 0099" in line and "does not know (its newest is 0012)" in line
        assert line.endswith(
            "take the database back with its `keyservice migrate --to 0012` (README: Upgrading)"
        )
    assert migrations.current_revisions(empty_database) == ("0099",)  # nothing was changed


@pytest.mark.parametrize("revision", [None, "0003"], ids=["empty", "0003"])
def test_serve_no_migrate_refuses_a_schema_behind_the_code(empty_database, tmp_path, revision):
    if revision is not None:
        migrations.upgrade(empty_database, revision)
    result = keyservice(
        "serve", "--no-migrate", database_url=empty_database, tmp_path=tmp_path, expect=1
    )
    line = one_line(result)
    assert "keyservice migrate" in line, line
    if revision is not None:
        assert f"revision {revision}" in line, line
    elif empty_database.startswith("sqlite"):  # a file not made yet: said so, not made
        assert "there is no database at" in line, line
    else:
        assert "is empty" in line, line
    assert migrations.current_revisions(empty_database) == ((revision,) if revision else ())


ADMIN_COMMANDS = [
    ["keys", "list"],
    ["keys", "revoke", "kc_0123456789abcdef"],
    ["keys", "expiring"],
    ["keys", "import-legacy", "keys.jsonl"],
    ["devices", "create", "box"],
    ["devices", "list"],
    ["audit", "tail"],
    ["prune"],
    ["users", "create", "ann", "--password-stdin"],
    ["signing-keys", "rotate"],
]


@pytest.mark.parametrize("revision", [None, "0007", "0099"], ids=["empty", "0007", "newer"])
def test_admin_commands_refuse_a_schema_not_the_codes_as_serve_does(
    empty_database, tmp_path, revision
):
    # They said "no such table" (or wrote to a schema behind the code) from the first
    # query; now each refuses before doing anything, in the line `serve --no-migrate` gives.
    if revision == "0099":
        migrations.upgrade(empty_database)
        stamp(empty_database, revision)
    elif revision is not None:
        migrations.upgrade(empty_database, revision)
    (tmp_path / "keys.jsonl").write_text("")
    env = {
        "KEYSERVICE_DATABASE_URL": empty_database,
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
    }
    lines = {}
    for command in ADMIN_COMMANDS:
        command = [str(tmp_path / part) if part.endswith(".jsonl") else part for part in command]
        result = CliRunner().invoke(main, command, env=env, input="long enough password\n")
        assert isinstance(result.exception, SystemExit), (command, result.output, result.exception)
        assert result.exit_code == 1, (command, result.output)
        lines[" ".join(command[:2])] = one_line(result)
    if revision is None and empty_database.startswith("sqlite"):  # not opened: not made empty
        assert not Path(empty_database.split("///", 1)[1]).exists()
    serve = keyservice(
        "serve", "--no-migrate", database_url=empty_database, tmp_path=tmp_path, expect=1
    )
    assert set(lines.values()) == {one_line(serve)}, lines
    if revision is None:
        assert migrations.current_revisions(empty_database) == ()
        return
    assert migrations.current_revisions(empty_database) == (revision,)

    async def count() -> int:
        database = Database(empty_database)
        try:
            async with database.engine.connect() as connection:
                rows = 0
                for table in ("principal", "signing_key", "audit_event"):
                    query = sa.text(f"SELECT count(*) FROM {table}")  # noqa: S608
                    rows += (await connection.execute(query)).scalar_one()
                return rows
        finally:
            await database.dispose()

    assert asyncio.run(count()) == 0  # no user, device, signing key or event written


def _no_embedded_database(path: Path, folder: str) -> str:
    return (
        f"Error: no database found at {path} ({folder}): run this command where the server "
        "runs, or set KEYSERVICE_DATA_DIR or KEYSERVICE_DATABASE_URL to the server's. To "
        "start a new, empty database there instead, run `keyservice migrate` (or serve "
        "without --no-migrate)"
    )


def test_an_admin_command_on_no_embedded_database_makes_no_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYSERVICE_DATABASE_URL", raising=False)
    monkeypatch.delenv("KEYSERVICE_SECRET_KEY", raising=False)
    data = tmp_path / "fresh" / ".keyservice"
    result = CliRunner().invoke(main, ["keys", "list"], env={"KEYSERVICE_DATA_DIR": str(data)})
    assert result.exit_code == 1, result.output
    assert one_line(result) == _no_embedded_database(
        data / "keyservice.db", f"KEYSERVICE_DATA_DIR is {data}"
    )
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "command", [["users", "create", "alice", "--password-stdin"], ["keys", "list"], ["prune"]]
)
def test_an_admin_command_run_away_from_the_server_says_where_it_looked(
    tmp_path, monkeypatch, command
):
    """./.keyservice is relative to the current folder: elsewhere there is no database, and
    the advice was "the database is empty ... run `keyservice migrate` first", which made a
    second, empty database beside a new secret."""
    monkeypatch.delenv("KEYSERVICE_DATABASE_URL", raising=False)
    monkeypatch.delenv("KEYSERVICE_SECRET_KEY", raising=False)
    monkeypatch.delenv("KEYSERVICE_DATA_DIR", raising=False)
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, command, input="a long enough password\n")
    assert result.exit_code == 1, result.output
    assert one_line(result) == _no_embedded_database(
        elsewhere / ".keyservice" / "keyservice.db",
        "the default data folder, .keyservice, in the current folder",
    )
    assert list(elsewhere.iterdir()) == []  # no data folder, secret or database made
    relative = CliRunner().invoke(main, command, env={"KEYSERVICE_DATA_DIR": "data"})
    assert one_line(relative) == _no_embedded_database(
        elsewhere / "data" / "keyservice.db", "KEYSERVICE_DATA_DIR is data, in the current folder"
    )
    assert list(elsewhere.iterdir()) == []


def test_migrate_creates_the_embedded_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYSERVICE_DATABASE_URL", raising=False)
    monkeypatch.delenv("KEYSERVICE_SECRET_KEY", raising=False)
    data = tmp_path / "fresh" / ".keyservice"
    result = CliRunner().invoke(main, ["migrate"], env={"KEYSERVICE_DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("applied 12 migrations")
    assert oct(data.stat().st_mode)[-3:] == "700"
    assert migrations.current_revisions(f"sqlite+aiosqlite:///{data / 'keyservice.db'}") == (
        "0012",
    )


@pytest.mark.parametrize(
    ("start", "applied"),
    [
        (
            None,
            "applied 12 migrations "
            "(0001, 0002, 0003, 0004, 0005, 0006, 0007, 0008, 0009, 0010, 0011, 0012)",
        ),
        ("0005", "applied 7 migrations (0006, 0007, 0008, 0009, 0010, 0011, 0012)"),
        ("0011", "applied 1 migration (0012)"),
    ],
    ids=["empty", "0005", "0011"],
)
def test_migrate_says_which_migrations_it_applied(empty_database, tmp_path, start, applied):
    # It said "database is up to date" whether it had just applied all of them or none.
    if start is not None:
        migrations.upgrade(empty_database, start)
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert result.output.splitlines() == [f"{applied}; the database is up to date at 0012"]
    again = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert again.output.splitlines() == ["the database is already up to date at 0012"]
    assert migrations.current_revisions(empty_database) == ("0012",)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_migrations_run_at_once_on_postgresql_apply_once(tmp_path, backend):
    # Replicas started together on an empty database each migrate it (serve does): all but
    # one failed with a traceback (duplicate "alembic_version"), and their servers with it.
    url = create_postgres_database("ks_cli")
    env = {
        **os.environ,
        "KEYSERVICE_DATABASE_URL": url,
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
    }
    # Each starts migrating at the same moment, its imports done.
    start = time.time() + 5
    begin = (
        "import time; from keyservice import migrations; from keyservice.cli import main; "
        f"time.sleep(max(0, {start} - time.time())); main()"
    )
    command = [sys.executable, "-c", begin, "migrate"]
    try:
        runs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(3)
        ]
        outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
        assert migrations.current_revisions(url) == ("0012",)
    finally:
        drop_postgres_database(url)
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert sorted(output.strip() for output in outputs) == [
        "applied 12 migrations (0001, 0002, 0003, 0004, 0005, 0006, 0007, 0008, 0009, "
        "0010, 0011, 0012); "
        "the database is up to date at 0012",
        "the database is already up to date at 0012",
        "the database is already up to date at 0012",
    ]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_migration_may_take_longer_than_a_request(tmp_path, backend, monkeypatch):
    # Statements of the app are cut off after COMMAND_TIMEOUT_SECONDS; a migration's were
    # too, so one building an index on a big table, or waiting for a long transaction's
    # lock, failed every time it was tried. Here 0009's ALTER TABLE waits 1.5 s for a lock.
    import asyncpg

    from keyservice import database as database_module

    url = create_postgres_database("ks_cli")
    try:
        migrations.upgrade(url, "0008")
        monkeypatch.setattr(database_module, "COMMAND_TIMEOUT_SECONDS", 0.3)
        holding = threading.Event()

        async def hold() -> None:
            connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
            try:
                async with connection.transaction():
                    await connection.execute("LOCK TABLE api_key IN ACCESS SHARE MODE")
                    holding.set()
                    await asyncio.sleep(1.5)
            finally:
                await connection.close()

        holder = threading.Thread(target=asyncio.run, args=(hold(),))
        holder.start()
        try:
            assert holding.wait(10)
            assert migrations.upgrade(url)[:2] == (("0009", "0010", "0011", "0012"), ("0012",))
        finally:
            holder.join()
    finally:
        drop_postgres_database(url)


class HeldTable:
    """A transaction of another program that keeps `api_key` locked (ACCESS SHARE, what any
    read takes) for `seconds` or until the `with` block ends, whichever comes first, as a long
    report or an idle psql session does."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url, self.seconds = url, seconds
        self.pid: int | None = None
        self.holding, self.released = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._hold(),))

    async def _hold(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(_asyncpg_dsn(self.url), timeout=5)
        try:
            self.pid = connection.get_server_pid()
            async with connection.transaction():
                await connection.execute("LOCK TABLE api_key IN ACCESS SHARE MODE")
                self.holding.set()
                await asyncio.to_thread(self.released.wait, self.seconds)
        finally:
            await connection.close()

    def __enter__(self) -> HeldTable:
        self.thread.start()
        assert self.holding.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self.thread.join()


def read_api_keys(url: str) -> float:
    """Seconds a read of `api_key` by another connection (a running server's) takes."""

    async def read() -> float:
        import asyncpg

        connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
        try:
            started = time.monotonic()
            await connection.fetchval("SELECT count(*) FROM api_key")
            return time.monotonic() - started
        finally:
            await connection.close()

    return asyncio.run(read())


@pytest.fixture
def quick_lock_tries(monkeypatch):
    monkeypatch.setattr(migrations, "TABLE_LOCK_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(migrations, "TABLE_LOCK_PAUSE_SECONDS", 0.2)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_migration_waiting_for_a_lock_does_not_stall_the_running_servers(
    tmp_path, backend, quick_lock_tries
):
    # A migration's ALTER TABLE waiting for a long transaction's lock made every query of
    # the servers still running on that table queue behind it: a rolling upgrade stalled
    # the service as long as the transaction lasted (for ever, one left idle in psql), its
    # requests failing after 10 s. It now waits in short tries and says for whom.
    url = create_postgres_database("ks_cli")
    try:
        migrations.upgrade(url, "0008")  # 0009 alters api_key
        said: list[str] = []
        outcome: list[migrations.Upgraded] = []
        with HeldTable(url, 3.0) as held:
            upgrading = threading.Thread(
                target=lambda: outcome.append(migrations.upgrade(url, waiting=said.append))
            )
            upgrading.start()
            time.sleep(0.5)  # the migration is waiting now
            assert read_api_keys(url) < 1.5  # behind a 0.3 s try at most, not the 3 s
            upgrading.join(20)
        assert [done[:2] for done in outcome] == [(("0009", "0010", "0011", "0012"), ("0012",))]
        assert len(said) == 1, said  # once, not at every try
        assert f"pid {held.pid}: " in said[0] and "locked" in said[0], said
    finally:
        drop_postgres_database(url)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_migration_locked_out_too_long_gives_up_in_one_line_changing_nothing(
    tmp_path, backend, quick_lock_tries, monkeypatch
):
    url = create_postgres_database("ks_cli")
    try:
        migrations.upgrade(url, "0007")  # 0008 adds a table, 0009 alters api_key
        monkeypatch.setattr(migrations, "TABLE_LOCK_PATIENCE_SECONDS", 1.0)
        # Held until the command has given up, however long a loaded machine takes to start it.
        with HeldTable(url, 60.0) as held:
            result = keyservice("migrate", database_url=url, tmp_path=tmp_path, expect=1)
        lines = result.output.strip().splitlines()
        assert lines[0].startswith("the migration is waiting for a table"), lines
        assert lines[-1].startswith("Error: the migration waited") and "gave up" in lines[-1]
        assert f"pid {held.pid}: " in lines[-1] and "nothing was changed" in lines[-1]
        assert migrations.current_revisions(url) == ("0007",)  # 0008 rolled back with 0009
        # Once the transaction is over, the same command goes through.
        result = keyservice("migrate", database_url=url, tmp_path=tmp_path, expect=0)
        assert "applied 5 migrations (0008, 0009, 0010, 0011, 0012)" in result.output
    finally:
        drop_postgres_database(url)


def test_upgrade_returns_what_it_applied(empty_database):
    # (applied, current); no event asked for (no actor), none recorded.
    assert migrations.upgrade(empty_database, "0002") == (("0001", "0002"), ("0002",), None, None)
    assert migrations.upgrade(empty_database, "0002")[:2] == ((), ("0002",))
    assert migrations.upgrade(empty_database)[:2] == (
        ("0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012"),
        ("0012",),
    )


@pytest.mark.parametrize("folder", ["missing", "present"])
def test_serve_no_migrate_on_no_embedded_database_makes_nothing(tmp_path, monkeypatch, folder):
    # It made the data folder, the secret and an empty database file, then refused.
    monkeypatch.delenv("KEYSERVICE_DATABASE_URL", raising=False)
    monkeypatch.delenv("KEYSERVICE_SECRET_KEY", raising=False)
    data = tmp_path / "fresh" / ".keyservice"
    if folder == "present":
        data.mkdir(parents=True)
    port = str(free_port(21000))  # not 8000, which something else may hold
    result = CliRunner().invoke(
        main, ["serve", "--no-migrate", "--port", port], env={"KEYSERVICE_DATA_DIR": str(data)}
    )
    assert isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.exit_code == 1, result.output
    assert one_line(result) == _no_embedded_database(
        data / "keyservice.db", f"KEYSERVICE_DATA_DIR is {data}"
    )
    if folder == "missing":
        assert not (tmp_path / "fresh").exists()
    else:
        assert list(data.iterdir()) == []  # no keyservice.db, no secret_key


def _seed_at_0003(database_url: str, tmp_path: Path) -> tuple[str, str]:
    """A user, a refresh token and an audit event as a 0003 deployment stored them."""
    principal = sa.table(  # the 0003 columns: no permissions_changed_at yet
        "principal",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("password_hash", sa.String),
        sa.column("permissions", sa.JSON),
        sa.column("disabled", sa.Boolean),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    context = AppContext(make_settings(database_url, tmp_path))
    token = new_refresh_token()
    user_id = new_id()
    now = utcnow()

    async def write() -> None:
        try:
            async with context.database.engine.begin() as connection:
                await connection.execute(
                    principal.insert().values(
                        id=user_id, kind="user", name="veteran", description="",
                        password_hash=_password_hash(PASSWORD), permissions=["api_keys:manage"],
                        disabled=False, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
                await connection.execute(
                    sa.insert(RefreshToken).values(
                        id=new_id(), token_hash=context.hasher.hash(token),
                        family_id=new_ordered_id(),  # a UUIDv7, as every release made them
                        principal_id=user_id, scope="api_keys:manage", created_at=now,
                        expires_at=now + timedelta(hours=3),
                    )
                )  # fmt: skip
                await connection.execute(
                    sa.insert(AuditEvent).values(
                        id=new_id(), at=now, type="login", actor="user:veteran",
                        principal_id=user_id, outcome="success",
                    )
                )  # fmt: skip
        finally:
            await context.database.dispose()

    asyncio.run(write())
    return user_id, token


def test_an_upgrade_keeps_the_data_of_the_revision_it_starts_from(empty_database, tmp_path):
    migrations.upgrade(empty_database, "0003")
    user_id, token = _seed_at_0003(empty_database, tmp_path)

    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert migrations.current_revisions(empty_database) == ("0012",)

    async def use() -> None:
        context = AppContext(make_settings(empty_database, tmp_path))
        app = create_app(context=context)
        try:
            async with app.router.lifespan_context(app), client_for(app) as client:
                refreshed = await client.post(
                    "/token", data={"grant_type": "refresh_token", "refresh_token": token}
                )
                assert refreshed.status_code == 200, refreshed.text
                assert refreshed.json()["scope"] == "api_keys:manage"
                await login(client, "veteran")
                events = await audit_events(context)
                assert [e.type for e in events if e.principal_id == user_id][:1] == ["login"]
        finally:
            await context.database.dispose()

    asyncio.run(use())


def test_migrate_to_an_older_revision_undoes_the_later_ones_for_a_rollback(
    empty_database, tmp_path
):
    # An older release refuses a schema a newer one migrated (serve, with or without
    # --no-migrate): a rollback after `keyservice migrate` had no way back but a restore.
    migrations.upgrade(empty_database, "0003")
    user_id, _token = _seed_at_0003(empty_database, tmp_path)
    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)

    result = keyservice(
        "migrate", "--to", "0007", database_url=empty_database, tmp_path=tmp_path, expect=0
    )
    assert result.output.strip() == (
        "undid 5 migrations (0012, 0011, 0010, 0009, 0008); the database is at 0007"
    )
    assert migrations.current_revisions(empty_database) == ("0007",)
    assert "console_spent" not in _tables(empty_database)

    # The data stays; only what 0008-0012 added goes.
    assert user_id in _column(empty_database, "SELECT id FROM principal")
    result = keyservice(
        "migrate", "--to", "0007", database_url=empty_database, tmp_path=tmp_path, expect=0
    )
    assert result.output.strip() == "the database is already at 0007"
    for unknown in ("0099", "base", "000"):
        result = keyservice(
            "migrate", "--to", unknown, database_url=empty_database, tmp_path=tmp_path, expect=1
        )
        assert one_line(result) == (
            f"Error: {unknown} is not a schema revision this version of keyservice knows "
            "(0001 to 0012)"
        )
    assert migrations.current_revisions(empty_database) == ("0007",)
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert "applied 5 migrations (0008, 0009, 0010, 0011, 0012)" in result.output


def _migration_events(database_url: str) -> list[tuple[str, str, str]]:
    async def read() -> list[tuple[str, str, str]]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                rows = await connection.execute(
                    sa.select(AuditEvent.actor, AuditEvent.outcome, AuditEvent.reason)
                    .where(AuditEvent.type == "schema.migrated")
                    .order_by(AuditEvent.seq)
                )
                return [tuple(row) for row in rows]
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_each_change_of_the_schema_is_an_audit_event(empty_database, tmp_path, monkeypatch):
    # `keyservice migrate` (up, or back down with --to) and the start-up migration of
    # `serve` changed the schema and left nothing in the log saying who, when, from what.
    import uvicorn

    operator = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    # The first migration of all: the audit table is one of what it makes.
    keyservice("migrate", "--to", "0010", database_url=empty_database, tmp_path=tmp_path, expect=0)
    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)  # no change
    back = keyservice(
        "migrate", "--to", "0008", database_url=empty_database, tmp_path=tmp_path, expect=0
    )
    assert "audit" not in back.output  # recorded: no warning
    monkeypatch.setattr(uvicorn, "run", lambda *_args, **_kwargs: None)
    keyservice("serve", database_url=empty_database, tmp_path=tmp_path, expect=0)
    keyservice("serve", database_url=empty_database, tmp_path=tmp_path, expect=0)  # no change
    first = ", ".join(f"{n:04d}" for n in range(1, 11))
    assert _migration_events(empty_database) == [
        (operator, "success", f"from an empty database to 0010 (applied {first})"),
        (operator, "success", "from 0010 to 0012 (applied 0011, 0012)"),
        (operator, "success", "from 0012 back to 0008 (undid 0012, 0011, 0010, 0009)"),
        ("server", "success", "from 0008 to 0012 (applied 0009, 0010, 0011, 0012)"),
    ]


def _tables(database_url: str) -> set[str]:
    async def read() -> set[str]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                return set(
                    await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
                )
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_0008_console_spent_upgrades_downgrades_and_upgrades_again(empty_database):
    from alembic import command

    migrations.upgrade(empty_database)
    assert "console_spent" in _tables(empty_database)
    command.downgrade(migrations.alembic_config(empty_database), "0007")
    assert migrations.current_revisions(empty_database) == ("0007",)
    assert "console_spent" not in _tables(empty_database)
    migrations.upgrade(empty_database)
    assert migrations.current_revisions(empty_database) == ("0012",)
    assert "console_spent" in _tables(empty_database)


def _key_columns_and_indexes(database_url: str) -> tuple[set[str], set[str]]:
    async def read() -> tuple[set[str], set[str]]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:

                def inspect(sync: sa.Connection) -> tuple[set[str], set[str]]:
                    inspector = sa.inspect(sync)
                    columns = {c["name"] for c in inspector.get_columns("api_key")}
                    indexes = {i["name"] for i in inspector.get_indexes("api_key")}
                    return columns, indexes

                return await connection.run_sync(inspect)
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_0009_key_scopes_changed_at_upgrades_downgrades_and_upgrades_again(empty_database):
    from alembic import command

    migrations.upgrade(empty_database)
    columns, indexes = _key_columns_and_indexes(empty_database)
    assert "scopes_changed_at" in columns and "ix_api_key_scopes_changed_at" in indexes
    command.downgrade(migrations.alembic_config(empty_database), "0008")
    assert migrations.current_revisions(empty_database) == ("0008",)
    columns, indexes = _key_columns_and_indexes(empty_database)
    assert "scopes_changed_at" not in columns and "ix_api_key_scopes_changed_at" not in indexes
    assert "console_spent" in _tables(empty_database)  # 0008's table stays
    migrations.upgrade(empty_database)
    assert migrations.current_revisions(empty_database) == ("0012",)
    columns, indexes = _key_columns_and_indexes(empty_database)
    assert "scopes_changed_at" in columns and "ix_api_key_scopes_changed_at" in indexes


def _column(database_url: str, sql: str) -> list[Any]:
    """The one column `sql` reads, from a connection of its own."""

    async def read() -> list[Any]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                return list(await connection.scalars(sa.text(sql)))
        finally:
            await database.dispose()

    return asyncio.run(read())


def _count_keys(database_url: str) -> int:
    return len(_column(database_url, "SELECT id FROM api_key"))


def test_migrate_to_an_older_revision_keeps_every_api_key(empty_database, tmp_path):
    # Undoing 0005 and 0004 rebuilds the principal table on SQLite (batch mode: copy, drop,
    # rename). With foreign keys enforced, dropping the old table deleted every API key
    # through api_key's ON DELETE CASCADE: a rollback wiped all keys of every owner.
    from tests.factories import create_principal, service_key

    migrations.upgrade(empty_database)
    context = AppContext(make_settings(empty_database, tmp_path))

    async def seed() -> str:
        try:
            owner = await create_principal(context, "keeper")
            return (await service_key(context, owner, "kept")).client_id
        finally:
            await context.database.dispose()

    client_id = asyncio.run(seed())
    assert _count_keys(empty_database) == 1
    result = keyservice(
        "migrate", "--to", "0003", database_url=empty_database, tmp_path=tmp_path, expect=0
    )
    assert "the database is at 0003" in result.output
    assert _count_keys(empty_database) == 1
    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert migrations.current_revisions(empty_database) == ("0012",)

    assert _column(empty_database, "SELECT client_id FROM api_key") == [client_id]


def _write(database_url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    async def write() -> None:
        database = Database(database_url)
        try:
            async with database.engine.begin() as connection:
                for sql, values in statements:
                    # Times bound as the models bind them: a bare datetime would reach
                    # sqlite3's default adapter, deprecated since Python 3.12.
                    times = [
                        sa.bindparam(name, type_=UTCDateTime())
                        for name, value in values.items()
                        if isinstance(value, datetime)
                    ]
                    await connection.execute(sa.text(sql).bindparams(*times), values)
        finally:
            await database.dispose()

    asyncio.run(write())


def test_0010_names_the_case_twins_it_cannot_index_and_changes_nothing(empty_database, tmp_path):
    migrations.upgrade(empty_database, "0009")
    insert = (
        "INSERT INTO principal (id, kind, name, description, permissions, disabled, "
        "created_at, updated_at, deleted_at) VALUES (:id, :kind, :name, '', '[]', false, "
        ":now, :now, :deleted)"
    )
    now = utcnow()
    rows = [
        ("u1", "user", "Alice", None),
        ("u2", "user", "alice", None),
        ("u3", "user", "bob", None),
        ("d1", "device", "ALICE", None),  # another kind: no clash
        ("d2", "device", "box", None),
        ("d3", "device", "Box", now),  # deleted: its name is free
    ]
    _write(
        empty_database,
        *(
            (insert, {"id": id_, "kind": kind, "name": name, "now": now, "deleted": deleted})
            for id_, kind, name, deleted in rows
        ),
    )
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=1)
    line = one_line(result)
    assert line.startswith("Error: cannot migrate: names now count as one whatever their")
    assert "users 'Alice' (id u1), 'alice' (id u2). Rename all but one" in line, line
    assert all(f"(id {other})" not in line for other in ("u3", "d1", "d2", "d3")), line
    assert line.endswith("Migration 0010 changed nothing.")
    assert migrations.current_revisions(empty_database) == ("0009",)

    _write(empty_database, ("UPDATE principal SET name = 'alice-2' WHERE id = 'u2'", {}))
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert "applied 3 migrations (0010, 0011, 0012)" in result.output
    with pytest.raises(sa.exc.IntegrityError):
        _write(empty_database, (insert, {"id": "u4", "kind": "user", "name": "BOB",
                                         "now": now, "deleted": None}))  # fmt: skip


def test_0012_names_the_scope_look_alikes_with_their_holders_and_changes_nothing(
    empty_database, tmp_path
):
    # Scopes differing only in case, made before POST /admin/scopes refused them (409), or
    # by two creates at once: the unique index on lower(name) cannot be built over them.
    # Which to keep is the operator's call (keys, principals and tokens hold the names),
    # so the upgrade names them, with what holds each, and changes nothing.
    from keyservice.api_keys.models import ApiKey
    from keyservice.principals.models import Principal
    from tests.factories import add_scope, create_principal, service_key

    migrations.upgrade(empty_database, "0011")
    context = AppContext(make_settings(empty_database, tmp_path))

    async def seed() -> None:
        try:
            for name in ("Files:Read", "files:read", "FILES:READ", "Admin", "Billing",
                         "billing", "reports"):  # fmt: skip
                await add_scope(context, name)
            both = ["Files:Read", "files:read"]
            alice = await create_principal(context, "alice", permissions=both)
            await create_principal(context, "box", kind="device", permissions=["Admin"])
            gone = await create_principal(context, "gone", kind="device", permissions=["Billing"])
            await service_key(context, alice, "live", scopes=["Files:Read"])
            revoked = await service_key(context, alice, "revoked", scopes=["files:read"])
            await service_key(context, alice, "inherits")  # holds no name of its own
            async with context.database.engine.begin() as connection:
                await connection.execute(
                    sa.update(ApiKey).where(ApiKey.id == revoked.id).values(revoked_at=utcnow())
                )
                await connection.execute(
                    sa.update(Principal).where(Principal.id == gone.id).values(deleted_at=utcnow())
                )
        finally:
            await context.database.dispose()

    asyncio.run(seed())
    catalog = sorted(_column(empty_database, "SELECT name FROM scope"))

    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=1)
    line = one_line(result)
    assert line.startswith("Error: cannot migrate: scope names differing only in letter case")
    assert (
        "look-alikes: 'Admin' (held by 1 device), 'admin' (built in; held by nothing); "
        "'Billing' (held by nothing), 'billing' (held by nothing); "
        "'FILES:READ' (held by nothing), 'Files:Read' (held by 1 user, 1 API key not "
        "revoked), 'files:read' (held by 1 user). Keep one of each (the built-in one, if any)"
    ) in line, line
    assert "reports" not in line and "introspect" not in line
    assert line.endswith("then run `keyservice migrate` again. Migration 0012 changed nothing.")
    assert migrations.current_revisions(empty_database) == ("0011",)
    assert sorted(_column(empty_database, "SELECT name FROM scope")) == catalog

    # What the message says to do: take the others away from their holders, delete them.
    _write(
        empty_database,
        ("UPDATE principal SET permissions = :none WHERE name = 'box'", {"none": "[]"}),
        ("UPDATE principal SET permissions = :kept WHERE name = 'alice'",
         {"kept": '["Files:Read"]'}),
        ("DELETE FROM scope WHERE name IN ('Admin', 'Billing', 'FILES:READ', 'files:read')", {}),
    )  # fmt: skip
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert "applied 1 migration (0012)" in result.output
    insert = "INSERT INTO scope (name, description, builtin, created_at) VALUES (:n, '', false, :t)"
    with pytest.raises(sa.exc.IntegrityError):
        _write(empty_database, (insert, {"n": "BILLING", "t": utcnow()}))
    assert set(_column(empty_database, "SELECT name FROM scope")) == {
        "Files:Read", "admin", "api_keys:manage", "billing", "introspect", "reports",
    }  # fmt: skip

    # Down and up again: the index goes with 0012 and comes back with it.
    result = keyservice(
        "migrate", "--to", "0011", database_url=empty_database, tmp_path=tmp_path, expect=0
    )
    assert result.output.strip() == "undid 1 migration (0012); the database is at 0011"
    _write(empty_database, (insert, {"n": "BILLING", "t": utcnow()}))  # allowed again
    result = keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=1)
    assert "look-alikes: 'BILLING' (held by nothing), 'billing' (held by nothing). Keep" in (
        one_line(result)
    )
    _write(empty_database, ("DELETE FROM scope WHERE name = 'BILLING'", {}))
    keyservice("migrate", database_url=empty_database, tmp_path=tmp_path, expect=0)
    assert migrations.current_revisions(empty_database) == ("0012",)
    with pytest.raises(sa.exc.IntegrityError):
        _write(empty_database, (insert, {"n": "Reports", "t": utcnow()}))
