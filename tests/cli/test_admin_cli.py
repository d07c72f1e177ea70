"""The admin commands, run through click's CliRunner against a real database (both backends).

These are sync tests: the commands call `asyncio.run` themselves. Data is seeded the same
way, in a fresh context per `with_context` call.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from keyservice.api_keys import service as keys_service
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate
from keyservice.audit.models import AuditEvent
from keyservice.auth.models import RefreshToken, RevokedFamily, SigningKey
from keyservice.cli import main, with_context
from keyservice.console.models import ConsoleSpent
from keyservice.context import AppContext
from keyservice.database import new_id, utcnow
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from tests.conftest import TEST_SECRET, make_settings, truncate_url

# The actor of a command's events: `cli:` and the account that runs it (these tests').
OPERATOR = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


class Cli:
    """Runs `keyservice ...` and seeds data, both against one test database."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.env = {
            "KEYSERVICE_DATABASE_URL": database_url,
            "KEYSERVICE_SECRET_KEY": TEST_SECRET,
            "KEYSERVICE_DATA_DIR": str(tmp_path),
            "SUDO_USER": None,  # the tests' own account is the actor (OPERATOR)
        }

    def __call__(self, *args: str, expect: int = 0, input: Any = None, **env: str) -> Result:
        result = CliRunner().invoke(main, list(args), env={**self.env, **env}, input=input)
        assert result.exit_code == expect, (result.output, result.exception)
        return result

    def run(self, work: Any) -> Any:
        return with_context(make_settings(self.database_url, self.tmp_path), work)

    def principal(self, name: str, *, kind: str = "user", permissions: list[str] = ()) -> str:
        async def work(ctx: AppContext) -> str:
            async with ctx.database.sessionmaker() as session:
                for perm in permissions:
                    if await session.get(Scope, perm) is None:
                        session.add(Scope(name=perm, description=perm))
                principal = Principal(kind=kind, name=name, permissions=list(permissions))
                session.add(principal)
                await session.commit()
                return principal.id

        return str(self.run(work))

    def key(self, owner_id: str, created_as: str, **fields: Any) -> dict[str, Any]:
        async def work(ctx: AppContext) -> dict[str, Any]:
            async with ctx.database.sessionmaker() as session:
                owner = await session.get(Principal, owner_id)
                created = await keys_service.create(
                    ctx,
                    session,
                    owner=owner,
                    data=ApiKeyCreate(name=created_as),
                    actor="test",
                    ip=None,
                )
            if fields:
                async with ctx.database.sessionmaker() as session:
                    key = await session.get(ApiKey, created.id)
                    for field, value in fields.items():
                        setattr(key, field, value)
                    await session.commit()
            return created.model_dump()

        result: dict[str, Any] = self.run(work)
        return result

    def scalar(self, query: Any) -> Any:
        async def work(ctx: AppContext) -> Any:
            async with ctx.database.sessionmaker() as session:
                return await session.scalar(query)

        return self.run(work)

    def scalars(self, query: Any) -> list[Any]:
        async def work(ctx: AppContext) -> list[Any]:
            async with ctx.database.sessionmaker() as session:
                return list(await session.scalars(query))

        return self.run(work)

    def add(self, *rows: Any) -> None:
        async def work(ctx: AppContext) -> None:
            async with ctx.database.sessionmaker() as session:
                for row in rows:
                    session.add(row)
                    await session.flush()
                await session.commit()

        self.run(work)


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    asyncio.run(truncate_url(database_url))
    return Cli(database_url, tmp_path)


