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
from datetime import UTC, datetime

import pytest
from fastapi.exceptions import ResponseValidationError
from pydantic import ValidationError
from sqlalchemy import text
from starlette.requests import Request

from keyservice.api_keys.legacy_import import LegacyKeyLine
from keyservice.api_keys.schemas import ApiKeyCreated
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.service import Issued
from keyservice.auth.store import IssueWrite, KeyRecord
from keyservice.config import Settings
from keyservice.console.session import ConsoleSession
from keyservice.context import AppContext
from keyservice.main import error_response
from keyservice.users.schemas import UserCreate, UserUpdate
from tests.admin.support import admin_request, admin_token
from tests.factories import bearer, create_key, user_token

NEW_PASSWORD = "new-password-Kq4v" + "p" * 20


@contextlib.asynccontextmanager
async def writes_refused(ctx: AppContext, *tables: str) -> AsyncIterator[None]:
    """Make the database refuse every INSERT and UPDATE of `tables`, as a read-only
    standby does after a failover: an error the app does not expect, so it logs a trace.

    Each statement is a transaction of its own: holding one table's lock while asking for
    the next's, a DROP TRIGGER deadlocked with the app's own reads of both tables (the
    revocation view's poll), and PostgreSQL aborted the drop, leaving the triggers to fail
    every later test on that database.
    """
    if ctx.database.is_sqlite:
        setup = [
            f"CREATE TRIGGER refuse_{operation.lower()}_{table} BEFORE {operation} ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'read-only'); END"
            for table in tables
            for operation in ("INSERT", "UPDATE")
        ]
        teardown = [
            f"DROP TRIGGER refuse_{operation}_{table}"
            for table in tables
            for operation in ("insert", "update")
        ]
    else:
        setup = [
            "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'cannot execute % in a read-only transaction', "
            "TG_OP USING ERRCODE = '25006'; END $$",
            *(
                f"CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_writes()"
                for table in tables
            ),
        ]
        teardown = [
            *(f"DROP TRIGGER refuse_writes ON {table}" for table in tables),
            "DROP FUNCTION refuse_writes()",
        ]
    for statement in setup:
        async with ctx.database.engine.begin() as connection:
            await connection.execute(text(statement))
    try:
        yield
    finally:
        for statement in teardown:
            async with ctx.database.engine.begin() as connection:
                await connection.execute(text(statement))


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


DB_PASSWORD = "db-Passw0rd-Lq9z"
REDIS_PASSWORD = "redis-Passw0rd-Xr5n"
ADMIN_PASSWORD = "bootstrap-Passw0rd-Vt2m"
SERVER_SECRET = "server-secret-Hj6w" + "s" * 30
SETTINGS = {
    "database_url": f"postgresql+asyncpg://ks:{DB_PASSWORD}@db.internal/ks",
    "redis_url": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0",
    "secret_key": SERVER_SECRET,
    "bootstrap_admin_username": "root",
    "bootstrap_admin_password": ADMIN_PASSWORD,
}
SETTINGS_SECRETS = (DB_PASSWORD, REDIS_PASSWORD, ADMIN_PASSWORD, SERVER_SECRET)


def test_settings_show_no_secret_in_repr_or_str(tmp_path):
    settings = Settings(**SETTINGS, data_dir=tmp_path)
    for shown in (repr(settings), str(settings)):
        assert not [secret for secret in SETTINGS_SECRETS if secret in shown], shown
        # What is not secret stays readable.
        assert "postgresql+asyncpg://ks:***@db.internal/ks" in shown
        assert "redis://:***@redis.internal:6379/0" in shown
    assert settings.database_url == SETTINGS["database_url"]  # the value itself is intact


@pytest.mark.parametrize(
    "refused",
    [
        {"secret_key": SERVER_SECRET[:31]},  # one character short of the minimum
        {"key_default_ttl_days": 400},  # a check across fields: every input in the error
        {"bootstrap_admin_username": None},
    ],
    ids=["secret_key", "across_fields", "bootstrap_pair"],
)
def test_a_settings_validation_error_quotes_no_secret(refused, tmp_path):
    with pytest.raises(ValidationError) as error:
        Settings(**{**SETTINGS, **refused}, data_dir=tmp_path)
    text = str(error.value)
    assert "Value error" in text  # the reason is there
    assert not [secret for secret in SETTINGS_SECRETS if secret[:16] in text], text


