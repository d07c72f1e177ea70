"""Account rules pinned by mutation testing: the password length, a quick re-enable, the
sessions a disable counts and what a device's deletion revokes."""

from __future__ import annotations

from tests.admin.support import admin_request, admin_token
from tests.factories import login


async def test_a_password_of_eight_characters_is_the_shortest_accepted(client, context):
    admin = await admin_token(context, client)
    body = {"username": "paula", "password": "seven77", "permissions": []}
    short = await admin_request(client, admin, "POST", "/admin/users", 422, json=body)
    assert "at least 8 characters" in short.json()["error_description"]
    body["password"] = "eight888"
    user = (await admin_request(client, admin, "POST", "/admin/users", 201, json=body)).json()
    path = f"/admin/users/{user['id']}"
    await admin_request(client, admin, "PATCH", path, 422, json={"password": "seven77"})
    assert (await login(client, "paula", "eight888"))["access_token"]
