"""Throttle failures shared by every worker and replica.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 08:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "throttle_failure",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subject", sa.String(length=48), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_throttle_failure")),
    )
    with op.batch_alter_table("throttle_failure", schema=None) as batch_op:
        batch_op.create_index("ix_throttle_failure_subject_at", ["subject", "at"], unique=False)
        batch_op.create_index("ix_throttle_failure_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("throttle_failure", schema=None) as batch_op:
        batch_op.drop_index("ix_throttle_failure_at")
        batch_op.drop_index("ix_throttle_failure_subject_at")
    op.drop_table("throttle_failure")
