"""No secret, nor a hash of one, in the trace of a server error, a repr() or an error body.

tests/security/test_secret_hygiene.py searches a real server's logs for the raw secrets
of a broad traffic script; these tests cover what that script does not reach: the trace
logged for an unexpected database error, the repr() of objects that hold secrets, and the
messages of refusals that would quote a value a client sent in the wrong field.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text

from keyservice.context import AppContext
from tests.admin.support import admin_request, admin_token
from tests.factories import user_token

NEW_PASSWORD = "new-password-Kq4v" + "p" * 20


@contextlib.asynccontextmanager
async def writes_refused(ctx: AppContext, *tables: str) -> AsyncIterator[None]:
    """Make the database refuse every INSERT and UPDATE of `tables`, as a read-only
    standby does after a failover: an error the app does not expect, so it logs a trace."""
    async with ctx.database.engine.begin() as connection:
        if ctx.database.is_sqlite:
            for table in tables:
                for operation in ("INSERT", "UPDATE"):
                    await connection.execute(
                        text(
                            f"CREATE TRIGGER refuse_{operation.lower()}_{table} BEFORE "
                            f"{operation} ON {table} BEGIN SELECT RAISE(ABORT, 'read-only'); END"
                        )
                    )
        else:
            await connection.execute(
                text(
                    "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'cannot execute % in a read-only transaction', "
                    "TG_OP USING ERRCODE = '25006'; END $$"
                )
            )
            for table in tables:
                await connection.execute(
                    text(
                        f"CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE ON {table} "
                        "FOR EACH ROW EXECUTE FUNCTION refuse_writes()"
                    )
                )
    try:
        yield
    finally:
        async with ctx.database.engine.begin() as connection:
            for table in tables:
                if ctx.database.is_sqlite:
                    for operation in ("insert", "update"):
                        await connection.execute(text(f"DROP TRIGGER refuse_{operation}_{table}"))
                else:
                    await connection.execute(text(f"DROP TRIGGER refuse_writes ON {table}"))
            if not ctx.database.is_sqlite:
                await connection.execute(text("DROP FUNCTION refuse_writes()"))


def logged_errors(caplog) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(
        formatter.format(record) for record in caplog.records if record.levelno >= logging.ERROR
    )


async def test_the_trace_of_a_failed_write_holds_no_statement_parameters(client, context, caplog):
    admin = await admin_token(context, client)
    user = await user_token(context, client, "mallory", ["api_keys:manage"])
    users = await admin_request(client, admin, "GET", "/admin/users", 200)
    user_id = next(u["id"] for u in users.json()["items"] if u["username"] == "mallory")
    caplog.set_level(logging.ERROR, logger="keyservice")
    async with writes_refused(context, "principal", "api_key"):
        # The UPDATE carries the new password's argon2 hash; the INSERT the key secret's HMAC.
        changed = await admin_request(
            client, admin, "PATCH", f"/admin/users/{user_id}", json={"password": NEW_PASSWORD}
        )
        created = await client.post(
            "/api-keys", json={"name": "k"}, headers={"Authorization": f"Bearer {user}"}
        )
    assert (changed.status_code, created.status_code) == (500, 500), (changed.text, created.text)
    assert changed.json()["error_description"] == "Something went wrong."
    logged = logged_errors(caplog)
    # The traces are there, with the statements that failed, and without their parameters.
    assert "UPDATE principal" in logged and "INSERT INTO api_key" in logged, logged
    assert "[parameters:" not in logged, logged
    assert "$argon2" not in logged and NEW_PASSWORD not in logged