def test_the_cli_actor_names_the_account_that_ran_the_command(cli, monkeypatch):
    """An audit reader tells which operator ran a command: `cli:` and the account the
    system's user database names (not $USER or $LOGNAME, which anyone sets), under sudo
    with the account that ran sudo; failing a name, the login name, else the uid."""
    cli("devices", "create", "by-account", USER="mallory", LOGNAME="mallory")
    cli("devices", "create", "by-sudo", SUDO_USER="alice")

    def unnamed(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", unnamed)  # a container's uid without a passwd entry
    # A name from the environment is free text: shown without what would drive a terminal.
    cli("devices", "create", "by-login", LOGNAME="bob\x1b[2J", USER=None, LNAME=None)
    cli("devices", "create", "by-uid", LOGNAME=None, USER=None, LNAME=None, USERNAME=None)
    events = cli.scalars(
        select(AuditEvent).where(AuditEvent.type == "device.created").order_by(AuditEvent.seq)
    )
    assert [event.actor for event in events] == [
        OPERATOR,
        f"{OPERATOR} (sudo from alice)",
        "cli:bob??2J",
        f"cli:uid={os.getuid()}",
    ]


def test_devices_create_and_list(cli):
    cli.principal("holder", permissions=["metrics:write"])
    result = cli(
        "devices", "create", "sensor-1", "--permission", "metrics:write", "--description", "roof"
    )
    assert result.output.startswith("created device sensor-1 (")
    device_id = result.output.strip().rsplit("(", 1)[1].rstrip(")")
    cli("devices", "create", "sensor-2")

    listed = cli("devices", "list").output
    assert "2 device(s)" in listed
    assert device_id in listed and "sensor-1" in listed and "metrics:write" in listed
    assert "roof" in listed and "enabled" in listed

    duplicate = cli("devices", "create", "sensor-1", expect=1)
    assert "already exists" in duplicate.output
    unknown = cli("devices", "create", "sensor-3", "--permission", "nope:read", expect=1)
    assert "nope:read" in unknown.output
    # Says how to add one: neither the command line nor the console has a way.
    assert "scope catalog first (POST /admin/scopes, as an admin)" in unknown.output
    unknown = cli(
        "users",
        "create",
        "ann",
        "--permission",
        "nope:read",
        "--password-stdin",
        expect=1,
        input="long enough password\n",
    )
    assert "POST /admin/scopes" in unknown.output
    created = select(AuditEvent.actor).where(AuditEvent.type == "device.created")
    assert cli.scalar(created) == OPERATOR


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("n" * 101, "String should have at most 100 characters"),
        ("", "String should have at least 1 character"),
        ("two words", "may hold only letters, digits and . _ @ + -"),
        ("bell\x07", "may hold only letters, digits and . _ @ + -"),
        ("ksk_" + "Q" * 16 + "_" + "s" * 49, "looks like a secret (an API key, client secret"),
    ],
    ids=["too-long", "empty", "space", "control", "secret"],
)
def test_create_refuses_the_names_the_api_refuses(cli, name, says):
    # As POST /admin/users and /admin/devices do: one line, nothing created (a name too
    # long for its column was a traceback on PostgreSQL, the others were stored).
    for command, field in (
        (["users", "create", name, "--password-stdin"], "username"),
        (["devices", "create", name], "name"),
    ):
        result = cli(*command, expect=1, input="long enough password\n")
        assert isinstance(result.exception, SystemExit), result.exception
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: invalid {field}: {says}"), lines
    assert cli.scalar(select(func.count()).select_from(Principal)) == 0


def test_create_refuses_what_is_too_long_without_echoing_it(cli):
    password = "p" * 1025
    result = cli("users", "create", "ann", "--password-stdin", expect=1, input=password + "\n")
    assert result.output.strip() == (
        "Error: invalid password: String should have at most 1024 characters"
    )
    result = cli("devices", "create", "box", "--description", "d" * 1001, expect=1)
    assert result.output.strip() == (
        "Error: invalid description: String should have at most 1000 characters"
    )
    assert cli.scalar(select(func.count()).select_from(Principal)) == 0


def test_devices_list_empty(cli):
    assert cli("devices", "list").output.strip() == "no devices"


def test_keys_list_with_filters(cli):
    ann = cli.principal("ann", permissions=["api_keys:manage"])
    box = cli.principal("box", kind="device")
    live = cli.key(ann, "ann-live")
    gone = cli.key(ann, "ann-gone", revoked_at=utcnow())
    boxed = cli.key(box, "box-key")

    everything = cli("keys", "list").output
    assert "3 key(s)" in everything
    for key in (live, gone, boxed):
        assert key["id"] in everything and key["client_id"] in everything
    assert "user:ann" in everything and "device:box" in everything
    assert "revoked" in everything and "valid" in everything

    ann_only = cli("keys", "list", "--owner", "ann").output
    assert live["id"] in ann_only and gone["id"] in ann_only and boxed["id"] not in ann_only
    assert cli("keys", "list", "--owner", "ANN").output == ann_only  # names: any case
    valid = cli("keys", "list", "--status", "valid").output
    assert live["id"] in valid and boxed["id"] in valid and gone["id"] not in valid
    revoked = cli("keys", "list", "--owner", "ann", "--status", "revoked").output
    assert gone["id"] in revoked and live["id"] not in revoked
    several = cli("keys", "list", "--status", "revoked", "--status", "valid").output
    assert "3 key(s)" in several
    devices = cli("keys", "list", "--owner-type", "device").output
    assert boxed["id"] in devices and live["id"] not in devices
    assert cli("keys", "list", "--owner", "ann", "--status", "expired").output.strip() == (
        "no keys match"
    )
    cli("keys", "list", "--status", "bogus", expect=2)


def test_keys_list_of_an_owner_that_does_not_exist_says_so(cli):
    """`--owner` with a misspelt name said "no keys match", as for an owner without keys:
    an operator checking that a leaked key's owner has none left was told all was well."""
    cli.principal("ann")
    cli.principal("box", kind="device")
    for args in (("--owner", "nobody"), ("--owner", "nobody", "--json")):
        unknown = cli("keys", "list", *args, expect=1)
        assert unknown.output.strip() == "Error: No user or device has this name."
    as_device = cli("keys", "list", "--owner", "ann", "--owner-type", "device", expect=1)
    assert as_device.output.strip() == "Error: No device has this name."
    as_user = cli("keys", "list", "--owner", "box", "--owner-type", "user", expect=1)
    assert as_user.output.strip() == "Error: No user has this name."
    # An owner that exists, without keys: none, as before (any letter case).
    assert cli("keys", "list", "--owner", "ANN").output.strip() == "no keys match"
    assert json.loads(cli("keys", "list", "--owner", "box", "--json").output) == {"items": []}


