"""Index for the keyset pages of GET /admin/api-keys.

`GET /admin/api-keys?limit=N` lists keys newest first (`ORDER BY created_at DESC, id`) and
continues after a cursor with `created_at <= :at AND (created_at < :at OR id > :id)`.
Without an index every page reads and sorts every key (50,000 on the bench's big
deployment); `api_key (created_at DESC, id)` is that order, so a page is one index range
from the cursor, N + 1 rows, even where many keys share a created_at (an import). Plain CREATE INDEX in the migration's transaction, as 0006 does:
`api_key` is small next to the token tables and not written on the token path except
`last_used_at`, which no index covers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_key_created_at_id", [sa.column("created_at").desc(), "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_created_at_id")
