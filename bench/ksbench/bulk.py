"""Bulk rows written straight into the service's PostgreSQL tables (--seed-rows).

The token path must stay flat as `refresh_token` and `audit_event` grow: its statements
should be index lookups and appends, whatever the table sizes. The API would take hours
to write a million rows, so this writes them with one INSERT ... SELECT FROM
generate_series per table, in the service's schema (migrations/versions/), referencing the
principals and API keys seeded through the API, then VACUUM ANALYZEs both tables so that
the planner and the visibility map see them as a long-running service's would, and ends
with a CHECKPOINT so that the load's dirty pages are not written during the measurement.

By default the rows go in through the live indexes (~2 minutes for 1,000,000 of each on
the 2-core machine), so that the indexes look like grown ones. rebuild_indexes=True
(--seed-rebuild-indexes) drops the two tables' keys, indexes and foreign keys first and
builds them again afterwards, in the one transaction of the inserts (read from the
catalog, so a new index is followed; re-adding the foreign keys checks every seeded row):
under a minute, but the built indexes are densely packed, and the service's first random
inserts then split pages everywhere (measured: the c32 exchange p99 doubled that way and
stayed flat with grown indexes).

The rows must survive the server's periodic prune (keyservice.maintenance.prune_all),
which deletes refresh tokens that expired more than a day ago and audit events older than
the retention: expired tokens here expired at most 6 hours ago, and events are spread over
the last 30 days (less when the retention is shorter).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

# Mirrors keyservice.config's defaults: refresh tokens live access_token_ttl +
# refresh_token_extra_ttl seconds; audit events are kept audit_retention_days.
DEFAULT_ACCESS_TOKEN_TTL = 7200
DEFAULT_REFRESH_TOKEN_EXTRA_TTL = 3600
DEFAULT_AUDIT_RETENTION_DAYS = 90
AUDIT_SPREAD_DAYS = 30

# Refresh tokens: families of 1..5 tokens (3 on average) of one API key (and its owner),
# each a chain (parent_id) in which every token but the newest was used (used_at = its
# child's created_at); 1 family in 10 has expired tokens (by at most 6 hours, well inside
# prune's grace of a day), the others none.
_REFRESH_SQL = """
WITH keys AS (
    SELECT row_number() OVER (ORDER BY k.id) - 1 AS n, k.id AS key_id, k.principal_id,
           coalesce((SELECT r.scope FROM refresh_token r WHERE r.key_id = k.id LIMIT 1), '')
               AS scope
    FROM api_key k
    WHERE k.revoked_at IS NULL
),
fam AS (
    SELECT f,
           1 + floor(random() * 5)::int AS size,
           floor(random() * (SELECT count(*) FROM keys))::bigint AS slot,
           md5($2::text || ':family:' || f)::uuid::text AS family_id,
           -- live families started 20 min .. ttl - 5 min ago (every token still valid);
           -- expired ones ttl .. ttl + 6 h ago (their older tokens expired by then).
           CASE WHEN random() < 0.1
                THEN make_interval(secs => $3::int + random() * 21600)
                ELSE make_interval(secs => 1200 + random() * greatest($3::int - 1500, 60))
           END AS age
    -- 3 tokens a family on average; 5% more families than that, the LIMIT cuts.
    FROM generate_series(0, $1::int / 3 * 21 / 20 + 100) AS f
),
tok AS (
    SELECT fam.f, p, fam.size, fam.slot, fam.family_id,
           now() - fam.age + fam.age * p / (fam.size + 1) AS created_at,
           now() - fam.age + fam.age * (p + 1) / (fam.size + 1) AS next_created_at
    FROM fam CROSS JOIN LATERAL generate_series(0, fam.size - 1) AS p
    LIMIT $1::int
)
INSERT INTO refresh_token
    (id, token_hash, family_id, parent_id, principal_id, key_id, scope,
     created_at, expires_at, used_at)
SELECT md5($2::text || ':rt:' || r.f || ':' || r.p)::uuid::text,
       encode(sha256(convert_to($2::text || ':hash:' || r.f || ':' || r.p, 'UTF8')), 'hex'),
       r.family_id,
       CASE WHEN r.p > 0 THEN md5($2::text || ':rt:' || r.f || ':' || (r.p - 1))::uuid::text END,
       k.principal_id, k.key_id, k.scope,
       r.created_at,
       r.created_at + make_interval(secs => $3::int),
       CASE WHEN r.p < r.size - 1 THEN r.next_created_at END
