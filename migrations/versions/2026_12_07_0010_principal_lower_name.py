"""Usernames and device names are one whatever their letter case.

"Alice" and "alice" could both be created: two accounts that read alike in lists and
audit trails, a sign-in that failed for a person who typed a capital, and two throttle
counts for one person's password. A unique index on (kind, lower(name)) among the live
principals now says which names are taken; the name is kept as it was typed. The
(kind, name) index stays: lists page by it.

Names are ASCII letters, digits and `. _ @ + -` (users/schemas.py), so lower() is the
same on both databases.

A database that already holds two live names differing only in case cannot take the
index; the upgrade then stops, changes nothing and names them: rename one (SQL below)
and run `keyservice migrate` again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keyservice.migrations import DataConflict

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = sa.text("deleted_at IS NULL")
_TWINS = sa.text(
    "SELECT kind, name, id FROM principal WHERE deleted_at IS NULL AND lower(name) IN ("
    " SELECT lower(name) FROM principal WHERE deleted_at IS NULL"
    " GROUP BY kind, lower(name) HAVING count(*) > 1"
    ") ORDER BY kind, lower(name), name"
)


def upgrade() -> None:
    twins = op.get_bind().execute(_TWINS).all()
    # A device and a user may share a name; only twins of one kind are in the way.
    by_name: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for kind, name, principal_id in twins:
        by_name.setdefault((kind, name.lower()), []).append((name, principal_id))
    clashes = {group: rows for group, rows in by_name.items() if len(rows) > 1}
    if clashes:
        listed = "; ".join(
            f"{kind}s " + ", ".join(f"'{name}' (id {principal_id})" for name, principal_id in rows)
            for (kind, _), rows in clashes.items()
        )
        raise DataConflict(
            "cannot migrate: names now count as one whatever their letter case (migration "
            f"0010), and these live ones differ only in case: {listed}. Rename all but one "
            "of each, e.g. UPDATE principal SET name = 'alice-2' WHERE id = '<id>'; then run "
            "`keyservice migrate` again. Migration 0010 changed nothing."
        )
    op.create_index(
        "uq_principal_kind_lower_name_live",
        "principal",
        ["kind", sa.text("lower(name)")],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_principal_kind_lower_name_live", table_name="principal")
