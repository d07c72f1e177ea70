"""Rotating the server secret: KEYSERVICE_SECRET_KEY_FALLBACK.

What the old secret made (key HMACs, legacy lookups, refresh-token HMACs, signing-key
encryption) keeps working while it is the fallback, and moves to the new secret as it is
used (keys), refreshed (refresh tokens) or at start-up (signing keys), so that the fallback
can then go without anyone re-issuing a key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from keyservice import secret_rotation
from keyservice.api_keys.legacy_import import ImportFailed, import_lines
from keyservice.api_keys.models import ApiKey
from keyservice.auth.models import RefreshToken, SigningKey
from keyservice.config import Settings, configuration_errors
from keyservice.context import AppContext
from keyservice.database import Database
from keyservice.main import create_app
from keyservice.secret_rotation import status
from keyservice.security.hashing import secret_label
from tests.conftest import TEST_SECRET, client_for, make_settings, truncate_url
from tests.factories import (
    add_scope,
    audit_events,
    bearer,
    create_principal,
    exchange,
    login,
    service_key,
)

NEW_SECRET = "the-next-secret-" + "y" * 40
OTHER_SECRET = "an-unrelated-secret-" + "z" * 40
LEGACY = "legacy-Key_0001-plaintext"
LEGACY_LINE = json.dumps({"owner": "ada", "owner_type": "user", "name": "old", "key": LEGACY})


@contextlib.asynccontextmanager
async def serving(
    database_url: str, tmp_path: Path, secret: str, fallback: str | None = None
) -> AsyncIterator[tuple[AppContext, httpx.AsyncClient]]:
    """A server of the same database, started with `secret` (and `fallback`)."""
    settings = make_settings(
        database_url, tmp_path, secret_key=secret, secret_key_fallback=fallback
    )
    context = AppContext(settings)
    app = create_app(context=context)
    try:
        async with app.router.lifespan_context(app), client_for(app) as client:
            yield context, client
    finally:
        await context.database.dispose()


async def key_row(context: AppContext, key_id: str) -> ApiKey:
    async with context.database.sessionmaker() as session:
        row = await session.get(ApiKey, key_id)
        assert row is not None
        return row


async def signing_blobs(context: AppContext) -> dict[str, bytes]:
    async with context.database.sessionmaker() as session:
        rows = await session.execute(select(SigningKey.kid, SigningKey.private_key_encrypted))
        return {row.kid: row.private_key_encrypted for row in rows.all()}


@pytest.fixture
async def before(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A deployment's state under TEST_SECRET: two keys (one never used again), a
    key's refresh token, a password sign-in's refresh token, a legacy key."""
    await truncate_url(database_url)  # signing keys included: made under TEST_SECRET from here
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, client):
        await add_scope(context, "projects:read")
        owner = await create_principal(
            context, "ada", permissions=["api_keys:manage", "introspect"]
        )
        used = await service_key(context, owner, "used")
        idle = await service_key(context, owner, "idle")
        exchanged = await exchange(client, used.api_key)
        assert exchanged.status_code == 200, exchanged.text
        signed_in = await login(client, "ada")
        imported = await import_lines(
            context,
            [LEGACY_LINE],
            actor="test",
        )
        assert imported.imported == 1
        state = {
            "used": used,
            "idle": idle,
            "key_refresh": exchanged.json()["refresh_token"],
            "password_refresh": signed_in["refresh_token"],
            "blobs": await signing_blobs(context),
            "used_hash": (await key_row(context, used.id)).secret_hash,
        }
    yield state
    # The signing keys are under NEW_SECRET now: the next test's servers could not start.
    await truncate_url(database_url)