SECRET = "Sx7" + "q" * 40  # the shape of a client secret
HASH = "ab12" * 16  # the shape of an HMAC-SHA256 hex digest
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


def _holders_of_secrets() -> list[object]:
    """An object of each kind that holds a secret (or a hash of one) while a request runs."""
    now = datetime.now(UTC)
    api_key = "ksk_" + "A" * 16 + "_" + SECRET + "ZZZZZZ"
    values = {"k_secret_hash": HASH, "p_password_hash": PASSWORD_HASH}
    return [
        ClientCredentials("basic", "kc_" + "A" * 16, SECRET),
        ClientCredentials("api_key", None, None, api_key=api_key),
        Issued(
            access_token="eyJ." + SECRET,
            expires_in=1,
            refresh_token="ksr_" + SECRET,
            refresh_expires_in=2,
            scope="a",
        ),  # fmt: skip
        IssueWrite(
            now=now,
            rt_id="r",
            rt_hash=HASH,
            family_id="f",
            parent_id=None,
            principal_id="p",
            key_id=None,
            scope="",
            rt_expires=now,
            au_id="a",
            event="login",
            actor=None,
            ip=None,
            last_used=False,
        ),  # fmt: skip
        KeyRecord(values, lambda *_: None),
        ConsoleSession(principal_id="p", expires_at=1, csrf=SECRET, credential=HASH),
        UserCreate(username="u", password=SECRET),
        UserUpdate(password=SECRET),
        LegacyKeyLine(owner="u", owner_type="user", name="n", key=SECRET),
        LegacyKeyLine(owner="u", owner_type="user", name="n", key_hash=PASSWORD_HASH),
        ApiKeyCreated(
            id="i",
            client_id="kc_" + "A" * 16,
            name="n",
            description="",
            scopes=None,
            inherits_permissions=True,
            allowed_ips=[],
            created_at=now,
            expires_at=now,
            last_used_at=None,
            last_used_ip=None,
            status="valid",
            expires_soon=False,
            owner_id="o",
            owner_type="user",
            client_secret=SECRET,
            api_key=api_key,
        ),  # fmt: skip
    ]


@pytest.mark.parametrize("holder", _holders_of_secrets(), ids=lambda h: type(h).__name__)
def test_repr_and_str_show_no_secret_or_hash(holder):
    for shown in (repr(holder), str(holder)):
        assert SECRET not in shown and HASH not in shown and "argon2" not in shown, shown
    assert type(holder).__name__ in repr(holder)  # still says what it is


async def test_a_secret_sent_in_the_wrong_field_is_not_quoted_back(client, context):
    """422s name the scopes, permissions, addresses and fields they refuse, unless the value
    could be a credential: error bodies end up in clients' logs and support tickets."""
    admin = await admin_token(context, client)
    user = await user_token(context, client, "olga", ["api_keys:manage", "projects:read"])
    key = await create_key(client, user, name="k")
    pasted = [key["api_key"], key["client_secret"]]
    refusals = [
        ("/api-keys", user, {"name": "k2", "scopes": ["projects:read", "billing:write", *pasted]}),
        ("/api-keys", user, {"name": "k2", "allowed_ips": ["10.0.0.0/8", key["client_secret"]]}),
        ("/api-keys", user, {"name": "k2", "allowed_ips": [f"fe80::1%{key['client_secret']}"]}),
        ("/api-keys", user, {"name": "k2", key["api_key"]: True}),
        ("/admin/users", admin, {"username": "p", "password": "x" * 12, "permissions": pasted}),
    ]
    bodies = []
    for path, token, body in refusals:
        response = await client.post(path, json=body, headers=bearer(token))
        assert response.status_code == 422, response.text
        bodies.append(response.text)
    assert not [text for text in bodies for secret in pasted if secret[8:32] in text], bodies
    # What is a name is still named, and the person learns a value was left out.
    scopes = bodies[0]
    assert "billing:write" in scopes and "2 more not quoted, as they may be secrets" in scopes
    assert "A value (not quoted) is not an IPv4 or IPv6 address" in bodies[1]
    assert "zone id" in bodies[2]
    assert "(not quoted): Extra inputs are not permitted" in bodies[3]
    assert "Unknown permission(s): 2 more not quoted" in bodies[4]


