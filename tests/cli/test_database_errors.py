"""Every command that uses the database says in one line why it cannot, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from keyservice.cli import main
from tests.conftest import POSTGRES_URL, SKIP_POSTGRES, TEST_SECRET, refused_port
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


def test_a_server_that_never_answers_is_one_line(silent_port, tmp_path):
    line = run(["prune"], _postgres(port=silent_port, database="x"), tmp_path)
    assert "TimeoutError" in line


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
        "Error: the database is empty, and this version of keyservice needs 0009: "
        "run `keyservice migrate` first (or serve without --no-migrate)"
    )
    assert not database.exists()