FROM tok r
JOIN keys k ON k.n = r.slot
"""

# Audit events: in seq order and in time order (as written by a live service), over the
# last $2 days; 60% exchanges, 30% refreshes, the rest revocations, logins, key changes
# and the odd refresh reuse; about 1 in 20 a failure with the service's own reasons.
_AUDIT_SQL = """
WITH keys AS (
    SELECT row_number() OVER (ORDER BY k.id) - 1 AS n, k.id AS key_id, k.client_id,
           k.principal_id, p.kind, p.name
    FROM api_key k JOIN principal p ON p.id = k.principal_id
),
ev AS (
    SELECT i, mod(hashint4(i)::bigint + 2147483648, 1000) AS h,
           mod(hashint4(i + 7919)::bigint + 2147483648, 100) AS fail
    FROM generate_series(1, $1::int) AS i
),
typed AS (
    SELECT ev.i, ev.fail,
           CASE WHEN h < 600 THEN 'token.exchange'
                WHEN h < 900 THEN 'token.refresh'
                WHEN h < 940 THEN 'token.revoke'
                WHEN h < 980 THEN 'login'
                WHEN h < 990 THEN 'api_key.created'
                WHEN h < 998 THEN 'api_key.deleted'
                ELSE 'token.refresh_reuse'
           END AS type
    FROM ev
)
INSERT INTO audit_event (id, at, type, actor, principal_id, key_id, ip, outcome, reason)
SELECT gen_random_uuid()::text,
       now() - make_interval(days => $2::int) * (1 - t.i::float8 / ($1::int + 1)),
       t.type,
       CASE WHEN t.type IN ('login', 'api_key.created', 'api_key.deleted')
            THEN k.kind || ':' || k.name ELSE 'key:' || k.client_id END,
       k.principal_id,
       CASE WHEN t.type <> 'login' THEN k.key_id END,
       '10.' || (t.i % 7) || '.' || ((t.i / 7) % 250) || '.' || (1 + (t.i / 1750) % 250),
       CASE WHEN t.type = 'token.refresh_reuse' OR t.fail < 5 THEN 'failure'
            ELSE 'success' END,
       CASE WHEN t.type = 'token.refresh_reuse'
                THEN 'used refresh token presented again; family revoked'
            WHEN t.fail >= 5 THEN NULL
            WHEN t.type = 'token.exchange' THEN 'wrong secret'
            WHEN t.type = 'token.refresh' THEN 'unknown refresh token'
            WHEN t.type = 'login' THEN 'wrong username or password'
            ELSE 'scope not held'
       END
FROM typed t
JOIN keys k ON k.n = t.i % (SELECT count(*) FROM keys)
"""

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM refresh_token) AS refresh_tokens,
       (SELECT count(*) FROM refresh_token WHERE used_at IS NOT NULL) AS used,
       (SELECT count(*) FROM refresh_token WHERE expires_at <= now()) AS expired,
       (SELECT count(DISTINCT family_id) FROM refresh_token) AS families,
       (SELECT count(*) FROM audit_event) AS audit_events,
       (SELECT count(*) FROM audit_event WHERE outcome = 'failure') AS failures,
       (SELECT min(at) FROM audit_event) AS oldest_event
"""


@dataclass(frozen=True)
class Settings:
    """What decides which seeded rows the server's prune would delete."""

    refresh_token_ttl: int
    audit_spread_days: int

    @classmethod
    def from_service_env(cls, env: Mapping[str, str]) -> Settings:
        access = int(env.get("KEYSERVICE_ACCESS_TOKEN_TTL", DEFAULT_ACCESS_TOKEN_TTL))
        extra = int(env.get("KEYSERVICE_REFRESH_TOKEN_EXTRA_TTL", DEFAULT_REFRESH_TOKEN_EXTRA_TTL))
        retention = int(env.get("KEYSERVICE_AUDIT_RETENTION_DAYS", DEFAULT_AUDIT_RETENTION_DAYS))
        # Stay a day inside the retention, so that a prune during the run deletes nothing.
        return cls(access + extra, max(1, min(AUDIT_SPREAD_DAYS, retention - 1)))


# The two tables' keys and indexes, and the foreign keys from or to them, read from the
# catalog (so that a migration that adds one is followed): (kind, table, name, definition).
_SHAPE_SQL = """
SELECT CASE WHEN c.contype = 'f' THEN 'foreign key' ELSE 'key' END AS kind,
       c.conrelid::regclass::text AS tbl, quote_ident(c.conname) AS name,
       pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
WHERE (c.conrelid = ANY($1::regclass[]) AND c.contype IN ('p', 'u', 'x', 'f'))
   OR (c.confrelid = ANY($1::regclass[]) AND c.contype = 'f')
UNION ALL
SELECT 'index', i.indrelid::regclass::text, i.indexrelid::regclass::text,
       pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid = ANY($1::regclass[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                  WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
"""
TABLES = ["refresh_token", "audit_event"]


