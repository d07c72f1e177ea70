"""When a principal was disabled, so that re-enabling it does not revive its old tokens.

Disabling a principal refused its tokens only while it stayed disabled: re-enabling it
brought back every access token (up to 2 h) and refresh token (up to 3 h) issued before.
Disabling now revokes its refresh-token families, and the revocation view refuses its
access tokens issued up to this instant, re-enabled or not.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tokens_revoked_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("principal", schema=None) as batch_op:
        batch_op.drop_column("tokens_revoked_at")
