"""When a key's scopes last changed, so that tokens carrying a removed scope are refused.

Keys' settings can now be edited (PATCH /api-keys/{id}, PATCH /admin/devices/{id}/api-
keys/{key_id}). An access token carries the scopes its key had when it was issued; the
revocation view keeps the current scopes of every key whose scopes changed within one
access-token lifetime and refuses that key's tokens carrying more, as 0004 does for a
principal's permissions. The partial index serves the view's reload, every few seconds in
every worker, as 0006's do: few keys have a recent change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SCOPES_CHANGED = sa.text("scopes_changed_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scopes_changed_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_api_key_scopes_changed_at",
            ["scopes_changed_at"],
            unique=False,
            sqlite_where=_SCOPES_CHANGED,
            postgresql_where=_SCOPES_CHANGED,
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_scopes_changed_at")
        batch_op.drop_column("scopes_changed_at")
