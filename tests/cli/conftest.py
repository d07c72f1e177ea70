"""Fixtures of the command-line tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, create_postgres_database, drop_postgres_database


@pytest.fixture(autouse=True)
def serve_leaves_no_address() -> Iterator[None]:
    """Undo what `serve --host/--port` writes to os.environ (for its workers) after each test.

    CliRunner restores only the variables a test passed it, so a later test's `serve` with no
    --port silently used an earlier test's port: one file alone bound 8000, the suite did not.
    """
    names = ("KEYSERVICE_HOST", "KEYSERVICE_PORT")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own (not the session's shared one), with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
        return
    url = create_postgres_database("ks_cli")
    try:
        yield url
    finally:
        drop_postgres_database(url)
