"""Signing-key rotation published before it signs (`signing-keys rotate --publish-first`).

A resource server may hold the JWKS for its max-age, fetched from a replica that had not
reloaded yet: a token signed with a `kid` it does not know would be refused there. So the
old key can keep signing until SIGNING_KEY_ACTIVATION_SECONDS after the rotation, while
the new one is already in the JWKS; `delay=0` (plain `rotate`, as API.md has it: the new
key current for every replica at once) switches at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import select, update

from keyservice.auth.models import SigningKey
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.security.jwt import (
    JWKS_MAX_AGE_SECONDS,
    SIGNING_KEY_ACTIVATION_SECONDS,
    SIGNING_KEY_RELOAD_SECONDS,
    SigningKeyring,
)
from tests.factories import audit_events, bearer, login, user_token

PERMS = ["api_keys:manage", "projects:read"]
CLAIMS = {"sub": "s", "scope": "", "principal_type": "user", "sid": "f"}


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def rotate(context: AppContext, **options: Any) -> str:
    async with context.database.sessionmaker() as session:
        new = await context.keyring.create_key(session, retire_current=True, **options)
        await session.commit()
        await context.keyring.load(session)
    return new


async def keys(context: AppContext) -> dict[str, SigningKey]:
    async with context.database.sessionmaker() as session:
        return {k.kid: k for k in await session.scalars(select(SigningKey))}


async def published(client: Any) -> set[str]:
    response = await client.get("/.well-known/jwks.json")
    assert response.headers["cache-control"] == f"public, max-age={JWKS_MAX_AGE_SECONDS}"
    return {k["kid"] for k in response.json()["keys"]}


def test_the_delay_outlasts_a_cached_jwks_and_a_reload():
    assert SIGNING_KEY_ACTIVATION_SECONDS > JWKS_MAX_AGE_SECONDS + SIGNING_KEY_RELOAD_SECONDS


async def test_a_rotated_key_is_published_before_it_signs(client, context):
    old_token = await user_token(context, client, "erin", PERMS)
    old = kid(old_token)
    new = await rotate(context)

    # Published at once, on this replica and any that reloads ...
    assert await published(client) == {old, new}
    # ... while tokens are still signed with the old key, which every cached JWKS knows.
    assert kid((await login(client, "erin"))["access_token"]) == old
    assert context.keyring.current_kid == old

    # The handover is the old key's retirement, the delay after the new key was made.
    rows = await keys(context)
    handover = rows[old].retired_at
    assert handover == rows[new].created_at + timedelta(seconds=SIGNING_KEY_ACTIVATION_SECONDS)
    assert rows[new].retired_at is None

    # The keyring switches at the handover from what it loaded, without reading again.
    at = int(handover.timestamp())
    assert kid(context.keyring.issue(CLAIMS, now=at - 1)[0]) == old
    assert kid(context.keyring.issue(CLAIMS, now=at + 1)[0]) == new


async def test_after_the_delay_the_new_key_signs_and_the_old_stays_published(client, context):
    old_token = await user_token(context, client, "fay", PERMS)
    old = kid(old_token)
    new = await rotate(context)
    # The delay has passed: what the database says once that much time went by.
    shift = timedelta(seconds=SIGNING_KEY_ACTIVATION_SECONDS + 1)
    async with context.database.sessionmaker() as session:
        for row in (await keys(context)).values():
            await session.execute(
                update(SigningKey)
                .where(SigningKey.kid == row.kid)
                .values(
                    created_at=row.created_at - shift,
                    retired_at=row.retired_at - shift if row.retired_at else None,
                )
            )
        await session.commit()
        await context.keyring.load(session)

    new_token = (await login(client, "fay"))["access_token"]
    assert kid(new_token) == new
    # Retired, not gone: published until every token it signed has expired.
    assert await published(client) == {old, new}
    for token in (old_token, new_token):
        assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_retirement_counts_from_the_handover(client, context):
    await user_token(context, client, "gil", PERMS)
    old = context.keyring.current_kid
    await rotate(context)
    ttl = context.settings.access_token_ttl
    # A rotation long enough ago that the old key's tokens, had it stopped signing at the
    # rotation, would all have expired; but it signed until the handover, so it is still
    # published for a TTL after that.
    async with context.database.sessionmaker() as session:
        handover = utcnow() - timedelta(seconds=ttl + 60 - 30)
        await session.execute(
            update(SigningKey).where(SigningKey.kid == old).values(retired_at=handover)
        )
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid != old)
            .values(created_at=handover - timedelta(seconds=SIGNING_KEY_ACTIVATION_SECONDS))
        )
        await session.commit()
        await context.keyring.load(session)
        assert old in await published(client)
        # A TTL (+ the margin) after the handover it is gone.
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old)
            .values(retired_at=handover - timedelta(seconds=31))
        )
        await session.commit()
        await context.keyring.load(session)
        assert old not in await published(client)


async def test_rotate_now_signs_at_once(client, context):
    old_token = await user_token(context, client, "hal", PERMS)
    old = kid(old_token)
    new = await rotate(context, delay=0)
    assert kid((await login(client, "hal"))["access_token"]) == new
    assert await published(client) == {old, new}
    assert (await client.get("/me", headers=bearer(old_token))).status_code == 200
    rows = await keys(context)
    assert rows[old].retired_at == rows[new].created_at


async def test_rotate_now_during_a_pending_rotation_takes_over_from_both(client, context):
    await user_token(context, client, "ida", PERMS)
    old = context.keyring.current_kid
    pending = await rotate(context)
    now = await rotate(context, delay=0)
    assert kid((await login(client, "ida"))["access_token"]) == now
    rows = await keys(context)
    assert rows[old].retired_at == rows[pending].retired_at == rows[now].created_at
    assert await published(client) == {old, pending, now}


async def test_two_rotations_hand_over_in_turn(client, context):
    await user_token(context, client, "jo", PERMS)
    first = context.keyring.current_kid
    second = await rotate(context, delay=30)
    third = await rotate(context)
    rows = await keys(context)
    # The second rotation does not push the first handover back.
    one, two = rows[first].retired_at, rows[second].retired_at
    assert one is not None and two is not None and one < two
    keyring = context.keyring
    assert kid(keyring.issue(CLAIMS, now=int(one.timestamp()) - 1)[0]) == first
    assert kid(keyring.issue(CLAIMS, now=int(one.timestamp()) + 1)[0]) == second
    assert kid(keyring.issue(CLAIMS, now=int(two.timestamp()) + 1)[0]) == third


async def test_a_fresh_install_signs_with_its_only_key_at_once(client, context):
    rows = await keys(context)
    assert len(rows) == 1  # made as the app started, on an empty database
    (only,) = rows
    token = await user_token(context, client, "kit", PERMS)
    assert kid(token) == only
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


def meeting(count: int) -> Callable[[], Awaitable[None]]:
    """Wait until `count` callers arrived, or a second (one may be queued on a lock)."""
    arrived = 0
    everyone = asyncio.Event()

    async def meet() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            everyone.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), 1)

    return meet


async def live_keys(context: AppContext) -> list[SigningKey]:
    now = utcnow()
    return [k for k in (await keys(context)).values() if k.retired_at is None or k.retired_at > now]


@pytest.mark.postgresql_only
async def test_replicas_starting_together_make_one_first_key(context, monkeypatch):
    # Each replica found no key and made one: two keys that never retire, each replica
    # signing with its own until it reloaded.
    meet = meeting(2)
    create_key = SigningKeyring.create_key

    async def in_step(self: SigningKeyring, *args: Any, **kwargs: Any) -> str:
        await meet()  # both found no key before either made one
        return await create_key(self, *args, **kwargs)

    monkeypatch.setattr(SigningKeyring, "create_key", in_step)
    replicas = [AppContext(context.settings) for _ in range(2)]

    async def start(replica: AppContext) -> None:
        async with replica.database.sessionmaker() as session:
            await replica.keyring.ensure_key(session)

    try:
        await asyncio.gather(*(start(replica) for replica in replicas))
    finally:
        for replica in replicas:
            await replica.database.dispose()
    (only,) = await live_keys(context)
    assert [replica.keyring.current_kid for replica in replicas] == [only.kid, only.kid]
    [created] = await audit_events(context, "signing_key.created")
    assert created.reason == f"first signing key {only.kid}; signs at once"


async def test_the_first_signing_key_is_on_record_once(context):
    # Rotations were audited; the key a new deployment makes at its first start was not.
    for _ in range(2):  # a second start finds the key and makes none
        async with context.database.sessionmaker() as session:
            await context.keyring.ensure_key(session)
    (only,) = await live_keys(context)
    [created] = await audit_events(context, "signing_key.created")
    assert (created.actor, created.outcome) == ("server", "success")
    assert created.reason == f"first signing key {only.kid}; signs at once"


@pytest.mark.postgresql_only
async def test_two_rotations_at_once_leave_one_key_to_sign(context, monkeypatch):
    async with context.database.sessionmaker() as session:
        await context.keyring.ensure_key(session)
    meet = meeting(2)
    create_key = SigningKeyring.create_key

    async def in_step(self: SigningKeyring, *args: Any, **kwargs: Any) -> str:
        kid = await create_key(self, *args, **kwargs)
        await meet()  # both rotated before either committed
        return kid

    monkeypatch.setattr(SigningKeyring, "create_key", in_step)
    operators = [AppContext(context.settings) for _ in range(2)]
    try:
        made = await asyncio.gather(*(rotate(operator, delay=0) for operator in operators))
    finally:
        for operator in operators:
            await operator.database.dispose()
    (signing,) = await live_keys(context)
    assert signing.kid in made
