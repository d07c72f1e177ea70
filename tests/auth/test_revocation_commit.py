"""A revocation reaches this process's view when its transaction commits, not before."""

from __future__ import annotations

import pytest

from keyservice.auth import service as auth_service
from tests.admin.support import admin_request, admin_token, create_device, create_device_key
from tests.factories import bearer, create_key, exchange, user_token

PERMS = ["api_keys:manage"]


def _claims(context, access_token):
    return context.keyring.verify(access_token)


async def test_a_family_revocation_rolled_back_leaves_the_family_usable(client, context):
    token = await user_token(context, client, "rolf", PERMS)
    key = await create_key(client, token, name="k")
    claims = _claims(context, (await exchange(client, key["api_key"])).json()["access_token"])

    async with context.database.sessionmaker() as session:
        await auth_service.revoke_family(context, session, family_id=claims["sid"], reason="x")
        await session.rollback()
    assert context.revocation.reason(claims) is None

    async with context.database.sessionmaker() as session:
        await auth_service.revoke_family(context, session, family_id=claims["sid"], reason="x")
    # Closed without a commit: nothing was revoked either.
    assert context.revocation.reason(claims) is None

    async with context.database.sessionmaker() as session:
        await auth_service.revoke_family(context, session, family_id=claims["sid"], reason="x")
        await session.commit()
    # Refused as soon as the commit returns: no reload has run (no app is running here).
    assert context.revocation.reason(claims) == "this token's session was revoked"


# No reload within the test (every 0.2 s otherwise) to hide a wrongly applied revocation.
@pytest.mark.parametrize("settings_overrides", [{"revocation_poll_seconds": 5}])
async def test_a_refused_admin_change_revokes_nothing_here(client, context):
    # A password change ends the user's sign-in sessions before the last-admin check
    # refuses the disable in the same request: its revocations were applied in this process
    # although the transaction rolled back, and the admin was locked out for a reload.
    admin = await admin_token(context, client, "solo")
    solo = (await client.get("/me", headers=bearer(admin))).json()["id"]
    device = await create_device(client, admin, "robot", ["admin"])
    robot_key = await create_device_key(client, admin, device["id"], name="ops")
    robot = (await exchange(client, robot_key["api_key"])).json()["access_token"]

    change = {"disabled": True, "password": "a-new-long-password"}
    answer = await admin_request(client, robot, "PATCH", f"/admin/users/{solo}", 409, json=change)
    assert "last enabled admin" in answer.json()["error_description"]
    assert (await client.get("/me", headers=bearer(admin))).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"revocation_poll_seconds": 5}])
async def test_committed_revocations_are_refused_here_at_once(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "box", ["api_keys:manage"])
    device_key = await create_device_key(client, admin, device["id"], name="box key")
    device_token = (await exchange(client, device_key["api_key"])).json()["access_token"]
    user = await user_token(context, client, "rita", PERMS)
    key = await create_key(client, user, name="k")
    key_tokens = (await exchange(client, key["api_key"])).json()
    signed_in = (await exchange(client, (await create_key(client, user))["api_key"])).json()

    await admin_request(client, admin, "DELETE", f"/admin/devices/{device['id']}", 204)
    assert (await client.get("/me", headers=bearer(device_token))).status_code == 401
    assert (await client.delete(f"/api-keys/{key['id']}", headers=bearer(user))).status_code == 204
    assert (await client.get("/me", headers=bearer(key_tokens["access_token"]))).status_code == 401
    revoked = await client.post("/revoke", data={"token": signed_in["refresh_token"]})
    assert revoked.status_code == 200
    assert (await client.get("/me", headers=bearer(signed_in["access_token"]))).status_code == 401
    rita = (await client.get("/me", headers=bearer(user))).json()["id"]
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{rita}", 200, json={"disabled": True}
    )
    assert (await client.get("/me", headers=bearer(user))).status_code == 401


async def test_a_view_failing_at_commit_neither_fails_the_commit_nor_drops_the_rest(
    client, context, monkeypatch, caplog
):
    token = await user_token(context, client, "rolf", PERMS)
    key = await create_key(client, token, name="k")
    first = _claims(context, (await exchange(client, key["api_key"])).json()["access_token"])
    second = _claims(context, (await exchange(client, key["api_key"])).json()["access_token"])
    apply = context.revocation.apply

    def failing_once(message: str) -> None:
        if message == f"family:{first['sid']}":
            raise RuntimeError("view broke")
        apply(message)

    monkeypatch.setattr(context.revocation, "apply", failing_once)
    async with context.database.sessionmaker() as session:
        for claims in (first, second):
            await auth_service.revoke_family(context, session, family_id=claims["sid"], reason="x")
        await session.commit()  # does not raise
    assert context.revocation.reason(second) == "this token's session was revoked"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "revocation family not applied at commit: RuntimeError" in warnings
    assert not any(first["sid"] in w for w in warnings)
    # The revocation itself was committed: the next reload applies it here too.
    async with context.database.sessionmaker() as session:
        await context.revocation.reload(session)
    assert context.revocation.reason(first) == "this token's session was revoked"
