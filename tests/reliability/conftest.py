"""Fixtures of the fault tests: a PostgreSQL cluster of their own and real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.support import Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    own = Cluster()
    try:
        yield own
    finally:
        own.destroy()
