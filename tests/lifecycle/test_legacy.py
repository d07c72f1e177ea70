"""Legacy keys: imported from a file, exchanged at /token, refused after the cut-off."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import bcrypt
import pytest
from sqlalchemy import delete, func, select, text

from keyservice.api_keys import legacy_import
from keyservice.api_keys.legacy_import import ImportFailed, import_lines
from keyservice.api_keys.models import ApiKey
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.devices import service as devices_service
from keyservice.main import create_app
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from keyservice.security.hashing import slow_hash_jobs
from keyservice.timestamps import format_utc
from tests.admin.support import events
from tests.conftest import client_for, make_settings
from tests.factories import (
    add_scope,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    user_token,
)

PLAIN = "legacy-Key_0001-plaintext"
HASHED = "another old key, known only by its hash"


def _line(**values) -> str:
    return json.dumps(values)


async def _count_keys(context) -> int:
    async with context.database.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


async def _population(context):
    await add_scope(context, "projects:read")
    await create_principal(context, "zoe", permissions=["api_keys:manage", "projects:read"])
    await create_principal(context, "pump-7", kind="device", permissions=["projects:read"])


async def test_import_then_exchange_then_refused_after_cutoff(client, context, tmp_path):
    await _population(context)
    bcrypt_hash = bcrypt.hashpw(HASHED.encode(), bcrypt.gensalt(rounds=4)).decode()
    result = await import_lines(
        context,
        [
            _line(
                owner="zoe", owner_type="user", name="old ci", scopes=["projects:read"], key=PLAIN
            ),
            "",
            _line(
                owner="pump-7",
                owner_type="device",
                name="old pump",
                scopes=None,
                key_hash=bcrypt_hash,
            ),
        ],
        actor="test",
    )
    assert result.imported == 2 and result.over_limit == {}

    async with context.database.sessionmaker() as session:
        rows = {key.name: key for key in await session.scalars(select(ApiKey))}
    plain, hashed = rows["old ci"], rows["old pump"]
    assert plain.is_legacy and hashed.is_legacy
    assert plain.secret_hash is None and hashed.secret_hash is None
    assert plain.legacy_hash is not None and plain.legacy_hash.startswith("$argon2")
    assert PLAIN not in str(vars(plain))
    assert plain.legacy_lookup == context.hasher.hash("legacy:" + PLAIN)
    assert hashed.legacy_hash == bcrypt_hash and hashed.legacy_lookup is None
    assert plain.client_id.startswith("kc_") and plain.client_id != hashed.client_id
    assert abs(plain.expires_at - (utcnow() + timedelta(days=365))) < timedelta(minutes=1)
    # What each key was imported with, as a key made through the API has its creation say.
    assert sorted(event.reason for event in await events(context, "api_key.created")) == [
        "imported legacy key (line 1); scopes: projects:read; allowed_ips: any; "
        f"expires_at: {format_utc(plain.expires_at)}",
        "imported legacy key (line 3); scopes: inherited; allowed_ips: any; "
        f"expires_at: {format_utc(hashed.expires_at)}",
    ]

    response = await exchange(client, PLAIN)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "projects:read"
    legacy_refresh = response.json()["refresh_token"]
    me = await client.get("/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["username"] == "zoe"
    # A key known only by its hash works too (its first use records the fast lookup).
    for _ in range(2):
        response = await exchange(client, HASHED)
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "projects:read"
    # A mistyped old key is an ordinary invalid_client.
    assert (await exchange(client, PLAIN + "x")).status_code == 401

    # The owner sees the imported key among their own, marked legacy.
    token = (await login(client, "zoe"))["access_token"]
    [listed] = (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    assert listed["legacy"] is True and listed["status"] == "valid"

    # After KEYSERVICE_LEGACY_KEYS_UNTIL, the same database refuses them with a clear reason.
    settings = make_settings(
        context.settings.database_url, tmp_path, legacy_keys_until=utcnow() - timedelta(seconds=1)
    )
    later = AppContext(settings)
    app = create_app(context=later)
    async with app.router.lifespan_context(app), client_for(app) as other:
        for old in (PLAIN, HASHED):
            refused = await exchange(other, old)
            assert refused.status_code == 401
            assert refused.json()["error"] == "invalid_client"
            assert "create a new API key" in refused.json()["error_description"]
        # Its refresh tokens are no longer active either: a refresh would be refused.
        root = await user_token(later, other, "root", ["admin"])
        described = await other.post(
            "/introspect", data={"token": legacy_refresh}, headers=bearer(root)
        )
        assert described.json() == {"active": False}
        refreshed = await other.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": legacy_refresh}
        )
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
        # New keys are unaffected by the cut-off.
        token = (await login(other, "zoe"))["access_token"]
        fresh = await create_key(other, token, name="new")
        assert (await exchange(other, fresh["api_key"])).status_code == 200
    refusals = [e.reason for e in await events(context, "token.exchange") if e.outcome == "failure"]
    assert refusals.count("legacy keys no longer accepted") == 2
    [refresh_refusal] = await events(context, "token.refresh")
    assert (refresh_refusal.outcome, refresh_refusal.reason, refresh_refusal.key_id) == (
        "failure",
        "legacy keys no longer accepted",
        plain.id,
    )


@pytest.mark.parametrize("settings_overrides", [{"legacy_keys_until": "2999-01-01T00:00:00Z"}])
async def test_legacy_keys_work_before_the_cutoff(client, context):
    await _population(context)
    await import_lines(
        context,
        [_line(owner="zoe", owner_type="user", name="k", scopes=None, key=PLAIN)],
        actor="t",
    )
    response = await exchange(client, PLAIN)
    assert response.status_code == 200
    assert response.json()["scope"] == "api_keys:manage projects:read"


@pytest.mark.parametrize("settings_overrides", [{"throttle_ip_failures": 3}])
async def test_an_unknown_key_string_is_audited_and_counts_for_its_address(client, context):
    # A string in no format of this service's keys is looked up as a legacy key. Unknown, it
    # is refused as such (no Basic challenge: it was a form field), audited without a key,
    # and counted for the caller's address: past that limit even a right key is throttled.
    await _population(context)
    await import_lines(
        context,
        [_line(owner="zoe", owner_type="user", name="k", scopes=None, key=PLAIN)],
        actor="t",
    )
    for _ in range(3):
        response = await exchange(client, PLAIN + "-mistyped")
        assert response.status_code == 401
        assert response.json() == {
            "error": "invalid_client",
            "error_description": "The API key is malformed or unknown.",
        }
        assert "www-authenticate" not in response.headers
    events = await audit_events(context, "token.exchange")
    assert [(e.outcome, e.reason, e.key_id, e.actor) for e in events] == [
        ("failure", "malformed key", None, None)
    ] * 3
    locked = await exchange(client, PLAIN)
    assert locked.status_code == 429
    assert locked.json()["error"] == "slow_down"
    assert (await audit_events(context, "token.exchange"))[-1].reason == "throttled"
    async with client_for(client._transport.app, ip="198.51.100.4") as elsewhere:
        assert (await exchange(elsewhere, PLAIN)).status_code == 200


async def test_bad_lines_are_reported_and_nothing_is_imported(context):
    await _population(context)
    good = _line(owner="zoe", owner_type="user", name="fine", scopes=None, key=PLAIN)
    soon = int((utcnow() + timedelta(days=30)).timestamp())  # lenient parsing took a number
    lines = [
        good,
        "{not json",
        "[1, 2]",
        _line(owner="nobody", owner_type="user", name="x", scopes=None, key="k-1"),
        _line(owner="pump-7", owner_type="user", name="x", scopes=None, key="k-2"),
        _line(owner="zoe", owner_type="user", name="x", scopes=["billing:write"], key="k-3"),
        _line(owner="zoe", owner_type="user", name="x", scopes=None, key=PLAIN),
        _line(owner="zoe", owner_type="user", name="x", scopes=None, key_hash="md5:abcdef"),
        _line(owner="zoe", owner_type="user", name="x", scopes=None),
        _line(owner="zoe", owner_type="user", name="x", scopes=None, key="k-4", key_hash="$2b$"),
        _line(owner="zoe", owner_type="robot", name="x", scopes=None, key="k-5"),
        _line(
            owner="zoe",
            owner_type="user",
            name="x",
            scopes=None,
            key="k-6",
            expires_at="2001-01-01T00:00:00Z",
        ),
        _line(owner="zoe", owner_type="user", name="", scopes=None, key="k-7"),
        _line(owner="zoe", owner_type="user", name="x", scopes=None, key="k-8", extra=1),
        _line(owner="zoe", owner_type="user", name="x", scopes=None, key="k-9", expires_at=soon),
        _line(
            owner="zoe",
            owner_type="user",
            name="x",
            scopes=None,
            key="k-10",
            expires_at=datetime.fromtimestamp(soon, UTC).replace(tzinfo=None).isoformat(),
        ),
        # Which key, which owner? json.loads kept the last silently.
        '{"owner": "zoe", "owner_type": "user", "name": "x", "key": "k-11", "key": "k-12"}',
        '{"owner": "zoe", "owner_type": "user", "name": "x", "key": "k-13", "k-14": 1, "k-14": 2}',
        # Python reads no integer of more than 4,300 digits, nor JSON nested past its stack:
        # both ended the import in a traceback.
        '{"owner": "zoe", "owner_type": "user", "name": "x", "key": "k-15", "n": '
        + "9" * 5000
        + "}",
        '{"owner": "zoe", "n": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"owner": "zoe", "name": "x\x01"}',  # a raw control character
    ]
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, lines, actor="test")
    messages = {error.line: error.message for error in failed.value.errors}
    assert sorted(messages) == list(range(2, 22))
    assert "not valid JSON" in messages[2]
    assert "JSON object" in messages[3]
    assert "no user named 'nobody'" in messages[4]
    assert "no user named 'pump-7'" in messages[5]
    assert "billing:write" in messages[6]
    assert "same key as line 1" in messages[7]
    assert "not a bcrypt or argon2 hash" in messages[8]
    assert "exactly one of key or key_hash" in messages[9]
    assert "exactly one of key or key_hash" in messages[10]
    assert "owner_type" in messages[11]
    assert "expires_at must be in the future" in messages[12]
    assert "name" in messages[13]
    assert "extra" in messages[14]
    assert "expires_at: must be an RFC 3339 date-time with an offset" in messages[15]
    assert "expires_at: needs a time-zone offset" in messages[16]
    assert messages[17] == "'key' is given more than once"
    assert messages[18] == "a field is given more than once"
    assert messages[19] == "not valid JSON (a number too long to read)"
    assert messages[20] == "not valid JSON (nested too deeply)"
    assert messages[21] == "not valid JSON (Invalid control character at column 28)"
    # No message repeats a key.
    assert not any("k-" in message or PLAIN in message for message in messages.values())
    assert await _count_keys(context) == 0
    assert await events(context, "api_key.created") == []


async def test_scopes_that_left_the_catalog_before_the_writes_are_refused(context):
    """The lines are checked in one transaction and written in another (after the slow
    hashes): a scope deleted in between is refused there, not imported (scopes/service.py)."""
    await _population(context)
    async with context.database.sessionmaker() as session:
        # As a deletion between the two would leave it (zoe's permission was taken away
        # first; here only the catalog row goes, so the first check still passes).
        await session.execute(delete(Scope).where(Scope.name == "projects:read"))
        await session.commit()
    lines = [
        _line(owner="zoe", owner_type="user", name="a", scopes=None, key="k-1"),
        _line(owner="zoe", owner_type="user", name="b", scopes=["projects:read"], key="k-2"),
    ]
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, lines, actor="test")
    assert [str(error) for error in failed.value.errors] == [
        "line 2: scopes deleted from the catalog meanwhile: projects:read"
    ]
    assert await _count_keys(context) == 0


async def test_an_owner_deleted_before_the_writes_is_refused(context, monkeypatch):
    """A device deleted between the check and the writes (while the keys are hashed) gets
    no key: its deletion revoked its keys, an unrevoked one written after it would live on.
    The whole import is refused, naming the lines, never a key."""
    await _population(context)
    async with context.database.sessionmaker() as session:
        pump = await session.scalar(select(Principal).where(Principal.name == "pump-7"))
    assert pump is not None
    real_hash, hashed = legacy_import.run_slow_hash, []

    async def delete_pump_first(func, *args):
        # The first transaction has ended and the second not begun: delete it as an admin.
        if not hashed:
            async with context.database.sessionmaker() as session:
                await devices_service.delete(
                    session, context, device_id=pump.id, actor="admin", ip=None
                )
        hashed.append(True)
        return await real_hash(func, *args)

    monkeypatch.setattr(legacy_import, "run_slow_hash", delete_pump_first)
    lines = [
        _line(owner="zoe", owner_type="user", name="a", scopes=None, key="k-1"),
        _line(owner="pump-7", owner_type="device", name="b", scopes=None, key="k-2"),
        _line(owner="pump-7", owner_type="device", name="c", scopes=["projects:read"], key="k-3"),
    ]
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, lines, actor="test")
    assert [str(error) for error in failed.value.errors] == [
        "line 2: device 'pump-7' was deleted meanwhile",
        "line 3: device 'pump-7' was deleted meanwhile",
    ]
    assert "k-" not in str(failed.value)
    assert await _count_keys(context) == 0
    assert await events(context, "api_key.created") == []
    assert len(await events(context, "device.deleted")) == 1


async def test_reimport_is_refused(context):
    await _population(context)
    digest = bcrypt.hashpw(b"old", bcrypt.gensalt(rounds=4)).decode()
    lines = [
        _line(owner="zoe", owner_type="user", name="a", scopes=None, key=PLAIN),
        _line(owner="zoe", owner_type="user", name="b", scopes=None, key_hash=digest),
    ]
    await import_lines(context, lines, actor="test")
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, lines, actor="test")
    assert [str(error) for error in failed.value.errors] == [
        "line 1: this key was already imported",
        "line 2: this key_hash was already imported",
    ]
    assert await _count_keys(context) == 2


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "settings_overrides", [{"key_max_ttl_days": 30, "key_default_ttl_days": 30}]
)
async def test_an_expiry_past_the_longest_key_lifetime_is_refused(context):
    """POST /api-keys refuses an expires_at more than KEYSERVICE_KEY_MAX_TTL_DAYS ahead
    (422): the import took any future one (2099), a secret living on for decades."""
    await _population(context)
    now = utcnow()
    digest = bcrypt.hashpw(b"old", bcrypt.gensalt(rounds=4)).decode()
    zoe = {"owner": "zoe", "owner_type": "user", "scopes": None}
    pump = {"owner": "pump-7", "owner_type": "device", "scopes": None}
    lines = [
        _line(**zoe, name="a", key="k-1", expires_at=_rfc3339(now + timedelta(days=29))),
        _line(**zoe, name="b", key="k-2", expires_at="2099-01-01T00:00:00Z"),
        _line(**pump, name="c", key_hash=digest, expires_at=_rfc3339(now + timedelta(days=31))),
    ]
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, lines, actor="test")
    errors = [str(error) for error in failed.value.errors]
    assert [error.split(":", 1)[0] for error in errors] == ["line 2", "line 3"]
    expected = ": expires_at must be in the future and at most 30 days ahead (between now and "
    assert all(expected in error for error in errors), errors
    assert await _count_keys(context) == 0
    assert await events(context, "api_key.created") == []
    # Within the limit (given with an offset): imported, stored in UTC.
    moment = (now + timedelta(days=29)).replace(microsecond=0)
    offset = moment.astimezone(timezone(timedelta(hours=5))).isoformat()
    line = _line(**zoe, name="a", key="k-1", expires_at=offset)
    assert (await import_lines(context, [line], actor="test")).imported == 1
    async with context.database.sessionmaker() as session:
        assert await session.scalar(select(ApiKey.expires_at)) == moment


@pytest.mark.parametrize(
    "settings_overrides", [{"key_max_ttl_days": 30, "key_default_ttl_days": 30}]
)
async def test_the_default_expiry_is_no_later_than_the_longest_key_lifetime(context):
    """A line without expires_at gets a year, as documented, unless keys live less long:
    then as long as they may (the year outlived KEYSERVICE_KEY_MAX_TTL_DAYS=30)."""
    await _population(context)
    line = _line(owner="zoe", owner_type="user", name="a", scopes=None, key="k-1")
    await import_lines(context, [line], actor="test")
    async with context.database.sessionmaker() as session:
        key = await session.scalar(select(ApiKey))
    assert key is not None
    assert key.expires_at == key.created_at + timedelta(days=30)


@pytest.mark.parametrize("secret", ["key", "key_hash"])
async def test_a_key_another_import_wrote_meanwhile_is_refused(context, monkeypatch, secret):
    """Two imports of one key, one's lines checked (and found new) before the other's
    writes: its own writes must find the key taken. A plaintext key was
    refused by the unique lookup at a flush, outside the friendly handler (a traceback);
    a key_hash, with no unique constraint, was imported twice: one credential, two keys."""
    await _population(context)
    value = PLAIN if secret == "key" else bcrypt.hashpw(b"old", bcrypt.gensalt(rounds=4)).decode()
    mine = [
        _line(owner="zoe", owner_type="user", name="a", scopes=None, **{secret: value}),
        _line(owner="zoe", owner_type="user", name="b", scopes=None, key="k-1"),
    ]
    # Another owner's: its lock does not queue the two.
    theirs = [_line(owner="pump-7", owner_type="device", name="c", scopes=None, **{secret: value})]
    real_hash, hashed = legacy_import.run_slow_hash, []

    async def the_other_import_first(func, *args):
        # Between this import's check and its writes: the other one, whole.
        if not hashed:
            hashed.append(True)
            assert (await import_lines(context, theirs, actor="other")).imported == 1
        return await real_hash(func, *args)

    monkeypatch.setattr(legacy_import, "run_slow_hash", the_other_import_first)
    with pytest.raises(ImportFailed) as failed:
        await import_lines(context, mine, actor="test")
    assert [str(error) for error in failed.value.errors] == [
        f"line 1: this {secret} was imported concurrently by another import"
    ]
    assert await _count_keys(context) == 1
    assert [event.actor for event in await events(context, "api_key.created")] == ["other"]


async def _blocked_or_done(context, task: asyncio.Task) -> None:
    """Until `task` is done or waits for a lock (PostgreSQL) another transaction holds."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(400):
        if task.done():
            return
        async with context.database.sessionmaker() as session:
            if await session.scalar(waiting):
                return
        await asyncio.sleep(0.025)
    raise AssertionError("the second import neither finished nor waited")


