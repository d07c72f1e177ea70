"""Console ids used up for good: signed-out sessions and key forms already sent.

The console's session is a sealed cookie; signing out deleted only the browser's copy.
A row per signed-out session (an HMAC of its id) now refuses every copy of its cookie on
every worker and replica, and a row per key form that succeeded, written in the key's
own transaction, makes a second send of the form (a double click) create nothing. Rows
live until their session's end; prune deletes them after it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_spent",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_console_spent")),
    )
    with op.batch_alter_table("console_spent", schema=None) as batch_op:
        batch_op.create_index("ix_console_spent_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("console_spent", schema=None) as batch_op:
        batch_op.drop_index("ix_console_spent_expires_at")
    op.drop_table("console_spent")