def test_keys_revoke(cli):
    ann = cli.principal("ann")
    key = cli.key(ann, "leaked")
    result = cli("keys", "revoke", key["id"])
    assert result.output.startswith(f"revoked key {key['id']} ({key['client_id']}) of user ann")
    assert cli.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key["id"])) is not None
    event = cli.scalar(select(AuditEvent).where(AuditEvent.type == "api_key.deleted"))
    assert event.actor == OPERATOR and event.key_id == key["id"]

    again = cli("keys", "revoke", key["id"])
    assert "was already revoked" in again.output
    # RFC 9562 §4: a UUID is read in any letter case; the key is named in lowercase.
    upper = cli("keys", "revoke", key["id"].upper())
    assert upper.output.startswith(f"key {key['id']} (") and "was already revoked" in upper.output
    unknown = cli("keys", "revoke", "no-such-key", expect=1)
    assert "No API key with this id" in unknown.output


def test_keys_revoke_by_client_id(cli):
    # An operator holding a leaked key string knows its client id (ksk_<body>_... is
    # kc_<body>), not the key's id.
    ann = cli.principal("ann")
    key = cli.key(ann, "leaked")
    other = cli.key(ann, "kept")
    result = cli("keys", "revoke", key["client_id"])
    assert result.output.strip() == (f"revoked key {key['id']} ({key['client_id']}) of user ann")
    assert cli.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key["id"])) is not None
    assert cli.scalar(select(ApiKey.revoked_at).where(ApiKey.id == other["id"])) is None
    event = cli.scalar(select(AuditEvent).where(AuditEvent.type == "api_key.deleted"))
    assert (event.actor, event.key_id, event.principal_id) == (OPERATOR, key["id"], ann)

    again = cli("keys", "revoke", key["client_id"])
    assert "was already revoked" in again.output
    unknown = cli("keys", "revoke", "kc_0123456789abcdef", expect=1)
    assert unknown.output.strip() == "Error: No API key with this client id."
    malformed = cli("keys", "revoke", "kc_short", expect=1)
    assert malformed.output.strip() == (
        "Error: A client ID is kc_ followed by 16 letters and digits, as the key lists show it."
    )


def test_keys_revoke_refuses_the_key_string_without_quoting_it(cli):
    # The command line is in `ps` and shell history: the key string is refused in the
    # API's words (it is leaked now), never echoed, and nothing is revoked for it.
    ann = cli.principal("ann")
    key = cli.key(ann, "pasted")
    secret = key["api_key"].rsplit("_", 1)[1]
    for pasted in (key["api_key"], f"'{key['api_key']}'", key["api_key"][:30]):
        result = cli("keys", "revoke", pasted, expect=1)
        assert result.output.strip() == (
            "Error: That is an API key string (it starts with ksk_), which holds the key's "
            "secret: give only its client ID, kc_ followed by the 16 letters and digits after "
            "ksk_. Treat the pasted key as leaked: revoke it."
        )
        assert secret[:12] not in result.output
    assert cli.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key["id"])) is None
    assert cli.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.type == "api_key.deleted"
    )) == 0  # fmt: skip


def test_keys_expiring(cli):
    ann = cli.principal("ann")
    now = utcnow()
    hours = cli.key(ann, "in-2h", expires_at=now + timedelta(hours=2))
    days = cli.key(ann, "in-3d", expires_at=now + timedelta(days=3))
    weeks = cli.key(ann, "in-20d", expires_at=now + timedelta(days=20))
    far = cli.key(ann, "in-60d", expires_at=now + timedelta(days=60))
    expired = cli.key(ann, "expired", expires_at=now - timedelta(hours=1))
    revoked = cli.key(ann, "revoked", expires_at=now + timedelta(hours=1), revoked_at=now)

    def shown(*args: str) -> list[str]:
        output = cli("keys", "expiring", *args).output
        return [
            key["name"]
            for key in (hours, days, weeks, far, expired, revoked)
            if key["id"] in output
        ]

    assert shown("--within", "24h") == ["in-2h"]
    assert shown("--within", "7d") == ["in-2h", "in-3d"]
    assert shown() == ["in-2h", "in-3d"]
    assert shown("--within", "30d") == ["in-2h", "in-3d", "in-20d"]
    output = cli("keys", "expiring", "--within", "30d").output
    assert output.index(hours["id"]) < output.index(days["id"]) < output.index(weeks["id"])
    assert cli("keys", "expiring", "--within", "30m").output.strip() == "no key expires within 30m"
    assert "expiring within 7d" in cli("keys", "expiring", "--within", "7d").output
    bad = cli("keys", "expiring", "--within", "7x", expect=2)
    assert "24h, 7d or 30d" in bad.output
    for beyond in ("36501d", "99999999999d", "999999999w"):  # past any date: was a traceback
        far_out = cli("keys", "expiring", "--within", beyond, expect=2)
        assert f"'{beyond}' is too long: at most 36500d" in far_out.output
    assert cli("keys", "expiring", "--within", "36500d").output.count(far["id"]) == 1