async def test_without_the_fallback_a_new_secret_refuses_what_the_old_one_made(
    database_url, tmp_path, before
):
    # The control: what the fallback is for. A server with only the new secret cannot
    # even start (the signing keys are encrypted under the old one)...
    with pytest.raises(Exception, match="cannot be decrypted with this server secret"):
        async with serving(database_url, tmp_path, NEW_SECRET):
            pass
    # ...and once they are deleted (the only way before), every key and refresh token is.
    database = Database(database_url)
    try:
        async with database.sessionmaker() as session:
            await session.execute(SigningKey.__table__.delete())
            await session.commit()
    finally:
        await database.dispose()
    async with serving(database_url, tmp_path, NEW_SECRET) as (_context, client):
        assert (await exchange(client, before["used"].api_key)).status_code == 401
        assert (await exchange(client, LEGACY)).status_code == 401
        refreshed = await client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": before["key_refresh"]}
        )
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


async def test_with_the_fallback_everything_made_before_still_works_and_moves(
    database_url, tmp_path, before
):
    used, idle = before["used"], before["idle"]
    async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (context, client):
        # Start-up encrypted the signing keys again under the new secret.
        blobs = await signing_blobs(context)
        assert blobs.keys() == before["blobs"].keys()
        assert all(blobs[kid] != blob for kid, blob in before["blobs"].items())
        assert context.keyring.under_fallback == set()

        found = await status(context)
        assert (found.label, found.fallback_label) == (
            secret_label(NEW_SECRET.encode()),
            secret_label(TEST_SECRET.encode()),
        )
        # used, idle and the legacy key: all under the old secret until they are used.
        assert (found.live_keys_current, found.live_keys_fallback) == (0, 3)
        assert found.signing_keys_fallback == [] and len(found.signing_keys_current) == 1
        assert found.fallback_still_needed

        # A key made under the old secret is exchanged, and hashed again under the new.
        response = await exchange(client, used.api_key)
        assert response.status_code == 200, response.text
        row = await key_row(context, used.id)
        assert row.hashed_under == secret_label(NEW_SECRET.encode())
        assert row.secret_hash not in (None, before["used_hash"])
        assert row.secret_hash == context.hasher.hash(used.api_key.rsplit("_", 1)[1][:43])
        # And again, now under the new secret (client id + secret this time).
        basic = (used.client_id, used.client_secret)
        again = await client.post("/token", data={"grant_type": "client_credentials"}, auth=basic)
        assert again.status_code == 200, again.text

        # Refresh tokens made under the old secret are found, claimed once, and their
        # successors made under the new one.
        for name in ("key_refresh", "password_refresh"):
            old = before[name]
            introspected = await client.post(
                "/introspect", data={"token": old}, headers=bearer(response.json()["access_token"])
            )
            assert introspected.status_code == 200 and introspected.json()["active"], name
            refreshed = await client.post(
                "/token", data={"grant_type": "refresh_token", "refresh_token": old}
            )
            assert refreshed.status_code == 200, (name, refreshed.text)
            child = refreshed.json()["refresh_token"]
            async with context.database.sessionmaker() as session:
                stored = await session.scalar(
                    select(RefreshToken.id).where(
                        RefreshToken.token_hash == context.hasher.hash(child)
                    )
                )
            assert stored is not None, name
            # The old one is spent: presented again it is a reuse, which ends the family.
            replay = await client.post(
                "/token", data={"grant_type": "refresh_token", "refresh_token": old}
            )
            assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
            gone = await client.post(
                "/token", data={"grant_type": "refresh_token", "refresh_token": child}
            )
            assert gone.status_code == 400, (name, gone.text)

        # The legacy key: imported again, it is known by its lookup under the old secret;
        # exchanged, it is found by that lookup, which moves.
        with pytest.raises(ImportFailed) as failed:
            await import_lines(context, [LEGACY_LINE], actor="test")
        assert [str(error) for error in failed.value.errors] == [
            "line 1: this key was already imported"
        ]
        legacy = await exchange(client, LEGACY)
        assert legacy.status_code == 200, legacy.text
        found = await status(context)
        assert (found.live_keys_current, found.live_keys_fallback) == (2, 1)  # idle is left

    # Without the fallback: the keys used meanwhile work; the one never used does not.
    async with serving(database_url, tmp_path, NEW_SECRET) as (context, client):
        assert (await exchange(client, used.api_key)).status_code == 200
        assert (await exchange(client, LEGACY)).status_code == 200
        idle_refused = await exchange(client, idle.api_key)
        assert idle_refused.status_code == 401
        # The holder learns no more than for a wrong secret; the audit log says why.
        assert idle_refused.json() == {
            "error": "invalid_client",
            "error_description": "Client authentication failed.",
        }
        (refused,) = await audit_events(context, "token.exchange", outcome="failure")
        assert refused.reason == "key hashed under a retired server secret"
        assert refused.key_id == idle.id
        found = await status(context)
        assert (found.live_keys_current, found.live_keys_fallback) == (2, 0)
        assert found.live_keys_other == 1  # idle, under a secret this server does not know


