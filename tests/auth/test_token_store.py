"""The token store under concurrency: batched reads and the group commit of issues.

On PostgreSQL concurrent requests share one read query and one write transaction
(auth/store.py); these tests pin what each request must still get on its own: its own
row, its own outcome, and no other request's error. On SQLite the same calls run one by
one, and the same outcomes hold.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from keyservice.auth.models import RefreshToken
from keyservice.auth.store import IssueWrite
from keyservice.database import new_id, utcnow
from tests.conftest import _asyncpg_dsn
from tests.factories import audit_events, bearer, create_key, create_principal, user_token


def _write(principal_id: str, *, parent_id: str | None = None, family: str | None = None):
    now = utcnow()
    return IssueWrite(
        now=now,
        rt_id=new_id(),
        rt_hash=new_id().replace("-", "") * 2,
        family_id=family or new_id(),
        parent_id=parent_id,
        principal_id=principal_id,
        key_id=None,
        scope="",
        rt_expires=now + timedelta(hours=3),
        au_id=new_id(),
        event="token.exchange",
        actor="test",
        ip="127.0.0.1",
        last_used=False,
    )


async def _refresh_count(context) -> int:
    async with context.database.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(RefreshToken)) or 0)


async def test_concurrent_key_reads_each_get_their_own_row(client, context):
    token = await user_token(context, client, "alice", ["api_keys:manage"])
    keys = [await create_key(client, token, name=f"k{i}") for i in range(3)]
    client_ids = [k["client_id"] for k in keys]
    lookups = [*client_ids, "ksc_unknown0000000000000000", *client_ids]
    found = await asyncio.gather(*(context.tokens.fetch_key(c) for c in lookups))
    assert found[3] is None
    for client_id, record in zip(lookups, found, strict=True):
        if client_id.startswith("ksc_unknown"):
            continue
        assert record is not None
        key, owner = record.objects()
        assert key.client_id == client_id
        assert owner.name == "alice"


async def test_one_bad_write_in_a_batch_fails_alone(context):
    owner = await create_principal(context, "bob")
    taken = _write(owner.id)
    assert await context.tokens.write_issue(taken)
    good = [_write(owner.id) for _ in range(8)]
    bad = replace(_write(owner.id), rt_hash=taken.rt_hash)  # breaks the unique token hash
    results = await asyncio.gather(
        *(context.tokens.write_issue(w) for w in [*good[:4], bad, *good[4:]]),
        return_exceptions=True,
    )
    assert results[:4] == [True] * 4 and results[5:] == [True] * 4, results
    assert isinstance(results[4], Exception), results[4]
    assert "token_hash" in str(results[4]).lower()
    assert await _refresh_count(context) == 9
    assert len(await audit_events(context, "token.exchange")) == 9


async def test_two_claims_of_one_parent_at_once_one_wins(context):
    owner = await create_principal(context, "carol")
    first = _write(owner.id)
    assert await context.tokens.write_issue(first)
    children = [_write(owner.id, parent_id=first.rt_id, family=first.family_id) for _ in range(6)]
    results = await asyncio.gather(*(context.tokens.write_issue(w) for w in children))
    assert sorted(results) == [False] * 5 + [True], results
    assert await _refresh_count(context) == 2


@pytest.mark.postgresql_only
async def test_concurrent_issues_share_commits_on_postgresql(context):
    owner = await create_principal(context, "dave")
    writes = [_write(owner.id) for _ in range(40)]
    store = context.tokens
    executed: list[int] = []
    original = store._execute

    async def counting(batch):
        executed.append(len(batch))
        return await original(batch)

    store._execute = counting
    try:
        assert all(await asyncio.gather(*(store.write_issue(w) for w in writes)))
    finally:
        store._execute = original
    assert sum(executed) == 40
    assert len(executed) < 40, executed  # batched: fewer transactions than issues
    assert await _refresh_count(context) == 40


@pytest.mark.postgresql_only
async def test_a_connection_the_server_dropped_is_replaced_and_the_call_retried(context):
    # asyncpg raises InternalClientError, before sending anything, when a pooled connection
    # the server dropped is used again (seen in the PostgreSQL-restart fault test).
    import asyncpg

    used: list[int] = []  # server pids

    async def operation(connection):
        used.append(connection.get_server_pid())
        if len(used) == 1:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")
        return await connection.fetchval("SELECT 41 + 1")

    assert await context.database.raw_run(operation) == 42
    assert len(used) == 2 and used[0] != used[1]
    # The first connection was terminated, not handed back to the pool as it was.
    await asyncio.sleep(0.2)
    async with context.database.raw_connection() as connection:
        alive = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", used[0]
        )
    assert alive == 0

    async def always_broken(connection):
        raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")

    with pytest.raises(asyncpg.exceptions.InternalClientError):  # one retry, not a loop
        await context.database.raw_run(always_broken)


@pytest.mark.postgresql_only
async def test_raw_connections_are_kept_between_uses_and_dropped_when_broken(context):
    # The token path keeps its connections acquired between statements (no pool.acquire()
    # per statement); what must hold: an SQL error keeps a healthy connection, anything
    # else (here a cancellation mid-statement) never hands a half-used one out again, one
    # the server closed while kept is replaced, and dispose() does not wait on kept ones.
    import asyncpg

    database = context.database
    pid = lambda: database.raw_run(lambda c: c.fetchval("SELECT pg_backend_pid()"))  # noqa: E731
    first = await pid()
    assert await pid() == first
    pool = await database.raw_pool()
    assert pool.get_idle_size() == 0  # kept by the token path, not back in the pool

    with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
        await database.raw_run(lambda c: c.fetchval("SELECT 1 / 0"))
    assert await pid() == first

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(database.raw_run(lambda c: c.execute("SELECT pg_sleep(5)")), 0.2)
    second = await pid()
    assert second != first
    assert await database.raw_run(lambda c: c.fetchval("SELECT 41 + 1")) == 42

    killer = await _connect_directly(database)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", second)
    finally:
        await killer.close()
    await asyncio.sleep(0.2)  # the kept connection's socket closes under it
    third = await pid()
    assert third not in (first, second)

    await asyncio.wait_for(database.dispose(), 5)


async def _hold_at_once(database, count: int) -> set[int]:
    """Run `count` statements that overlap, so each needs a connection of its own."""
    started = asyncio.Event()
    running = 0

    async def one(connection):
        nonlocal running
        running += 1
        if running == count:
            started.set()
        await started.wait()
        return await connection.fetchval("SELECT pg_backend_pid()")

    pids = await asyncio.wait_for(asyncio.gather(*(database.raw_run(one) for _ in range(count))), 5)
    return set(pids)


@pytest.mark.postgresql_only
async def test_kept_connections_left_unused_go_back_to_the_pool(context):
    # A LIFO list reuses its newest connections: after a burst the older ones would stay
    # acquired (and open) for the life of the process, where the pool closes idle ones.
    database = context.database
    burst = await _hold_at_once(database, 3)
    assert len(burst) == 3
    pool = await database.raw_pool()
    idle_before = pool.get_idle_size()

    await asyncio.sleep(0.3)
    newest = await database.raw_run(lambda c: c.fetchval("SELECT pg_backend_pid()"))
    assert await database.release_idle(older_than=0.2) == 2  # not the one just used
    assert pool.get_idle_size() == idle_before + 2
    assert await database.release_idle(older_than=0.2) == 0
    assert await database.raw_run(lambda c: c.fetchval("SELECT pg_backend_pid()")) == newest

    # The ones handed back are the pool's again: a second burst takes them from it.
    assert await _hold_at_once(database, 3) == burst
    assert pool.get_idle_size() == idle_before
    await asyncio.wait_for(database.dispose(), 5)


@pytest.mark.postgresql_only
async def test_a_kept_connection_is_replaced_after_its_quota_of_uses(context, monkeypatch):
    # asyncpg closes a connection at release once it ran max_queries statements; kept
    # connections are not released per statement, so they must go back at their quota.
    from keyservice import database as database_module

    monkeypatch.setattr(database_module, "RAW_MAX_USES", 3)
    database = context.database
    await database.dispose()  # the next use makes a pool with the patched quota
    pid = lambda: database.raw_run(lambda c: c.fetchval("SELECT pg_backend_pid()"))  # noqa: E731
    pids = [await pid() for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5]
    assert len({pids[0], pids[3], pids[6]}) == 3  # a new backend each time, not a reused one

    checker = await _connect_directly(database)
    try:
        alive = await checker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids[:6]
        )
    finally:
        await checker.close()
    assert alive == 0  # the used-up ones were closed, not left in the pool
    await asyncio.wait_for(database.dispose(), 5)


async def _connect_directly(database):
    """A connection of the test's own, outside the service's pools."""
    import asyncpg

    return await asyncpg.connect(_asyncpg_dsn(database.url))


@pytest.mark.postgresql_only
async def test_the_server_hands_back_idle_kept_connections_by_itself(context, monkeypatch):
    from keyservice import database as database_module
    from keyservice.main import create_app

    monkeypatch.setattr(database_module, "RAW_IDLE_SECONDS", 0.1)
    monkeypatch.setattr(database_module, "RAW_IDLE_CHECK_SECONDS", 0.05)
    application = create_app(context=context)
    async with application.router.lifespan_context(application):
        database = context.database
        pool = await database.raw_pool()
        await _hold_at_once(database, 2)  # the pool's one connection and a new one, both kept
        for _ in range(100):
            if pool.get_idle_size() >= 2:
                break
            await asyncio.sleep(0.05)
        assert pool.get_idle_size() >= 2  # back in the pool without anyone asking
        assert await database.release_idle(older_than=0) == 0  # nothing left kept


async def test_a_submission_as_a_drain_finishes_still_gets_a_drain():
    # The window behind a 20 s hang in the restart fault test: a request submitted in the
    # loop turn in which the last drain finishes must not wait for some later request.
    from keyservice.auth.store import _Drainers

    pending: list[str] = []
    drained: list[str] = []

    def submit(item: str) -> None:
        pending.append(item)
        drainers.wake()

    async def drain() -> None:
        while pending:
            drained.append(pending.pop())
            await asyncio.sleep(0)
        if "late" not in drained and "late" not in pending:
            # Queued before the finishing task's own completion callbacks would run.
            asyncio.get_running_loop().call_soon(submit, "late")

    drainers = _Drainers(drain, 1)
    submit("first")
    for _ in range(20):
        await asyncio.sleep(0)
    assert drained == ["first", "late"]


@pytest.mark.postgresql_only
async def test_token_path_plans_stay_on_indexes_as_the_tables_grow(context):
    # Prepared statements keep the plan made on first use. The refresh lookup planned while
    # refresh_token was nearly empty scanned the whole table ever after (the bench's refresh
    # chains read tens of millions of rows in 20 s); and with index scans forced but plans
    # left to plan_cache_mode=auto, both lookups were re-planned on every execution. Both
    # showed as PostgreSQL CPU, not as errors.
    from sqlalchemy import text

    from keyservice.auth.store import _PG_LOAD_REFRESHES

    owner = await create_principal(context, "erin")
    for _ in range(8):  # well past the five custom plans of plan_cache_mode=auto
        assert await context.tokens.load_refresh("0" * 64) is None
    async with context.database.sessionmaker() as session:
        await session.execute(
            text(
                "INSERT INTO refresh_token "
                "(id, token_hash, family_id, principal_id, scope, created_at, expires_at) "
                "SELECT md5(i::text), md5(i::text) || md5((-i)::text), md5(i::text), :p, '', "
                "now(), now() + interval '3 hours' FROM generate_series(1, 3000) AS i"
            ),
            {"p": owner.id},
        )
        await session.commit()
    wanted = await context.tokens.load_refresh(
        await _one(context, "SELECT token_hash FROM refresh_token LIMIT 1")
    )
    assert wanted is not None and wanted.owner.id == owner.id

    async def inspect(connection):
        statements = await connection.fetch(
            "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements"
        )
        mine = [s for s in statements if s["statement"] == _PG_LOAD_REFRESHES]
        assert mine, "the refresh lookup was not prepared on this connection"
        plan = await connection.fetch(f"EXPLAIN EXECUTE {mine[0]['name']}('{{x}}')")
        return statements, mine[0], "\n".join(row[0] for row in plan)

    statements, lookup, plan = await context.database.raw_run(inspect)
    assert lookup["generic_plans"] >= 9, dict(lookup)
    assert all(s["custom_plans"] == 0 for s in statements), [dict(s) for s in statements]
    assert "Seq Scan on refresh_token" not in plan, plan
    assert "uq_refresh_token_token_hash" in plan, plan


async def _one(context, sql: str, **params):
    from sqlalchemy import text

    async with context.database.sessionmaker() as session:
        return await session.scalar(text(sql), params)


@pytest.mark.postgresql_only
@pytest.mark.parametrize(
    "settings_overrides", [{"token_commit": "durable"}, {"token_commit": "async"}], ids=str
)
async def test_every_variant_of_the_batched_write_does_its_part(client, context):
    # The batch statement comes in four variants (with or without a claim, with or without
    # a last-used write), and those without a claim once more for KEYSERVICE_TOKEN_COMMIT=
    # async; each must do its part when it runs alone.
    from sqlalchemy import text

    token = await user_token(context, client, "frank", ["api_keys:manage"])
    created = await create_key(client, token, name="variants")
    record = await context.tokens.fetch_key(created["client_id"])
    assert record is not None
    owner_id, key_id = record.principal_id, record.key_id

    first = replace(_write(owner_id), key_id=key_id)  # no claim, no last-used
    assert await context.tokens.write_issue(first)
    second = replace(_write(owner_id), key_id=key_id, last_used=True, ip="192.0.2.7")
    assert await context.tokens.write_issue(second)
    last_used_ip = "SELECT last_used_ip FROM api_key WHERE id = :k"
    assert await _one(context, last_used_ip, k=key_id) == "192.0.2.7"

    third = replace(_write(owner_id, parent_id=first.rt_id, family=first.family_id), key_id=key_id)
    assert await context.tokens.write_issue(third)  # a claim, no last-used
    fourth = replace(
        _write(owner_id, parent_id=second.rt_id, family=second.family_id),
        key_id=key_id,
        last_used=True,
        ip="192.0.2.8",
    )
    assert await context.tokens.write_issue(fourth)  # a claim and a last-used write
    assert not await context.tokens.write_issue(  # the parent is spent: claim lost
        replace(_write(owner_id, parent_id=first.rt_id, family=first.family_id), key_id=key_id)
    )
    async with context.database.sessionmaker() as session:
        used = dict(
            (await session.execute(text("SELECT id, used_at IS NOT NULL FROM refresh_token"))).all()
        )
    mine = {w.rt_id for w in (first, second, third, fourth)}
    assert {k: v for k, v in used.items() if k in mine} == {
        first.rt_id: True,
        second.rt_id: True,
        third.rt_id: False,
        fourth.rt_id: False,
    }
    assert await _one(context, last_used_ip, k=key_id) == "192.0.2.8"
    audited = {e.id for e in await audit_events(context, "token.exchange")}
    assert {w.au_id for w in (first, second, third, fourth)} <= audited


@pytest.mark.postgresql_only
@pytest.mark.parametrize(
    "settings_overrides", [{"token_commit": "durable"}, {"token_commit": "async"}], ids=str
)
async def test_token_commit_setting_decides_the_flush_wait_of_batches(context, settings_overrides):
    # Each batch is one statement, its own transaction. Run here inside an explicit
    # transaction instead, the setting its commit would use can be read before it commits.
    # KEYSERVICE_TOKEN_COMMIT=async: batches without a claim commit with synchronous_commit
    # off; a batch claiming a refresh token always commits with the server's own setting.
    database = context.database
    server_setting = await database.raw_run(lambda c: c.fetchval("SHOW synchronous_commit"))
    assert server_setting != "off", "the test needs a server that waits for its flushes"
    at_commit: list[str] = []
    original = database.raw_run

    async def observing(operation):
        async def observed(connection):
            async with connection.transaction():
                result = await operation(connection)
                at_commit.append(await connection.fetchval("SHOW synchronous_commit"))
            return result

        return await original(observed)

    owner = await create_principal(context, "gina")
    exchange = _write(owner.id)
    database.raw_run = observing
    try:
        assert await context.tokens.write_issue(exchange)
        refresh = _write(owner.id, parent_id=exchange.rt_id, family=exchange.family_id)
        assert await context.tokens.write_issue(refresh)
        replay = _write(owner.id, parent_id=exchange.rt_id, family=exchange.family_id)
        assert not await context.tokens.write_issue(replay)  # still single use
    finally:
        database.raw_run = original
    exchange_commit = "off" if settings_overrides["token_commit"] == "async" else server_setting
    assert at_commit == [exchange_commit, server_setting, server_setting]
    assert await _refresh_count(context) == 2
    audited = {e.id for e in await audit_events(context, "token.exchange")}
    assert {exchange.au_id, refresh.au_id} <= audited and replay.au_id not in audited


async def test_last_used_never_goes_back(client, context):
    # Last-used writes are coalesced per process and batched: one carrying an earlier use
    # can commit after one carrying a later use (another worker's, or a batch that waited
    # longer). The later use stays recorded, with its address.
    token = await user_token(context, client, "grace", ["api_keys:manage"])
    created = await create_key(client, token, name="used")
    record = await context.tokens.fetch_key(created["client_id"])
    assert record is not None
    owner_id, key_id = record.principal_id, record.key_id
    later = replace(_write(owner_id), key_id=key_id, last_used=True, ip="192.0.2.20")
    earlier = replace(
        _write(owner_id),
        now=later.now - timedelta(seconds=2),
        key_id=key_id,
        last_used=True,
        ip="192.0.2.10",
    )
    assert await context.tokens.write_issue(later)
    assert await context.tokens.write_issue(earlier)
    listed = (await client.get(f"/api-keys/{key_id}", headers=bearer(token))).json()
    assert listed["last_used_ip"] == "192.0.2.20"
    assert datetime.fromisoformat(listed["last_used_at"].replace("Z", "+00:00")) == later.now


async def test_a_lost_claim_still_records_the_use_of_its_key(client, context):
    # Of concurrent refreshes of one token, the one whose last-used write was due may lose
    # the claim; the winner's then was not due. The key was used: the write is kept.
    token = await user_token(context, client, "hugo", ["api_keys:manage"])
    created = await create_key(client, token, name="raced")
    record = await context.tokens.fetch_key(created["client_id"])
    assert record is not None
    owner_id, key_id = record.principal_id, record.key_id
    parent = replace(_write(owner_id), key_id=key_id)
    assert await context.tokens.write_issue(parent)
    winner = replace(
        _write(owner_id, parent_id=parent.rt_id, family=parent.family_id), key_id=key_id
    )
    loser = replace(
        _write(owner_id, parent_id=parent.rt_id, family=parent.family_id),
        key_id=key_id,
        last_used=True,
        ip="192.0.2.30",
    )
    assert await context.tokens.write_issue(winner)
    assert not await context.tokens.write_issue(loser)
    listed = (await client.get(f"/api-keys/{key_id}", headers=bearer(token))).json()
    assert listed["last_used_ip"] == "192.0.2.30"
    assert datetime.fromisoformat(listed["last_used_at"].replace("Z", "+00:00")) == loser.now
