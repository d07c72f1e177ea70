"""The revocation view's reload reads indexes, not every key and principal (PostgreSQL).

Every worker reloads the view every `revocation_poll_seconds`; on a deployment with many
keys and principals, a reload that reads whole tables is a steady cost that grows with
every key ever made (migration 0006, bench/README.md "Big tables: the admin reads"). The
tables here are seeded large enough, and ANALYZEd, for the planner to tell an index from a
sequential read; the statements are the ones the code sends, captured as it runs.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from keyservice.api_keys import service as keys_service
from keyservice.context import AppContext
from keyservice.database import utcnow

PRINCIPALS = 5_000
KEYS = 20_000

# Every 50th principal disabled, every 100th device deleted, every 200th had its
# permissions changed a minute ago (the rest long ago or never), every 250th had its tokens
# cut off a minute ago (a disable, 0005; the disabled ones long ago). Keys: every 3rd revoked
# (long ago, except every 500th, revoked a minute ago); every 200th expires within days,
# a quarter of the rest expired days ago, the others expire in months; every 400th had its
# scopes edited a minute ago (every 40th long ago, the rest never).
_SEED = """
INSERT INTO principal (id, kind, name, description, password_hash, permissions, disabled,
                       created_at, updated_at, permissions_changed_at, deleted_at,
                       tokens_revoked_at)
SELECT md5('p' || i)::uuid::text, CASE WHEN i % 2 = 0 THEN 'user' ELSE 'device' END,
       'principal' || i, '', NULL, '["api_keys:manage"]'::json, i % 50 = 7,
       now() - interval '400 days', now() - interval '400 days',
       CASE WHEN i % 200 = 3 THEN now() - interval '1 minute'
            WHEN i % 10 = 1 THEN now() - interval '300 days' END,
       CASE WHEN i % 100 = 1 THEN now() - interval '30 days' END,
       CASE WHEN i % 250 = 9 THEN now() - interval '1 minute'
            WHEN i % 50 = 7 THEN now() - interval '200 days' END
FROM generate_series(0, :principals - 1) AS i;

INSERT INTO api_key (id, client_id, secret_hash, principal_id, name, description, scopes,
                     allowed_ips, created_at, expires_at, revoked_at, is_legacy,
                     scopes_changed_at)
SELECT md5('k' || i)::uuid::text, 'ks_' || substr(md5('c' || i), 1, 24), NULL,
       md5('p' || (i % :principals))::uuid::text, 'key ' || i, '',
       CASE WHEN i % 40 = 7 THEN '["api_keys:manage"]'::json END, '[]'::json,
       now() - interval '300 days',
       CASE WHEN i % 200 = 5 THEN now() + interval '2 days'
            WHEN i % 4 = 1 THEN now() - interval '10 days'
            ELSE now() + interval '60 days' + make_interval(days => i % 300) END,
       CASE WHEN i % 500 = 0 THEN now() - interval '1 minute'
            WHEN i % 3 = 0 THEN now() - interval '100 days' END,
       false,
       CASE WHEN i % 400 = 7 THEN now() - interval '1 minute'
            WHEN i % 40 = 7 THEN now() - interval '300 days' END
FROM generate_series(0, :keys - 1) AS i;
"""


async def _seed(context: AppContext) -> None:
    async with context.database.engine.begin() as connection:
        for statement in _SEED.split(";"):
            if statement.strip():
                await connection.execute(text(statement), {"principals": PRINCIPALS, "keys": KEYS})
    async with context.database.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("ANALYZE principal, api_key"))


class Captured:
    """The SELECTs the code sends, with their parameters, while `with` it."""

    def __init__(self, context: AppContext) -> None:
        self.engine = context.database.engine.sync_engine
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def _capture(self, _conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.statements.append((statement, tuple(parameters or ())))

    def __enter__(self) -> Captured:
        event.listen(self.engine, "before_cursor_execute", self._capture)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._capture)


def _scans(plan: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(node type, relation, index) of every node of a JSON plan that reads a table or an
    index (a bitmap index scan names no table, its heap scan no index)."""
    found = []
    if "Relation Name" in plan or "Index Name" in plan:
        found.append((plan["Node Type"], plan.get("Relation Name", ""), plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found.extend(_scans(child))
    return found


async def _plans(context: AppContext, captured: Captured) -> list[tuple[str, list]]:
    plans = []
    async with context.database.raw_connection() as connection:
        for statement, parameters in captured.statements:
            raw = await connection.fetchval("EXPLAIN (FORMAT JSON) " + statement, *parameters)
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
            plans.append((statement, _scans(plan)))
    return plans


@pytest.mark.postgresql_only
async def test_the_revocation_reload_reads_indexes_not_whole_tables(context):
    await _seed(context)
    with Captured(context) as captured:
        async with context.database.sessionmaker() as session:
            await context.revocation.reload(session)

    view = context.revocation
    assert len(view.revoked_clients) == KEYS // 500  # the ones revoked a minute ago
    assert len(view.disabled_principals) == PRINCIPALS // 50 + PRINCIPALS // 100
    assert len(view.permissions) == PRINCIPALS // 200
    assert len(view.revoked_through) == PRINCIPALS // 250
    assert len(view.key_scopes) == KEYS // 400

    plans = await _plans(context, captured)
    assert len(plans) == 6, [statement for statement, _ in plans]
    for statement, scans in plans:
        assert scans, statement
        assert all(node != "Seq Scan" for node, _table, _index in scans), (statement, scans)


@pytest.mark.postgresql_only
async def test_keys_expiring_finds_the_keys_by_the_expiry_index(context):
    # `keyservice keys expiring`: the unrevoked keys that expire within a window.
    await _seed(context)
    now = utcnow()
    with Captured(context) as captured:
        async with context.database.sessionmaker() as session:
            rows = await keys_service.search(
                session,
                status=["valid", "suspended"],
                expires_before=now + timedelta(days=7),
                now=now,
            )
    # every 200th key expires in two days; one in three of those is revoked
    expected = len([i for i in range(KEYS) if i % 200 == 5 and i % 3 != 0])
    assert len(rows) == expected

    [(statement, scans)] = await _plans(context, captured)
    indexes = {index for _node, _table, index in scans}
    assert "ix_api_key_revoked_at_expires_at" in indexes, (statement, scans)
    assert ("Seq Scan", "api_key", None) not in scans, (statement, scans)
