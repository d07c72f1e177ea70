"""`keyservice backup FILE`: a consistent copy of the embedded (SQLite) database.

Copying `keyservice.db` with `cp` while the server runs is not a backup: the database is
in WAL mode, so recent commits sit in `keyservice.db-wal` until a checkpoint, and a copy
taken during a write can be torn. SQLite's online backup API copies every page inside one
read transaction: a snapshot of one moment, taken while the server goes on writing.

The copy is one self-contained file (rollback journal, not WAL), written under a temporary
name, checked, flushed, then linked to FILE, which must not exist: a backup never overwrites
anything, and a FILE that exists holds either nothing of ours or a whole backup. Mode 0600:
it holds password hashes and the audit log. The server secret is not in it (README,
"Backups"): without the secret its key secrets, refresh tokens and signing keys are inert.

PostgreSQL is backed up with its own tools (`pg_dump`), which this does not wrap.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


class BackupError(Exception):
    """A backup that cannot be made; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class Backup:
    path: Path
    revision: str
    size: int


def sqlite_path(database_url: str) -> Path:
    """The file of a SQLite database URL; BackupError for PostgreSQL or no plain file."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            "`keyservice backup` copies the embedded SQLite database; back up PostgreSQL "
            "with pg_dump (README, Backups), and keep KEYSERVICE_SECRET_KEY with it"
        )
    path = url.database
    if not path or path == ":memory:" or url.query.get("uri") or path.startswith("file:"):
        raise BackupError(
            "KEYSERVICE_DATABASE_URL names no database file to back up "
            "(an in-memory or URI database)"
        )
    return Path(path)


def backup_sqlite(source: Path, destination: Path) -> Backup:
    """Copy the database at `source` to `destination` (which must not exist) as one snapshot."""
    if not source.is_file():
        raise BackupError(f"there is no database at {source}; is KEYSERVICE_DATA_DIR right?")
    if destination.exists() or destination.is_symlink():
        raise BackupError(f"{destination} exists; a backup never overwrites: choose another name")
    folder = destination.parent
    if not folder.is_dir():
        raise BackupError(f"the folder {folder} does not exist")
    partial = folder / f".{destination.name}.partial-{os.getpid()}"
    try:
        # 0600 from the first byte (O_EXCL: not someone else's file by that name).
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write in {folder} ({exc.strerror or exc})") from None
    try:
        revision = _copy(source, partial)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        try:
            os.link(partial, destination)  # fails, rather than replaces, if FILE appeared
        except FileExistsError:
            raise BackupError(
                f"{destination} exists; a backup never overwrites: choose another name"
            ) from None
        except OSError as exc:
            raise BackupError(f"cannot write {destination} ({exc.strerror or exc})") from None
        _sync_folder(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return Backup(path=destination, revision=revision, size=destination.stat().st_size)


def _copy(source: Path, target: Path) -> str:
    """Snapshot `source` into the empty file `target`; return the schema revision."""
    try:
        # Only read, but opened read-write (`rw`: never created): the last connection to
        # close a WAL database checkpoints it and removes its -wal and -shm files, which a
        # read-only one leaves behind. A server writing meanwhile goes on: WAL readers and
        # its one writer run side by side (busy waits up to 30 s, for a checkpoint).
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database at {source} ({exc})") from None
    try:
        revision = _revision(src, source)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # every page in one step: one read transaction, one moment
            # One file on its own, readable by any sqlite3 without a -wal beside it; the
            # server turns WAL on again when it opens a restored copy.
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()
            if check is None or check[0] != "ok":
                raise BackupError(f"the copy failed SQLite's integrity check ({check})")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up the database at {source} ({exc})") from None
    finally:
        src.close()
    return revision


def _revision(connection: sqlite3.Connection, source: Path) -> str:
    """The Alembic revision the database is at; BackupError if it is none of ours."""
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:
        rows = []
    if not rows:
        raise BackupError(
            f"{source} is not a keyservice database (no schema revision); "
            "is KEYSERVICE_DATA_DIR or KEYSERVICE_DATABASE_URL right?"
        )
    return ", ".join(sorted(str(row[0]) for row in rows))


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entry for the new file (a power cut could lose the name)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