async def test_a_refresh_token_revoked_by_its_old_hmac_is_revoked(database_url, tmp_path, before):
    async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (context, client):
        old = before["key_refresh"]
        revoked = await client.post(
            "/revoke",
            data={"token": old},
            auth=(before["used"].client_id, before["used"].client_secret),
        )
        assert revoked.status_code == 200, revoked.text
        refused = await client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": old}
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


async def test_a_secret_that_is_neither_is_still_refused(database_url, tmp_path, before):
    # A fallback opens only what it made: a server given two unrelated secrets refuses.
    with pytest.raises(Exception, match="nor its fallback"):
        async with serving(database_url, tmp_path, NEW_SECRET, OTHER_SECRET):
            pass


async def test_a_wrong_secret_is_refused_under_either_secret(database_url, tmp_path, before):
    used = before["used"]
    async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (context, client):
        wrong = (used.client_id, "x" * 43)
        response = await client.post(
            "/token", data={"grant_type": "client_credentials"}, auth=wrong
        )
        assert response.status_code == 401
        assert (await key_row(context, used.id)).secret_hash == before["used_hash"]


async def test_keys_made_before_labels_are_labelled_at_a_start_without_fallback(
    database_url, tmp_path, before, monkeypatch
):
    monkeypatch.setattr(secret_rotation, "LABEL_BATCH", 2)  # three keys: two batches
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, _client):
        async with context.database.sessionmaker() as session:
            await session.execute(update(ApiKey).values(hashed_under=None))
            await session.commit()
        assert (await status(context)).live_keys_unlabelled == 3
    # Each worker of each replica does this at its start: the secret in use is the one
    # every usable key is under.
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, _client):
        found = await status(context)
        assert (found.live_keys_unlabelled, found.live_keys_current) == (0, 3)
    # With a fallback set, unlabelled keys stay so until used: either secret may be theirs.
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, _client):
        async with context.database.sessionmaker() as session:
            await session.execute(update(ApiKey).values(hashed_under=None))
            await session.commit()
    async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (context, client):
        found = await status(context)
        assert found.live_keys_unlabelled == 3 and found.fallback_still_needed
        assert (await exchange(client, before["used"].api_key)).status_code == 200
        found = await status(context)
        assert (found.live_keys_unlabelled, found.live_keys_current) == (2, 1)