def test_audit_tail(cli):
    cli.add(*(AuditEvent(type="test.event", reason=f"event {n}") for n in range(5)))
    cli.add(AuditEvent(type="other.event", outcome="failure", reason="[bold]markup[/bold]"))

    tail = cli("audit", "tail", "--limit", "3").output
    assert "last 3 event(s)" in tail
    assert tail.index("event 3") < tail.index("event 4") < tail.index("other.event")
    assert "event 2" not in tail
    assert "[bold]markup[/bold]" in tail and "failure" in tail

    typed = cli("audit", "tail", "--type", "test.event").output
    assert "last 5 event(s)" in typed and "other.event" not in typed
    assert cli("audit", "tail", "--type", "none").output.strip() == "no events"
    cli("audit", "tail", "--limit", "0", expect=2)


def test_prune(cli):
    owner = cli.principal("ann")
    now = utcnow()

    def token(expires_at):
        return RefreshToken(
            token_hash=new_id(), family_id=new_id(), principal_id=owner, expires_at=expires_at
        )

    cli.add(
        token(now - timedelta(days=2)),
        token(now - timedelta(hours=1)),
        token(now + timedelta(hours=1)),
        AuditEvent(type="ancient", at=now - timedelta(days=100)),
        AuditEvent(type="old", at=now - timedelta(days=10)),
        AuditEvent(type="recent"),
        RevokedFamily(family_id=new_id(), revoked_at=now - timedelta(days=40)),
        RevokedFamily(family_id=new_id(), revoked_at=now - timedelta(days=10)),
        ConsoleSpent(digest="a" * 64, kind="session", expires_at=now - timedelta(minutes=61)),
        ConsoleSpent(digest="b" * 64, kind="form", expires_at=now - timedelta(minutes=5)),
        # Kept 7 days (the longest TTL) + 60 s + a day after retiring, then deleted.
        *(
            SigningKey(
                kid=kid, algorithm="ES256", private_key_encrypted=b"sealed", public_jwk={},
                created_at=now - timedelta(days=30), retired_at=now - retired_ago,
            )
            for kid, retired_ago in (
                ("gone", timedelta(days=8, minutes=2)), ("kept", timedelta(days=8))
            )
        ),
    )  # fmt: skip
    result = cli("prune")
    assert result.output.strip() == (
        "deleted 1 refresh token(s) expired more than a day ago, "
        "1 audit event(s) older than 90 days, "
        "1 refresh-token family revocation(s) older than 38 days, "
        "1 console sign-out and form record(s) whose session ended over an hour ago "
        "and 1 signing key(s) retired over 8 days ago"
    )
    assert cli.scalar(select(func.count()).where(SigningKey.kid.in_(["gone", "kept"]))) == 1
    assert cli.scalar(select(SigningKey.kid).where(SigningKey.kid == "kept")) == "kept"
    assert cli.scalar(select(ConsoleSpent.digest)) == "b" * 64
    assert cli.scalar(select(func.count()).select_from(RevokedFamily)) == 1
    assert cli.scalar(select(func.count()).select_from(RefreshToken)) == 2
    # The two kept, and the prune itself: a gap in the log is told from a loss.
    kept = cli.scalars(select(AuditEvent.type).order_by(AuditEvent.seq))
    assert kept == ["old", "recent", "audit.pruned"]
    pruned = cli.scalar(select(AuditEvent).where(AuditEvent.type == "audit.pruned"))
    assert (pruned.actor, pruned.outcome) == (OPERATOR, "success")
    assert pruned.reason.startswith("1 event(s) recorded before ")
    assert pruned.reason.endswith(" deleted (90-day retention)")

    again = cli("prune", KEYSERVICE_AUDIT_RETENTION_DAYS="5")
    assert (
        "0 refresh token(s)" in again.output
        and "1 audit event(s) older than 5 days" in again.output
    )
    kept = cli.scalars(select(AuditEvent.type).order_by(AuditEvent.seq))
    assert kept == ["recent", "audit.pruned", "audit.pruned"]
    # Nothing to delete, nothing recorded.
    cli("prune")
    assert len(cli.scalars(select(AuditEvent.type))) == 3


