"""Indexes for the revocation view's reload and the key-expiry reads.

Every worker reloads its revocation view every `revocation_poll_seconds` (2 s by default):
the keys revoked within one access-token lifetime, the principals that are disabled or
deleted, and those whose permissions changed lately. Each of those read the whole table:
with 50,000 keys and 20,000 principals 16 ms of database time per reload per worker
(19 ms wall), for a few hundred rows, growing with every key ever made. Measured on the
bench machine after this migration: 0.5 ms (5.5 ms wall); bench/README.md, "Big tables:
the admin reads".

- `api_key (revoked_at, expires_at)`: revoked keys by when (`revoked_at > horizon`), and
  unrevoked ones by expiry (`revoked_at IS NULL AND expires_at ...`: `keyservice keys
  expiring`, the status filters of GET /admin/api-keys).
- `principal (id) WHERE disabled OR deleted_at IS NOT NULL`,
  `principal (permissions_changed_at) WHERE permissions_changed_at IS NOT NULL` and
  `principal (tokens_revoked_at) WHERE tokens_revoked_at IS NOT NULL` (0005's cut-off of a
  disabled principal's tokens): partial, as the rows they serve are few.

Neither table is written on the token path except `api_key.last_used_at`, which no index
covers, so those updates stay HOT. Plain CREATE INDEX, in the migration's transaction as
the earlier migrations do: both tables are small next to the token tables (50,000 keys
build in under 0.1 s), and CONCURRENTLY cannot run inside that transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNUSABLE = sa.text("disabled OR deleted_at IS NOT NULL")
_PERMISSIONS_CHANGED = sa.text("permissions_changed_at IS NOT NULL")
_TOKENS_REVOKED = sa.text("tokens_revoked_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_key_revoked_at_expires_at", ["revoked_at", "expires_at"], unique=False
        )
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.create_index(
            "ix_principal_unusable",
            ["id"],
            unique=False,
            sqlite_where=_UNUSABLE,
            postgresql_where=_UNUSABLE,
        )
        batch_op.create_index(
            "ix_principal_permissions_changed_at",
            ["permissions_changed_at"],
            unique=False,
            sqlite_where=_PERMISSIONS_CHANGED,
            postgresql_where=_PERMISSIONS_CHANGED,
        )
        batch_op.create_index(
            "ix_principal_tokens_revoked_at",
            ["tokens_revoked_at"],
            unique=False,
            sqlite_where=_TOKENS_REVOKED,
            postgresql_where=_TOKENS_REVOKED,
        )


def downgrade() -> None:
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.drop_index("ix_principal_tokens_revoked_at")
        batch_op.drop_index("ix_principal_permissions_changed_at")
        batch_op.drop_index("ix_principal_unusable")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_revoked_at_expires_at")
