"""Scope names differing only in letter case cannot both be in the catalog.

`POST /admin/scopes` refused `Admin` beside `admin` (409) by reading before it inserted,
so two creates at once, `Foo` and `foo`, both passed the read on PostgreSQL. A unique
index on lower(name) now decides; the name is kept as it was typed (it stays
case-sensitive at /token, RFC 6749 §3.3).

Scope names are ASCII letters, digits and `_ . : / -` (scopes/schemas.py, since 0001), so
lower() is the same on both databases. The look-alikes below are found with the
database's own lower(), the index's, so that what it would refuse is what is named.

A catalog that already holds look-alikes (made before the 409) cannot take the index, and
which name to keep is the operator's call: principals, keys and issued tokens hold names,
and resource servers check them. The upgrade then stops before changing anything and
names them with what holds each; the operator keeps one of each, takes the others away
from their holders and deletes them (the release in use can: DELETE /admin/scopes/{name}),
and runs `keyservice migrate` again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from keyservice.migrations import DataConflict

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ALIKE = sa.text(
    "SELECT lower(name), name, builtin FROM scope WHERE lower(name) IN ("
    " SELECT lower(name) FROM scope GROUP BY lower(name) HAVING count(*) > 1)"
)
# Who holds a name, as DELETE /admin/scopes counts them (scopes/service.py `usage`): the
# principals not deleted and the keys not revoked whose JSON list has it as an element.
_HOLDERS = {
    "postgresql": (
        "SELECT (SELECT count(*) FROM principal WHERE kind = 'user' AND deleted_at IS NULL"
        " AND CAST(permissions AS jsonb) @> jsonb_build_array(CAST(:name AS text))),"
        " (SELECT count(*) FROM principal WHERE kind = 'device' AND deleted_at IS NULL"
        " AND CAST(permissions AS jsonb) @> jsonb_build_array(CAST(:name AS text))),"
        " (SELECT count(*) FROM api_key WHERE revoked_at IS NULL"
        " AND CAST(scopes AS jsonb) @> jsonb_build_array(CAST(:name AS text)))"
    ),
    "sqlite": (
        "SELECT (SELECT count(*) FROM principal WHERE kind = 'user' AND deleted_at IS NULL"
        " AND EXISTS (SELECT 1 FROM json_each(principal.permissions) AS e"
        " WHERE e.value = :name)),"
        " (SELECT count(*) FROM principal WHERE kind = 'device' AND deleted_at IS NULL"
        " AND EXISTS (SELECT 1 FROM json_each(principal.permissions) AS e"
        " WHERE e.value = :name)),"
        " (SELECT count(*) FROM api_key WHERE revoked_at IS NULL"
        " AND EXISTS (SELECT 1 FROM json_each(api_key.scopes) AS e WHERE e.value = :name))"
    ),
}


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _held(connection: sa.Connection, name: str, builtin: bool) -> str:
    users, devices, keys = connection.execute(
        sa.text(_HOLDERS[connection.dialect.name]), {"name": name}
    ).one()
    holders = [
        _counted(count, one, many)
        for count, one, many in (
            (users, "user", "users"),
            (devices, "device", "devices"),
            (keys, "API key not revoked", "API keys not revoked"),
        )
        if count
    ]
    said = ["built in"] if builtin else []
    said.append(f"held by {', '.join(holders)}" if holders else "held by nothing")
    return f"'{name}' ({'; '.join(said)})"


def upgrade() -> None:
    connection = op.get_bind()
    groups: dict[str, list[str]] = {}
    # Sorted here, not by ORDER BY: PostgreSQL's collation would order them its own way.
    for folded, name, builtin in sorted(connection.execute(_ALIKE).all()):
        groups.setdefault(folded, []).append(_held(connection, name, bool(builtin)))
    if groups:
        listed = "; ".join(", ".join(names) for names in groups.values())
        raise DataConflict(
            "cannot migrate: scope names differing only in letter case now count as one "
            f"(migration 0012), and the catalog holds such look-alikes: {listed}. Keep one "
            "of each (the built-in one, if any): with the release in use, take the others "
            "away from what holds them (the users' and devices' permissions, the keys' "
            "scopes, or revoke those keys) and delete them (DELETE /admin/scopes/{name}, or "
            "the console's Scopes page); "
            "then run `keyservice migrate` again. Migration 0012 changed nothing."
        )
    op.create_index("uq_scope_lower_name", "scope", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_scope_lower_name", table_name="scope")