@pytest.mark.postgresql_only
def test_prune_waits_for_a_prune_in_progress(cli, database_url):
    import threading
    import time

    import asyncpg

    from keyservice.maintenance import PRUNE_LOCK

    cli.add(RevokedFamily(family_id=new_id(), revoked_at=utcnow() - timedelta(days=40)))
    held = threading.Event()

    def another_prune() -> None:  # a server's, on another connection, for a second
        async def hold() -> None:
            dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
            connection = await asyncpg.connect(dsn)
            try:
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", PRUNE_LOCK)
                    held.set()
                    await asyncio.sleep(1)
            finally:
                await connection.close()

        asyncio.run(hold())

    holder = threading.Thread(target=another_prune)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        result = cli("prune")
        assert time.monotonic() - started > 0.5
    finally:
        holder.join()
    assert result.stderr.strip() == "another prune is running; waiting for it to finish"
    assert "1 refresh-token family revocation(s)" in result.stdout
    assert cli.scalar(select(func.count()).select_from(RevokedFamily)) == 0


def test_import_legacy(cli, tmp_path):
    cli.principal("ann", permissions=["api_keys:manage", "projects:read"])
    cli.principal("pump", kind="device", permissions=["projects:read"])
    digest = bcrypt.hashpw(b"pump-old-key", bcrypt.gensalt(rounds=4)).decode()
    good = tmp_path / "keys.jsonl"
    good.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "owner": "ann",
                        "owner_type": "user",
                        "name": "old",
                        "scopes": ["projects:read"],
                        "key": "ann-old-key",
                    }
                ),
                json.dumps(
                    {
                        "owner": "Pump",  # names are one whatever their case
                        "owner_type": "device",
                        "name": "old",
                        "scopes": None,
                        "key_hash": digest,
                        "expires_at": f"{(utcnow() + timedelta(days=100)):%Y-%m-%dT%H:%M:%SZ}",
                    }
                ),
            ]
        )
        + "\n"
    )
    result = cli(
        "keys", "import-legacy", str(good), KEYSERVICE_LEGACY_KEYS_UNTIL="2030-01-01T00:00:00Z"
    )
    assert "imported 2 legacy key(s)" in result.output
    assert "until 2030-01-01 00:00:00Z" in result.output
    assert cli.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.is_legacy)) == 2
    assert "(legacy)" in cli("keys", "list", "--owner", "pump").output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {
                "owner": "ann",
                "owner_type": "user",
                "name": "new",
                "scopes": None,
                "key": "fresh-key",
            }
        )
        + "\nnot json\n"
        + json.dumps(
            {
                "owner": "ann",
                "owner_type": "user",
                "name": "again",
                "scopes": None,
                "key": "ann-old-key",
            }
        )
        + "\n"
        + json.dumps(
            {
                "owner": "ann",
                "owner_type": "user",
                "name": "forever",
                "scopes": None,
                "key": "ann-older-key",
                "expires_at": "2099-01-01T00:00:00Z",  # POST /api-keys: 422
            }
        )
        + "\n"
    )
    failed = cli("keys", "import-legacy", str(bad), expect=1)
    assert "line 2: not valid JSON" in failed.stderr
    assert "line 3: this key was already imported" in failed.stderr
    assert "line 4: expires_at must be in the future and at most 365 days ahead" in failed.stderr
    assert "3 problem(s)" in failed.stderr and "nothing was imported" in failed.stderr
    assert "fresh-key" not in failed.output
    assert cli.scalar(select(func.count()).select_from(ApiKey)) == 2

    cli("keys", "import-legacy", str(tmp_path / "missing.jsonl"), expect=2)


def test_import_legacy_quotes_no_key_pasted_into_a_scope_or_a_field_name(cli, tmp_path):
    cli.principal("ann", permissions=["projects:read"])
    pasted = "LegacyKeyPastedWhereItDoesNotGo0123456789"
    lines = tmp_path / "keys.jsonl"
    lines.write_text(
        json.dumps(
            {
                "owner": "ann",
                "owner_type": "user",
                "name": "a",
                "key": "ann-old-key-1",
                "scopes": ["projects:write", pasted],
            }  # fmt: skip
        )
        + "\n"
        + json.dumps({"owner": "ann", "owner_type": "user", "name": "b", pasted: "x"})
        + "\n"
    )
    failed = cli("keys", "import-legacy", str(lines), expect=1)
    assert pasted[10:30] not in failed.output
    assert "line 1: scopes not held by user 'ann': projects:write, 1 more not quoted" in (
        failed.stderr
    )
    assert "line 2: (not quoted): Extra inputs are not permitted" in failed.stderr


