"""A password sign-in's chain of refresh tokens ends KEYSERVICE_PASSWORD_SESSION_MAX_SECONDS
after the sign-in, however often it is refreshed; a key's chain is not held to it."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from sqlalchemy import select, update

from keyservice.auth.models import RefreshToken
from keyservice.context import AppContext
from keyservice.database import _uuid_text, ordered_id_time
from tests.admin.support import admin_token, refresh
from tests.factories import (
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    user_token,
)

PERMS = ["api_keys:manage"]
HOUR = 3600


def ordered_id_at(seconds: float) -> str:
    """A UUIDv7 as `new_ordered_id()` would have made it at Unix time `seconds`."""
    value = int(seconds * 1000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return _uuid_text(value)


async def family_of(context: AppContext, refresh_token: str) -> str:
    async with context.database.sessionmaker() as session:
        family = await session.scalar(
            select(RefreshToken.family_id).where(
                RefreshToken.token_hash == context.hasher.hash(refresh_token)
            )
        )
    assert family is not None
    return family


async def started_ago(context: AppContext, refresh_token: str, seconds: int) -> None:
    """Make the token's family look as if it had begun `seconds` ago: its id says when."""
    family = await family_of(context, refresh_token)
    async with context.database.sessionmaker() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family)
            .values(family_id=ordered_id_at(time.time() - seconds))
        )
        await session.commit()


def test_ordered_id_time_reads_a_uuidv7_and_nothing_else():
    at = 1_780_000_000.123
    assert ordered_id_time(ordered_id_at(at)) == pytest.approx(at, abs=0.001)
    assert ordered_id_time(str(uuid.uuid4())) is None
    assert ordered_id_time("not an id") is None


async def test_a_sign_in_ends_at_its_maximum_age_however_often_it_is_refreshed(client, context):
    assert context.settings.password_session_max_seconds == 12 * HOUR
    pat = await create_principal(context, "pat", permissions=PERMS)
    first = await login(client, "pat")
    assert first["expires_in"] == 7200 and first["refresh_token_expires_in"] == 3 * HOUR

    # Eleven hours in, a refresh still works, but its tokens end with the session: in an hour.
    await started_ago(context, first["refresh_token"], 11 * HOUR)
    late = await refresh(client, first["refresh_token"])
    assert late.status_code == 200, late.text
    body = late.json()
    assert HOUR - 5 <= body["refresh_token_expires_in"] <= HOUR
    assert body["expires_in"] == body["refresh_token_expires_in"]
    claims = context.keyring.verify(body["access_token"])
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert (await client.get("/me", headers=bearer(body["access_token"]))).status_code == 200

    # Past twelve hours the chain is over, though its last token has not expired; /introspect
    # says so too.
    admin = await admin_token(context, client)

    async def active(token: str) -> bool:
        found = await client.post("/introspect", data={"token": token}, headers=bearer(admin))
        assert found.status_code == 200, found.text
        return bool(found.json()["active"])

    await started_ago(context, body["refresh_token"], 12 * HOUR - 60)
    assert await active(body["refresh_token"])
    await started_ago(context, body["refresh_token"], 12 * HOUR + 1)
    assert not await active(body["refresh_token"])
    over = await refresh(client, body["refresh_token"])
    assert over.status_code == 400 and over.json() == {
        "error": "invalid_grant",
        "error_description": "This sign-in session has reached its maximum age: sign in again.",
    }
    refused = await audit_events(context, "token.refresh", outcome="failure")
    # The refusal names the user whose sign-in it was, as that sign-in's refreshes do.
    assert [(e.reason, e.actor, e.principal_id, e.key_id) for e in refused] == [
        ("sign-in session past its maximum age", "user:pat", pat.id, None)
    ]
    # Refused, not consumed: signing in again is the way on, and it works.
    assert (await login(client, "pat"))["refresh_token_expires_in"] == 3 * HOUR


async def test_a_family_id_that_is_not_a_uuidv7_is_a_session_long_over(client, context):
    await create_principal(context, "quin", permissions=PERMS)
    first = await login(client, "quin")
    family = await family_of(context, first["refresh_token"])
    async with context.database.sessionmaker() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family)
            .values(family_id=str(uuid.uuid4()))
        )
        await session.commit()
    over = await refresh(client, first["refresh_token"])
    assert over.status_code == 400 and over.json()["error"] == "invalid_grant"


async def test_a_key_chain_is_not_held_to_the_sign_in_limit(client, context):
    user = await user_token(context, client, "rue", PERMS)
    key = await create_key(client, user, name="ci")
    first = (await exchange(client, key["api_key"])).json()
    await started_ago(context, first["refresh_token"], 30 * HOUR)
    later = await refresh(client, first["refresh_token"])
    assert later.status_code == 200, later.text
    assert later.json()["expires_in"] == 7200
    assert later.json()["refresh_token_expires_in"] == 3 * HOUR


@pytest.mark.parametrize("settings_overrides", [{"password_session_max_seconds": 5}])
async def test_a_session_shorter_than_the_token_lifetimes_ends_them_both(client, context):
    await create_principal(context, "sol", permissions=PERMS)
    first = await login(client, "sol")
    assert 4 <= first["expires_in"] <= 5
    assert first["refresh_token_expires_in"] == first["expires_in"]
    claims = context.keyring.verify(first["access_token"])
    assert claims["exp"] - claims["iat"] == first["expires_in"]
    # The refresh token's stored expiry is the session's end too, not three hours away.
    async with context.database.sessionmaker() as session:
        stored = await session.scalar(
            select(RefreshToken.expires_at).where(
                RefreshToken.token_hash == context.hasher.hash(first["refresh_token"])
            )
        )
    assert stored is not None and stored.timestamp() <= claims["exp"]
