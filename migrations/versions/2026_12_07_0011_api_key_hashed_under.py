"""Which server secret each key's HMAC was made under, for rotating the secret.

KEYSERVICE_SECRET_KEY_FALLBACK lets a deployment move to a new server secret without
re-issuing its keys: a key hashed under the old secret still verifies and is hashed again
under the new one at its next use. `keyservice secret-key status` counts the keys still
under the old one from this column (a 16-hex-character label derived from the secret,
never the secret). Existing rows start NULL; the service labels them with the secret in
use at its next start without a fallback (a key under any other secret could not verify
then anyway).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both databases (SQLite has DROP COLUMN since 3.35): a batch
# operation would copy api_key on SQLite, reflecting principal on the way, whose
# expression index (0010) SQLAlchemy cannot reflect.


def upgrade() -> None:
    op.add_column("api_key", sa.Column("hashed_under", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("api_key", "hashed_under")
