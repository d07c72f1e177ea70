"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import keyservice.models  # noqa: F401  (every table on Base.metadata)
from keyservice.database import Base


async def test_migrations_match_the_models(context):
    # The test databases are built by `alembic upgrade head`: a column, index or type
    # added to a model without its migration shows up here, not in production.
    def differences(connection):
        migration_context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(migration_context, Base.metadata)

    async with context.database.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
