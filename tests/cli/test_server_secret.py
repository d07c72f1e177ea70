"""A command or server started with another deployment's secret stops in one line and writes
nothing: the signing keys in the database are encrypted under the secret they were made with.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from keyservice import migrations
from keyservice.auth.models import SigningKey
from keyservice.cli import main
from keyservice.database import Database
from tests.conftest import TEST_SECRET
from tests.reliability.support import free_port

OTHER_SECRET = "another-deployments-secret-" + "o" * 30


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    import uvicorn

    def refuse(*_args, **_kwargs):
        raise AssertionError("serve got past the secret check")

    monkeypatch.setattr(uvicorn, "run", refuse)


def keyservice(*args: str, expect: int, **env: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    assert isinstance(result.exception, SystemExit | None), (result.output, result.exception)
    assert result.exit_code == expect, result.output
    return result


def signing_keys(database_url: str) -> list[tuple[str, bool]]:
    async def read() -> list[tuple[str, bool]]:
        database = Database(database_url)
        try:
            async with database.sessionmaker() as session:
                rows = await session.execute(select(SigningKey.kid, SigningKey.retired_at))
                return sorted((kid, retired is not None) for kid, retired in rows)
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_another_secret_is_refused_and_writes_no_signing_key(empty_database, tmp_path):
    migrations.upgrade(empty_database)
    own = {
        "KEYSERVICE_DATABASE_URL": empty_database,
        "KEYSERVICE_DATA_DIR": str(tmp_path),
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
    }
    keyservice("signing-keys", "rotate", expect=0, **own)
    before = signing_keys(empty_database)
    assert [retired for _, retired in before] == [False]

    other = {**own, "KEYSERVICE_SECRET_KEY": OTHER_SECRET}
    serve = ["serve", "--port", str(free_port(21000))]
    for command in (["signing-keys", "rotate"], serve, ["keys", "list"]):
        lines = keyservice(*command, expect=1, **other).output.strip().splitlines()
        assert len(lines) == 1, lines
        assert "cannot be decrypted with this server secret" in lines[0]
        assert "set KEYSERVICE_SECRET_KEY to the deployment's" in lines[0]
        assert OTHER_SECRET not in lines[0] and TEST_SECRET not in lines[0]
    # A rotation under the wrong secret would have retired the deployment's key for one
    # that no replica can decrypt.
    assert signing_keys(empty_database) == before
    keyservice("signing-keys", "rotate", expect=0, **own)


def test_a_lost_embedded_secret_is_named(tmp_path, monkeypatch):
    for name in ("KEYSERVICE_DATABASE_URL", "KEYSERVICE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    data: Path = tmp_path / ".keyservice"
    env = {"KEYSERVICE_DATA_DIR": str(data)}
    keyservice("migrate", expect=0, **env)
    keyservice("signing-keys", "rotate", expect=0, **env)
    (data / "secret_key").unlink()  # a restore that forgot it

    lines = keyservice("signing-keys", "rotate", expect=1, **env).output.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"was {data / 'secret_key'} replaced or lost?" in lines[0]