def test_import_legacy_refuses_a_secret_as_a_name_or_description(cli, tmp_path):
    """Imported keys are listed like any other: a key string as its name would be shown."""
    cli.principal("ann")
    line = {"owner": "ann", "owner_type": "user", "name": "a", "key": "ann-old-key-1"}
    secret = "ksk_" + "Q" * 16 + "_" + "s" * 49
    lines = tmp_path / "keys.jsonl"
    lines.write_text(
        json.dumps({**line, "name": secret})
        + "\n"
        + json.dumps({**line, "key": "ann-old-key-2", "description": f"was {secret}"})
        + "\n"
    )
    failed = cli("keys", "import-legacy", str(lines), expect=1)
    assert "line 1: name: looks like a secret (an API key, client secret" in failed.stderr
    assert "line 2: description: looks like a secret (an API key, client" in failed.stderr
    assert secret[8:40] not in failed.output
    assert cli.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_import_legacy_help_gives_the_file_format():
    # It said "JSON lines" only: the fields were in API.md and the module's source.
    text = CliRunner().invoke(main, ["keys", "import-legacy", "--help"]).output
    for field in ('"owner"', '"owner_type"', '"name"', '"scopes"', '"key"', '"key_hash"'):
        assert field in text, field
    assert '"expires_at"' in text and "KEYSERVICE_LEGACY_KEYS_UNTIL" in text


def test_create_help_says_what_a_new_principal_needs_next():
    # A user made without api_keys:manage meets "Not allowed" in the console; a device's
    # keys were said to be made over the API only.
    users = " ".join(CliRunner().invoke(main, ["users", "create", "--help"]).output.split())
    assert "api_keys:manage lets the user manage their own keys" in users
    devices = " ".join(CliRunner().invoke(main, ["devices", "create", "--help"]).output.split())
    assert "create its keys in the console (Devices) or the admin API" in devices


@pytest.mark.parametrize("first", ["keyservice.admin_cli", "keyservice.cli"])
def test_either_cli_module_may_be_imported_first(first):
    # Documentation tools and scripts import a module on its own; the admin commands
    # (admin_cli) and the command group (cli) import each other.
    import subprocess
    import sys

    probe = (
        f"import {first}; from keyservice.cli import main; print(' '.join(sorted(main.commands)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "audit", "backup", "devices", "keys", "migrate", "prune", "secret-key", "serve",
        "signing-keys",
        "users",
    ]  # fmt: skip


def test_tables_show_control_characters_instead_of_sending_them_to_the_terminal(cli):
    # Any user with api_keys:manage names their own keys; the admin lists them. An escape
    # sequence in a name would clear the admin's screen, set its title, or hide a row. The
    # API refuses such names now; one stored before it did is listed as it is.
    ann = cli.principal("ann", permissions=["api_keys:manage"])
    key = cli.key(ann, "ci", name="ci\x1b[2J\x1b]0;pwned\x07\u202egnp.exe")
    cli.add(AuditEvent(type="test.event", reason="moved\x1b[1A\x1b[2Kaway\x9b"))
    cli.add(Principal(kind="device", name="box", description="line\rover\x1b[8m"))

    listed = cli("keys", "list").output
    assert key["id"] in listed
    assert "ci\\x1b[2J\\x1b]0;pwned\\x07\\u202egnp.exe" in listed
    tail = cli("audit", "tail").output
    assert "moved\\x1b[1A\\x1b[2Kaway\\x9b" in tail
    devices = cli("devices", "list").output
    assert "line\\rover\\x1b[8m" in devices
    for output in (listed, tail, devices):
        assert not {"\x1b", "\x07", "\r", "\x9b", "\u202e"} & set(output)


def test_users_create_without_a_terminal_points_to_password_stdin(cli):
    # A pipe is not a terminal: the prompt warned that the password may be echoed, took
    # two of the pipe's lines as password and confirmation, and said only "Aborted!".
    result = cli("users", "create", "ann", expect=1, input="long enough password\n")
    assert result.output.strip() == (
        "Error: no terminal to ask for the password on; pipe it in with --password-stdin"
    )
    empty = cli("users", "create", "ann", "--password-stdin", expect=1, input="")
    assert empty.output.strip() == "Error: no password on standard input (--password-stdin)"
    assert cli.scalar(select(func.count()).select_from(Principal)) == 0
    created = cli("users", "create", "ann", "--password-stdin", input="long enough password\n")
    assert created.output.startswith("created user ann (")
    assert "long enough password" not in created.output


