"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.schema import CreateIndex

import keyservice.models  # noqa: F401  (every table on Base.metadata)
from keyservice.database import Base

# SQLAlchemy does not reflect SQLite's indexes on expressions, so alembic skips them there
# (both warn); their SQL is compared below instead.
EXPRESSION_INDEXES = {"uq_principal_kind_lower_name_live", "uq_scope_lower_name"}


async def test_migrations_match_the_models(context):
    # The test databases are built by `alembic upgrade head`: a column, index or type
    # added to a model without its migration shows up here, not in production.
    sqlite = context.database.is_sqlite

    def differences(connection):
        migration_context = MigrationContext.configure(connection, opts={"compare_type": True})
        with warnings.catch_warnings():
            if sqlite:  # both say they skip it; only these, by name
                for name in EXPRESSION_INDEXES:
                    warnings.filterwarnings("ignore", f".*expression-based index '?{name}")
            return compare_metadata(migration_context, Base.metadata)

    async with context.database.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
        if not sqlite:
            return
        made = dict(
            (
                await connection.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
                )
            ).all()
        )
        for name in EXPRESSION_INDEXES:
            index = next(
                one for table in Base.metadata.tables.values() for one in table.indexes
                if one.name == name
            )  # fmt: skip
            modelled = str(CreateIndex(index).compile(dialect=connection.dialect))
            assert " ".join(made[name].split()) == " ".join(modelled.split())
