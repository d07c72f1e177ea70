"""POST /me/password: a user changes their own password."""

from __future__ import annotations

import pytest

from tests.factories import (
    PASSWORD,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
)

NEW = "a new and longer passphrase"


async def change(client, token: str, current: str, new: str, expect: int):
    response = await client.post(
        "/me/password",
        json={"current_password": current, "new_password": new},
        headers=bearer(token),
    )
    assert response.status_code == expect, response.text
    return response


async def test_a_user_changes_their_password_and_their_sign_ins_end(client, context):
    await create_principal(context, "ada", permissions=["api_keys:manage"])
    first = await login(client, "ada")
    other = await login(client, "ada")  # another device's sign-in
    key = await create_key(client, first["access_token"], name="ci")
    from_key = (await exchange(client, key["api_key"])).json()

    await change(client, first["access_token"], PASSWORD, NEW, 204)

    # The old password is refused, the new one signs in.
    refused = await client.post(
        "/token", data={"grant_type": "password", "username": "ada", "password": PASSWORD}
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    fresh = await login(client, "ada", NEW)
    assert (await client.get("/me", headers=bearer(fresh["access_token"]))).status_code == 200
    # Every sign-in session ended, the one that made the change included.
    for session in (first, other):
        assert (await client.get("/me", headers=bearer(session["access_token"]))).status_code == 401
        again = await client.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]},
        )
        assert again.status_code == 400
    # API keys are separate credentials: their sessions go on.
    assert (await client.get("/me", headers=bearer(from_key["access_token"]))).status_code == 200
    kept = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": from_key["refresh_token"]}
    )
    assert kept.status_code == 200, kept.text

    [event] = await audit_events(context, "user.updated")
    assert (event.actor, event.outcome) == ("user:ada", "success")
    assert event.reason == "password changed; 2 sign-in session(s) ended"
    for event in await audit_events(context):
        assert PASSWORD not in f"{event.reason} {event.actor}"
        assert NEW not in f"{event.reason} {event.actor}"


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 3}])
async def test_a_wrong_current_password_is_refused_and_counted_as_a_failed_sign_in(client, context):
    await create_principal(context, "bob", permissions=["api_keys:manage"])
    token = (await login(client, "bob"))["access_token"]
    for _ in range(3):
        wrong = await change(client, token, "not my password", NEW, 403)
        assert wrong.json() == {
            "error": "forbidden",
            "error_description": "The current password is wrong.",
        }
    # Past the sign-in throttle, even the right one waits: no guessing at sign-in speed.
    throttled = await change(client, token, PASSWORD, NEW, 429)
    assert int(throttled.headers["Retry-After"]) >= 1
    refusals = [e.reason for e in await audit_events(context, "login") if e.outcome == "failure"]
    assert refusals[:3] == ["password change: wrong password"] * 3
    changes = await audit_events(context, "user.updated")
    assert [e.outcome for e in changes] == ["failure"] * 4  # refused, each on record
    assert changes[0].reason == "refused (403): The current password is wrong."
    assert changes[-1].reason.startswith("refused (429): ")
    # Nothing changed: the session that asked goes on.
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_only_a_person_signed_in_with_the_password_changes_it(client, context):
    await create_principal(context, "cy", permissions=["api_keys:manage"])
    token = (await login(client, "cy"))["access_token"]
    key = await create_key(client, token, name="ci")
    from_key = (await exchange(client, key["api_key"])).json()["access_token"]
    refused = await change(client, from_key, PASSWORD, NEW, 403)
    assert "not with an API key's token" in refused.json()["error_description"]
    [tried] = await audit_events(context, "user.updated")  # a key trying is on record
    assert (tried.outcome, tried.actor) == ("failure", f"key:{key['client_id']}")
    assert tried.principal_id is not None and tried.reason.startswith("refused (403): ")

    device = await create_principal(context, "pump", kind="device", permissions=[])
    from tests.factories import service_key

    device_key = await service_key(context, device, "pump key")
    device_token = (await exchange(client, device_key.api_key)).json()["access_token"]
    refused = await change(client, device_token, PASSWORD, NEW, 403)
    assert "Only users have a password" in refused.json()["error_description"]
    unauthenticated = await client.post(
        "/me/password", json={"current_password": PASSWORD, "new_password": NEW}
    )
    assert unauthenticated.status_code == 401
    # Still the old password everywhere.
    await login(client, "cy")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"current_password": PASSWORD, "new_password": "short"}, "at least"),
        ({"current_password": PASSWORD, "new_password": PASSWORD}, "same as the current"),
        ({"current_password": PASSWORD}, "new_password"),
        ({"current_password": PASSWORD, "new_password": NEW, "username": "x"}, "username"),
    ],
)
async def test_a_new_password_refused_says_why_and_changes_nothing(client, context, body, says):
    await create_principal(context, "dee", permissions=["api_keys:manage"])
    token = (await login(client, "dee"))["access_token"]
    response = await client.post("/me/password", json=body, headers=bearer(token))
    assert response.status_code == 422, response.text
    assert says in response.text
    assert PASSWORD not in response.text
    await login(client, "dee")  # unchanged
    assert (await client.get("/me", headers=bearer(token))).status_code == 200