def test_lists_print_json_for_scripts(cli):
    # The tables are for people; a cron job reads --json: the admin API's objects.
    ann = cli.principal("ann", permissions=["api_keys:manage"])
    soon = cli.key(ann, "soon", name="soon\x1b[2J", expires_at=utcnow() + timedelta(hours=2))
    later = cli.key(ann, "later")
    cli.add(Principal(kind="device", name="box", description="a box", permissions=[]))
    cli.add(AuditEvent(type="test.event", outcome="failure", reason="why"))

    def items(*args: str) -> list[dict[str, Any]]:
        output = cli(*args, "--json").output
        assert "\x1b" not in output
        return json.loads(output)["items"]

    listed = items("keys", "list")
    assert [key["id"] for key in listed] == [later["id"], soon["id"]]
    assert listed[1]["name"] == "soon\x1b[2J" and listed[1]["owner_name"] == "ann"
    assert listed[1]["owner_id"] == ann and listed[1]["status"] == "valid"
    assert listed[1]["expires_soon"] is True and listed[1]["client_id"] == soon["client_id"]
    assert not {"client_secret", "api_key", "secret_hash"} & set(listed[1])
    assert [key["id"] for key in items("keys", "expiring", "--within", "1d")] == [soon["id"]]
    assert items("keys", "list", "--owner", "box") == []  # an owner without keys
    unknown = cli("keys", "list", "--owner", "nobody", "--json", expect=1)
    assert unknown.output == "Error: No user or device has this name.\n"  # not an empty list

    (device,) = items("devices", "list")
    assert (device["name"], device["description"], device["disabled"]) == ("box", "a box", False)
    events = items("audit", "tail", "--type", "test.event")
    assert [(e["type"], e["outcome"], e["reason"]) for e in events] == [
        ("test.event", "failure", "why")
    ]
    assert items("audit", "tail", "--type", "none") == []


def signing_keys_listed(cli: Cli) -> dict[str, dict[str, Any]]:
    items = json.loads(cli("signing-keys", "list", "--json").output)["items"]
    return {item["kid"]: item for item in items}


def test_signing_keys_rotate_publishes_first_and_list_shows_the_handover(cli):
    from keyservice.security.jwt import SIGNING_KEY_ACTIVATION_SECONDS

    assert "no signing keys" in cli("signing-keys", "list").output
    # A fresh install: the only key signs at once.
    first = cli("signing-keys", "rotate", "--publish-first").output
    assert "is current (there was no other)" in first
    (old,) = signing_keys_listed(cli)

    rotated = cli("signing-keys", "rotate", "--publish-first").output
    assert f"signs with it in {SIGNING_KEY_ACTIVATION_SECONDS} seconds" in rotated
    listed = signing_keys_listed(cli)
    (new,) = set(listed) - {old}
    assert listed[old]["state"] == "signing"
    assert listed[new]["state"] == "pending"
    handover = listed[old]["signs_until"]
    assert listed[new]["signs_from"] == handover
    created = datetime.fromisoformat(listed[new]["created_at"])
    assert datetime.fromisoformat(handover) == created + timedelta(
        seconds=SIGNING_KEY_ACTIVATION_SECONDS
    )
    ttl = make_settings(cli.database_url, cli.tmp_path).access_token_ttl
    # Times as the other --json lists (and the admin API) write them: UTC with a Z.
    for item in listed.values():
        for name in ("created_at", "signs_from", "signs_until", "published_until"):
            assert item[name] is None or item[name].endswith("Z"), (name, item[name])
    published_until = datetime.fromisoformat(listed[old]["published_until"])
    assert published_until == datetime.fromisoformat(handover) + timedelta(seconds=ttl + 60)

    # What this process signs with, from what it loads.
    async def signer(ctx: AppContext) -> str | None:
        return ctx.keyring.current_kid

    assert cli.run(signer) == old

    table = cli("signing-keys", "list").output
    assert "signing" in table and "pending" in table and new in table

    # --now: the new key signs at once, the others are retired and still published.
    at_once = cli("signing-keys", "rotate", "--now").output
    assert "is current; every replica signs with it within 5 seconds" in at_once
    listed = signing_keys_listed(cli)
    (newest,) = set(listed) - {old, new}
    assert listed[newest]["state"] == "signing"
    assert listed[old]["state"] == listed[new]["state"] == "retired"
    assert cli.run(signer) == newest


def test_signing_keys_rotate_makes_the_new_key_current_at_once_by_default(cli):
    # API.md: `signing-keys rotate` makes a new signing key current for every replica;
    # publishing first and switching later is the opt-in --publish-first.
    async def signer(ctx: AppContext) -> str | None:
        return ctx.keyring.current_kid

    cli("signing-keys", "rotate")
    (old,) = signing_keys_listed(cli)
    rotated = cli("signing-keys", "rotate").output
    assert "is current; every replica signs with it within 5 seconds" in rotated
    listed = signing_keys_listed(cli)
    (new,) = set(listed) - {old}
    assert listed[new]["state"] == "signing" and listed[old]["state"] == "retired"
    assert cli.run(signer) == new
    # Key material changed: on record, by whom, which key.
    cli("signing-keys", "rotate", "--publish-first")
    (staged,) = set(signing_keys_listed(cli)) - {old, new}
    events = json.loads(cli("audit", "tail", "--type", "signing_key.rotated", "--json").output)
    assert [(e["actor"], e["outcome"], e["reason"]) for e in events["items"]] == [
        (OPERATOR, "success", f"new signing key {old}; signs at once"),
        (OPERATOR, "success", f"new signing key {new}; signs at once"),
        (OPERATOR, "success", f"new signing key {staged}; signs in 80 s (--publish-first)"),
    ]


