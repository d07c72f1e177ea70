"""When a principal's permissions last changed, so that narrowed tokens are refused.

An access token carries the scopes its principal held when it was issued. The revocation
view keeps the current permissions of every principal whose permissions changed within one
access-token lifetime and refuses that principal's tokens carrying more: taking `admin`
from a user ends their admin tokens within seconds, on every replica, instead of at expiry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("permissions_changed_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.drop_column("permissions_changed_at")