@dataclass
class BulkResult:
    rows: int
    rebuilt_indexes: bool
    phases: dict[str, float]  # seconds per phase, in order
    counts: dict[str, Any]

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rebuilt_indexes": self.rebuilt_indexes,
            "seconds": round(self.seconds, 2),
            "phases_s": {k: round(v, 2) for k, v in self.phases.items()},
            "counts": self.counts,
        }


async def _detach(conn: asyncpg.Connection) -> list[str]:
    """Drop the keys, indexes and foreign keys of TABLES; return what re-creates them."""
    shape = await conn.fetch(_SHAPE_SQL, TABLES)
    order = {"foreign key": 0, "index": 1, "key": 2}
    for row in sorted(shape, key=lambda r: order[r["kind"]]):
        if row["kind"] == "index":
            await conn.execute(f"DROP INDEX {row['name']}")
        else:
            await conn.execute(f"ALTER TABLE {row['tbl']} DROP CONSTRAINT {row['name']}")
    restore = []
    for row in sorted(shape, key=lambda r: -order[r["kind"]]):
        if row["kind"] == "index":
            restore.append(row["def"])
        else:
            restore.append(f"ALTER TABLE {row['tbl']} ADD CONSTRAINT {row['name']} {row['def']}")
    return restore


async def _seed(dsn: str, rows: int, settings: Settings, *, rebuild_indexes: bool) -> BulkResult:
    conn = await asyncpg.connect(dsn, timeout=10)
    phases: dict[str, float] = {}
    t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        phases[name] = now - t
        t = now

    try:
        salt = secrets.token_hex(8)
        keys = await conn.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NULL")
        if not keys:
            raise RuntimeError("--seed-rows needs seeded API keys; the database holds none")
        # The plans' row estimates are far off (generate_series); JIT would only add
        # compile time. A bigger work_mem keeps the sort of the families in memory, a
        # bigger maintenance_work_mem the index builds.
        await conn.execute(
            "SET jit = off; SET work_mem = '64MB'; SET maintenance_work_mem = '256MB';"
            "SET lock_timeout = '30s'"
        )
        async with conn.transaction():
            # Inserting a million rows into six indexes with random keys (uuids, hashes)
            # is several times slower than building the indexes afterwards. In one
            # transaction: the server (idle while this runs) never sees the tables without
            # them, and re-adding the foreign keys checks every seeded row at once.
            restore = await _detach(conn) if rebuild_indexes else []
            lap("detach")
            await conn.execute(_REFRESH_SQL, rows, salt, settings.refresh_token_ttl, timeout=900)
            lap("refresh_token")
            await conn.execute(_AUDIT_SQL, rows, settings.audit_spread_days, timeout=900)
            lap("audit_event")
            for statement in restore:
                await conn.execute(statement, timeout=900)
            lap("indexes and keys")
        await conn.execute("VACUUM (ANALYZE) refresh_token, audit_event", timeout=900)
        lap("vacuum analyze")
        # The inserts leave ~1 GB of WAL and most of shared_buffers dirty: the checkpoints
        # they trigger spread their writes over the next minute, into the first measured
        # runs (p99 6 -> 39 ms in one of two c8 exchange runs, 14 -> 52 ms in a c32 refresh
        # run; the PostgreSQL log showed a WAL checkpoint of 59 s across them). A long-running
        # service's tables are large without a bulk load's checkpoint in progress.
        await conn.execute("CHECKPOINT", timeout=900)
        lap("checkpoint")
        record = await conn.fetchrow(_COUNTS_SQL, timeout=300)
        counts = dict(record) if record is not None else {}
        if counts.get("oldest_event") is not None:
            counts["oldest_event"] = counts["oldest_event"].isoformat(timespec="seconds")
        if not rebuild_indexes:
            del phases["detach"], phases["indexes and keys"]
        return BulkResult(rows, rebuild_indexes, phases, counts)
    finally:
        await conn.close(timeout=5)


def seed_rows(
    dsn: str, rows: int, settings: Settings, *, rebuild_indexes: bool = False
) -> BulkResult:
    """Insert `rows` refresh tokens and `rows` audit events, VACUUM ANALYZE both, CHECKPOINT."""
    return asyncio.run(_seed(dsn, rows, settings, rebuild_indexes=rebuild_indexes))