def test_signing_keys_rotate_help_describes_now(cli):
    from keyservice.security.jwt import SIGNING_KEY_ACTIVATION_SECONDS

    shown = " ".join(cli("signing-keys", "rotate", "--help").output.split())
    assert f"({SIGNING_KEY_ACTIVATION_SECONDS} s)" in shown
    assert "--now" in shown and "compromised" in shown
    assert "refuse the new tokens" in shown and "unless revoked" in shown
    # The old key stays published the access-token TTL and a minute after the handover
    # (Keyring.published_after_retirement): both the command's text and the option's say so.
    assert "the access-token TTL after the handover" not in shown
    assert shown.count("the access-token TTL and a minute after the handover") == 1
    assert "for the access-token TTL + 60 s unless revoked" in shown


def test_users_create_checks_the_name_and_permissions_before_the_password(cli):
    # A taken name or an unknown permission was said only after the password was typed
    # twice; now before it is asked for (or read from stdin: none is given here).
    cli.principal("ann")
    for args in (("users", "create", "ann"), ("users", "create", "ann", "--password-stdin")):
        result = cli(*args, expect=1, input="")
        assert result.output.strip() == "Error: The username 'ann' is taken."
    unknown = cli("users", "create", "bob", "--permission", "nope:read", expect=1, input="")
    assert "Unknown permission(s): nope:read" in unknown.output
    assert cli.scalar(select(func.count()).select_from(Principal)) == 1


def test_users_create_says_so_when_the_name_was_taken_while_the_password_was_typed(cli):
    # The early check passed; another operator made the user before the password came.
    class Meanwhile(io.BytesIO):
        made = False

        def _first(self) -> None:
            if not self.made:
                self.made = True
                cli.principal("ann")

        def read(self, *args: Any) -> bytes:
            self._first()
            return super().read(*args)

        def read1(self, *args: Any) -> bytes:
            self._first()
            return super().read1(*args)

        def readinto(self, buffer: Any) -> int:
            self._first()
            return super().readinto(buffer)

        def readline(self, *args: Any) -> bytes:
            self._first()
            return super().readline(*args)

    stdin = Meanwhile(b"long enough password\n")
    result = cli("users", "create", "ann", "--password-stdin", expect=1, input=stdin)
    assert stdin.made
    assert result.output.strip() == "Error: The username 'ann' is taken."
    assert cli.scalar(select(func.count()).select_from(Principal)) == 1


def test_secret_key_status_counts_what_still_needs_the_fallback(cli):
    from keyservice.security.hashing import secret_label

    new_secret = "the-next-secret-" + "y" * 40
    owner = cli.principal("ada", permissions=["api_keys:manage"])
    one = cli.key(owner, "one")
    cli.key(owner, "revoked", revoked_at=utcnow())  # not live: not counted
    cli("signing-keys", "rotate")
    old_label, new_label = secret_label(TEST_SECRET.encode()), secret_label(new_secret.encode())

    before = cli("secret-key", "status").output.splitlines()
    assert before == [
        f"server secret:  {old_label}",
        "fallback:       not set (KEYSERVICE_SECRET_KEY_FALLBACK)",
        "live API keys:  1 under the server secret, 0 under the fallback, 0 not labelled yet",
        "signing keys:   1 under the server secret, 0 under the fallback",
    ]

    rotating = {"KEYSERVICE_SECRET_KEY": new_secret, "KEYSERVICE_SECRET_KEY_FALLBACK": TEST_SECRET}
    during = cli("secret-key", "status", **rotating).output
    assert during.splitlines()[:4] == [
        f"server secret:  {new_label}",
        f"fallback:       {old_label}",
        "live API keys:  0 under the server secret, 1 under the fallback, 0 not labelled yet",
        "signing keys:   0 under the server secret, 1 under the fallback",
    ]
    assert during.splitlines()[4].startswith("The fallback is still needed: keys move at their")
    assert "signing keys move when a server starts." in during
    assert TEST_SECRET not in during and new_secret not in during
    as_json = json.loads(cli("secret-key", "status", "--json", **rotating).output)
    assert as_json["live_api_keys"] == {"current": 0, "fallback": 1, "unlabelled": 0, "other": 0}
    assert as_json["fallback_still_needed"] is True
    assert as_json["refresh_token_lifetime_seconds"] == 3 * 3600
    (waiting,) = as_json["keys_needing_fallback"]
    assert waiting == {"id": one["id"], "client_id": one["client_id"], "name": "one",
                       "owner": "user ada"}  # fmt: skip

    # A secret the database was not set up with, even as the fallback, is refused.
    wrong = cli(
        "secret-key", "status", expect=1,
        KEYSERVICE_SECRET_KEY=new_secret, KEYSERVICE_SECRET_KEY_FALLBACK="z" * 40,
    )  # fmt: skip
    assert "cannot be decrypted with this server secret nor its fallback" in wrong.output
