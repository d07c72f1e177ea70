from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.admin.support import collect_orphaned_sessions


@pytest.fixture(autouse=True)
async def _finalize_orphaned_sessions(app: Any) -> AsyncIterator[None]:
    yield
    await collect_orphaned_sessions()
