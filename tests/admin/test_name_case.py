"""Usernames and device names are one whatever their letter case; kept as typed."""

from __future__ import annotations

import asyncio

import pytest

from tests.admin.support import admin_request, admin_token, events
from tests.factories import PASSWORD, bearer, create_principal, login


async def test_a_username_differing_only_in_case_is_taken(client, context):
    admin = await admin_token(context, client)
    body = {"username": "Alice", "password": PASSWORD, "permissions": []}
    created = await admin_request(client, admin, "POST", "/admin/users", 201, json=body)
    for twin in ("alice", "ALICE", "aLiCe"):
        taken = await admin_request(
            client, admin, "POST", "/admin/users", 409, json={**body, "username": twin}
        )
        assert taken.json()["error_description"] == (
            f"The username '{twin}' is taken (as 'Alice': names are the same whatever "
            "their letter case)."
        )
    # A device may still be called so: the kinds have names of their own, as before.
    await admin_request(
        client, admin, "POST", "/admin/devices", 201, json={"name": "alice", "permissions": []}
    )
    listed = (await admin_request(client, admin, "GET", "/admin/users", 200)).json()["items"]
    assert [user["username"] for user in listed if user["id"] == created.json()["id"]] == [
        "Alice"  # kept as typed
    ]
    assert len(await events(context, "user.created", outcome="failure")) == 3


async def test_sign_in_takes_any_case_and_keeps_the_name_as_typed(client, context):
    user = await create_principal(context, "Bea", permissions=["api_keys:manage"])
    for typed in ("Bea", "bea", "BEA"):
        token = (await login(client, typed))["access_token"]
        me = (await client.get("/me", headers=bearer(token))).json()
        assert me["id"] == user.id and me["username"] == "Bea"
    # One letter beyond a case is another name.
    wrong = await client.post(
        "/token", data={"grant_type": "password", "username": "Bea.", "password": PASSWORD}
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 3}])
async def test_guesses_in_any_case_count_against_one_account(client, context):
    # Counted per name as typed, each spelling would have been a fresh allowance of guesses
    # at the same password: 3 per letter case, 2**len(name) of them.
    await create_principal(context, "cody", permissions=[])
    for typed in ("cody", "Cody", "CODY"):
        wrong = await client.post(
            "/token", data={"grant_type": "password", "username": typed, "password": "nope"}
        )
        assert wrong.status_code == 400, wrong.text
    locked = await client.post(
        "/token", data={"grant_type": "password", "username": "cOdY", "password": PASSWORD}
    )
    assert locked.status_code == 429 and locked.json()["error"] == "slow_down"


async def test_device_names_differing_only_in_case_are_one(client, context):
    admin = await admin_token(context, client)
    created = await admin_request(
        client, admin, "POST", "/admin/devices", 201, json={"name": "Sensor-1", "permissions": []}
    )
    taken = await admin_request(
        client, admin, "POST", "/admin/devices", 409, json={"name": "sensor-1", "permissions": []}
    )
    assert taken.json()["error_description"] == (
        "A device named 'sensor-1' already exists (as 'Sensor-1': names are the same "
        "whatever their letter case)."
    )
    found = await admin_request(client, admin, "GET", "/admin/devices?name=SENSOR-1", 200)
    assert [item["id"] for item in found.json()["items"]] == [created.json()["id"]]
    # Once it is deleted, the name in any case is free again.
    await admin_request(client, admin, "DELETE", f"/admin/devices/{created.json()['id']}", 204)
    await admin_request(
        client, admin, "POST", "/admin/devices", 201, json={"name": "SENSOR-1", "permissions": []}
    )


@pytest.mark.parametrize(
    ("path", "field", "extra"),
    [
        ("/admin/users", "username", {"password": PASSWORD}),
        ("/admin/devices", "name", {}),
    ],
)
async def test_concurrent_creates_in_different_cases_leave_one(client, context, path, field, extra):
    # The checks before the insert all pass at once; the index on lower(name) decides.
    admin = await admin_token(context, client)
    spellings = ["twin", "Twin", "TWIN", "tWIN", "twiN", "TwIn"]
    responses = await asyncio.gather(
        *(
            client.post(path, json={field: name, "permissions": [], **extra}, headers=bearer(admin))
            for name in spellings
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 5, [response.text for response in responses]
    listed = (await client.get(path, headers=bearer(admin))).json()["items"]
    assert sum(1 for item in listed if item[field].lower() == "twin") == 1
