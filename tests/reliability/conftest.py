"""Fixtures of the fault tests: a PostgreSQL cluster of their own and real servers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.reliability.support import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    own = Cluster()
    try:
        yield own
    finally:
        own.destroy()


@pytest.fixture
def database(cluster: Cluster) -> str:
    """A fresh database in the shared throwaway cluster, for one test."""
    return cluster.create_database(f"rel_{secrets.token_hex(4)}")