@pytest.mark.postgresql_only
@pytest.mark.parametrize("secret", ["key", "key_hash"])
async def test_concurrent_imports_of_one_key_queue(context, monkeypatch, secret):
    """Two imports writing at once, each found the key new: the second queues for the first
    (for different owners too), then finds the key taken. Nothing of its file is written."""
    await _population(context)
    value = PLAIN if secret == "key" else bcrypt.hashpw(b"old", bcrypt.gensalt(rounds=4)).decode()
    first_lines = [_line(owner="zoe", owner_type="user", name="a", scopes=None, **{secret: value})]
    second_lines = [
        _line(owner="pump-7", owner_type="device", name="b", scopes=None, key="k-1"),
        _line(owner="pump-7", owner_type="device", name="c", scopes=None, **{secret: value}),
    ]
    written, resume = asyncio.Event(), asyncio.Event()
    real_count = legacy_import.count_live

    async def hold_the_first(session, **values):
        # Its rows are written, not committed: hold its transaction open.
        if not written.is_set():
            written.set()
            await resume.wait()
        return await real_count(session, **values)

    monkeypatch.setattr(legacy_import, "count_live", hold_the_first)
    first = asyncio.create_task(import_lines(context, first_lines, actor="first"))
    try:
        await asyncio.wait_for(written.wait(), 10)
        second = asyncio.create_task(import_lines(context, second_lines, actor="second"))
        await _blocked_or_done(context, second)
    finally:
        resume.set()
    assert (await asyncio.wait_for(first, 10)).imported == 1
    with pytest.raises(ImportFailed) as failed:
        await asyncio.wait_for(second, 10)
    assert [str(error) for error in failed.value.errors] == [
        f"line 2: this {secret} was imported concurrently by another import"
    ]
    assert await _count_keys(context) == 1
    assert [event.actor for event in await events(context, "api_key.created")] == ["first"]


