"""At most N live keys per principal, also under concurrent creates."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from keyservice.api_keys.models import ApiKey
from keyservice.database import utcnow
from tests.admin.support import admin_request, admin_token, create_device, set_key_fields
from tests.factories import bearer, create_key, user_token


async def _live_keys(context, owner_id):
    async with context.database.sessionmaker() as session:
        return await session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.principal_id == owner_id,
                ApiKey.revoked_at.is_(None),
                ApiKey.expires_at > utcnow(),
            )
        )


async def test_sixth_key_is_409_until_one_goes(client, context):
    token = await user_token(context, client, "olga")
    keys = [await create_key(client, token, name=f"k{n}") for n in range(5)]
    refused = await create_key(client, token, expect=409, name="k5")
    assert "At most 5" in refused["error_description"]

    # A revoked key frees a place ...
    assert (
        await client.delete(f"/api-keys/{keys[0]['id']}", headers=bearer(token))
    ).status_code == 204
    await create_key(client, token, name="k5")
    await create_key(client, token, expect=409, name="k6")
    # ... and so does an expired one.
    await set_key_fields(context, keys[1]["id"], expires_at=utcnow() - timedelta(seconds=1))
    await create_key(client, token, name="k6")
    assert await _live_keys(context, keys[0]["owner_id"]) == 5


async def test_concurrent_creates_never_exceed_the_limit(client, context):
    token = await user_token(context, client, "pavel")
    me = (await client.get("/me", headers=bearer(token))).json()
    responses = await asyncio.gather(
        *(
            client.post("/api-keys", json={"name": f"race-{n}"}, headers=bearer(token))
            for n in range(8)
        )
    )
    codes = sorted(response.status_code for response in responses)
    assert codes == [201] * 5 + [409] * 3, [r.text for r in responses]
    assert await _live_keys(context, me["id"]) == 5


async def test_concurrent_device_key_creates_never_exceed_the_limit(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "racer")
    responses = await asyncio.gather(
        *(
            client.post(
                f"/admin/devices/{device['id']}/api-keys",
                json={"name": f"race-{n}"},
                headers=bearer(admin),
            )
            for n in range(8)
        )
    )
    codes = sorted(response.status_code for response in responses)
    assert codes == [201] * 5 + [409] * 3, [r.text for r in responses]
    assert await _live_keys(context, device["id"]) == 5


@pytest.mark.parametrize("settings_overrides", [{"max_keys_per_principal": 2}])
async def test_the_limit_is_configurable(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "small")
    path = f"/admin/devices/{device['id']}/api-keys"
    for n in range(2):
        await admin_request(client, admin, "POST", path, 201, json={"name": f"k{n}"})
    response = await admin_request(client, admin, "POST", path, 409, json={"name": "k2"})
    assert "At most 2" in response.json()["error_description"]


async def test_a_deleted_replacement_puts_the_key_it_replaced_back_in_the_count(client, context):
    # A replaced key is left out of the count only while its replacement is live: the pair
    # is one credential in transition. Deleting the replacements and rotating again must not
    # let a principal keep more than 5 keys that are neither revoked nor expired.
    token = await user_token(context, client, "quinn")
    keys = [await create_key(client, token, name=f"k{n}") for n in range(5)]
    owner_id = keys[0]["owner_id"]
    for key in keys:
        rotated = await client.post(
            f"/api-keys/{key['id']}/rotate",
            json={"grace_seconds": 86400 * 30},
            headers=bearer(token),
        )
        assert rotated.status_code == 201, rotated.text
        deleted = await client.delete(f"/api-keys/{rotated.json()['id']}", headers=bearer(token))
        assert deleted.status_code == 204
    assert await _live_keys(context, owner_id) == 5

    refused = await create_key(client, token, expect=409, name="sixth")
    assert "At most 5" in refused["error_description"]
    assert await _live_keys(context, owner_id) == 5
    # Rotating still works: the replacement takes the place of the key it replaces.
    rotated = await client.post(f"/api-keys/{keys[0]['id']}/rotate", headers=bearer(token))
    assert rotated.status_code == 201, rotated.text
    await create_key(client, token, expect=409, name="sixth")


async def test_an_expired_replacement_puts_the_key_it_replaced_back_in_the_count(client, context):
    # As a deleted one does: the old key, still in its grace period, is one live key again.
    token = await user_token(context, client, "rhea")
    old = await create_key(client, token, name="old")
    rotated = await client.post(
        f"/api-keys/{old['id']}/rotate", json={"grace_seconds": 86400 * 30}, headers=bearer(token)
    )
    assert rotated.status_code == 201, rotated.text
    for n in range(4):
        await create_key(client, token, name=f"k{n}")
    await set_key_fields(context, rotated.json()["id"], expires_at=utcnow() - timedelta(seconds=1))
    assert await _live_keys(context, old["owner_id"]) == 5
    refused = await create_key(client, token, expect=409, name="sixth")
    assert "At most 5" in refused["error_description"]
