"""Two admins creating the same name at once: one wins, the other gets 409, never a 500."""

from __future__ import annotations

import asyncio

import pytest

from tests.admin.support import admin_token
from tests.factories import bearer


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/users", {"username": "twin", "password": "a-long-password", "permissions": []}),
        ("/admin/devices", {"name": "twin", "permissions": []}),
    ],
)
async def test_concurrent_creates_of_one_name(client, context, path, body):
    admin = await admin_token(context, client)
    responses = await asyncio.gather(
        *(client.post(path, json=body, headers=bearer(admin)) for _ in range(6))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 5, [r.text for r in responses]
    listed = (await client.get(path, headers=bearer(admin))).json()["items"]
    assert [item.get("username") or item.get("name") for item in listed].count("twin") == 1