async def test_imported_keys_count_towards_the_limit_without_blocking_import(client, context):
    await _population(context)
    token = (await login(client, "zoe"))["access_token"]
    for n in range(4):
        await create_key(client, token, name=f"k{n}")
    lines = [
        _line(owner="zoe", owner_type="user", name=f"old{n}", scopes=None, key=f"old-key-{n}")
        for n in range(2)
    ]
    result = await import_lines(context, lines, actor="test")
    assert result.imported == 2
    assert result.over_limit == {("user", "zoe"): 6}
    refused = await create_key(client, token, expect=409, name="k5")
    assert "At most 5" in refused["error_description"]


# The revocation view reloads every 5 s (0.2 in tests): the pool is this test's alone.
@pytest.mark.parametrize("settings_overrides", [{"revocation_poll_seconds": 5}])
async def test_checking_hashed_legacy_keys_holds_no_connection(client, context):
    # A string that is no key of this service is checked against every legacy key known
    # only by its hash, slowly; meanwhile it must hold no database connection (on SQLite
    # its transaction was the write lock every other request waited for).
    await _population(context)
    digest = bcrypt.hashpw(HASHED.encode(), bcrypt.gensalt(rounds=13)).decode()
    line = _line(owner="pump-7", owner_type="device", name="old", scopes=None, key_hash=digest)
    await import_lines(context, [line], actor="test")
    key = await create_key(client, (await login(client, "zoe"))["access_token"], name="new")
    jobs = slow_hash_jobs()
    junk = asyncio.create_task(exchange(client, "not a key of this service"))
    while slow_hash_jobs() == jobs:  # until the legacy hash is being checked
        await asyncio.sleep(0.001)
    assert context.database.engine.pool.checkedout() == 0
    assert (await exchange(client, key["api_key"])).status_code == 200
    assert (await junk).json()["error"] == "invalid_client"
    # The first use of the hashed key still records its lookup.
    assert (await exchange(client, HASHED)).status_code == 200
    async with context.database.sessionmaker() as session:
        found = await session.scalar(select(ApiKey.legacy_lookup).where(ApiKey.name == "old"))
    assert found == context.hasher.hash("legacy:" + HASHED)


