"""`keyservice backup FILE`: what it refuses, in one line, changing nothing (the copy of a
live server and its restore: tests/e2e/test_backup.py)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result

from keyservice.cli import main
from tests.conftest import POSTGRES_URL, TEST_SECRET


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"


def backup(database_url: str, tmp_path: Path, *args: str, **extra: str) -> Result:
    env = {
        "KEYSERVICE_DATABASE_URL": database_url,
        "KEYSERVICE_SECRET_KEY": TEST_SECRET,
        "KEYSERVICE_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }
    return CliRunner().invoke(main, ["backup", *args], env=env)


def migrated(database_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["migrate"],
        env={"KEYSERVICE_DATABASE_URL": database_url, "KEYSERVICE_SECRET_KEY": TEST_SECRET},
    )
    assert result.exit_code == 0, result.output


def test_backup_of_postgresql_is_refused_naming_pg_dump(tmp_path):
    target = tmp_path / "copy.db"
    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    result = backup(url, tmp_path, str(target))
    assert result.exit_code == 1
    assert "pg_dump" in result.output and "KEYSERVICE_SECRET_KEY" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not target.exists()


def test_backup_refuses_what_it_cannot_copy_in_one_line(tmp_path):
    empty_database = sqlite_url(tmp_path)
    target = tmp_path / "copy.db"
    # No database file: said, and none made (SQLite creates a file just by opening it).
    result = backup(empty_database, tmp_path, str(target))
    assert result.exit_code == 1 and "there is no database at" in result.output
    source = Path(empty_database.removeprefix("sqlite+aiosqlite:///"))
    assert not source.exists() and not target.exists()
    # A SQLite file of someone else's.
    sqlite3.connect(source).execute("CREATE TABLE notes (text TEXT)").connection.close()
    result = backup(empty_database, tmp_path, str(target))
    assert result.exit_code == 1 and "is not a keyservice database" in result.output
    assert not target.exists()


def test_backup_never_overwrites(tmp_path):
    empty_database = sqlite_url(tmp_path)
    migrated(empty_database, tmp_path)
    target = tmp_path / "copy.db"
    target.write_bytes(b"last night's backup")
    result = backup(empty_database, tmp_path, str(target))
    assert result.exit_code == 1
    assert "exists; a backup never overwrites" in result.output
    assert target.read_bytes() == b"last night's backup"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy.db")] == []
    # A folder that is not there is said, not made.
    result = backup(empty_database, tmp_path, str(tmp_path / "nowhere" / "copy.db"))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_backup_into_a_folder_names_the_copy_by_its_time(tmp_path):
    empty_database = sqlite_url(tmp_path)
    migrated(empty_database, tmp_path)
    folder = tmp_path / "backups"
    folder.mkdir()
    result = backup(empty_database, tmp_path, str(folder))
    assert result.exit_code == 0, result.output
    (made,) = folder.iterdir()
    assert made.name.startswith("keyservice-") and made.name.endswith("Z.db")
    assert str(made) in result.output
    assert "KEYSERVICE_SECRET_KEY" in result.output  # where the secret is, never its value
    assert TEST_SECRET not in result.output
    assert made.stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(made)) as copy:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        (revision,) = copy.execute("SELECT version_num FROM alembic_version").fetchone()
    assert f"schema revision {revision}" in result.output


def test_backup_during_a_rotation_names_the_fallback_too(tmp_path):
    # Keys not used since the switch, and refresh tokens, are still under the old secret.
    empty_database = sqlite_url(tmp_path)
    migrated(empty_database, tmp_path)
    fallback = "the-previous-secret-" + "p" * 40
    result = backup(
        empty_database, tmp_path, str(tmp_path / "copy.db"),
        KEYSERVICE_SECRET_KEY_FALLBACK=fallback,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "keep KEYSERVICE_SECRET_KEY and KEYSERVICE_SECRET_KEY_FALLBACK" in result.output
    assert fallback not in result.output and TEST_SECRET not in result.output


def test_backup_copies_a_database_at_an_older_revision_as_the_readme_says(tmp_path):
    # Upgrading's first step backs up the database the old release left, with the new
    # release's command; the README listed backup among the commands refusing it.
    database = sqlite_url(tmp_path)
    migrated(database, tmp_path)
    env = {"KEYSERVICE_DATABASE_URL": database, "KEYSERVICE_SECRET_KEY": TEST_SECRET}
    older = CliRunner().invoke(main, ["migrate", "--to", "0009"], env=env)
    assert older.exit_code == 0, older.output
    result = backup(database, tmp_path, str(tmp_path / "copy.db"))
    assert result.exit_code == 0, result.output
    assert "schema revision 0009" in result.output
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    said = " ".join(readme.split("The commands other than ", 1)[1].split(" refuse", 1)[0].split())
    assert "`backup`" in said, said


def test_backup_of_an_in_memory_or_uri_database_is_refused_in_one_line(tmp_path):
    target = tmp_path / "copy.db"
    for url in (
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        f"sqlite+aiosqlite:///file:{tmp_path / 'own.db'}?mode=ro&uri=true",
    ):
        result = backup(url, tmp_path, str(target))
        assert result.exit_code == 1, (url, result.output)
        assert "names no database file to back up" in result.output, (url, result.output)
        assert len(result.output.strip().splitlines()) == 1
        assert not target.exists()