def test_the_fallback_must_be_a_real_secret_other_than_the_current_one(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    for fallback, expected in (
        (TEST_SECRET, "KEYSERVICE_SECRET_KEY_FALLBACK: must differ from KEYSERVICE_SECRET_KEY"),
        ("short", "KEYSERVICE_SECRET_KEY_FALLBACK: must be a random value of at least 32"),
    ):
        with pytest.raises(ValidationError) as raised:
            make_settings(url, tmp_path, secret_key_fallback=fallback)
        (line,) = configuration_errors(raised.value)
        assert line.startswith(expected), line
        assert fallback not in line or fallback == "short"
    # Empty (a compose file passing the variable through with an empty default): none.
    for empty in ("", "  "):
        assert make_settings(url, tmp_path, secret_key_fallback=empty).secret_key_fallback is None
    # Masked wherever settings are shown.
    settings = make_settings(url, tmp_path, secret_key_fallback=NEW_SECRET)
    assert NEW_SECRET not in repr(settings) and NEW_SECRET not in str(settings)


def test_an_embedded_secret_file_equal_to_the_fallback_is_no_fallback(tmp_path):
    (tmp_path / "secret_key").write_text(NEW_SECRET)
    settings = Settings(data_dir=tmp_path, secret_key_fallback=NEW_SECRET)
    assert settings.embedded
    assert settings.server_secret() == NEW_SECRET.encode()
    assert settings.server_secret_fallback() is None


async def test_replicas_between_the_two_restarts_move_a_key_at_most_once_a_minute_each(
    database_url, tmp_path, before
):
    # Step 2 of the README's rotation (old secret, new as fallback) and step 3 (new secret,
    # old as fallback) run side by side while replicas restart. Each kind hashes a key
    # it finds under the other secret again under its own: a key exchanged on both would
    # be written at every exchange; each process does it at most once a minute per key.
    used = before["used"]
    new_label, old_label = secret_label(NEW_SECRET.encode()), secret_label(TEST_SECRET.encode())
    async with (
        serving(database_url, tmp_path, TEST_SECRET, NEW_SECRET) as (step2, client2),
        serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (step3, client3),
    ):
        assert (await exchange(client3, used.api_key)).status_code == 200
        assert (await key_row(step3, used.id)).hashed_under == new_label
        assert (await exchange(client2, used.api_key)).status_code == 200
        assert (await key_row(step2, used.id)).hashed_under == old_label
        for client in (client3, client2, client3):
            assert (await exchange(client, used.api_key)).status_code == 200
        assert (await key_row(step2, used.id)).hashed_under == old_label  # no more writes


async def test_a_start_that_cannot_label_the_keys_serves_all_the_same(
    database_url, tmp_path, before, monkeypatch, caplog
):
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, _client):
        async with context.database.sessionmaker() as session:
            await session.execute(update(ApiKey).values(hashed_under=None))
            await session.commit()

    async def locked_out(session, label):
        raise OperationalError("UPDATE api_key ...", {}, Exception("lock timeout"))

    monkeypatch.setattr(secret_rotation, "_label_unlabelled", locked_out)
    async with serving(database_url, tmp_path, TEST_SECRET) as (context, client):
        assert (await exchange(client, before["used"].api_key)).status_code == 200
        found = await status(context)
        # The key used was labelled by its exchange; the others wait for the next start.
        assert (found.live_keys_current, found.live_keys_unlabelled) == (1, 2)
    assert any("left some API keys without the label" in r.getMessage() for r in caplog.records)


async def test_the_switch_to_a_new_secret_is_one_audit_event(database_url, tmp_path, before):
    # The first start with the new secret (the old one as fallback) is when the switch
    # takes effect, and it was in no event. Workers or replicas started together each read
    # the signing keys under the fallback: the one that moves them records the switch, the
    # others move nothing again (and record nothing).
    new_label, old_label = secret_label(NEW_SECRET.encode()), secret_label(TEST_SECRET.encode())
    late = AppContext(
        make_settings(
            database_url, tmp_path, secret_key=NEW_SECRET, secret_key_fallback=TEST_SECRET
        )
    )
    try:
        async with late.database.sessionmaker() as session:
            await late.keyring.load(session)
        assert late.keyring.under_fallback == set(before["blobs"])
        async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (first, _client):
            moved = await signing_blobs(first)
            async with late.database.sessionmaker() as session:
                await secret_rotation.settle(late, session)
            assert await signing_blobs(first) == moved  # as the first stored them
            (event,) = await audit_events(first, "server_secret.switched")
        assert (event.actor, event.outcome) == ("server", "success")
        assert event.reason == (
            f"server secret {new_label} in use, {old_label} the fallback; signing key(s) "
            f"{', '.join(sorted(moved))} encrypted again under the new secret"
        )
        assert NEW_SECRET not in event.reason and TEST_SECRET not in event.reason
        # A later start finds the keys under the new secret: no switch, no event.
        async with serving(database_url, tmp_path, NEW_SECRET, TEST_SECRET) as (again, _client):
            assert len(await audit_events(again, "server_secret.switched")) == 1
    finally:
        await late.database.dispose()