async def _hashed_legacy_key(context) -> None:
    """A legacy key known only by its hash and never used (so it has no lookup yet)."""
    await _population(context)
    digest = bcrypt.hashpw(HASHED.encode(), bcrypt.gensalt(rounds=4)).decode()
    line = _line(owner="pump-7", owner_type="device", name="old", scopes=None, key_hash=digest)
    await import_lines(context, [line], actor="test")


# Any string at /token's `api_key` that is not a key of this service is checked against
# every legacy key known only by its hash, one slow hash each, unauthenticated: only
# against those that could still be accepted.


@pytest.mark.parametrize("settings_overrides", [{"legacy_keys_until": "2001-01-01T00:00:00Z"}])
async def test_no_slow_hash_for_legacy_keys_after_the_cutoff(client, context):
    await _hashed_legacy_key(context)
    jobs = slow_hash_jobs()
    for sent in ("not a key of this service", HASHED):
        refused = await exchange(client, sent)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert slow_hash_jobs() == jobs


async def test_no_slow_hash_for_expired_legacy_keys(client, context):
    await _hashed_legacy_key(context)
    async with context.database.sessionmaker() as session:
        key = await session.scalar(select(ApiKey).where(ApiKey.name == "old"))
        key.expires_at = utcnow() - timedelta(seconds=1)
        await session.commit()
    jobs = slow_hash_jobs()
    assert (await exchange(client, "not a key of this service")).status_code == 401
    assert slow_hash_jobs() == jobs
