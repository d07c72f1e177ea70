"""Used-up console ids (console_spent): one claim wins, also under true concurrency."""

from __future__ import annotations

import asyncio
import time

import pytest

from keyservice.console.models import FORM
from keyservice.console.service import spend
from keyservice.context import AppContext


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
async def test_a_claim_waits_for_a_racing_one_and_yields_only_if_it_commits(
    context: AppContext, first_commits: bool
) -> None:
    until = int(time.time()) + 60
    sessions = context.database.sessionmaker
    async with sessions() as first, sessions() as second:
        assert await spend(first, digest="f" * 64, kind=FORM, until=until)
        racing = asyncio.create_task(spend(second, digest="f" * 64, kind=FORM, until=until))
        await asyncio.sleep(0.3)
        # PostgreSQL waits on the uncommitted row, SQLite for the write lock: neither
        # decides before the first transaction does.
        assert not racing.done()
        await (first.commit() if first_commits else first.rollback())
        assert await asyncio.wait_for(racing, 10) is (not first_commits)
        await second.commit()
    async with sessions() as third:
        assert not await spend(third, digest="f" * 64, kind=FORM, until=until)
