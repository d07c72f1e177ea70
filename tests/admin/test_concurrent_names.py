"""Admins creating one user, device or scope name at once: one 201, the rest 409, never 500."""

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
        ("/admin/scopes", {"name": "twin:read", "description": "twins"}),
    ],
)
async def test_concurrent_creates_of_one_name(client, context, path, body):
    admin = await admin_token(context, client)
    responses = await asyncio.gather(
        *(client.post(path, json=body, headers=bearer(admin)) for _ in range(6))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 5, [r.text for r in responses]
    name = body.get("username") or body["name"]
    refusals = [r.json()["error_description"] for r in responses if r.status_code == 409]
    assert all(f"'{name}'" in refusal for refusal in refusals), refusals
    listed = (await client.get(path, headers=bearer(admin))).json()["items"]
    assert [item.get("username") or item.get("name") for item in listed].count(name) == 1
