"""Every command that uses the database says in one line why it cannot, never a traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from keyservice import database, migrations
from keyservice.cli import main
from tests.conftest import (
    POSTGRES_URL,
    SKIP_POSTGRES,
    TEST_SECRET,
    create_postgres_database,
    drop_postgres_database,
    refused_port,
)
from tests.reliability.support import free_port

PASSWORD = "s3cret-Pw"
COMMANDS = [
    ["migrate"],
    ["serve"],
    ["serve", "--no-migrate"],
    ["signing-keys", "rotate"],
    ["prune"],
    ["keys", "list"],
    ["audit", "tail"],
    ["users", "create", "jo", "--password-stdin"],
]


def _postgres(port: int | None = None, **parts: str) -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg", password=PASSWORD)
    if port is not None:
        url = url.set(host="127.0.0.1", port=port)
    return url.set(**parts).render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    import uvicorn

    def refuse(*_args, **_kwargs):
        raise AssertionError("serve got past the database")

    monkeypatch.setattr(uvicorn, "run", refuse)


def run(command: list[str], database_url: str, tmp_path) -> str:
    if command[0] == "serve":  # never 8000: another server on the machine may hold it
        command = [*command, "--port", str(free_port(21000))]
    env = {
        "KEYSERVICE_DATABASE_URL": database_url,
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(main, command, env=env, input="long enough password\n")
    # An unhandled exception is a traceback on a terminal; CliRunner keeps it here instead.
    assert isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot use the database "), lines
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_refused_connection_is_one_line(command, tmp_path):
    line = run(command, _postgres(port=refused_port(), database="x"), tmp_path)
    assert "ConnectionRefusedError" in line and "postgres:***@127.0.0.1:" in line
    assert "is it running and reachable" in line


def test_a_server_that_never_answers_is_one_line(silent_port, tmp_path, monkeypatch):
    # The admin commands' connect timeout, shortened: the line is what matters here.
    monkeypatch.setattr(database, "ADMIN_CONNECT_TIMEOUT_SECONDS", 1.0)
    started = time.monotonic()
    line = run(["prune"], _postgres(port=silent_port, database="x"), tmp_path)
    assert "TimeoutError" in line
    assert 1.0 <= time.monotonic() - started < 5


@contextlib.contextmanager
def slow_to_connect(delay: float) -> Iterator[int]:
    """A loopback port that relays to the test PostgreSQL, each connection `delay` late."""
    upstream = make_url(POSTGRES_URL)
    listener = socket.create_server(("127.0.0.1", 0))
    sockets: list[socket.socket] = [listener]

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def relay(client: socket.socket) -> None:
        time.sleep(delay)  # the TCP connection is up; the server's first byte is late
        server = socket.create_connection((upstream.host or "127.0.0.1", upstream.port or 5432))
        sockets.append(server)
        threading.Thread(target=pump, args=(server, client), daemon=True).start()
        pump(client, server)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                sockets.append(client)
                threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for each in sockets:
            each.close()


@pytest.mark.skipif(SKIP_POSTGRES, reason="needs the test PostgreSQL server")
def test_an_admin_command_waits_for_a_database_slow_to_connect(tmp_path):
    # It gave up after the requests' 3 s ("TimeoutError; is it running and reachable?")
    # though the database was up, only slow to take a connection (a machine under load,
    # a long TLS link, a cold serverless instance): a person waits for a command.
    assert database.ADMIN_CONNECT_TIMEOUT_SECONDS > database.CONNECT_TIMEOUT_SECONDS + 2
    url = create_postgres_database("ks_cli")
    try:
        migrations.upgrade(url)
        with slow_to_connect(database.CONNECT_TIMEOUT_SECONDS + 1) as port:
            env = {
                "KEYSERVICE_DATABASE_URL": make_url(url).set(port=port).render_as_string(False),
                "KEYSERVICE_SECRET_KEY": TEST_SECRET,
                "KEYSERVICE_DATA_DIR": str(tmp_path),
            }
            result = CliRunner().invoke(main, ["keys", "list", "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"items": []}
    finally:
        drop_postgres_database(url)


@pytest.mark.skipif(SKIP_POSTGRES, reason="needs the test PostgreSQL server")
@pytest.mark.parametrize(
    "command", [["migrate"], ["serve", "--no-migrate"], ["prune"]], ids=" ".join
)
def test_a_missing_database_or_an_unknown_role_is_one_line(command, tmp_path):
    line = run(command, _postgres(database="ks_no_such_database"), tmp_path)
    assert 'database "ks_no_such_database" does not exist' in line
    line = run(command, _postgres(username="ks_no_such_role"), tmp_path)
    assert 'role "ks_no_such_role" does not exist' in line


def test_a_database_never_migrated_says_to_migrate(tmp_path):
    database = tmp_path / "empty.db"
    env = {
        "KEYSERVICE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(main, ["prune"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: there is no database at {database}, and this version of keyservice needs "
        "0012: run `keyservice migrate` first (or serve without --no-migrate)"
    )
    assert not database.exists()
    # A file that is there but empty is named too.
    database.touch()
    result = CliRunner().invoke(main, ["prune"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: the database {database} is empty, and this version of keyservice needs "
        "0012: run `keyservice migrate` first (or serve without --no-migrate)"
    )


@pytest.mark.skipif(SKIP_POSTGRES, reason="needs the test PostgreSQL server")
def test_an_empty_postgresql_database_is_named_without_its_password(tmp_path):
    url = create_postgres_database("ks_cli")
    try:
        with_password = make_url(url).set(password=PASSWORD)
        env = {
            "KEYSERVICE_DATABASE_URL": with_password.render_as_string(hide_password=False),
            "KEYSERVICE_SECRET_KEY": TEST_SECRET,
            "KEYSERVICE_DATA_DIR": str(tmp_path),
        }
        result = CliRunner().invoke(main, ["keys", "list"], env=env)
        assert result.exit_code == 1, result.output
        assert result.output.strip() == (
            f"Error: the database {with_password.render_as_string(hide_password=True)} is "
            "empty, and this version of keyservice needs 0012: run `keyservice migrate` "
            "first (or serve without --no-migrate)"
        )
        assert PASSWORD not in result.output
    finally:
        drop_postgres_database(url)