async def test_names_are_still_quoted_in_refusals(client, context):
    user = await user_token(context, client, "petra", ["api_keys:manage"])
    refused = await client.post(
        "/api-keys",
        json={"name": "k", "scopes": ["projects:write"], "allowed_ips": ["proxy.internal"]},
        headers=bearer(user),
    )
    assert refused.status_code == 422
    assert "'proxy.internal' is not an IPv4 or IPv6 address" in refused.text
    extra = await client.post(
        "/api-keys", json={"name": "k", "owner_id": "x"}, headers=bearer(user)
    )
    assert extra.json()["error_description"] == "owner_id: Extra inputs are not permitted"
    assert extra.json()["details"][0]["loc"] == ["body", "owner_id"]


async def test_the_access_log_leaves_out_a_path_segment_that_may_be_a_credential(
    client, context, caplog
):
    user = await user_token(context, client, "quinn", ["api_keys:manage"])
    key = await create_key(client, user, name="k")
    caplog.set_level(logging.INFO, logger="keyservice.access")
    pasted = await client.delete(f"/api-keys/{key['api_key']}", headers=bearer(user))
    assert pasted.status_code == 404
    await client.get(f"/api-keys/{key['id']}", headers=bearer(user))
    await client.get(f"/console/keys/x{key['client_secret']}y/rotate")
    lines = [r.getMessage() for r in caplog.records if r.name == "keyservice.access"]
    assert lines[0].startswith("DELETE /api-keys/(not logged) 404 "), lines
    assert lines[1].startswith(f"GET /api-keys/{key['id']} 200 "), lines  # a UUID is kept
    assert lines[2].startswith("GET /console/keys/(not logged)/rotate "), lines


async def test_a_path_cannot_write_a_log_line_of_its_own(client, caplog):
    # The path arrives percent-decoded: %0A was a newline in the access log, so a request
    # could append a forged line ("... INFO keyservice: admin signed in"), and %1B an
    # escape sequence for the terminal an operator tails it on.
    caplog.set_level(logging.INFO, logger="keyservice.access")
    forged = "/x%0A2026-12-07 06:00:00,000 INFO keyservice: forged%1B[2J%E2%80%A8end"
    answered = await client.get(forged)
    assert answered.status_code == 404
    (line,) = [r.getMessage() for r in caplog.records if r.name == "keyservice.access"]
    assert line.startswith(
        "GET /x%0A2026-12-07 06:00:00,000 INFO keyservice: forged%1B[2J%E2%80%A8end 404 "
    ), line
    assert not any(ch in line for ch in "\n\r\x1b\u2028")


RESPONSE_SECRET = "Zt4mW8pQ2nX6cV1bK7sD3fG9hJ5lA0eR"


def _failed_response_model() -> list[BaseException]:
    """What a bug in a created key's response would raise: pydantic's and FastAPI's errors."""
    created = {"id": "i", "client_secret": RESPONSE_SECRET, "api_key": "ksk_" + RESPONSE_SECRET}
    try:
        ApiKeyCreated.model_validate(created)
    except ValidationError as exc:
        pydantic_error = exc
    return [pydantic_error, ResponseValidationError(pydantic_error.errors(), body=created)]


@pytest.mark.parametrize("error", _failed_response_model(), ids=lambda e: type(e).__name__)
def test_the_trace_of_a_validation_error_holds_no_input(error, caplog):
    tail = RESPONSE_SECRET[-16:]  # pydantic's message shows the end of the object
    assert tail in str(error)  # as raised, the message quotes the secret
    request = Request({"type": "http", "method": "POST", "path": "/api-keys", "headers": []})
    caplog.set_level(logging.ERROR, logger="keyservice")
    response = error_response(request, error)
    assert response.status_code == 500
    logged = logged_errors(caplog)
    assert "(values not logged)" in logged and "client_id: Field required" in logged, logged
    assert tail not in logged
